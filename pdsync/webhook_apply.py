"""Applying webhook deliveries from the inbox to the database, in the sync's own rows.

Creates and changes go through ``records.to_row`` like a synced page (timestamps, JSON,
readable custom fields), then the store's upsert, so totals and full-text search stay current
through the same triggers. Webhooks v2 ``data`` holds only part of a record: only the columns
it carries are written; the others keep what the last sync stored (a new record gets them
from the next periodic sync). Applying what it has costs no request, so a burst of 1,000
events costs none; a coalesced sync per event burst would spend tokens for columns the canned
queries rarely need, and the scheduled sync fetches them anyway.

Deletes write the entity's ``when_gone`` values (``is_deleted = 1``; a deal's status too), the
same as a full pass's reconciliation: persons, organizations, activities, notes and products
deleted upstream show without ``--full``. A merge arrives as a delete (``meta.merged_to_id``)
and a change of the survivor: each is applied as such, and the deleted row keeps the
survivor's id in ``merged_to_id`` (deals, persons, organizations).

Order: an older version never overwrites a newer one. A version is the record's
``update_time``, then the event's ``meta.timestamp``: Pipedrive's ``update_time`` has whole
seconds, the event's time milliseconds, so two changes in one second delivered out of order
still end on the later. The inbox keeps each record's last applied version.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from . import timestamps
from .entities import EntitySpec, Row
from .history import COMPARED, Observer
from .records import BadRecord, CustomFieldMap, to_row
from .store import Store
from .webhook_inbox import Inbox

log = logging.getLogger("pdsync.webhooks")

# meta.entity -> table. Anything else is acknowledged and ignored.
ENTITIES = {
    "deal": "deals",
    "person": "persons",
    "organization": "organizations",
    "activity": "activities",
    "note": "notes",
    "product": "products",
    "lead": "leads",
    "pipeline": "pipelines",
    "stage": "stages",
    "user": "users",
}
ACTIONS = ("create", "change", "delete")
BATCH = 500  # deliveries per transaction
GAP_SLACK_S = 300.0  # a change this close to a sync's start may still be on its way
LATEST_VERSION = 253402300799.0  # 9999-12-31T23:59:59Z: anything later is not a time


class DatabaseBusy(Exception):
    """The database stayed locked (a sync's index build): the deliveries wait in the inbox."""


def version_of(value: Any) -> float | None:
    """Seconds since the epoch from an ``update_time`` or a ``meta.timestamp`` (epoch seconds,
    epoch milliseconds or RFC 3339 text); None when it is none of these, or out of range
    (before 1970, after 9999, not finite)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = value / 1000 if value > 1e11 else float(value)
        except OverflowError:  # an int too large for a float
            return None
        return seconds if math.isfinite(seconds) and 0 <= seconds <= LATEST_VERSION else None
    if isinstance(value, str):
        try:
            moment = timestamps.parse_timestamp(value)  # v1's "2019-01-22 08:55:59" too
            seconds = moment.timestamp() if moment else None
        except (ValueError, OverflowError, OSError):
            return None
        return seconds if seconds is not None and 0 <= seconds <= LATEST_VERSION else None
    return None


def _stamp(version: float) -> str:
    try:
        return timestamps.format(datetime.fromtimestamp(int(version), tz=timezone.utc))
    except (ValueError, OverflowError, OSError):
        raise BadRecord(f"{version!r} is not a time") from None


class Applier:
    """Takes pending deliveries from ``inbox`` and writes them to the database at ``db_path``."""

    def __init__(
        self,
        db_path: str,
        inbox: Inbox,
        entities: list[EntitySpec] | None = None,
        busy_timeout: float = 0.05,
    ) -> None:
        if entities is None:
            from .plugins import entities as all_entities

            entities = all_entities()
        self.db_path = db_path
        self.inbox = inbox
        self.specs = {spec.name: spec for spec in entities}
        self.busy_timeout = busy_timeout
        self._db: sqlite_utils.Database | None = None
        self._store: Store | None = None
        self._custom: dict[str, CustomFieldMap | None] = {}
        self._custom_loaded = 0.0
        self._blanks: dict[str, Row] = {}
        self._observer: Observer | None = None
        self._history: bool | None = None  # whether the database keeps deal_changes

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            self._observer = None  # bound to the connection closed
            self._history = None

    def _database(self) -> sqlite_utils.Database:
        if self._db is None:
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None)
            self._db = sqlite_utils.Database(conn)
            self._store = Store(self._db)
        return self._db

    # -- one batch ----------------------------------------------------------------------------

    def apply_pending(self, limit: int = BATCH) -> int:
        """Apply up to ``limit`` pending deliveries in one transaction; how many were settled.
        Raises DatabaseBusy when the database stays locked (nothing is lost: try again)."""
        batch = self.inbox.pending(limit)
        if not batch:
            return 0
        db = self._database()
        tables = set(db.table_names())
        if time.monotonic() - self._custom_loaded > 5:
            # Field definitions and columns a sync may have added meanwhile.
            self._custom = {}
            self._store = Store(db)
            self._custom_loaded = time.monotonic()
        events = [(seq, _decode(body)) for seq, body in batch]
        known = self._known_versions(events)
        outcomes: list[tuple[int, str, str | None]] = []
        newer: list[tuple[str, str, float, float]] = []
        refused: list[str] = []
        try:
            with db.atomic():
                for seq, body in events:
                    state, note, version = self._apply_one(body, tables, known)
                    outcomes.append((seq, state, note))
                    if state == "failed":
                        refused.append("not applicable")
                    if version is not None:
                        entity, key, (seconds, tiebreak) = version
                        newer.append((entity, key, seconds, tiebreak))
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise DatabaseBusy(str(exc)) from None
            self.close()  # a fresh connection next time (the file may have been replaced)
            raise
        # After the database's commit: a crash here applies the batch again, harmlessly.
        self.inbox.settle(outcomes, newer, tuple(refused))
        return len(outcomes)

    def _apply_one(
        self, body: dict | None, tables: set[str], known: dict[tuple, tuple]
    ) -> tuple[str, str | None, tuple[str, str, tuple[float, float]] | None]:
        """One delivery in a savepoint of its own: one that cannot be applied, whatever the
        reason, is undone alone and marked failed; the batch goes on without it (else the
        batch would roll back and be retried for ever). Only a locked database stops it."""
        db = self._db
        db.execute("savepoint delivery")
        try:
            outcome = self._apply(body, tables, known)
        except Exception as exc:
            if isinstance(exc, sqlite3.OperationalError) and _database_level(exc):
                raise  # not this delivery's fault: the batch waits, nothing is marked
            db.execute("rollback to delivery")
            db.execute("release delivery")
            text = str(exc) if isinstance(exc, BadRecord) else f"{type(exc).__name__}: {exc}"
            reason = " ".join(text.split())[:300]  # one line, whatever the exception says
            log.warning("webhook delivery not applicable: %s", reason)
            return "failed", reason, None
        db.execute("release delivery")
        if outcome[2] is not None:
            entity, key, version = outcome[2]
            known[(entity, key)] = max(version, known.get((entity, key), version))
        return outcome

    def _known_versions(self, events: list[tuple[int, dict | None]]) -> dict[tuple, tuple]:
        ids: dict[str, set[str]] = {}
        for _, body in events:
            if body is not None:
                meta = body["meta"]
                ids.setdefault(str(meta.get("entity")), set()).add(str(meta.get("entity_id")))
        known: dict[tuple, tuple] = {}
        for entity, keys in ids.items():
            for key, version in self.inbox.versions(entity, sorted(keys)).items():
                known[(entity, key)] = version
        return known

    def _apply(
        self, body: dict | None, tables: set[str], known: dict[tuple, tuple]
    ) -> tuple[str, str | None, tuple[str, str, tuple[float, float]] | None]:
        if body is None:
            return "failed", "not a JSON object with a meta object", None
        meta = body["meta"]
        entity, action = meta.get("entity"), meta.get("action")
        spec = self.specs.get(ENTITIES.get(entity, ""))
        if spec is None or spec.name not in tables:
            return "ignored", f"{entity!r} is not synced", None
        if action not in ACTIONS:
            return "ignored", f"action {action!r}", None
        data = body.get("data") if isinstance(body.get("data"), dict) else None
        stamp = _version(meta.get("timestamp"))
        version = _version((data or {}).get("update_time")) if action != "delete" else None
        if version is None:
            version = stamp
        order = None if version is None else (version, stamp if stamp is not None else 0.0)
        record_key = str(meta.get("entity_id") if meta.get("entity_id") is not None else "")
        if not record_key and data is not None:
            record_key = str(data.get(spec.pk, ""))
        seen = known.get((entity, record_key))
        if order is not None and seen is not None and order < seen:
            return "applied", "older than what was applied: skipped", None
        try:
            if action == "delete":
                note = self._delete(spec, meta, body.get("previous"), record_key, version)
            elif data is None:
                return "failed", f"{action} without data", None
            else:
                note = self._upsert(spec, data)
        except BadRecord as exc:
            return "failed", str(exc), None
        if version is None:
            return "applied", note, None
        return "applied", note, (entity, record_key, order)

    # -- creates and changes ------------------------------------------------------------------

    def _custom_map(self, spec: EntitySpec) -> CustomFieldMap | None:
        if spec.name not in self._custom:
            table = spec.fields_table
            found = None
            if table and self._db is not None and table in self._db.table_names():
                found = CustomFieldMap.from_definitions(list(self._db[table].rows))
            self._custom[spec.name] = found
        return self._custom[spec.name]

    def _blank(self, spec: EntitySpec, key: Any) -> Row:
        """The row of a record that says nothing but its id (what a transform derives from
        nothing), made once per entity."""
        blank = self._blanks.get(spec.name)
        if blank is None:
            blank = self._blanks[spec.name] = to_row(spec, {spec.pk: key})
        return blank

    def _partial_row(self, spec: EntitySpec, data: dict) -> Row:
        """The row for ``data`` holding only the columns ``data`` says something about."""
        custom = self._custom_map(spec)
        row = to_row(spec, data, custom)
        keep = {name for name in data if name in row}
        if custom is not None:
            values = data if spec.custom_at_top else data.get("custom_fields")
            if isinstance(values, dict):
                for f in custom.fields:
                    if f.code in values:
                        keep.update(f.columns())
        # Columns the entity's transform derives from what data holds (a deal's status).
        blank = self._blank(spec, row[spec.pk])
        derived = [n for n in row if n in spec.columns and row[n] != blank.get(n)]
        keep.update(derived)
        keep.add(spec.pk)
        columns = self._store.columns(spec.name)
        return {n: v for n, v in row.items() if n in keep and n in columns}

    def _upsert(self, spec: EntitySpec, data: dict) -> str | None:
        """Insert a new record; update only the columns that changed in a stored one (a
        change is a field or two: rewriting every column would rewrite every index of the
        table, and the store's whole-row upsert runs at a fifth of the speed)."""
        row = self._partial_row(spec, data)
        names = [n for n in row if n != spec.pk]
        asked = ", ".join(f"[{n}]" for n in names) or "1"
        if "update_time" in self._store.columns(spec.name):
            asked += ", update_time"
        stored = self._db.execute(
            f"select {asked} from [{spec.name}] where [{spec.pk}] = ?", [row[spec.pk]]
        ).fetchone()
        if stored is None:
            self._observe(spec, row)
            self._store.upsert(spec, [row])
            return None
        new_time, old_time = row.get("update_time"), stored[-1]
        if new_time and old_time and new_time < old_time <= timestamps.latest_plausible():
            return "older than the stored row: skipped"  # the store's upsert guard, here
        self._observe(spec, row)
        changed = [(n, row[n]) for n, old in zip(names, stored, strict=False) if row[n] != old]
        if changed:
            sets = ", ".join(f"[{n}] = ?" for n, _ in changed)
            self._db.execute(
                f"update [{spec.name}] set {sets} where [{spec.pk}] = ?",
                [*(v for _, v in changed), row[spec.pk]],
            )
        return None

    def _observe(self, spec: EntitySpec, row: Row) -> None:
        """A deal's change is deal history, as when a sync brings it (history.Observer): the
        next sync finds the row already changed and would see nothing. What the delivery does
        not carry is the stored row's."""
        if spec.name != "deals" or not self._has_history():
            return
        if self._observer is None:
            self._observer = Observer(self._db)
        columns = [c for c in COMPARED if c in self._store.columns("deals")]
        stored = self._db.execute(
            f"select {', '.join(columns)} from deals where id = ?", [row["id"]]
        ).fetchone()
        whole = {**dict(zip(columns, stored, strict=True)), **row} if stored else row
        self._observer.observe([whole])

    def _has_history(self) -> bool:
        if self._history is None:
            self._history = "deal_changes" in self._db.table_names()
        return self._history

    # -- deletes ------------------------------------------------------------------------------

    def _delete(
        self,
        spec: EntitySpec,
        meta: dict,
        previous: Any,
        record_key: str,
        version: float | None,
    ) -> str | None:
        columns = self._store.columns(spec.name)
        marks = {k: v for k, v in spec.when_gone.items() if k in columns}
        if not marks:
            return f"{spec.name} has no column to mark a deletion"
        key: Any = record_key
        if spec.columns.get(spec.pk) is int:
            try:
                key = int(record_key)
            except ValueError:
                raise BadRecord(f"{spec.name}: delete of {record_key!r}, not an id") from None
        when = _stamp(version) if version is not None else None
        merged = meta.get("merged_to_id")
        note = f"merged into {merged}" if merged is not None else None
        if merged is not None and "merged_to_id" in columns:
            # The row says where the record went (Pipedrive sends the id as a string).
            marks["merged_to_id"] = _merged_key(spec, merged)
        db = self._db
        exists = db.execute(f"select 1 from [{spec.name}] where [{spec.pk}] = ?", [key]).fetchone()
        if exists is None:
            if isinstance(previous, dict):
                # A record created since the last sync and deleted already: kept, as deleted.
                row = self._partial_row(spec, {**previous, spec.pk: key})
                row.update(marks)
                self._store.upsert(spec, [row])
            return note
        sets = [f"[{c}] = ?" for c in marks]
        values: list[Any] = list(marks.values())
        guard = ""
        if "update_time" in columns and when is not None:
            # A record changed after the deletion was restored: the deletion is older.
            sets.append("update_time = max(coalesce(update_time, ''), ?)")
            values.append(when)
            guard = " and (update_time is null or update_time <= ?)"
        differs = " or ".join(f"[{c}] is not ?" for c in marks)
        db.execute(
            f"update [{spec.name}] set {', '.join(sets)} where [{spec.pk}] = ?{guard}"
            f" and ({differs})",
            [*values, key, *([when] if guard else []), *marks.values()],
        )
        return note

    # -- changes no webhook announced ---------------------------------------------------------

    def check_gaps(self, slack: float = GAP_SLACK_S) -> dict[str, tuple[int, str]] | None:
        """After a new finished sync run: the records it wrote that changed after webhooks
        started arriving but were never delivered (a ban, or webhooks deleted upstream).
        None when there is no new run to check."""
        db = self._database()
        if "sync_runs" not in db.table_names():
            return None
        run = db.execute(
            "select id, started_at from sync_runs where status in ('success', 'partial')"
            " order by id desc limit 1"
        ).fetchone()
        first = self.inbox.conn().execute("select min(received_at) from deliveries").fetchone()[0]
        if run is None or first is None or str(run[0]) == self.inbox.get_state("gaps_run"):
            return None
        run_id, started_at = run
        started, lower = (
            version_of(started_at),
            version_of(self.inbox.get_state("gaps_upper") or first),
        )
        if started is None or lower is None:
            # A run with no usable start time (hand-edited, an old pdsync's): nothing to
            # compare with, and this run is not asked about again.
            self.inbox.set_state("gaps_run", run_id)
            return None
        upper = started - slack
        gaps: dict[str, tuple[int, str]] = {}
        if upper > lower:
            watched = [
                r[0]
                for r in self.inbox.conn().execute(
                    "select distinct entity from deliveries where entity is not null"
                )
            ]
            for entity in watched:
                spec = self.specs.get(ENTITIES.get(entity, ""))
                if spec is None or "update_time" not in self._store.columns(spec.name):
                    continue
                rows = db.execute(
                    f"select [{spec.pk}], update_time from [{spec.name}]"
                    " where update_time > ? and update_time <= ?",
                    [_stamp(lower), _stamp(upper)],
                ).fetchall()
                known = self.inbox.versions(entity, [str(k) for k, _ in rows])
                missed = [
                    str(k)
                    for k, ut in rows
                    if known.get(str(k)) is None or known[str(k)][0] + 1 < (version_of(ut) or 0)
                ]
                if missed:
                    gaps[entity] = (len(missed), missed[0])
            self.inbox.set_state("gaps_upper", _stamp(upper))
        self.inbox.set_gaps(gaps, run_id)
        self.inbox.set_state("gaps_run", run_id)
        return gaps


def _version(value: Any) -> float | None:
    """``version_of``, refusing a number that is no time (a timestamp in the year 10^290
    would fail later, in the middle of a batch)."""
    version = version_of(value)
    if version is None and isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 30 else repr(value)[:27] + "..."
        raise BadRecord(f"timestamp {shown} is out of range")
    return version


def _merged_key(spec: EntitySpec, value: Any) -> Any:
    if spec.columns.get(spec.pk) is int and not isinstance(value, bool):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BadRecord(f"{spec.name}: merged into {value!r}, not an id") from None
    return value


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


# The database itself cannot be written now (a file replaced or made read-only, a full
# disk): every delivery would fail alike, so none is marked; the batch is tried again.
_DATABASE_PROBLEMS = ("readonly", "disk i/o", "unable to open", "disk is full", "no such table")


def _database_level(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return _busy(exc) or any(problem in text for problem in _DATABASE_PROBLEMS)


def _decode(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("meta"), dict):
        return None
    return value
