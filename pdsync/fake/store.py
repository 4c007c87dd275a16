"""State of the fake Pipedrive: a throwaway SQLite file, one table per declared table.

Each row keeps the API-shaped record as compact JSON next to the few columns the endpoints
filter and sort on, so a page is a keyset query plus a join of stored JSON strings. Times are
integer milliseconds since the epoch (UTC) and always equal the instant the record shows.
The tables, their columns and indexes come from the declarations in ``entities.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .entities import TABLES, Table
from .wire import dumps

RowMaker = Callable[..., tuple]


def _schema(table: Table) -> str:
    cols = ", ".join(f"{c.name} {c.sql}" for c in table.columns)
    return f"CREATE TABLE {table.name} (id INTEGER PRIMARY KEY, {cols}, json BLOB)"


def _indexes(table: Table) -> list[str]:
    def name(columns: str) -> str:
        return f"{table.name}_{columns.replace(', ', '_')}"

    return [f"CREATE INDEX {name(c)} ON {table.name}({c})" for c in table.indexes] + [
        f"CREATE UNIQUE INDEX {name(c)} ON {table.name}({c})" for c in table.unique
    ]


def _row_maker(table: Table) -> RowMaker:
    """(id, columns..., json) for a record; ut/at and the writer's extras feed the columns."""
    key = table.key
    takers = tuple(c.take for c in table.columns)

    def row(rec: dict, ut: int, at: int, given: dict[str, Any]) -> tuple:
        given["ut"] = ut
        given["at"] = at
        return (key(rec, given), *[take(rec, given) for take in takers], dumps(rec))

    return row


def column_names(table: str) -> list[str]:
    return [c.name for c in TABLES[table].columns]


class Store:
    """A SQLite file in the temp directory, shared by server threads behind one lock."""

    def __init__(self, directory: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="pdsync-fake-", suffix=".sqlite", dir=directory)
        os.close(fd)
        self._finalizer = weakref.finalize(self, _remove, self.path)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.lock = threading.RLock()
        for pragma in (
            "page_size=16384",  # fewer, fuller pages for ~1 KB JSON rows
            "journal_mode=MEMORY",  # throwaway data: no durability needed
            "synchronous=OFF",
            "cache_size=-8000",  # 8 MB page cache bounds RSS whatever the size
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        for table in TABLES.values():
            self.conn.execute(_schema(table))
        self._insert_sql = {
            t: f"INSERT OR REPLACE INTO {t} (id, {', '.join(column_names(t))}, json) "
            f"VALUES ({', '.join('?' * (len(column_names(t)) + 2))})"
            for t in TABLES
        }
        self._rows = {t: _row_maker(table) for t, table in TABLES.items()}
        # Called with (table, record before, record after) on every put: the one place every
        # mutation passes, where webhooks are raised (webhooks.py).
        self.on_put: Callable[[str, dict | None, dict], None] | None = None

    def begin_load(self) -> None:
        self.conn.execute("BEGIN")

    def finish_load(self) -> None:
        with self.lock:
            for table in TABLES.values():
                for sql in _indexes(table):
                    self.conn.execute(sql)
            self.conn.execute("COMMIT")
            self.conn.execute("ANALYZE")

    def close(self) -> None:
        with self.lock:
            try:
                self.conn.close()
            finally:
                self._finalizer()

    # Writes take the record with its exact times; extra carries non-API columns.
    def row(self, table: str, rec: dict, ut: int = 0, at: int = 0, **extra: Any) -> tuple:
        return self._rows[table](rec, ut, at, extra)

    def insert_many(self, table: str, rows: Iterable[tuple]) -> None:
        with self.lock:
            self.conn.executemany(self._insert_sql[table], rows)

    def put(self, table: str, rec: dict, ut: int = 0, at: int = 0, **extra: Any) -> None:
        with self.lock:
            row = self.row(table, rec, ut, at, **extra)
            listener = self.on_put
            before = None
            if listener is not None:
                found = self.conn.execute(f"SELECT json FROM {table} WHERE id = ?", (row[0],))
                before = found.fetchone()
            self.conn.execute(self._insert_sql[table], row)
            if listener is not None:
                listener(table, json.loads(before[0]) if before else None, rec)

    def get(self, table: str, id_: int) -> tuple[dict, dict[str, Any]] | None:
        """The record and its indexed columns, or None."""
        names = column_names(table)
        with self.lock:
            found = self.conn.execute(
                f"SELECT {', '.join(names)}, json FROM {table} WHERE id = ?", (id_,)
            ).fetchone()
        if found is None:
            return None
        return json.loads(found[-1]), dict(zip(names, found[:-1], strict=True))

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self.lock:
            return self.conn.execute(sql, tuple(args)).fetchall()

    def scalar(self, sql: str, args: Iterable[Any] = ()) -> Any:
        with self.lock:
            found = self.conn.execute(sql, tuple(args)).fetchone()
        return found[0] if found else None


def _remove(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
