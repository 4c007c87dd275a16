"""Deal history: ``deal_changes``, one row per change of a deal's field, from two sources.

*Observed*: when a sync writes a page of deals, each deal whose update_time moved is compared
with its stored row, field by field (free: no request). *Changelog*: ``/v1/deals/{id}/changelog``
lists every change exactly; ``backfill.py`` reads it within a daily token budget.

One change is one row. A changelog read is the whole story of a deal up to the read, so it
replaces the deal's rows (observed ones included), except observed changes newer than the
read's start (a webhook's, while the changelog was in flight): those stay. An observed change
is not added when a row already holds it: same deal, field and new value, at a time inside the
window the observation spans (after the stored update_time, up to the incoming one). Stage
moves are timed by ``stage_change_time``, a won or lost status by ``close_time``, anything else
by update_time.

After its changelog was read, a deal's observed change is taken as the whole story, and no
request is spent on it, when it is one edit the deal's times account for: one field changed (or
a status with its lost reason); a stage move only to the next stage of the same pipeline, at
exactly the deal's update_time; stage_change_time moved only with the stage. Anything else (a
stage skipped, a move backwards or to another pipeline, a move followed by other edits, two
fields edited, a deal that left its stage and came back) may hide changes the observation cannot
see, and marks the deal for a re-read (``_pdsync_history.reread``), which backfill.py does
first. Not seen by any rule: a field changed twice between two syncs in a way that looks like
one change (a value A to B to C recorded as A to C; A to C to B, the next stage, as A to B).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import sqlite_utils

from .entities import Row
from .timestamps import format as format_ts
from .timestamps import normalize
from .timestamps import now as utc_now
from .timestamps import parse as parse_ts

# Deal column -> changelog field_key: the fields compared when a deal is written.
OBSERVED = {
    "stage_id": "stage_id",
    "pipeline_id": "pipeline_id",
    "status": "status",
    "value": "value",
    "currency": "currency",
    "owner_id": "user_id",
    "expected_close_date": "expected_close_date",
    "title": "title",
    "person_id": "person_id",
    "org_id": "org_id",
    "probability": "probability",
    "lost_reason": "lost_reason",
}
_NUMBERS = {"value", "probability", "stage_id", "pipeline_id", "user_id", "person_id", "org_id"}
# Fields that change together in one edit: a deal lost with its reason.
_ONE_EDIT = ({"status", "lost_reason"},)
_HASH_KEY = re.compile(r"^[0-9a-f]{40}$")
SKEW = 120  # seconds Pipedrive's clock and ours may disagree by
_COLUMNS = ("deal_id", "field_key", "old_value", "new_value", "time", "user_id", "source")


# The deal columns a comparison reads (the stored row's and the incoming one's).
COMPARED = ["id", "update_time", "stage_change_time", "close_time", "custom_fields"]
COMPARED += [c for c in OBSERVED if c not in COMPARED]


def canonical(field_key: str, value: Any) -> str | None:
    """A value as text, the same whichever source it came from ("100.0" and 100 are "100")."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if field_key in _NUMBERS or isinstance(value, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def custom_field_names(db: sqlite_utils.Database) -> dict[str, str]:
    """Custom field hash -> its readable column name (as the deals table names it)."""
    if "deal_fields" not in db.table_names():
        return {}
    columns = db["deal_fields"].columns_dict
    if "column_name" not in columns or "field_code" not in columns:
        return {}
    return dict(
        db.execute(
            "select field_code, column_name from deal_fields where column_name is not null"
        ).fetchall()
    )


class Observer:
    """Compares pages of deals with their stored rows, in the writer's transaction.

    Stages and custom field names are read once and kept for ``CACHE_SECONDS``: the webhook
    applier keeps one Observer for as long as ``serve`` runs, while syncs change both."""

    CACHE_SECONDS = 120.0

    def __init__(
        self, db: sqlite_utils.Database, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self._clock = clock
        self._names: dict[str, str] | None = None
        self._stages: dict[Any, tuple[Any, Any]] | None = None
        self._read_at = float("-inf")  # when (clock) they were read
        self.observed = 0  # rows added this run
        self.rereads = 0  # deals marked for a re-read this run

    def _fresh(self) -> None:
        if self._clock() - self._read_at > self.CACHE_SECONDS:
            self._names = self._stages = None
            self._read_at = self._clock()

    def names(self) -> dict[str, str]:
        self._fresh()
        if self._names is None:
            self._names = custom_field_names(self.db)
        return self._names

    def stages(self) -> dict[Any, tuple[Any, Any]]:
        """Stage id -> (pipeline id, order_nr)."""
        self._fresh()
        if self._stages is None:
            found = self.db.execute("select id, pipeline_id, order_nr from stages")
            self._stages = {sid: (pid, nr) for sid, pid, nr in found.fetchall()}
        return self._stages

    def observe(self, rows: list[Row]) -> None:
        """Record what changed in ``rows`` against the stored deals; call before the upsert."""
        if not rows:
            return
        ids = [row["id"] for row in rows]
        stored = self._stored(ids)
        read = self._read(ids)
        now = utc_now()
        fresh: list[tuple] = []
        untouched: list[tuple] = []
        rereads: list[tuple] = []
        for row in rows:
            old = stored.get(row["id"])
            if old is None:
                # A deal never seen: created and not changed since, its history is empty.
                if row.get("update_time") == row.get("add_time") and not row.get(
                    "stage_change_time"
                ):
                    untouched.append((row["id"], now))
                continue
            if not (row.get("update_time") or "") > (old.get("update_time") or ""):
                continue
            changes = self._changes(old, row)
            fresh += changes
            changed = {c[1] for c in changes}
            if row["id"] in read and not whole_story(old, row, changed, self.stages()):
                rereads.append((row["id"],))
        self._insert_observed(fresh)
        if untouched:
            self.db.conn.executemany(
                "insert or ignore into _pdsync_history (deal_id, read_at, reread) values (?, ?, 0)",
                untouched,
            )
        if rereads:
            self.db.conn.executemany(
                "update _pdsync_history set reread = 1 where deal_id = ?", rereads
            )
            self.rereads += len(rereads)

    def _stored(self, ids: list[Any]) -> dict[Any, dict]:
        columns = COMPARED
        marks = ",".join("?" for _ in ids)
        cursor = self.db.execute(
            f"select {', '.join(columns)} from deals where id in ({marks})", ids
        )
        return {r[0]: dict(zip(columns, r, strict=True)) for r in cursor.fetchall()}

    def _read(self, ids: list[Any]) -> set[Any]:
        marks = ",".join("?" for _ in ids)
        found = self.db.execute(
            f"select deal_id from _pdsync_history where deal_id in ({marks})"
            " and read_at is not null",
            ids,
        )
        return {r[0] for r in found.fetchall()}

    def _changes(self, old: dict, new: Row) -> list[tuple]:
        """(deal_id, field_key, old, new, time, window start) per field that changed."""
        since, until = old.get("update_time") or "", new.get("update_time")
        out = []
        for column, key in OBSERVED.items():
            if old.get(column) == new.get(column):
                continue  # most fields of a changed deal did not change: no text to compare
            before, after = canonical(key, old.get(column)), canonical(key, new.get(column))
            if before != after:
                out.append((new["id"], key, before, after, _when(key, new), since, until))
        if (old.get("custom_fields") or None) != (new.get("custom_fields") or None):
            olds = _json_dict(old.get("custom_fields"))
            news = _json_dict(new.get("custom_fields"))
            names = self.names()
            for code in sorted(set(olds) | set(news)):
                if olds.get(code) == news.get(code):
                    continue
                key = names.get(code, code)
                before, after = canonical(key, olds.get(code)), canonical(key, news.get(code))
                if before != after:
                    out.append((new["id"], key, before, after, until, since, until))
        return out

    def _insert_observed(self, changes: list[tuple]) -> None:
        before = self.db.conn.total_changes
        self.db.conn.executemany(
            "insert into deal_changes (deal_id, field_key, old_value, new_value, time, source)"
            " select ?1, ?2, ?3, ?4, ?5, 'observed' where not exists (select 1 from deal_changes"
            " where deal_id = ?1 and field_key = ?2 and new_value is ?4"
            " and time > ?6 and time <= max(?5, ?7))",
            changes,
        )
        self.observed += self.db.conn.total_changes - before


def _when(key: str, row: Row) -> str | None:
    """When an observed change happened, as near as the deal's own times say."""
    if key in ("stage_id", "pipeline_id") and row.get("stage_change_time"):
        return row["stage_change_time"]
    if key == "status" and row.get("status") in ("won", "lost") and row.get("close_time"):
        return row["close_time"]
    return row.get("update_time")


def _json_dict(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    try:
        found = json.loads(value) if value else {}
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def whole_story(old: dict, new: Row, changed: set[str], stages: dict[Any, tuple[Any, Any]]) -> bool:
    """The observed change is all that happened to the deal between two syncs (see above)."""
    moved = (old.get("stage_change_time") or "") != (new.get("stage_change_time") or "")
    if moved and "stage_id" not in changed:
        return False  # it left its stage and came back
    if "stage_id" in changed:
        if new.get("stage_change_time") != new.get("update_time"):
            return False  # something happened after the move: maybe more moves
        before, after = stages.get(old.get("stage_id")), stages.get(new.get("stage_id"))
        if not before or not after or before[0] != after[0] or after[1] != before[1] + 1:
            return False  # not the next stage: the stages between may have been passed
    if not changed:
        return True  # nothing the changelog logs changed
    return any(changed <= edit for edit in _ONE_EDIT) or len(changed) == 1


# -- the changelog --------------------------------------------------------------------------


def changelog_rows(
    deal_id: int, entries: Iterable[dict], names: dict[str, str]
) -> list[tuple[Any, ...]]:
    """``deal_changes`` rows for a deal's changelog entries (hash keys named, times UTC)."""
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("field_key"), str):
            continue
        key = e["field_key"]
        if _HASH_KEY.match(key):
            key = names.get(key, key)
        user = e.get("actor_user_id")
        out.append(
            (
                deal_id,
                key,
                canonical(key, e.get("old_value")),
                canonical(key, e.get("new_value")),
                normalize(e.get("time")) if isinstance(e.get("time"), str) else None,
                user if isinstance(user, int) else None,
                "changelog",
                e.get("change_source") if isinstance(e.get("change_source"), str) else None,
            )
        )
    return out


def replace_history(
    db: sqlite_utils.Database,
    deal_id: int,
    rows: list[tuple[Any, ...]],
    read_at: str,
    fetched_at: str | None = None,
) -> None:
    """The deal's history is its changelog as read at ``read_at``; in the caller's
    transaction, with the state that says so (a kill leaves both or neither).

    ``fetched_at`` is when the changelog's first page was asked: a change observed since (the
    webhook applier records one at any time) is not in it, so observed rows from then on
    stay, unless the changelog holds the same change (same field and new value from then
    on). ``SKEW`` seconds earlier count as "since", for clocks that disagree."""
    since = None
    if fetched_at is not None:
        since = format_ts(parse_ts(fetched_at) - timedelta(seconds=SKEW))
    db.execute(
        "delete from deal_changes where deal_id = ?1"
        " and (?2 is null or source <> 'observed' or time is null or time < ?2)",
        [deal_id, since],
    )
    db.conn.executemany(
        f"insert into deal_changes ({', '.join(_COLUMNS)}, change_source)"
        " values (?, ?, ?, ?, ?, ?, ?, ?)",
        sorted(rows, key=lambda r: r[4] or ""),
    )
    kept = 0
    if since is not None:
        db.execute(
            "delete from deal_changes where deal_id = ?1 and source = 'observed'"
            " and exists (select 1 from deal_changes c where c.deal_id = ?1"
            " and c.source = 'changelog' and c.field_key = deal_changes.field_key"
            " and c.new_value is deal_changes.new_value and c.time >= ?2)",
            [deal_id, since],
        )
        kept = db.execute(
            "select count(*) from deal_changes where deal_id = ? and source = 'observed'",
            [deal_id],
        ).fetchone()[0]
    # A re-read asked for by a change newer than the changelog still stands.
    db.execute(
        "insert into _pdsync_history (deal_id, read_at, reread) values (?, ?, 0)"
        " on conflict (deal_id) do update set read_at = excluded.read_at,"
        " reread = case when ? then reread else 0 end,"
        " failures = 0, failed_at = null, last_error = null",
        [deal_id, read_at, kept > 0],
    )
