"""``POST /-/pdsync/webhook``: Pipedrive's webhooks v2, received, stored, then applied.

- Only HTTP basic auth authenticates a delivery (Pipedrive signs nothing): the credentials
  ``pdsync webhooks install`` generated are kept as sha256 digests in the database's 0600
  secrets file (``pdsync.webhook_setup``) and compared in constant time.
- Pipedrive cannot send a CSRF token: this route, and no other, is exempt (``skip_csrf``); the
  sign-in gate lets it through to its own check (access.OPEN_PATHS).
- Durable first: a delivery is committed to the inbox (``pdsync.webhook_inbox``), a file of its
  own that never waits on a sync, before the 2xx; one applier thread per database applies it
  after (``pdsync.webhook_apply``). A database served immutable (a snapshot) is not written:
  deliveries wait in the inbox until it is served writable.
- Only the primary receives: the inbox is made by ``pdsync webhooks install`` (which runs
  where the syncs write), never here. A server with no inbox (a replica restored from the
  primary's copy, with the primary's secrets file) answers 503: what it applied would be
  overwritten by its next restore, so Pipedrive must deliver to the primary instead.
- Whatever happens it answers within Pipedrive's 10 s (8 s here): 503 when the inbox cannot
  take a delivery in time, so Pipedrive retries it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
import time
from pathlib import Path

from datasette.utils.asgi import Request, Response

from pdsync import access, webhook_setup
from pdsync.schema import is_pdsync
from pdsync.webhook_apply import ENTITIES, GAP_SLACK_S, Applier, DatabaseBusy
from pdsync.webhook_inbox import GroupCommit, Inbox, inbox_for_secrets
from pdsync.webhook_inbox import status as inbox_status

from .access import SECRETS_ENV
from .config import plugin_config

log = logging.getLogger("pdsync.webhooks")

PATH = "/-/pdsync/webhook"
MAX_BODY = 1024 * 1024  # a delivery is a record: a few KB; anything near this is not one
ANSWER_WITHIN = 8.0  # seconds; Pipedrive waits 10
IDLE_WAIT = 1.0  # the applier looks at the inbox at least this often
BUSY_WAIT = (0.005, 1.0)  # while a sync holds the database: first retry, longest wait
# How close to a sync's start a change may be and still be on its way as a webhook (seconds;
# tests shorten it).
SLACK_ENV = "PDSYNC_WEBHOOK_SLACK"


def skip_csrf(datasette, scope) -> bool:
    if scope.get("type") != "http":
        return False
    base = datasette.setting("base_url").rstrip("/")
    return scope.get("path") in (PATH, base + PATH)


# -- where things are -----------------------------------------------------------------------


def configured_secrets(datasette) -> str | None:
    """The secrets file ``pdsync serve`` passed, or ``plugins: pdsync: secrets_file`` (the
    same choice as the sign-in's, access.secrets_file); None: none configured."""
    path = os.environ.get(SECRETS_ENV)
    if not path and datasette is not None:
        path = plugin_config(datasette).get("secrets_file")
    return os.path.expanduser(str(path)) if path else None


def secrets_file(db_path: str, datasette=None) -> Path:
    """The secrets file holding this database's webhook credentials: its own, where
    ``pdsync webhooks install`` wrote them (beside the database, or in ``--config-dir``: the
    configured secrets file's directory). A configured file can serve the sign-in of several
    databases; its credentials would let one database's webhooks write into another."""
    configured = configured_secrets(datasette)
    return access.secrets_path(db_path, Path(configured).parent if configured else None)


def inbox_file(db_path: str, datasette=None) -> Path:
    """This database's own inbox, beside its own secrets file (one inbox shared by two
    databases would have each database's applier apply the other's deliveries)."""
    return inbox_for_secrets(secrets_file(db_path, datasette))


_inboxes: dict[str, Inbox] = {}
_committers: dict[str, GroupCommit] = {}
_secrets: dict[str, access.Cached] = {}
_inboxes_lock = threading.Lock()


def inbox_for(db_path: str, datasette=None) -> Inbox:
    return inbox_at(inbox_file(db_path, datasette))


def inbox_at(path: str | Path) -> Inbox:
    path = str(path)
    with _inboxes_lock:
        if path not in _inboxes:
            _inboxes[path] = Inbox(path)
        return _inboxes[path]


def committer_for(db_path: str, datasette=None) -> GroupCommit:
    found = _committers.get(db_path)  # by the database's path: no path work per delivery
    if found is None:
        inbox = inbox_for(db_path, datasette)
        with _inboxes_lock:
            found = _committers.get(db_path)
            if found is None:
                found = _committers[db_path] = GroupCommit(inbox)
    return found


def secrets_for(db_path: str, datasette=None) -> dict:
    """The secrets file's content, re-read only when it changed (one stat a delivery)."""
    cached = _secrets.get(db_path)
    if cached is None:
        path = secrets_file(db_path, datasette)
        with _inboxes_lock:
            cached = _secrets.setdefault(db_path, access.Cached(path))
    return cached.data()


_pdsync_files: dict[str, bool] = {}  # database paths found to be pdsync's


async def _database(datasette, name: str | None):
    """The pdsync database a delivery is for: ``?database=NAME``, or the only one served."""
    candidates = []
    for db_name, db in list(datasette.databases.items()):
        if db_name == "_internal" or not db.path or (name and db_name != name):
            continue
        if db.path not in _pdsync_files:
            try:
                if not is_pdsync(set(await db.table_names())):
                    continue  # asked again next time: its first sync may be starting
            except Exception:  # a file that cannot be read is not the one
                continue
            _pdsync_files[db.path] = True
        candidates.append(db)
    return candidates[0] if len(candidates) == 1 else None


# -- the route ------------------------------------------------------------------------------


def _one_line(status: int, message: str, **headers: str) -> Response:
    return Response.json({"ok": False, "error": message}, status=status, headers=headers)


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except ValueError:
        return None
    return (user, password) if sep else None


async def _read_body(request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (read no further)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await request.receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def receive(request, datasette) -> Response:
    if request.method != "POST":
        return Response.text("POST a Pipedrive webhook delivery here", status=405)
    db = await _database(datasette, request.args.get("database"))
    if db is None:
        return _one_line(404, "no single pdsync database here: add ?database=NAME")
    try:
        return await asyncio.wait_for(_receive(request, db, datasette), ANSWER_WITHIN)
    except asyncio.TimeoutError:
        log.warning("webhook delivery not stored in %.0f s: Pipedrive retries", ANSWER_WITHIN)
        return _one_line(503, "busy: not stored, send it again")


async def asgi(datasette, scope, receive_message, send) -> None:
    """The same route, called from pdsync's ASGI wrapper before Datasette's own stack: a
    delivery needs none of it (no cookie, no actor, no CSRF token), and that stack cost more
    than storing and applying it (asgi-csrf makes and signs a token for every request without
    a cookie; every actor_from_request hook runs). The route registered with Datasette stays,
    with its CSRF exemption, for a server without pdsync's wrapper in front."""
    response = await receive(Request(scope, receive_message), datasette)
    await response.asgi_send(send)


_told_no_inbox: set[str] = set()


async def _receive(request, db, datasette) -> Response:
    if db.path not in _committers and not inbox_file(db.path, datasette).exists():
        if db.path not in _told_no_inbox:  # once: Pipedrive retries, the log would flood
            _told_no_inbox.add(db.path)
            log.error(
                "webhook deliveries for %s refused: no inbox at %s. Route %s to the primary"
                " only (where `pdsync webhooks install` ran, with --config-dir for a"
                " configured secrets file's directory); a replica never receives.",
                db.name,
                inbox_file(db.path, datasette),
                PATH,
            )
        return _one_line(503, "this server does not receive webhooks: send them to the primary")
    try:
        committer = committer_for(db.path, datasette)
    except Exception as exc:  # a read-only directory, a full disk
        log.error("webhook inbox for %s cannot be opened: %s", db.name, exc)
        return _one_line(503, "cannot store deliveries here; see the server's log")
    given = _basic(request.headers.get("authorization", ""))
    try:
        data = secrets_for(db.path, datasette)
    except access.SecretsError as exc:
        log.error("%s", exc)
        data = {}
    if given is None or not webhook_setup.check_credentials(data, *given):
        reason = "no credentials" if given is None else "wrong credentials"
        committer.refuse(reason)
        return _one_line(401, reason, **{"www-authenticate": 'Basic realm="pdsync webhooks"'})
    body = await _read_body(request, MAX_BODY)
    if body is None:
        committer.refuse("too large")
        return _one_line(413, f"a delivery is at most {MAX_BODY} bytes")
    try:
        delivery = json.loads(body)
    except ValueError as exc:
        committer.refuse("malformed JSON")
        return _one_line(400, f"malformed JSON: {exc}")
    meta = delivery.get("meta") if isinstance(delivery, dict) else None
    if not isinstance(meta, dict):
        committer.refuse("no meta object")
        return _one_line(400, "not a webhooks v2 delivery: no meta object")
    if meta.get("entity") not in ENTITIES:
        # Acknowledged, so that Pipedrive never bans the hook over an object pdsync ignores.
        log.info("webhook for %r ignored: pdsync does not sync it", meta.get("entity"))
        try:
            await asyncio.wrap_future(committer.submit(body, meta, "ignored", "not synced"))
        except Exception as exc:  # a full disk: not stored, so not acknowledged
            log.error("webhook delivery for %s not stored: %s", db.name, exc)
            return _one_line(503, "not stored: send it again")
        return Response.json({"ok": True, "ignored": True})
    try:
        await asyncio.wrap_future(committer.submit(body, meta))
    except Exception as exc:  # a full disk: not stored, so not acknowledged
        log.error("webhook delivery for %s not stored: %s", db.name, exc)
        return _one_line(503, "not stored: send it again")
    wake(db.path, db.is_mutable, committer.inbox.path)
    return Response.json({"ok": True})


# -- the applier thread ---------------------------------------------------------------------


class ApplierThread:
    """Applies one database's inbox, woken by each delivery and at least every second."""

    def __init__(self, db_path: str, inbox: str | Path) -> None:
        self.db_path = db_path
        self.inbox = inbox
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pdsync-webhooks", daemon=True)

    def _loop(self) -> None:
        applier = None
        backoff = IDLE_WAIT
        busy = BUSY_WAIT[0]
        next_prune = 0.0
        while not self.stop.is_set():
            try:
                if applier is None:
                    applier = Applier(self.db_path, inbox_at(self.inbox))
                while applier.apply_pending():
                    pass
                applier.check_gaps(float(os.environ.get(SLACK_ENV) or GAP_SLACK_S))
                if time.monotonic() > next_prune:
                    applier.inbox.prune()  # applied deliveries older than a week
                    next_prune = time.monotonic() + 3600
                backoff, busy = IDLE_WAIT, BUSY_WAIT[0]
            except DatabaseBusy:
                # A sync holds the database. SQLite's own busy wait polls ever more rarely
                # (every 100 ms after the first 300): a short one, tried again after a few
                # milliseconds, lands in the gaps between a sync's page commits sooner. Each
                # try reads and decodes the batch again: the waits double up to a second,
                # so a lock held for minutes (an index build) costs a try a second.
                backoff, busy = busy, min(busy * 2, BUSY_WAIT[1])
            except Exception:
                log.exception("applying webhook deliveries to %s", self.db_path)
                backoff = min(backoff * 2, 30.0)
                if applier is not None:
                    applier.close()
                applier = None
            self.wake.wait(backoff)
            self.wake.clear()


_appliers: dict[str, ApplierThread] = {}
_appliers_lock = threading.Lock()


def wake(db_path: str, writable: bool, inbox: str | Path) -> None:
    if not writable:
        return  # a snapshot is not written; its deliveries wait in the inbox
    thread = _appliers.get(db_path)
    if thread is None:
        with _appliers_lock:
            thread = _appliers.get(db_path)
            if thread is None:
                thread = _appliers[db_path] = ApplierThread(db_path, inbox)
                thread.thread.start()
    thread.wake.set()


def start_appliers(datasette) -> None:
    """On lifespan.startup: apply what a previous process stored and did not apply."""
    for name, db in list(datasette.databases.items()):
        if name == "_internal" or not db.path or not db.is_mutable:
            continue
        inbox = inbox_file(db.path, datasette)
        if inbox.exists():
            wake(db.path, True, inbox)


def stop_appliers() -> None:
    with _appliers_lock:
        threads = list(_appliers.values())
        _appliers.clear()
    for thread in threads:
        thread.stop.set()
        thread.wake.set()
    for thread in threads:
        thread.thread.join(2.0)


# -- the status page ------------------------------------------------------------------------


def status_for(db) -> dict | None:
    """What the status page shows of a database's deliveries (``webhook_inbox.status``, as
    ``pdsync status`` does); None when webhooks are not installed for it here."""
    if not db.path:
        return None
    found = inbox_status(inbox_file(db.path, db.ds))
    if found is not None and "error" not in found:
        found["applied_here"] = bool(db.is_mutable)
    return found
