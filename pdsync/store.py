"""Writing to the database: pages of rows, watermarks and sync bookkeeping.

Rows go in with one prepared ``INSERT ... ON CONFLICT DO UPDATE`` per page and column set,
through ``executemany``: measured at about 3.6x the rows/s of ``Table.upsert_all`` on 40-column
deals, which is what the 15,000 deals/s target needs. sqlite-utils still owns the shape
(tables, added columns, foreign keys, indexes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

import sqlite_utils

from . import unchanged
from .entities import Children, EntitySpec, Row
from .schema import add_columns
from .timestamps import FUTURE_TOLERANCE, latest_plausible
from .timestamps import now as utc_now
from .transaction import write_transaction

_IDS_PER_QUERY = 5000  # well below SQLite's 32,766 parameters
_SQL_TYPES = {int: "INTEGER", float: "FLOAT", str: "TEXT", bytes: "BLOB"}
# In sync_streams, beside an entity's streams: the newest update_time stored when its
# current full pass started (Pipedrive's clock).
PASS_STARTED = "#pass_started"


class Store:
    """The single writer. Callers group calls in ``with write_transaction(db):``."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._columns: dict[str, set[str]] = {}
        self._statements: dict[tuple[str, tuple[str, ...]], str] = {}

    # -- rows -----------------------------------------------------------------------------

    def columns(self, table: str) -> set[str]:
        if table not in self._columns:
            self._columns[table] = {r[1] for r in self.db.execute(f"pragma table_info([{table}])")}
        return self._columns[table]

    def ensure_columns(self, table: str, columns: dict[str, type]) -> None:
        if not set(columns) <= self.columns(table):
            add_columns(self.db, table, columns)
            self._columns.pop(table, None)
            unchanged.forget(self.db, table)

    def upsert(self, spec: EntitySpec, rows: list[Row]) -> None:
        """Insert or update ``rows``; a row never overwrites a newer version of itself.

        Two streams (deals and archived deals) can carry the same deal; the ``update_time``
        guard keeps whichever Pipedrive changed last.
        """
        if not rows:
            return
        first = rows[0].keys()
        names = dict.fromkeys(first)
        for row in rows:
            if row.keys() != first:  # a page's rows nearly always share their keys
                names.update(dict.fromkeys(row))
        new = [n for n in names if n not in self.columns(spec.name)]
        if new:
            self.ensure_columns(spec.name, {n: _infer_type(rows, n) for n in new})
        cols = tuple(names)
        sql = self._statements.get((spec.name, cols))
        if sql is None:
            sql = self._statements[(spec.name, cols)] = _upsert_sql(spec, cols)
        width = len(cols)
        for row in rows:
            if len(row) != width:  # rows hold a subset of cols: equal size, equal keys
                for c in cols:
                    row.setdefault(c, None)
        values = map(itemgetter(*cols), rows) if width > 1 else ((row[cols[0]],) for row in rows)
        self.db.conn.executemany(sql, values)

    def digests(self, spec: EntitySpec, ids: list[Any]) -> dict[Any, bytes]:
        """id -> the digest of the record its row was written from (unchanged.py), for
        those of ``ids`` whose row nobody wrote since."""
        found: dict[Any, bytes] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            cursor = self.db.execute(
                f"select id, digest from {unchanged.TABLE} where entity_type = ?"
                f" and id in ({','.join('?' * len(chunk))})",
                [spec.name, *chunk],
            )
            found.update(cursor.fetchall())
        return found

    def save_digests(self, spec: EntitySpec, rows: list[Row], digests: list[bytes | None]) -> None:
        """After ``upsert(spec, rows)``, in its transaction: the digests of the records the
        rows were made from, for the rows that now hold that version. The update_time guard
        may have kept a newer one; then the row's own digest stays, or none (the upsert's
        trigger deleted it). No ``digests``: a page read outside a full pass, nothing to do."""
        if not digests:
            return
        pk, kept = spec.pk, [(row, d) for row, d in zip(rows, digests, strict=True) if d]
        if not kept:
            return
        sql = f"insert or replace into {unchanged.TABLE} (entity_type, id, digest) select ?, ?, ?"
        if "update_time" in self.columns(spec.name):
            sql += (
                f" where exists (select 1 from [{spec.name}] where [{pk}] = ? and update_time is ?)"
            )
            values = [(spec.name, r[pk], d, r[pk], r.get("update_time")) for r, d in kept]
        else:
            values = [(spec.name, r[pk], d) for r, d in kept]
        self.db.conn.executemany(sql, values)

    def mark_gone(
        self, spec: EntitySpec, keep_ids: list[Any] | None = None, since: str | None = None
    ) -> int:
        """Flag rows not seen upstream (never delete them). Returns how many changed.

        ``keep_ids`` are the ids seen in a whole fetch; without it, ids seen in this entity's
        full pass (``_pdsync_seen``) are kept. ``since``: the newest update_time stored when
        the fetch or pass started. A row changed after it is kept too: a webhook wrote it
        while the pass ran, after its page was listed (the next pass sees it, or a webhook
        its deletion).
        """
        assignments = ", ".join(f"[{c}] = ?" for c in spec.when_gone)
        differs = " or ".join(f"[{c}] is not ?" for c in spec.when_gone)
        values = list(spec.when_gone.values())
        if keep_ids is None:
            keep = "select id from _pdsync_seen where entity_type = ?"
            keep_params: list[Any] = [spec.name]
        else:
            keep = self._keep(keep_ids)
            keep_params = []
        older, older_params = "", []
        if since is not None and "update_time" in self.columns(spec.name):
            # Newer than the pass, and a real time (a row dated year 9999 is no webhook's).
            older = " and (update_time is null or update_time <= ? or update_time > ?)"
            older_params = [since, latest_plausible()]
        cursor = self.db.execute(
            f"update [{spec.name}] set {assignments} "
            f"where [{spec.pk}] not in ({keep}) and ({differs}){older}",
            [*values, *keep_params, *values, *older_params],
        )
        return cursor.rowcount

    def unseen(self, spec: EntitySpec) -> list[Any]:
        """Ids of the rows ``mark_gone`` (without ``keep_ids``) would flag now."""
        differs = " or ".join(f"[{c}] is not ?" for c in spec.when_gone)
        rows = self.db.execute(
            f"select [{spec.pk}] from [{spec.name}] where [{spec.pk}] not in"
            " (select id from _pdsync_seen where entity_type = ?)"
            f" and ({differs}) order by [{spec.pk}]",
            [spec.name, *spec.when_gone.values()],
        )
        return [row[0] for row in rows]

    def _keep(self, ids: list[Any]) -> str:
        """SQL selecting ``ids``, held in a temporary table (a list can be long)."""
        self.db.execute("create temp table if not exists _pdsync_keep (id primary key)")
        self.db.execute("delete from temp._pdsync_keep")
        self.db.conn.executemany(
            "insert or ignore into temp._pdsync_keep values (?)", [(i,) for i in ids]
        )
        return "select id from temp._pdsync_keep"

    def mark_seen(self, spec: EntitySpec, ids: list[Any]) -> None:
        self.db.conn.executemany(
            "insert or ignore into _pdsync_seen (entity_type, id) values (?, ?)",
            [(spec.name, i) for i in ids],
        )

    def seen_count(self, spec: EntitySpec) -> int:
        return self.db.execute(
            "select count(*) from _pdsync_seen where entity_type = ?", [spec.name]
        ).fetchone()[0]

    def clear_seen(self, spec: EntitySpec) -> None:
        self.db.execute("delete from _pdsync_seen where entity_type = ?", [spec.name])

    def count(self, spec: EntitySpec) -> int:
        return self.db.execute(f"select count(*) from [{spec.name}]").fetchone()[0]

    # -- children asked per parent (see entities.Children) ---------------------------------

    def parents_to_ask(
        self, spec: EntitySpec, children: Children, full: bool
    ) -> Iterator[tuple[Any, str | None]]:
        """(parent id, update_time) of the parents whose children must be fetched: those
        that have or had children, and (unless ``full``) changed since last asked."""
        moved = "" if full else " and a.version is not p.update_time"
        return self.db.execute(
            f"select p.id, p.update_time from [{children.parent}] p"
            " left join _pdsync_parents a on a.entity_type = ? and a.parent_id = p.id"
            f" where (p.{children.has_children}"
            f" or p.id in (select [{children.column}] from [{spec.name}])){moved}"
            " order by p.id",
            [spec.name],
        )  # a cursor: 140k parents at 400k deals are not held as a list (see fetch.Parents)

    def replace_children(
        self,
        spec: EntitySpec,
        children: Children,
        parents: list[tuple[Any, str | None]],
        rows: list[Row],
        same: list[dict] = (),
    ) -> int:
        """Write what the parents have now: upsert ``rows``, delete their other children
        (``same``: records stored as they are, kept), remember the versions asked. Returns
        how many children were deleted."""
        self.upsert(spec, rows)
        keep = self._keep([r[spec.pk] for r in rows] + [r[spec.pk] for r in same])
        ids = [parent for parent, _ in parents]
        marks = ",".join("?" for _ in ids)
        deleted = self.db.execute(
            f"delete from [{spec.name}] where [{children.column}] in ({marks})"
            f" and [{spec.pk}] not in ({keep})",
            ids,
        ).rowcount
        self.db.conn.executemany(
            "insert into _pdsync_parents (entity_type, parent_id, version) values (?, ?, ?)"
            " on conflict (entity_type, parent_id) do update set version = excluded.version",
            [(spec.name, parent, version) for parent, version in parents],
        )
        return deleted

    # -- watermarks -----------------------------------------------------------------------

    def watermark(self, entity: str, stream: str) -> str | None:
        row = self.db.execute(
            "select watermark from sync_streams where entity_type = ? and stream = ?",
            [entity, stream],
        ).fetchone()
        return row[0] if row else None

    def set_watermark(self, entity: str, stream: str, watermark: str | None) -> None:
        self.db.execute(
            "insert into sync_streams (entity_type, stream, watermark, updated_at) "
            "values (?, ?, ?, ?) on conflict (entity_type, stream) do update set "
            "watermark = excluded.watermark, updated_at = excluded.updated_at",
            [entity, stream, watermark, utc_now()],
        )

    def clear_watermarks(self, entity: str) -> None:
        self.db.execute("delete from sync_streams where entity_type = ?", [entity])

    def start_pass(self, entity: str) -> None:
        """A new full pass of ``entity`` starts (kept across the runs it may take): the newest
        update_time stored now, in Pipedrive's clock, not this machine's (a fake's, or a
        skewed one, would hide deletions): what a webhook changes during the pass is newer."""
        self.set_watermark(entity, PASS_STARTED, self.newest_update(entity) or "")

    def newest_update(self, table: str) -> str | None:
        """The newest believable update_time stored (a bad record's year 9999 is not)."""
        if "update_time" not in self.columns(table):
            return None
        sql = f"select max(update_time) from [{table}] where update_time <= ?"
        return self.db.execute(sql, [latest_plausible()]).fetchone()[0]

    def pass_started(self, entity: str) -> str | None:
        return self.watermark(entity, PASS_STARTED)

    def forget_stream(self, entity: str, stream: str) -> None:
        self.db.execute(
            "delete from sync_streams where entity_type = ? and stream = ?", [entity, stream]
        )

    # -- sync_metadata and sync_runs ------------------------------------------------------

    def metadata(self, entity: str) -> dict[str, Any]:
        # Plain SQL: a run asks ~50 times, and sqlite-utils' rows_where lists the database's
        # views twice and its tables once each time (138 of a no-change sync's ~400 listings).
        try:
            cursor = self.db.execute("select * from sync_metadata where entity_type = ?", [entity])
        except sqlite3.OperationalError:
            if "sync_metadata" in self.db.table_names():
                raise
            return {}  # as rows_where answers for a table not made yet
        row = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else {}

    def update_metadata(self, entity: str, **values: Any) -> None:
        # Plain SQL, not Table.upsert: sqlite-utils would first test the SQLite library for
        # upsert support by creating and dropping a scratch table, a schema change on every
        # sync that each Datasette connection then reloads.
        columns = ["entity_type", *values]
        names = ", ".join(f"[{c}]" for c in columns)
        updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in values)
        self.db.execute(
            f"insert into sync_metadata ({names}) values ({', '.join('?' for _ in columns)})"
            f" on conflict (entity_type) do " + (f"update set {updates}" if updates else "nothing"),
            [entity, *values.values()],
        )

    def start_run(
        self, mode: str, entities: list[str], version: str, every: float | None = None
    ) -> int:
        table = self.db["sync_runs"]
        table.insert(
            {
                "started_at": utc_now(),
                "status": "running",
                "mode": mode,
                "entities": json.dumps(entities),
                "pdsync_version": version,
                "every_s": every,
            }
        )
        return table.last_pk

    def add_spend(self, purpose: str, requests: int, tokens: int) -> None:
        """Count requests and tokens against today (UTC), in the caller's transaction."""
        self.db.execute(
            "insert into sync_tokens (day, purpose, requests, tokens) values (?, ?, ?, ?)"
            " on conflict (day, purpose) do update set requests = requests + excluded.requests,"
            " tokens = tokens + excluded.tokens",
            [utc_now()[:10], purpose, requests, tokens],
        )

    def close_interrupted_runs(self) -> None:
        with write_transaction(self.db):
            self.db.execute("update sync_runs set status = 'interrupted' where status = 'running'")
            self.db.execute(
                "update sync_metadata set status = 'failed', error_message = "
                "'the sync was interrupted' where status = 'in_progress'"
            )

    def redact_messages(self, redact: Callable[[str], str]) -> None:
        """Rewrite stored error texts through ``redact``: an older pdsync stored them as sent,
        and an upstream that echoed the request put the token in them."""
        changed = []
        for table, key, column in (
            ("sync_metadata", "entity_type", "error_message"),
            ("sync_runs", "id", "errors"),
        ):
            rows = self.db.execute(
                f"select [{key}], [{column}] from [{table}] where [{column}] is not null"
            ).fetchall()
            changed += [
                (table, key, column, key_value, redact(text))
                for key_value, text in rows
                if redact(text) != text
            ]
        if not changed:
            return
        # secure_delete zeroes the old text in the page, and the checkpoint empties the WAL
        # that still holds the page as it was: nothing of the secret is left on disk.
        self.db.execute("pragma secure_delete = on")
        with write_transaction(self.db):
            for table, key, column, key_value, clean in changed:
                self.db.execute(
                    f"update [{table}] set [{column}] = ? where [{key}] = ?", [clean, key_value]
                )
        self.db.execute("pragma secure_delete = off")
        self.db.execute("pragma wal_checkpoint(truncate)")

    def finish_run(self, run_id: int, **values: Any) -> None:
        self.db["sync_runs"].update(run_id, values)


def _upsert_sql(spec: EntitySpec, cols: tuple[str, ...]) -> str:
    table = f"[{spec.name}]"
    names = ", ".join(f"[{c}]" for c in cols)
    marks = ", ".join("?" for _ in cols)
    others = [c for c in cols if c != spec.pk]
    sql = f"insert into {table} ({names}) values ({marks}) on conflict ([{spec.pk}]) do "
    if not others:
        return sql + "nothing"
    sql += "update set " + ", ".join(f"[{c}] = excluded.[{c}]" for c in others)
    # A row that would be written with the values it has is not written: no index, trigger
    # or full-text work for the look-back's re-reads, a --full pass or a repeated delivery.
    conditions = ["(" + " or ".join(f"{table}.[{c}] is not excluded.[{c}]" for c in others) + ")"]
    if "update_time" in cols:
        # Never an older version over a newer one. But a stored update_time later than could
        # be true came from a bad record (refused since): it must not keep the real version
        # out. Text sorts after digits, so a stored value that is not a timestamp counts too.
        ahead = f"+{int(FUTURE_TOLERANCE.total_seconds())} seconds"
        conditions.append(
            f"(excluded.update_time is null or {table}.update_time is null"
            f" or excluded.update_time >= {table}.update_time"
            f" or {table}.update_time > strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '{ahead}'))"
        )
    return sql + " where " + " and ".join(conditions)


def _infer_type(rows: list[Row], name: str) -> type:
    # A column Pipedrive added since the spec was written: type it by its first real value.
    for row in rows:
        value = row.get(name)
        if value is not None:
            return type(value) if type(value) in _SQL_TYPES else str
    return str
