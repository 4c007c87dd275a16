"""State of the fake Pipedrive: a throwaway SQLite file, one table per entity.

Each row keeps the API-shaped record as compact JSON next to the few columns the endpoints
filter and sort on, so a page is a keyset query plus a join of stored JSON strings. Times are
integer milliseconds since the epoch (UTC) and always equal the instant the record shows.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

DAY_MS = 86_400_000
PURGE_AFTER_MS = 30 * DAY_MS

# Columns besides id, json; "ut"/"at" are update_time/add_time in ms.
_TABLES: dict[str, str] = {
    "deals": "ut INTEGER NOT NULL, at INTEGER NOT NULL, status TEXT NOT NULL, "
    "archived INTEGER NOT NULL, deleted_at INTEGER, pipeline_id INTEGER, stage_id INTEGER, "
    "owner_id INTEGER, person_id INTEGER, org_id INTEGER, title TEXT",
    "persons": "ut INTEGER NOT NULL, at INTEGER NOT NULL, gone INTEGER NOT NULL, "
    "owner_id INTEGER, org_id INTEGER, name TEXT",
    "organizations": "ut INTEGER NOT NULL, at INTEGER NOT NULL, gone INTEGER NOT NULL, "
    "owner_id INTEGER, name TEXT",
    "activities": "ut INTEGER NOT NULL, at INTEGER NOT NULL, gone INTEGER NOT NULL, "
    "owner_id INTEGER, deal_id INTEGER, person_id INTEGER, org_id INTEGER, done INTEGER, "
    "due TEXT NOT NULL",
    "notes": "ut INTEGER NOT NULL, at INTEGER NOT NULL, gone INTEGER NOT NULL, "
    "user_id INTEGER, deal_id INTEGER, person_id INTEGER, org_id INTEGER, content TEXT",
    "pipelines": "ut INTEGER NOT NULL, at INTEGER NOT NULL, order_nr INTEGER",
    "stages": "ut INTEGER NOT NULL, at INTEGER NOT NULL, pipeline_id INTEGER, order_nr INTEGER",
    "users": "name TEXT",
    # One table for deal, person and organization fields; id is the display order.
    "fields": "kind TEXT NOT NULL, code TEXT NOT NULL",
}

# Created after the bulk load (cheaper than maintaining them row by row).
_INDEXES = (
    "CREATE INDEX deals_arch ON deals(archived)",
    "CREATE INDEX deals_arch_ut ON deals(archived, ut)",
    "CREATE INDEX deals_arch_at ON deals(archived, at)",
    "CREATE INDEX persons_ut ON persons(ut)",
    "CREATE INDEX persons_at ON persons(at)",
    "CREATE INDEX organizations_ut ON organizations(ut)",
    "CREATE INDEX organizations_at ON organizations(at)",
    "CREATE INDEX activities_ut ON activities(ut)",
    "CREATE INDEX activities_at ON activities(at)",
    "CREATE INDEX activities_due ON activities(due)",
    # Covering indexes so OFFSET can skip rows without reading note bodies.
    "CREATE INDEX notes_gone ON notes(gone)",
    "CREATE INDEX notes_gone_ut ON notes(gone, ut)",
    "CREATE INDEX notes_gone_at ON notes(gone, at)",
    "CREATE INDEX notes_deal ON notes(deal_id)",
    "CREATE INDEX notes_person ON notes(person_id)",
    "CREATE INDEX notes_org ON notes(org_id)",
    "CREATE UNIQUE INDEX fields_code ON fields(kind, code)",
)


def _columns(entity: str, rec: dict[str, Any], ut: int, at: int, extra: dict) -> tuple:
    """The indexed columns of a row, taken from the API-shaped record."""
    g = rec.get
    if entity == "deals":
        return (
            ut,
            at,
            rec["status"],
            int(rec["is_archived"]),
            extra.get("deleted_at"),
            g("pipeline_id"),
            g("stage_id"),
            g("owner_id"),
            g("person_id"),
            g("org_id"),
            rec["title"],
        )
    if entity == "persons":
        return ut, at, int(rec["is_deleted"]), g("owner_id"), g("org_id"), rec["name"]
    if entity == "organizations":
        return ut, at, int(rec["is_deleted"]), g("owner_id"), rec["name"]
    if entity == "activities":
        return (
            ut,
            at,
            int(rec["is_deleted"]),
            g("owner_id"),
            g("deal_id"),
            g("person_id"),
            g("org_id"),
            int(rec["done"]),
            g("due_date") or "",
        )
    if entity == "notes":
        return (
            ut,
            at,
            int(not rec["active_flag"]),
            g("user_id"),
            g("deal_id"),
            g("person_id"),
            g("org_id"),
            rec["content"],
        )
    if entity == "pipelines":
        return ut, at, rec["order_nr"]
    if entity == "stages":
        return ut, at, rec["pipeline_id"], rec["order_nr"]
    if entity == "users":
        return (rec["name"],)
    if entity == "fields":
        return extra["kind"], rec["field_code"]
    raise KeyError(entity)


def _column_names(entity: str) -> list[str]:
    return [part.split()[0] for part in _TABLES[entity].split(", ")]


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def dumps(rec: Any) -> bytes:
    """Compact UTF-8 JSON, as Pipedrive sends it."""
    return _ENCODER.encode(rec).encode()


# -- time -------------------------------------------------------------------------------------


_DAYS: dict[int, str] = {}
_HM = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_SS = [f"{s:02d}" for s in range(60)]
_MS = [f".{i:03d}Z" for i in range(1000)]


def _day(days: int) -> str:
    text = _DAYS.get(days)
    if text is None:
        t = time.gmtime(days * 86400)
        text = _DAYS[days] = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"
    return text


# Formatting ~1M timestamps per big company: cached days and tables beat strftime 3x.
def v2_time(ms: int, precise: bool = False) -> str:
    """RFC 3339 UTC: ``2025-01-15T10:30:00Z`` or, if precise, ``2025-01-15T10:30:00.123Z``."""
    sec, frac = divmod(ms, 1000)
    days, rest = divmod(sec, 86400)
    minute, second = divmod(rest, 60)
    base = f"{_day(days)}T{_HM[minute]}{_SS[second]}"
    return base + _MS[frac] if precise else base + "Z"


def v1_time(ms: int) -> str:
    """v1 style UTC: ``2025-01-15 10:30:00``."""
    days, rest = divmod(ms // 1000, 86400)
    minute, second = divmod(rest, 60)
    return f"{_day(days)} {_HM[minute]}{_SS[second]}"


def day(ms: int) -> str:
    """``YYYY-MM-DD`` (UTC)."""
    return _day(ms // 86_400_000)


def trunc(ms: int, precise: bool) -> int:
    """The instant a record shows: seconds unless it carries milliseconds."""
    return ms if precise else ms - ms % 1000


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339_us(text: str) -> int | None:
    """Microseconds since the epoch, or None if ``text`` is not RFC 3339 with a zone."""
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, mday, hour, minute, second = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= mday <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    frac = m.group(7) or ""
    micros = int((frac + "000000")[:6]) + (1 if frac[6:].strip("0") else 0)
    zone = m.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    try:
        secs = calendar.timegm((year, month, mday, hour, minute, second, 0, 0, 0))
        time.gmtime(secs)  # range check
    except (OverflowError, ValueError):
        return None
    return (secs - offset) * 1_000_000 + micros


# -- store ------------------------------------------------------------------------------------


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
        for table, cols in _TABLES.items():
            self.conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, {cols}, json BLOB)")
        self._insert_sql = {
            t: f"INSERT OR REPLACE INTO {t} (id, {', '.join(_column_names(t))}, json) "
            f"VALUES ({', '.join('?' * (len(_column_names(t)) + 2))})"
            for t in _TABLES
        }

    def begin_load(self) -> None:
        self.conn.execute("BEGIN")

    def finish_load(self) -> None:
        with self.lock:
            for sql in _INDEXES:
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
    def row(self, entity: str, rec: dict, ut: int = 0, at: int = 0, **extra: Any) -> tuple:
        key = extra["id"] if entity == "fields" else rec["id"]
        return (key, *_columns(entity, rec, ut, at, extra), dumps(rec))

    def insert_many(self, entity: str, rows: Iterable[tuple]) -> None:
        with self.lock:
            self.conn.executemany(self._insert_sql[entity], rows)

    def put(self, entity: str, rec: dict, ut: int = 0, at: int = 0, **extra: Any) -> None:
        with self.lock:
            self.conn.execute(self._insert_sql[entity], self.row(entity, rec, ut, at, **extra))

    def get(self, entity: str, id_: int) -> tuple[dict, dict[str, Any]] | None:
        """The record and its indexed columns, or None."""
        names = _column_names(entity)
        with self.lock:
            found = self.conn.execute(
                f"SELECT {', '.join(names)}, json FROM {entity} WHERE id = ?", (id_,)
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
