"""pdsync inside Datasette: a sync status page, a "Sync now" button, periodic sync, SQL functions.

- ``/-/pdsync`` (and ``/-/pdsync.json``): per pdsync database (one with a ``sync_metadata``
  table) each entity's last sync, status, records, duration and error, the recent runs from
  ``sync_runs``, the progress of a sync started here, and a warning when the data is stale.
- ``POST /-/pdsync/sync`` starts an incremental ``pdsync.sync`` in a background thread: the
  sync library is synchronous and page loads must never wait for it. It needs the
  ``pdsync-sync`` permission (root, or the ``allow`` block of this plugin's configuration).
- With ``sync_interval`` configured, Datasette syncs every pdsync database on that schedule.
  The scheduler starts from the ASGI lifespan of the real server: in Datasette 0.65 a task
  started from the ``startup`` hook dies with ``datasette serve``'s temporary event loop.

Configuration lives under ``plugins: pdsync:`` in metadata.yml (per database under
``databases: NAME: plugins: pdsync:``). The API token never goes there: Datasette shows
metadata at ``/-/metadata``. It comes from ``PIPEDRIVE_API_TOKEN`` or ``auth_file``.

Plugins loaded with ``--plugins-dir`` have no template directory, so the page template is a
string in this file: it works from a checkout and from the wheel alike.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from datasette import Forbidden, NotFound, hookimpl
from datasette.utils import actor_matches_allow
from datasette.utils.asgi import Response

import pdsync
from pdsync import plugins as pdsync_plugins
from pdsync.auth import ConfigError, resolve_base_url, resolve_token
from pdsync.lock import LockHeld, SyncLock
from pdsync.redact import Redactor
from pdsync.schema import connect_read_only, table_names

CONFIG = "pdsync"
PERMISSION = "pdsync-sync"
DEFAULT_STALE_AFTER = 30 * 60.0  # seconds; pdsync's suggested cron interval
DEFAULT_AUTH_FILE = "auth.json"  # like `pdsync sync`: relative to the working directory
RECENT_RUNS = 20

log = logging.getLogger("pdsync.datasette")


# -- pure helpers ------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str | int | float) -> float:
    """``"30m"`` → 1800.0 seconds (s, m, h, d; a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an interval like 90s, 30m, 1h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def format_interval(seconds: float) -> str:
    """1800 → ``"30m"``, 5400 → ``"1h 30m"``."""
    seconds = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from pdsync's ``2025-01-15T10:30:00Z`` (or other ISO text)."""
    if not value or not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def seconds_since(value: Any, now: datetime | None = None) -> float | None:
    moment = parse_timestamp(value)
    if moment is None:
        return None
    return ((now or datetime.now(timezone.utc)) - moment).total_seconds()


def ago(value: Any, now: datetime | None = None) -> str | None:
    """``"3h ago"`` for a timestamp (largest whole unit); None for no or bad timestamps."""
    seconds = seconds_since(value, now)
    if seconds is None:
        return None
    future = seconds < 0
    seconds = abs(seconds)
    unit, size = next(
        (unit, size)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
        if seconds >= size or unit == "s"
    )
    amount = f"{int(seconds // size)}{unit}"
    return f"in {amount}" if future else f"{amount} ago"


def days_since(value: Any, now: datetime | None = None) -> int | None:
    """Whole days from ``value`` to now (UTC), truncated like the views' ``cast(...)``."""
    seconds = seconds_since(value, now)
    return None if seconds is None else int(seconds / 86400)


def format_count(value: Any) -> str:
    """1234 → ``"1,234"``; None → ``""``."""
    if value is None or value == "":
        return ""
    try:
        return f"{value:,}"
    except (TypeError, ValueError):  # whatever an older or hand-edited table holds
        return str(value)


def format_duration(ms: Any) -> str:
    if ms is None or ms == "":
        return ""
    if float(ms) < 1000:
        return f"{int(ms)}ms"
    seconds = float(ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_interval(seconds)


def format_errors(value: Any) -> str:
    """sync_runs.errors holds a JSON object entity → message; show it as one line."""
    if not value:
        return ""
    try:
        errors = json.loads(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(errors, dict):
        return "; ".join(f"{entity}: {message}" for entity, message in errors.items())
    return str(errors)


def scrub(text: Any, secret: str | None) -> str:
    """``text`` with the token replaced: an error message must never carry it to a page."""
    text = "" if text is None else str(text)
    if secret:
        text = text.replace(secret, "[token]")
    return text


def _redactor(config: dict) -> Redactor:
    """Hides the configured token (and URL credentials) in what the page shows, even in
    messages an older pdsync stored before it redacted them itself."""
    try:
        token, _ = credentials(config)
    except Exception:  # no token configured: nothing of it to hide
        token = None
    return Redactor(token)


def entity_order() -> list[str]:
    """The entities in the order pdsync syncs them (dependencies first), plugins' included."""
    try:
        return [spec.name for spec in pdsync_plugins.entities()]
    except Exception:  # a broken pdsync plugin must not take the status page down
        return []


def entity_sort_key(name: str, order: list[str] | None = None) -> tuple[int, str]:
    order = entity_order() if order is None else order
    return (order.index(name) if name in order else len(order), name)


# -- configuration -----------------------------------------------------------------------


def plugin_config(datasette, database: str | None = None) -> dict:
    return datasette.plugin_config(CONFIG, database=database) or {}


def sync_interval(config: dict) -> float | None:
    """The configured periodic sync interval in seconds, or None (raises on a bad value)."""
    value = config.get("sync_interval")
    return None if value in (None, "", False) else parse_interval(value)


def stale_after(config: dict) -> tuple[float, str | None]:
    """Seconds after which data is stale, and a configuration problem to show, if any."""
    for key in ("stale_after", "sync_interval"):
        value = config.get(key)
        if value not in (None, "", False):
            try:
                return parse_interval(value), None
            except ValueError as exc:
                return DEFAULT_STALE_AFTER, f"plugin configuration {key}: {exc}"
    return DEFAULT_STALE_AFTER, None


def auth_path(config: dict) -> str | None:
    value = config.get("auth_file", DEFAULT_AUTH_FILE)
    return str(Path(value).expanduser()) if value else None


def credentials(config: dict) -> tuple[str, str]:
    """(token, base URL) the way ``pdsync sync`` finds them; ConfigError says what is missing."""
    path = auth_path(config)
    token = resolve_token(path)
    base_url = resolve_base_url(config.get("base_url") or None, path)
    return token, base_url


# -- sync jobs ---------------------------------------------------------------------------


class SyncRefused(Exception):
    """A sync could not start; the message says why (shown to the person who asked)."""

    status = 409  # Conflict: another sync runs


class SyncNotConfigured(SyncRefused):
    status = 503  # no token (or a bad base URL): the server's setup, not the request


class SyncJob:
    """One sync started from Datasette, run in its own thread; read by the status page.

    (A plain class: dataclasses need the module in sys.modules, and Datasette's plugins dir
    loader does not put it there.)
    """

    def __init__(self, database: str, path: str, trigger: str) -> None:
        self.database = database
        self.path = path
        self.trigger = trigger
        self.started_at = _now()
        self.finished_at: str | None = None
        self.status = "running"  # then success, partial, failed, cancelled or refused
        self.entities: dict[str, dict] = {}
        self.records = 0
        self.requests = 0
        self.tokens = 0
        self.duration_ms: int | None = None
        self.run_id: int | None = None
        self.message = ""
        self.errors: dict[str, str] = {}
        self.done = threading.Event()

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def on_progress(self, event: pdsync.ProgressEvent) -> None:
        with _jobs_lock:
            self.entities[event.entity] = {
                "records": event.records,
                "requests": event.requests,
                "status": event.status,
                "done": event.done,
            }

    def run(self, token: str, base_url: str) -> None:
        """Run the sync in the calling thread; never raises."""
        try:
            result = pdsync.sync(
                self.path,
                token=token,
                base_url=base_url,
                auth_path=None,
                progress=self.on_progress,
            )
        except LockHeld as exc:
            self._end("refused", scrub(exc, token))
        except Exception as exc:  # a bad file, an unreachable URL: show it, keep serving
            log.warning("sync of %s failed: %s", self.database, scrub(exc, token))
            self._end("failed", scrub(f"{type(exc).__name__}: {exc}", token))
        else:
            with _jobs_lock:
                self.run_id = result.run_id
                self.records = result.records
                self.requests = result.requests
                self.tokens = result.tokens
                self.duration_ms = result.duration_ms
                self.errors = {k: scrub(v, token) for k, v in result.errors.items()}
            self._end(result.status, "")
            level = logging.INFO if result.ok else logging.WARNING
            log.log(level, "sync of %s: %s", self.database, scrub(result, token).splitlines()[0])

    def _end(self, status: str, message: str) -> None:
        with _jobs_lock:
            self.status = status
            self.message = message
            self.finished_at = _now()
            self.done.set()

    def as_dict(self) -> dict:
        order = entity_order()
        with _jobs_lock:
            return {
                "database": self.database,
                "trigger": self.trigger,
                "status": self.status,
                "running": self.running,
                "started_at": self.started_at,
                "started_ago": ago(self.started_at),
                "finished_at": self.finished_at,
                "finished_ago": ago(self.finished_at),
                "records": self.records,
                "records_text": format_count(self.records),
                "requests": self.requests,
                "tokens": self.tokens,
                "duration": format_duration(self.duration_ms),
                "run_id": self.run_id,
                "message": self.message,
                "errors": dict(self.errors),
                "entities": [
                    {"entity": name, **values, "records_text": format_count(values["records"])}
                    for name, values in sorted(
                        self.entities.items(), key=lambda kv: entity_sort_key(kv[0], order)
                    )
                ],
            }


# Keyed by the database file: two Datasette instances in one process share the flag.
_jobs: dict[str, SyncJob] = {}
_jobs_lock = threading.RLock()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_key(path: str) -> str:
    return str(Path(path).resolve())


def latest_job(path: str | None) -> SyncJob | None:
    if not path:
        return None
    with _jobs_lock:
        return _jobs.get(_file_key(path))


def claim(database: str, path: str, trigger: str) -> SyncJob:
    """Register a new job for ``path``, or raise SyncRefused while another sync runs on it."""
    key = _file_key(path)
    with _jobs_lock:
        current = _jobs.get(key)
        if current is not None and current.running:
            raise SyncRefused(
                f"A sync of {database} is already running (started {ago(current.started_at)}, "
                f"{current.trigger}); wait for it to finish."
            )
        # pdsync's own lock: a `pdsync sync` from cron or a terminal may hold it.
        probe = SyncLock(path)
        try:
            probe.acquire()
        except LockHeld as exc:
            raise SyncRefused(f"Not started: {exc}. Try again when it has finished.") from None
        probe.release()
        job = SyncJob(database=database, path=path, trigger=trigger)
        _jobs[key] = job
        return job


def start_sync(database: str, path: str, config: dict, trigger: str) -> SyncJob:
    """Start an incremental sync of ``path`` in a background thread and return its job."""
    try:
        token, base_url = credentials(config)
    except ConfigError as exc:
        raise SyncNotConfigured(f"Sync is not set up: {exc}") from None
    job = claim(database, path, trigger)
    thread = threading.Thread(
        target=job.run, args=(token, base_url), name=f"pdsync-sync-{database}", daemon=True
    )
    thread.start()
    return job


# -- periodic sync -----------------------------------------------------------------------


def is_pdsync_file(path: str | None) -> bool:
    return "sync_metadata" in table_names(path)


def last_success_started(path: str) -> str | None:
    try:
        conn = connect_read_only(path)
        try:
            return conn.execute(
                "select max(started_at) from sync_runs where status = 'success'"
            ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


class Scheduler:
    """Syncs every pdsync database of a Datasette instance on its ``sync_interval``.

    One thread, one sync at a time; a sync started with "Sync now", from cron or from a
    terminal meanwhile is left alone (the job flag and pdsync's file lock say so).
    """

    def __init__(self, datasette) -> None:
        self.datasette = datasette
        self.stop = threading.Event()
        self.next_due: dict[str, float] = {}  # database name → time.time()
        self.thread = threading.Thread(target=self._loop, name="pdsync-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self, timeout: float = 2.0) -> None:
        self.stop.set()
        # A sync in progress is not interrupted: every committed page is kept, and pdsync
        # closes a run left "running" on its next start.
        self.thread.join(timeout)

    def targets(self) -> list[tuple[str, str, dict, float]]:
        out = []
        for name, db in list(self.datasette.databases.items()):
            path = getattr(db, "path", None)
            if not path or not db.is_mutable or not is_pdsync_file(path):
                continue
            config = plugin_config(self.datasette, name)
            try:
                interval = sync_interval(config)
            except ValueError as exc:
                log.warning("pdsync plugin configuration for %s: %s", name, exc)
                continue
            if interval:
                out.append((name, path, config, interval))
        return out

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                wait = self._tick()
            except Exception:  # keep the schedule alive whatever one round ran into
                log.exception("periodic sync")
                wait = 60.0
            self.stop.wait(max(wait, 0.05))

    def _tick(self) -> float:
        """Sync what is due; return how long to wait before looking again."""
        wait = 60.0  # look again for newly attached databases now and then
        for name, path, config, interval in self.targets():
            if self.stop.is_set():
                return 0.0
            due = self.next_due.get(name)
            if due is None:
                # After a restart, sync at once only if the last good run is that old.
                age = seconds_since(last_success_started(path))
                due = time.time() + (0 if age is None else max(0.0, interval - age))
                self.next_due[name] = due
            if time.time() >= due:
                self.next_due[name] = time.time() + interval
                self._sync(name, path, config, interval)
                due = self.next_due[name]
            wait = min(wait, max(0.0, due - time.time()))
        return wait

    def _sync(self, name: str, path: str, config: dict, interval: float) -> None:
        try:
            token, base_url = credentials(config)
        except ConfigError as exc:
            log.warning("periodic sync of %s skipped: %s", name, exc)
            return
        try:
            job = claim(name, path, f"every {format_interval(interval)}")
        except SyncRefused as exc:
            log.info("periodic sync of %s skipped: %s", name, exc)
            return
        job.run(token, base_url)


_schedulers: dict[int, Scheduler] = {}


def scheduler_for(datasette) -> Scheduler | None:
    return _schedulers.get(id(datasette))


# -- reading the status ------------------------------------------------------------------


async def pdsync_databases(datasette, actor=None, check_permissions: bool = False) -> list:
    out = []
    for name, db in list(datasette.databases.items()):
        if name == "_internal":
            continue
        try:
            if not await db.table_exists("sync_metadata"):
                continue
        except sqlite3.Error:  # a file that cannot be opened: not ours to break every page over
            continue
        if check_permissions and not await datasette.permission_allowed(
            actor, "view-database", resource=name, default=True
        ):
            continue
        out.append(db)
    return out


async def database_status(datasette, db, actor) -> dict:
    config = plugin_config(datasette, db.name)
    threshold, config_error = stale_after(config)
    now = datetime.now(timezone.utc)
    redact = _redactor(config)
    meta = (await db.execute("select * from sync_metadata")).rows
    entities = []
    order = entity_order()
    rows = sorted((dict(r) for r in meta), key=lambda r: entity_sort_key(r["entity_type"], order))
    for row in rows:
        age = seconds_since(row.get("last_success_time"), now)
        entities.append(
            {
                "entity": row["entity_type"],
                "last_sync_time": row.get("last_sync_time"),
                "last_sync_ago": ago(row.get("last_sync_time"), now),
                "status": row.get("status") or "",
                "records_synced": row.get("records_synced"),
                "records_total": row.get("records_total"),
                "duration_ms": row.get("last_sync_duration_ms"),
                "duration": format_duration(row.get("last_sync_duration_ms")),
                "error_message": redact.text(row.get("error_message") or ""),
                # A run can succeed and still have refused records: never "success" alone.
                "records_rejected": row.get("records_rejected") or 0,
                "warning_message": redact.text(row.get("warning_message") or ""),
                "requests": row.get("requests"),
                "tokens": row.get("tokens"),
                "last_success_time": row.get("last_success_time"),
                "last_success_ago": ago(row.get("last_success_time"), now),
                "stale": age is None or age > threshold,
                "last_sync_text": (
                    f"{row['last_sync_time']} ({ago(row['last_sync_time'], now)})"
                    if row.get("last_sync_time")
                    else "never"
                ),
                "records_synced_text": format_count(row.get("records_synced")),
                "records_total_text": format_count(row.get("records_total")),
            }
        )
    runs = []
    if await db.table_exists("sync_runs"):
        result = await db.execute(
            "select id, started_at, finished_at, duration_ms, status, mode, records_synced,"
            " requests, tokens, errors from sync_runs order by id desc limit ?",
            [RECENT_RUNS],
        )
        for row in result.rows:
            run = dict(row)
            run["started_ago"] = ago(run["started_at"], now)
            run["duration"] = format_duration(run["duration_ms"])
            run["errors"] = redact.text(format_errors(run["errors"]))
            for key in ("records_synced", "requests", "tokens"):
                run[f"{key}_text"] = format_count(run[key])
            runs.append(run)
    stale = [e for e in entities if e["stale"]]
    warning = None
    if not entities:
        warning = "Never synced: run `pdsync sync` or press Sync now."
    elif stale:
        oldest = min(stale, key=lambda e: e["last_success_time"] or "")
        when = (
            f"was {oldest['last_success_ago']} ({oldest['last_success_time']})"
            if oldest["last_success_time"]
            else "never happened"
        )
        names = ", ".join(e["entity"] for e in stale)
        warning = (
            f"Data may be out of date: the last successful sync of {names} {when}, "
            f"longer ago than the sync interval ({format_interval(threshold)})."
        )
    job = latest_job(db.path)
    scheduler = scheduler_for(datasette)
    try:
        interval = sync_interval(config)
    except ValueError as exc:
        interval, config_error = None, f"plugin configuration sync_interval: {exc}"
    next_due = scheduler.next_due.get(db.name) if scheduler and interval else None
    can_sync = await datasette.permission_allowed(
        actor, PERMISSION, resource=db.name, default=False
    )
    job_status = job.as_dict() if job else None
    if job_status and not can_sync:
        job_status["trigger"] = job_status["trigger"].split(" by ")[0]  # who: for admins only
    return {
        "name": db.name,
        "entities": entities,
        "runs": runs,
        "stale": bool(stale) or not entities,
        "warning": warning,
        "stale_after": format_interval(threshold),
        "config_error": config_error,
        "job": job_status,
        "sync_interval": format_interval(interval) if interval else None,
        "periodic": bool(scheduler and interval),
        "next_sync_in": (
            format_interval(max(0.0, next_due - time.time())) if next_due is not None else None
        ),
        "mutable": db.is_mutable and bool(db.path),
        "can_sync": bool(can_sync),
    }


async def instance_status(datasette, actor) -> list[dict]:
    return [
        await database_status(datasette, db, actor)
        for db in await pdsync_databases(datasette, actor, check_permissions=True)
    ]


# -- routes ------------------------------------------------------------------------------


async def _check_view(datasette, request) -> None:
    if not await datasette.permission_allowed(request.actor, "view-instance", default=True):
        raise Forbidden("view-instance denied")


async def _render(datasette, request, status: int = 200) -> Response:
    databases = await instance_status(datasette, request.actor)
    running = any(d["job"] and d["job"]["running"] for d in databases)
    html = await datasette.render_template(
        _template(datasette),
        {"databases": databases, "running": running, "permission": PERMISSION},
        request=request,
    )
    return Response.html(html, status=status)


_templates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _template(datasette):
    # Compiled once per Jinja environment, inside it, so that it can extend base.html.
    env = datasette.jinja_env
    if env not in _templates:
        _templates[env] = env.from_string(TEMPLATE)
    return _templates[env]


async def status_page(request, datasette) -> Response:
    await _check_view(datasette, request)
    return await _render(datasette, request)


async def status_json(request, datasette) -> Response:
    await _check_view(datasette, request)
    return Response.json({"databases": await instance_status(datasette, request.actor)})


async def sync_now(request, datasette) -> Response:
    if request.method != "POST":
        return Response.text("POST a form to start a sync", status=405)
    await _check_view(datasette, request)
    post = await request.post_vars()
    name = post.get("database") or ""
    if not await datasette.permission_allowed(
        request.actor, PERMISSION, resource=name or None, default=False
    ):
        raise Forbidden(f"You need the {PERMISSION} permission to start a sync")
    try:
        db = datasette.get_database(name)
    except KeyError:
        raise NotFound(f"Database not found: {name}") from None
    if not db.path or not db.is_mutable:
        datasette.add_message(
            request,
            f"{name} is served immutable (or in memory): Datasette would not see a sync.",
            datasette.ERROR,
        )
        return await _render(datasette, request, status=409)
    if not await db.table_exists("sync_metadata"):
        raise NotFound(f"{name} is not a pdsync database")
    try:
        start_sync(name, db.path, plugin_config(datasette, name), _who(request.actor))
    except SyncRefused as exc:
        datasette.add_message(request, str(exc), datasette.ERROR)
        return await _render(datasette, request, status=exc.status)
    datasette.add_message(request, f"Sync of {name} started.", datasette.INFO)
    return Response.redirect(datasette.urls.path("/-/pdsync"))


def _who(actor: dict | None) -> str:
    name = (actor or {}).get("id")
    return f"Sync now by {name}" if name else "Sync now"


# -- hooks -------------------------------------------------------------------------------


def read_only(view):
    """``view`` for GET and HEAD; any other method gets what Datasette's own read-only views
    answer: 405, "Method not allowed" as text (Datasette 0.65 sends no Allow header)."""

    async def route(request, datasette) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.text("Method not allowed", status=405)
        response = await view(request, datasette)
        if request.method == "HEAD":
            response.body = b""  # as Datasette's BaseView.head
        return response

    route.__name__ = view.__name__
    return route


@hookimpl
def register_routes():
    return [
        (r"^/-/pdsync$", read_only(status_page)),
        (r"^/-/pdsync\.json$", read_only(status_json)),
        (r"^/-/pdsync/sync$", sync_now),  # POST only: it checks the method itself
    ]


@hookimpl
def menu_links(datasette, actor):
    async def links():
        if not await pdsync_databases(datasette):
            return []
        return [{"href": datasette.urls.path("/-/pdsync"), "label": "Sync status"}]

    return links


@hookimpl
def permission_allowed(datasette, actor, action, resource):
    if action != PERMISSION:
        return None
    if actor and actor.get("id") == "root":
        return True
    database = resource if isinstance(resource, str) else None
    allow = plugin_config(datasette, database).get("allow")
    if allow is not None and actor_matches_allow(actor, allow):
        return True
    return None


@hookimpl
def prepare_connection(conn):
    # For ad-hoc SQL in Datasette; views and canned queries use plain SQL so that any SQLite
    # client can run them.
    conn.create_function("days_since", 1, days_since)
    conn.create_function("pdsync_ago", 1, ago)


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def lifespan_aware(scope, receive, send):
            if scope["type"] != "lifespan":
                return await app(scope, receive, send)

            async def watching_receive():
                message = await receive()
                if message["type"] == "lifespan.startup":
                    _start_scheduler(datasette)
                elif message["type"] == "lifespan.shutdown":
                    _stop_scheduler(datasette)
                return message

            return await app(scope, watching_receive, send)

        return lifespan_aware

    return wrap


def _start_scheduler(datasette) -> None:
    if id(datasette) in _schedulers:
        return
    config = plugin_config(datasette)
    configured = config.get("sync_interval") or any(
        plugin_config(datasette, name).get("sync_interval") for name in datasette.databases
    )
    if not configured:
        return
    scheduler = Scheduler(datasette)
    _schedulers[id(datasette)] = scheduler
    scheduler.start()


def _stop_scheduler(datasette) -> None:
    scheduler = _schedulers.pop(id(datasette), None)
    if scheduler is not None:
        scheduler.shutdown()


TEMPLATE = """
{% extends "base.html" %}
{% block title %}Sync status{% endblock %}
{% block extra_head %}
{{ super() }}
{% if running %}<meta http-equiv="refresh" content="2">{% endif %}
<style>
  .pdsync-warning { background: #fff3cd; border: 2px solid #d39e00; color: #533f03;
    padding: 0.6em 1em; font-weight: bold; }
  .pdsync-ok { color: #1e7e34; }
  .pdsync-status-failed, .pdsync-status-partial, .pdsync-status-refused,
  .pdsync-status-cancelled { color: #b00020; font-weight: bold; }
  .pdsync-status-in_progress, .pdsync-status-running, .pdsync-warning {
    color: #8a6d00; font-weight: bold; }
  .pdsync-job { border-left: 4px solid #276890; padding: 0.2em 1em; margin: 1em 0; }
  .pdsync-num { text-align: right; }
  table.pdsync-table td, table.pdsync-table th { padding: 0.25em 0.6em; }
  form.pdsync-sync { margin: 0.8em 0; }
  form.pdsync-sync input[disabled] { opacity: 0.45; cursor: not-allowed; }
</style>
{% endblock %}
{% block crumbs %}
<p class="crumbs"><a href="{{ urls.instance() }}">home</a></p>
{% endblock %}
{% block content %}
<h1>Sync status</h1>
{% if not databases %}
<p>No pdsync database is attached (a pdsync database has a <code>sync_metadata</code> table).</p>
{% endif %}
{% for db in databases %}
<section class="pdsync-database" id="db-{{ db.name }}">
  <h2><a href="{{ urls.database(db.name) }}">{{ db.name }}</a></h2>
  {% if db.config_error %}<p class="message-error">{{ db.config_error }}</p>{% endif %}
  {% if db.warning %}
  <p class="pdsync-warning" role="alert">&#9888; {{ db.warning }}</p>
  {% else %}
  <p class="pdsync-ok">Up to date: every entity synced successfully within the last
    {{ db.stale_after }}.</p>
  {% endif %}
  {% if db.periodic %}
  <p>Datasette syncs this database every {{ db.sync_interval }}{% if db.next_sync_in %}
    (next in about {{ db.next_sync_in }}){% endif %}.</p>
  {% endif %}

  {% set job = db.job %}
  {% if job %}
  <div class="pdsync-job" data-status="{{ job.status }}">
  {% if job.running %}
    <p class="pdsync-status-running">Sync running: started {{ job.started_ago }}
      ({{ job.trigger }}). This page refreshes itself.</p>
  {% else %}
    <p>Last sync started here ({{ job.trigger }}, {{ job.started_at }}):
      <span class="pdsync-status-{{ job.status }}">{{ job.status }}</span>,
      finished {{ job.finished_ago }}{% if job.run_id %}: run #{{ job.run_id }},
      {{ job.records_text }} records, {{ job.requests }} requests,
      {{ job.tokens }} tokens in {{ job.duration }}{% endif %}.</p>
    {% if job.message %}<p class="message-error">{{ job.message }}</p>{% endif %}
    {% for entity, error in job.errors.items() %}
    <p class="message-error">{{ entity }}: {{ error }}</p>
    {% endfor %}
  {% endif %}
  {% if job.entities %}
    <table class="pdsync-table pdsync-progress">
      <thead><tr><th>entity</th><th>records</th><th>requests</th><th>state</th></tr></thead>
      <tbody>
      {% for e in job.entities %}
        <tr><td>{{ e.entity }}</td><td class="pdsync-num">{{ e.records_text }}</td>
        <td class="pdsync-num">{{ e.requests }}</td>
        <td>{{ e.status }}{% if not e.done %}&hellip;{% endif %}</td></tr>
      {% endfor %}
      </tbody>
    </table>
  {% endif %}
  </div>
  {% endif %}

  {% if db.can_sync and db.mutable %}
  <form class="pdsync-sync" action="{{ urls.path('-/pdsync/sync') }}" method="post">
    <input type="hidden" name="csrftoken" value="{{ csrftoken() }}">
    <input type="hidden" name="database" value="{{ db.name }}">
    <input type="submit" value="Sync now"{% if job and job.running %} disabled{% endif %}>
    <span>an incremental sync from Pipedrive, in the background</span>
  </form>
  {% elif not actor %}
  <p>Sign in (for example as root, <code>datasette --root</code>) to sync from here.</p>
  {% elif db.mutable %}
  <p>You do not have the <code>{{ permission }}</code> permission to start a sync.</p>
  {% endif %}

  <h3>Entities</h3>
  <table class="pdsync-table pdsync-entities">
    <thead><tr>
      <th>entity</th><th>last sync</th><th>status</th><th>records synced</th>
      <th>records total</th><th>duration</th><th>last success</th><th>error</th>
    </tr></thead>
    <tbody>
    {% for e in db.entities %}
      <tr{% if e.stale %} class="pdsync-stale"{% endif %}>
        <td>{{ e.entity }}</td>
        <td>{{ e.last_sync_text }}</td>
        <td class="pdsync-status-{{ e.status }}">{{ e.status }}{% if e.records_rejected %}
          <span class="pdsync-warning">&#9888; {{ e.records_rejected }} refused</span>
        {%- endif %}</td>
        <td class="pdsync-num">{{ e.records_synced_text }}</td>
        <td class="pdsync-num">{{ e.records_total_text }}</td>
        <td class="pdsync-num">{{ e.duration }}</td>
        <td>{{ e.last_success_ago or "never" }}{% if e.stale %} &#9888;{% endif %}</td>
        <td>{{ e.error_message or e.warning_message }}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>

  <h3>Recent runs</h3>
  {% if db.runs %}
  <table class="pdsync-table pdsync-runs">
    <thead><tr>
      <th>run</th><th>started</th><th>finished</th><th>duration</th><th>status</th><th>mode</th>
      <th>records</th><th>requests</th><th>tokens</th><th>errors</th>
    </tr></thead>
    <tbody>
    {% for r in db.runs %}
      <tr>
        <td>{{ r.id }}</td>
        <td>{{ r.started_at }} ({{ r.started_ago }})</td>
        <td>{{ r.finished_at or "" }}</td>
        <td class="pdsync-num">{{ r.duration }}</td>
        <td class="pdsync-status-{{ r.status }}">{{ r.status }}</td>
        <td>{{ r.mode }}</td>
        <td class="pdsync-num">{{ r.records_synced_text }}</td>
        <td class="pdsync-num">{{ r.requests_text }}</td>
        <td class="pdsync-num">{{ r.tokens_text }}</td>
        <td>{{ r.errors }}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>
  {% else %}
  <p>No runs recorded yet.</p>
  {% endif %}
  <p><a href="{{ urls.path('-/pdsync.json') }}">JSON</a></p>
</section>
{% endfor %}
{% endblock %}
"""
