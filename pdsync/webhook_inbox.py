"""The webhook inbox: every delivery Pipedrive sends, kept durably before it is answered.

A small SQLite file of its own beside the database's secrets (``pipedrive.db.webhooks.db``),
in WAL mode with full fsync: the receiver commits a delivery here and only then answers 2xx,
so a delivery answered is never lost, even if the process dies the next instant. It never
waits on the database a sync writes (an index build can hold that for minutes; Pipedrive
gives up after 10 s). The applier (``webhook_apply``) takes pending deliveries from here and
marks them applied after its commit to the database: a crash in between applies one twice,
which is harmless (an update never overwrites a newer version, a repeated one writes nothing).

It also keeps what the status page shows: refused deliveries by reason, the last version of
each record applied (a tie-breaker finer than the database's whole seconds), and the gaps the
periodic sync found (changes no webhook announced).
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from . import access, timestamps

log = logging.getLogger("pdsync.webhooks")

SUFFIX = ".webhooks.db"
KEEP_APPLIED_DAYS = 7  # applied deliveries kept this long, for the status page and debugging

_SCHEMA = """
create table if not exists deliveries (
    seq integer primary key,
    received_at text not null,
    meta_id text,
    webhook_id text,
    entity text,
    action text,
    entity_id text,
    body blob not null,
    state text not null default 'pending',  -- pending, applied, ignored, failed
    applied_at text,
    note text
);
create index if not exists deliveries_pending on deliveries (seq) where state = 'pending';
create index if not exists deliveries_record on deliveries (entity, entity_id);
create table if not exists refused (
    reason text primary key, count integer not null, last_at text not null
);
create table if not exists versions (
    entity text not null, entity_id text not null, version real not null,
    tiebreak real not null default 0,  -- the event's meta.timestamp: within one update_time
    primary key (entity, entity_id)
) without rowid;
create table if not exists gaps (
    entity text primary key, count integer not null, example text, run_id integer,
    checked_at text not null
);
create table if not exists inbox_state (key text primary key, value text);
"""


def inbox_path(db_path: str | os.PathLike, config_dir: str | os.PathLike | None = None) -> Path:
    """``pipedrive.db`` -> ``pipedrive.db.webhooks.db``, beside its secrets file."""
    secrets = access.secrets_path(db_path, config_dir)
    return secrets.with_name(secrets.name[: -len(access.SUFFIX)] + SUFFIX)


def inbox_for_secrets(secrets: str | os.PathLike) -> Path:
    secrets = Path(secrets)
    name = secrets.name
    base = name[: -len(access.SUFFIX)] if name.endswith(access.SUFFIX) else name
    return secrets.with_name(base + SUFFIX)


class Inbox:
    """One connection per thread (sqlite3 connections are not shared between threads)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        conn = self.conn()  # makes the file and its tables now, so a problem shows at once
        with conn:
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("pragma table_info(versions)")}
            if "tiebreak" not in columns:  # an inbox made by an older pdsync
                conn.execute("alter table versions add column tiebreak real not null default 0")

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Deliveries carry customer data: 0600 from the start (SQLite gives its -wal and
            # -shm files the database file's mode). Only a file not there yet: closing any
            # descriptor of a file drops every POSIX lock this process holds on it, SQLite's
            # included, and another process closing its last connection would then take the
            # WAL away from under this one's ("disk I/O error").
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("pragma journal_mode = wal")
            conn.execute("pragma synchronous = full")  # committed means on disk
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- the receiver -------------------------------------------------------------------------

    def add(self, body: bytes, meta: dict, state: str = "pending", note: str | None = None) -> None:
        """Store one delivery, committed before this returns."""
        self.add_many([(body, meta, state, note)])

    def add_many(
        self, items: list[tuple[bytes, dict, str, str | None]], refused: tuple[str, ...] = ()
    ) -> None:
        """Store deliveries, and count refused ones by reason, in one commit (one fsync),
        committed before this returns. One stored already settled (ignored) gets its
        ``applied_at`` now, so that ``prune`` removes it in time."""
        now = timestamps.now()
        conn = self.conn()
        with conn:
            conn.execute("begin immediate")
            conn.executemany(
                "insert into deliveries (received_at, meta_id, webhook_id, entity, action,"
                " entity_id, body, state, note, applied_at)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        now,
                        _text(meta.get("id")),
                        _text(meta.get("webhook_id")),
                        _text(meta.get("entity")),
                        _text(meta.get("action")),
                        _text(meta.get("entity_id")),
                        body,
                        state,
                        note,
                        None if state == "pending" else now,
                    )
                    for body, meta, state, note in items
                ],
            )
            conn.executemany(
                "insert into refused (reason, count, last_at) values (?, 1, ?)"
                " on conflict (reason) do update set count = count + 1,"
                " last_at = excluded.last_at",
                [(reason, now) for reason in refused],
            )

    def refuse(self, reason: str) -> None:
        self.add_many([], (reason,))

    # -- the applier --------------------------------------------------------------------------

    def pending(self, limit: int = 500) -> list[tuple[int, bytes]]:
        return (
            self.conn()
            .execute(
                "select seq, body from deliveries where state = 'pending' order by seq limit ?",
                [limit],
            )
            .fetchall()
        )

    def settle(
        self,
        outcomes: list[tuple[int, str, str | None]],
        versions: list[tuple[str, str, float, float]] = (),
        refused: tuple[str, ...] = (),
    ) -> None:
        """Mark deliveries (seq, state, note) done, keep the versions applied (entity, id,
        version, tiebreak: compared in that order) and count those refused by reason, in
        one commit (one fsync: row by row, 500 rows took a second)."""
        now = timestamps.now()
        conn = self.conn()
        with conn:
            conn.execute("begin immediate")
            conn.executemany(
                "update deliveries set state = ?, note = ?, applied_at = ? where seq = ?",
                [(state, note, now, seq) for seq, state, note in outcomes],
            )
            conn.executemany(
                "insert into versions (entity, entity_id, version, tiebreak) values (?, ?, ?, ?)"
                " on conflict (entity, entity_id) do update set version = excluded.version,"
                " tiebreak = excluded.tiebreak"
                " where (excluded.version, excluded.tiebreak)"
                " > (versions.version, versions.tiebreak)",
                versions,
            )
            conn.executemany(
                "insert into refused (reason, count, last_at) values (?, 1, ?)"
                " on conflict (reason) do update set count = count + 1,"
                " last_at = excluded.last_at",
                [(reason, now) for reason in refused],
            )

    def versions(self, entity: str, ids: list[str]) -> dict[str, tuple[float, float]]:
        """The last version applied of each record: (version, tiebreak)."""
        found: dict[str, tuple[float, float]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            for key, version, tiebreak in self.conn().execute(
                f"select entity_id, version, tiebreak from versions where entity = ?"
                f" and entity_id in ({marks})",
                [entity, *chunk],
            ):
                found[key] = (version, tiebreak)
        return found

    def prune(self) -> int:
        return (
            self.conn()
            .execute(
                # coalesce: ignored deliveries stored before they got an applied_at.
                "delete from deliveries where state != 'pending'"
                " and coalesce(applied_at, received_at) < strftime("
                f"'%Y-%m-%dT%H:%M:%SZ', 'now', '-{KEEP_APPLIED_DAYS} days')"
            )
            .rowcount
        )

    def get_state(self, key: str) -> str | None:
        row = self.conn().execute("select value from inbox_state where key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: Any) -> None:
        self.conn().execute(
            "insert into inbox_state (key, value) values (?, ?)"
            " on conflict (key) do update set value = excluded.value",
            [key, None if value is None else str(value)],
        )

    def set_gaps(self, gaps: dict[str, tuple[int, str]], run_id: int | None) -> None:
        now = timestamps.now()
        conn = self.conn()
        with conn:
            conn.execute("begin immediate")
            conn.execute("delete from gaps")
            conn.executemany(
                "insert into gaps (entity, count, example, run_id, checked_at)"
                " values (?, ?, ?, ?, ?)",
                [(e, n, example, run_id, now) for e, (n, example) in gaps.items()],
            )

    # -- the status page ----------------------------------------------------------------------

    def summary(self) -> dict:
        return summary(self.conn())


def summary(conn: sqlite3.Connection) -> dict:
    """Deliveries in numbers: the last received, per entity, refused, gaps."""
    entities = [
        {"entity": e, "received": n, "applied": a, "ignored": i, "pending": p, "failed": f}
        for e, n, a, i, p, f in conn.execute(
            "select coalesce(entity, '?'), count(*), sum(state = 'applied'),"
            " sum(state = 'ignored'), sum(state = 'pending'), sum(state = 'failed')"
            " from deliveries group by 1 order by 2 desc"
        )
    ]
    last = conn.execute("select max(received_at) from deliveries").fetchone()[0]
    refused = [
        {"reason": r, "count": n, "last_at": at}
        for r, n, at in conn.execute("select reason, count, last_at from refused order by 1")
    ]
    gaps = [
        {"entity": e, "count": n, "example": ex, "run_id": run, "checked_at": at}
        for e, n, ex, run, at in conn.execute(
            "select entity, count, example, run_id, checked_at from gaps order by 1"
        )
    ]
    return {
        "last_received": last,
        "entities": entities,
        "pending": sum(e["pending"] or 0 for e in entities),
        "refused": refused,
        "gaps": gaps,
    }


def status(path: str | os.PathLike) -> dict | None:
    """What the status page and ``pdsync status`` show of a database's deliveries: None
    when it has no inbox (webhooks not installed for it here), ``{"error": ...}`` when the
    inbox cannot be read. Only reads: no inbox is made, nothing written, no lock waited
    for long (the status page asks from a thread, the CLI in a read-only directory too)."""
    if not Path(path).exists():
        return None
    from .schema import connect_read_only  # sqlite-utils: not for the receiver's imports

    try:
        conn = connect_read_only(str(path), timeout=1.0)
        try:
            return summary(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"error": str(exc)}


class GroupCommit:
    """Deliveries arriving together share one commit: each fsync takes milliseconds, and a
    burst of deliveries waiting for theirs one by one would be answered one fsync apart.
    ``submit`` returns a future done once the delivery is on disk."""

    MAX_BATCH = 500

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pdsync-inbox", daemon=True)
        self._thread.start()

    def submit(
        self, body: bytes, meta: dict, state: str = "pending", note: str | None = None
    ) -> Future:
        done: Future = Future()
        self._queue.put(((body, meta, state, note), done))
        return done

    def refuse(self, reason: str) -> None:
        """Count a refused delivery with the next commit; nobody waits for it (a flood of
        wrong credentials costs one fsync per batch, not one each)."""
        self._queue.put((reason, None))

    def _run(self) -> None:
        while True:
            try:
                self._commit_next()
            except Exception:  # never dies: every later delivery would wait for nothing
                log.exception("webhook inbox %s", self.inbox.path)

    def _commit_next(self) -> None:
        batch = [self._queue.get()]
        while len(batch) < self.MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        # A request that stopped waiting (its answer's deadline passed: it answered 503 and
        # Pipedrive sends the delivery again) cancelled its future: not stored, not resolved.
        # The others are running from here on, so they can no longer be cancelled.
        deliveries = [
            (item, done)
            for item, done in batch
            if done is not None and done.set_running_or_notify_cancel()
        ]
        refused = tuple(item for item, done in batch if done is None)
        if not deliveries and not refused:
            return
        try:
            self.inbox.add_many([item for item, _ in deliveries], refused)
        except Exception as exc:  # each waiting request answers 503; Pipedrive retries
            for _, done in deliveries:
                done.set_exception(exc)
        else:
            for _, done in deliveries:
                done.set_result(None)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
