"""Answers kept until the database changes, so a page many readers ask for is made once.

Why: at 100k deals a canned query costs Datasette 5-130 ms, a JSON table page 65-100 ms and
an HTML table page 230-400 ms, much of it Python on the one event loop; on two cores that was
about 20 answers a second, and 32 readers refreshing dashboards waited on each other for
seconds (docs/benchmarks.md, section 9). The data only changes when a sync commits, so an
answer made once is good until then.

An answer is served again only if it is exactly what Datasette would say now:

- after the sign-in gate has let the request in, so a removed user and a revoked token are
  refused as before;
- data (``.json``, ``.csv``) to a reader whom Datasette gives the same permissions for it
  (the instance, the database, the table or query, ``execute-sql``): data names no one;
  a page (HTML) to the same actor with the same cookies, since it shows their name and
  embeds their CSRF token, or, where pages.py can show that nothing else of theirs is in
  it, to another reader answered the same by every permission check the page made, with
  their own name and token put in;
- while no database has changed: ``pragma data_version`` of each database, which moves with
  every commit by another connection (a sync, Sync now), and the secrets file unchanged;
- for the same URL, ``Accept``, ``Host`` and scheme (Datasette writes absolute links from
  the last two);
- for at most ``MAX_AGE`` seconds, for queries that read the clock (days overdue, minutes
  since the last sync).

Readers asking for an answer being made for someone else wait for it (up to
``COALESCE_WAIT``) instead of making it again.

Datasette's permission answers for a data URL cost more than the hit they decide (10 ms of
Python: it deep-copies all metadata for a table's ``allow`` block). They are remembered per
actor and URL for as long as the answers they were stored with, and only while pdsync and
Datasette's defaults are the only plugins that answer permissions, metadata or canned
queries: then the answers depend on nothing but the actor, the secrets file and metadata
(see ``_answers_are_ours``), all part of that key. Liveness is not among them: the gate
checks every request's user and token first.

Kept only: GET, status 200, no ``Set-Cookie``, not streamed, at most ``MAX_ENTRY`` bytes,
outside ``/-/`` (the status page and sign-in are live). ``MAX_BYTES`` bounds the whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from collections import OrderedDict
from urllib.parse import parse_qs

from datasette.utils import tilde_decode

from pdsync.schema import connect_read_only

from . import access
from .config import plugin_config

MAX_AGE = 30.0  # seconds: sync_status counts minutes since the sync, the lists seconds
COALESCE_WAIT = 30.0  # at most, for the same answer being made for someone else
MAX_ENTRY = 4 << 20
MAX_BYTES = 64 << 20
MAX_VISIBLE = 10_000  # remembered permission answers (actor x URL), cleared beyond
# The only plugins whose permission, metadata and canned-query answers are known to depend
# on nothing but the actor, metadata and the secrets file.
PURE_PLUGINS = {"pdsync.datasette_plugin", "datasette.default_permissions"}
PURE_HOOKS = ("permission_allowed", "get_metadata", "canned_queries")
# Off (to measure without it, or to rule it out): PDSYNC_RESPONSE_CACHE=off, or
# `plugins: pdsync: response_cache: false`.
OFF_ENV = "PDSYNC_RESPONSE_CACHE"


class ResponseCache:
    def __init__(self, max_bytes: int = MAX_BYTES, max_age: float = MAX_AGE) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._bytes = 0
        self._watchers: dict[str, sqlite3.Connection] = {}
        self.hits = self.misses = 0
        self.making: dict[tuple, asyncio.Event] = {}  # answers being made now
        self._visible: dict[tuple, tuple] = {}  # (actor, URL...) -> _visibility
        self._visible_for: tuple | None = None  # the version they were given for
        self._visible_since = time.monotonic()
        self.page_checks: dict[tuple, tuple] = {}  # shared page -> the checks it asked

    def visibility_memo(self, version: tuple) -> dict:
        """Permission answers given for ``version``: forgotten when it changes, after
        max_age seconds, or beyond MAX_VISIBLE of them."""
        now = time.monotonic()
        if (
            version != self._visible_for
            or now - self._visible_since > self.max_age
            or len(self._visible) > MAX_VISIBLE
        ):
            self._visible = {}
            self._visible_for = version
            self._visible_since = now
        return self._visible

    def version(self, datasette, secrets_version) -> tuple | None:
        """Where the data is now; None if that cannot be known (then nothing is kept)."""
        versions = [secrets_version]
        for name, database in sorted(datasette.databases.items()):
            if name == "_internal" or not database.is_mutable or not database.path:
                continue
            try:
                watcher = self._watchers.get(database.path)
                if watcher is None:
                    # No busy wait: this runs on the event loop, and a writer holding the
                    # lock (a database not in WAL mode) would stall every request for the
                    # wait. Locked: "cannot be known", the request goes to Datasette.
                    watcher = connect_read_only(database.path, timeout=0)
                    self._watchers[database.path] = watcher
                versions.append((name, watcher.execute("pragma data_version").fetchone()[0]))
            except sqlite3.Error:
                return None
        return tuple(versions)

    def get(self, key: tuple, version: tuple) -> tuple | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        made, made_at, start, body = entry
        if made != version or time.monotonic() - made_at > self.max_age:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return start, body

    def put(self, key: tuple, version: tuple, start: dict, body: bytes) -> None:
        self._drop(key)
        self._entries[key] = (version, time.monotonic(), start, body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[3])


DATA_FORMATS = (".json", ".csv")
# Datasette's magic parameters (and any a plugin registers) start with an underscore.
MAGIC = re.compile(r":_\w")


async def key_for(
    datasette, scope: dict, actor: dict | None, remembered: dict | None = None
) -> tuple | None:
    """What makes an answer: who asks (or what they may see), and exactly what. None: not to
    be kept. ``remembered``: permission answers already given for this version, if any."""
    path = scope.get("path", "")
    base = datasette.setting("base_url").rstrip("/")
    if base and path.startswith(base):
        path = path[len(base) :] or "/"
    if scope.get("method") != "GET" or path.startswith("/-/"):
        return None
    query = scope.get("query_string", b"")
    if b"_stream" in query:
        return None
    headers = dict(scope.get("headers") or [])
    # Host and scheme too: Datasette writes absolute URLs from them (the Next page link, the
    # JSON alternate link and header), so one reader's Host must not reach another's answer.
    asked = (scope.get("path"), query, headers.get(b"accept"), headers.get(b"host"))
    asked += (scope.get("scheme"),)
    if path.endswith(DATA_FORMATS) and b"_format" not in query:
        # Data names no one: readers who may see the same things share the answer...
        visibility = await _remembered_visibility(datasette, actor, path, remembered)
        sql = parse_qs(query.decode("latin-1")).get("sql", [""])[0] + visibility[-1]
        if MAGIC.search(sql):
            # ...unless its SQL reads the reader or the request (:_actor_id, :_cookie_x,
            # :_now_epoch...): a query a user adds to metadata.yml may.
            return None
        return ("data", visibility, *asked)
    if await _reads_the_reader(datasette, actor, path, query, remembered):
        # A canned query reading the reader or the request (:_actor_id: "my deals") shows
        # rows that are theirs alone, whoever else Datasette answers the same: as for data.
        return None
    # A page names its reader, and embeds the cookie's CSRF token: theirs alone.
    who = json.dumps(actor, sort_keys=True, default=str) if actor else None
    return ("page", who, headers.get(b"cookie"), *asked)


async def _reads_the_reader(datasette, actor, path: str, query: bytes, remembered) -> bool:
    """The page's SQL (its canned query's, or ``?sql=``) reads the reader or the request."""
    parts = [tilde_decode(p) for p in path.strip("/").split("/")]
    sql = parse_qs(query.decode("latin-1")).get("sql", [""])[0]
    if len(parts) > 1:
        memo = remembered if remembered is not None and _answers_are_ours() else {}
        who = json.dumps(actor, sort_keys=True, default=str)
        key = ("canned-sql", who, parts[0], parts[1], *answers_depend_on(datasette))
        if key not in memo:
            canned = await datasette.get_canned_query(parts[0], parts[1], actor)
            memo[key] = (canned or {}).get("sql") or ""
        sql += memo[key]
    return bool(MAGIC.search(sql))


async def _remembered_visibility(datasette, actor, path: str, remembered: dict | None) -> tuple:
    if remembered is None or not _answers_are_ours():
        return await _visibility(datasette, actor, path)
    # The secrets file and the data are in the version ``remembered`` belongs to.
    key = (json.dumps(actor, sort_keys=True, default=str), path, *answers_depend_on(datasette))
    found = remembered.get(key)
    if found is None:
        found = remembered[key] = await _visibility(datasette, actor, path)
    return found


def answers_depend_on(datasette) -> tuple:
    """Besides the actor, the data and the secrets file: the process's mode, which databases
    are served, and metadata (replaced, never edited, after startup)."""
    return access.mode(datasette), tuple(datasette.databases), id(datasette._metadata_local)


def _answers_are_ours() -> bool:
    from datasette.plugins import pm

    return all(
        {impl.plugin_name for impl in getattr(pm.hook, hook).get_hookimpls()} <= PURE_PLUGINS
        for hook in PURE_HOOKS
    )


async def _visibility(datasette, actor: dict | None, path: str) -> tuple:
    """Datasette's own answers, for this actor, to the permissions a data URL depends on."""
    parts = [tilde_decode(p) for p in path.strip("/").split("/")]
    parts[-1] = parts[-1].rsplit(".", 1)[0]
    checks: list[tuple[str, object]] = [("view-instance", None)]
    if parts[0]:
        checks += [("view-database", parts[0]), ("execute-sql", parts[0])]
    canned = None
    if len(parts) > 1:
        # Canned queries may differ by actor (a plugin's canned_queries hook): what the
        # actor gets under this name is part of what they see.
        canned = await datasette.get_canned_query(parts[0], parts[1], actor)
        kind = "view-query" if canned is not None else "view-table"
        checks.append((kind, (parts[0], parts[1])))
    allowed = [await datasette.permission_allowed(actor, a, r, default=True) for a, r in checks]
    return (*allowed, json.dumps(canned, sort_keys=True, default=str))


async def serve(cache: ResponseCache, key: tuple, version: tuple, app, scope, receive, send):
    """Answer from the cache, or let Datasette answer and keep what it said."""
    await wait_for_maker(cache, key)
    found = cache.get(key, version)
    if found is not None:
        return await send_hit(cache, send, *found)
    await make(cache, key, app, scope, receive, send, lambda s, b: cache.put(key, version, s, b))


async def wait_for_maker(cache: ResponseCache, key: tuple) -> None:
    # The same answer is being made for another reader: wait for it rather than make it
    # twice (and, under load, every reader of a popular page at once).
    making = cache.making.get(key)
    if making is not None:
        try:
            await asyncio.wait_for(making.wait(), COALESCE_WAIT)
        except asyncio.TimeoutError:
            pass


async def send_hit(cache: ResponseCache, send, start: dict, body: bytes) -> None:
    cache.hits += 1
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    # Says so, for whoever measures or wonders why a page came back so fast.
    headers += [(b"content-length", str(len(body)).encode()), (b"x-pdsync-cache", b"hit")]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def make(cache: ResponseCache, key: tuple, app, scope, receive, send, keep) -> None:
    """Let Datasette answer, passing it on; ``keep(start, body)`` if it may be kept, before
    the readers waiting for ``key`` wake."""
    cache.misses += 1
    start: dict = {}
    chunks: list[bytes] = []
    keeping = True
    complete = False

    async def keeping_send(message):
        nonlocal keeping, complete
        if message["type"] == "http.response.start":
            start.update(message)
            names = {name.lower() for name, _ in message.get("headers") or []}
            keeping = message.get("status") == 200 and b"set-cookie" not in names
        elif message["type"] == "http.response.body" and keeping:
            chunks.append(message.get("body", b""))
            if sum(map(len, chunks)) > MAX_ENTRY:
                keeping = False
                chunks.clear()
            complete = not message.get("more_body")
        await send(message)

    done = cache.making.setdefault(key, asyncio.Event())
    try:
        await app(scope, receive, keeping_send)
        if keeping and complete:
            keep(dict(start), b"".join(chunks))
    finally:
        if cache.making.get(key) is done:
            del cache.making[key]
        done.set()


def wrap(datasette, app):
    """The ASGI wrapper, inside the sign-in gate: what reaches it is let in."""
    if os.environ.get(OFF_ENV) == "off" or plugin_config(datasette).get("response_cache") is False:
        return app
    from . import pages  # it builds on this module

    pages.install(datasette)
    cache = ResponseCache()

    async def cached(scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            return await app(scope, receive, send)
        actor = await access.resolve_actor(datasette, scope)
        access.secrets_data(datasette)  # re-read if it changed, before its version is taken
        secrets = access.secrets_file(datasette)
        version = cache.version(datasette, secrets.version if secrets else None)
        if version is None:
            return await app(scope, receive, send)
        remembered = cache.visibility_memo(version)
        key = await key_for(datasette, scope, actor, remembered)
        if key is None:
            return await app(scope, receive, send)
        if key[0] == "page" and _answers_are_ours() and pages.possible(datasette):
            who = pages.reader(datasette, scope, actor)
            if who is not None:
                # Shared with every reader Datasette answers the same (pages.py).
                asked_for = key[3:]
                return await pages.serve(
                    cache, datasette, who, asked_for, version, remembered, app, scope, receive, send
                )
        await serve(cache, key, version, app, scope, receive, send)

    datasette._pdsync_response_cache = cache  # for tests and a look from a debugger
    return cached
