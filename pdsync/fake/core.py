"""FakePipedrive: the state, clock, mutations, faults, rate limit and request log of the fake."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from . import api, company
from .company import (
    COMPANY,
    activity_record,
    deal_record,
    note_record,
    organization_record,
    person_record,
    precise,
    prune,
)
from .store import PURGE_AFTER_MS, Store, trunc, v1_time, v2_time

ENTITIES = (
    "deals",
    "persons",
    "organizations",
    "activities",
    "notes",
    "pipelines",
    "stages",
    "users",
    "deal_fields",
    "person_fields",
    "organization_fields",
)
FAULT_KINDS = frozenset(
    "429 429-reset 500 502 503 timeout reset truncated invalid_json 401".split()
)
_SINGULAR = {
    "deals": "deal",
    "persons": "person",
    "organizations": "organization",
    "activities": "activity",
    "notes": "note",
    "pipelines": "pipeline",
    "stages": "stage",
}
# What the mutation methods accept, per entity.
DEAL_FIELDS = frozenset(
    "title value currency owner_id person_id org_id expected_close_date probability "
    "custom_fields label_ids visible_to lost_reason stage_id pipeline_id status".split()
)
PERSON_FIELDS = frozenset(
    "name first_name last_name org_id owner_id emails phones job_title custom_fields "
    "label_ids visible_to".split()
)
ORG_FIELDS = frozenset(
    "name owner_id address website linkedin industry annual_revenue employee_count "
    "custom_fields label_ids visible_to".split()
)
ACTIVITY_FIELDS = frozenset(
    "subject type owner_id deal_id person_id org_id due_date due_time duration busy done "
    "note location".split()
)
BURST_WINDOW_S = 2.0
LOG_LIMIT = 100_000  # bounded so `python -m pdsync.fake` can serve for days


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1000))


def _check_fields(kind: str, fields: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unsupported {kind} fields: {', '.join(sorted(unknown))}")


def _merge_custom(rec: dict, values: dict[str, Any] | None, codes: set[str]) -> None:
    """PATCH semantics: only the given custom fields change; None clears one."""
    unknown = set(values or {}) - codes
    if unknown:
        raise ValueError(f"unknown custom field codes: {', '.join(sorted(unknown))}")
    rec["custom_fields"] = {**(rec.get("custom_fields") or {}), **(values or {})}


@dataclass
class _Fault:
    path: str
    kind: str
    times: int
    skip: int


_HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>cloudflare</center></body></html>"
)
_HTML_503 = (
    b"<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
    b"<h1>503 Service Temporarily Unavailable</h1></center></body></html>"
)
_NOT_JSON = b"<!DOCTYPE html><html><body>Pipedrive is under maintenance</body></html>"


class FakePipedrive:
    """A seeded fake Pipedrive company with the API's list endpoints, served by FakeServer.

    ``now`` fixes the reference time of the generated company and freezes the fake clock
    there (deterministic); without it the clock follows real time.
    """

    def __init__(
        self,
        deals: int = 2000,
        seed: int = 1,
        now: datetime | None = None,
        token: str = "demo-token",
        burst_limit: int | None = None,
        latency: float = 0.0,
    ) -> None:
        self.token = token
        self.burst_limit = burst_limit
        self.latency = latency
        self.timeout_hold = 5.0
        self.token_in_url_seen = False
        self.rate_limited = 0
        self._frozen_ms: int | None = None if now is None else _to_ms(now)
        self._offset_ms = 0
        self._lock = threading.Lock()  # faults, burst windows, log
        self._faults: list[_Fault] = []
        self._windows: dict[str, deque[float]] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.store = Store()
        try:
            self._company = company.build(self.store, seed, self.now_ms(), deals)
        except BaseException:
            self.store.close()
            raise
        self._user_embeds: dict[int, bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the state and remove the temporary database file."""
        self.store.close()

    def __enter__(self) -> FakePipedrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clock --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        if self._frozen_ms is not None:
            return self._frozen_ms
        return int(time.time() * 1000) + self._offset_ms

    def now(self) -> datetime:
        """The fake clock: timezone-aware UTC."""
        return datetime.fromtimestamp(self.now_ms() / 1000, tz=timezone.utc)

    def freeze(self, moment: datetime | None = None) -> None:
        """Stop the clock at ``moment`` (a naive datetime is UTC), or where it is now."""
        self._frozen_ms = self.now_ms() if moment is None else _to_ms(moment)

    def unfreeze(self) -> None:
        """Let the clock run on in real time from where it stands."""
        if self._frozen_ms is not None:
            self._offset_ms = self._frozen_ms - int(time.time() * 1000)
            self._frozen_ms = None

    def advance(self, seconds: float) -> None:
        if self._frozen_ms is not None:
            self._frozen_ms += int(seconds * 1000)
        else:
            self._offset_ms += int(seconds * 1000)

    def _stamp(self, id_: int, v1: bool = False) -> int:
        return trunc(self.now_ms(), False if v1 else precise(id_))

    # -- ground truth -------------------------------------------------------------------------

    def _alive(self, entity: str) -> tuple[str, list[Any]]:
        if entity == "deals":
            return "(status != 'deleted' OR deleted_at >= ?)", [self.now_ms() - PURGE_AFTER_MS]
        if entity in ("persons", "organizations", "activities", "notes"):
            return "gone = 0", []
        if entity in api.FIELD_KINDS:
            return "kind = ?", [api.FIELD_KINDS[entity]]
        if entity in ENTITIES:
            return "1", []
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ENTITIES)}")

    def iter_records(self, entity: str) -> Iterator[dict[str, Any]]:
        """Like records(), streamed in id order (for big companies)."""
        where, args = self._alive(entity)
        if entity == "notes":
            embeds = self.user_embeds()
            last = 0
            while True:
                rows = self.store.query(
                    api.note_rows_sql(f"{where} AND id > ?", "id ASC", True), [last, 1000, 0]
                )
                for row in rows:
                    yield json.loads(api.embed_note(row, embeds))
                if len(rows) < 1000:
                    return
                last = json.loads(rows[-1][0])["id"]
        table = "fields" if entity in api.FIELD_KINDS else entity
        last = -1
        while True:
            rows = self.store.query(
                f"SELECT id, json FROM {table} WHERE {where} AND id > ? ORDER BY id LIMIT 1000",
                [*args, last],
            )
            for _, raw in rows:
                if table == "fields":
                    yield api.strip_namespaces(raw)
                else:
                    yield json.loads(raw)
            if len(rows) < 1000:
                return
            last = rows[-1][0]

    def records(self, entity: str) -> list[dict[str, Any]]:
        """Every record that exists upstream, API-shaped, in id order.

        Deals include archived ones and deleted ones not yet purged; persons, organizations,
        activities and notes exclude deleted ones (the API no longer lists them).
        """
        return list(self.iter_records(entity))

    def count(self, entity: str) -> int:
        where, args = self._alive(entity)
        table = "fields" if entity in api.FIELD_KINDS else entity
        return self.store.scalar(f"SELECT count(*) FROM {table} WHERE {where}", args)

    def user_embeds(self) -> dict[int, bytes]:
        """The ``user`` object v1 notes embed, per user id."""
        if self._user_embeds is None:
            embeds = {}
            for u in self.records("users"):
                embed = {"email": u["email"], "icon_url": u["icon_url"], "is_you": u["is_you"]}
                embed["name"] = u["name"]
                embeds[u["id"]] = api.dumps(prune("notes", embed))
            self._user_embeds = embeds
        return self._user_embeds

    def me(self) -> dict[str, Any]:
        user = json.loads(self.store.scalar("SELECT json FROM users WHERE id = 1"))
        return {**user, **COMPANY, "language": {"language_code": "en", "country_code": "US"}}

    # -- mutations: deals ---------------------------------------------------------------------

    def _load(self, entity: str, id_: int) -> tuple[dict[str, Any], dict[str, Any]]:
        found = self.store.get(entity, id_)
        if found is None:
            raise KeyError(f"{_SINGULAR[entity]} {id_} not found")
        rec, cols = found
        if cols.get("gone") or (entity == "deals" and cols["status"] == "deleted"):
            raise KeyError(f"{_SINGULAR[entity]} {id_} is deleted")
        return rec, cols

    def _save_deal(self, rec: dict, cols: dict, stamp: int, deleted_at: int | None = None) -> dict:
        rec["update_time"] = v2_time(stamp, precise(rec["id"]))
        rec = prune("deals", rec)
        self.store.put("deals", rec, stamp, cols["at"], deleted_at=deleted_at)
        return rec

    def _codes(self, kind: str) -> set[str]:
        return {f["field_code"] for f in self._company.custom(kind)}

    def _time(self, id_: int, stamp: int) -> str:
        return v2_time(stamp, precise(id_))

    def _stage(self, stage_id: int) -> int:
        pipeline = self._company.stage_pipeline.get(stage_id)
        if pipeline is None:
            raise ValueError(f"stage {stage_id} does not exist")
        return pipeline

    def _apply_deal_fields(self, rec: dict, fields: dict[str, Any], stamp: int) -> None:
        _check_fields("deal", fields, DEAL_FIELDS)
        for key, value in fields.items():
            if key == "custom_fields":
                _merge_custom(rec, value, self._codes("deal"))
            elif key == "expected_close_date" and isinstance(value, date):
                rec[key] = value.isoformat()
            elif key not in ("stage_id", "pipeline_id", "status"):
                rec[key] = value
        stage_id = fields.get("stage_id")
        if stage_id is None and fields.get("pipeline_id") is not None:
            pid = fields["pipeline_id"]
            if pid not in self._company.first_stage:
                raise ValueError(f"pipeline {pid} does not exist")
            if rec.get("pipeline_id") != pid:
                stage_id = self._company.first_stage[pid]
        if stage_id is not None:
            rec["pipeline_id"] = self._stage(stage_id)
            if rec.get("stage_id") != stage_id:
                rec["stage_change_time"] = self._time(rec["id"], stamp)
            rec["stage_id"] = stage_id
        if fields.get("status") is not None:
            self._apply_status(rec, fields["status"], fields.get("lost_reason"), stamp)

    def _apply_status(self, rec: dict, status: str, lost_reason: str | None, stamp: int) -> None:
        when = self._time(rec["id"], stamp)
        for key in ("won_time", "lost_time"):
            rec.pop(key, None)
        if status == "won":
            rec.update(status="won", won_time=when, close_time=when, lost_reason=None)
        elif status == "lost":
            rec.update(status="lost", lost_time=when, close_time=when, lost_reason=lost_reason)
        elif status == "open":
            rec.update(status="open", close_time=None, lost_reason=None)
        else:
            raise ValueError(f"status must be open, won or lost, not {status!r}")

    def add_deal(self, **fields: Any) -> dict[str, Any]:
        """Create a deal (title, value, currency, owner_id, person_id, org_id, stage_id, ...)."""
        with self.store.lock:
            id_ = self._company.next_id["deals"]
            stamp = self._stamp(id_)
            pid = fields.get("pipeline_id") or 1
            stage_id = fields.get("stage_id") or self._company.first_stage.get(pid)
            if stage_id is None:
                raise ValueError(f"pipeline {pid} does not exist")
            rec = deal_record(
                id_,
                title=fields.get("title", "New deal"),
                owner_id=fields.get("owner_id", 1),
                person_id=None,
                org_id=None,
                pipeline_id=self._stage(stage_id),
                stage_id=stage_id,
                value=fields.get("value", 0),
                currency=fields.get("currency", "SAR"),
                add_time=stamp,
                update_time=stamp,
                origin="API",
                custom_fields={f["field_code"]: None for f in self._company.custom("deal")},
            )
            rest = {k: v for k, v in fields.items() if k not in ("pipeline_id", "stage_id")}
            self._apply_deal_fields(rec, rest, stamp)
            self._company.next_id["deals"] = id_ + 1
            return self._save_deal(rec, {"at": stamp}, stamp)

    def update_deal(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        """Change deal fields (title, value, currency, owner_id, custom_fields, stage_id, ...)."""
        with self.store.lock:
            rec, cols = self._load("deals", id)
            stamp = self._stamp(id)
            self._apply_deal_fields(rec, fields, stamp)
            return self._save_deal(rec, cols, stamp)

    def set_deal_status(
        self,
        id: int,  # noqa: A002
        status: str,
        lost_reason: str | None = None,
    ) -> dict[str, Any]:
        """Mark a deal won, lost or open again (sets won_time/lost_time/close_time)."""
        with self.store.lock:
            rec, cols = self._load("deals", id)
            stamp = self._stamp(id)
            self._apply_status(rec, status, lost_reason, stamp)
            return self._save_deal(rec, cols, stamp)

    def move_deal(self, id: int, stage_id: int) -> dict[str, Any]:  # noqa: A002
        """Put a deal in another stage; the pipeline follows the stage."""
        return self.update_deal(id, stage_id=stage_id)

    def archive_deal(self, id: int) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("deals", id)
            stamp = self._stamp(id)
            rec.update(is_archived=True, archive_time=self._time(id, stamp))
            return self._save_deal(rec, cols, stamp)

    def unarchive_deal(self, id: int) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("deals", id)
            stamp = self._stamp(id)
            rec.update(is_archived=False, archive_time=None)
            return self._save_deal(rec, cols, stamp)

    def delete_deal(self, id: int) -> dict[str, Any]:  # noqa: A002
        """Delete a deal: listed with status=deleted for 30 days of fake clock, then purged."""
        with self.store.lock:
            rec, cols = self._load("deals", id)
            stamp = self._stamp(id)
            rec.update(status="deleted", is_deleted=True)
            return self._save_deal(rec, cols, stamp, deleted_at=stamp)

    # -- mutations: persons, organizations ----------------------------------------------------

    @staticmethod
    def _contacts(values: list[Any] | None, label: str) -> list[dict] | None:
        if values is None:
            return None
        out = []
        for i, v in enumerate(values):
            if isinstance(v, str):
                v = {"value": v, "primary": i == 0, "label": label}
            out.append(v)
        return out

    def _person_fields(self, rec: dict, fields: dict[str, Any]) -> None:
        _check_fields("person", fields, PERSON_FIELDS)
        if "name" in fields:
            first, _, last = fields["name"].partition(" ")
            rec.update(first_name=first, last_name=last)
        for key, value in fields.items():
            if key == "custom_fields":
                _merge_custom(rec, value, self._codes("person"))
            elif key in ("emails", "phones"):
                rec[key] = self._contacts(value, "work") or []
            elif key != "name":
                rec[key] = value
        rec["name"] = f"{rec.get('first_name', '')} {rec.get('last_name', '')}".strip()

    def _save(self, entity: str, rec: dict, at: int, stamp: int) -> dict:
        rec["update_time"] = v2_time(stamp, precise(rec["id"]))
        rec = prune(entity, rec)
        self.store.put(entity, rec, stamp, at)
        return rec

    def add_person(self, name: str = "New Person", **fields: Any) -> dict[str, Any]:
        with self.store.lock:
            id_ = self._company.next_id["persons"]
            stamp = self._stamp(id_)
            first, _, last = name.partition(" ")
            rec = person_record(
                id_,
                first_name=first,
                last_name=last,
                owner_id=1,
                org_id=None,
                add_time=stamp,
                update_time=stamp,
                custom_fields={f["field_code"]: None for f in self._company.custom("person")},
            )
            self._person_fields(rec, fields)
            self._company.next_id["persons"] = id_ + 1
            return self._save("persons", rec, stamp, stamp)

    def update_person(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("persons", id)
            self._person_fields(rec, fields)
            return self._save("persons", rec, cols["at"], self._stamp(id))

    def delete_person(self, id: int) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("persons", id)
            rec["is_deleted"] = True
            return self._save("persons", rec, cols["at"], self._stamp(id))

    def _org_fields(self, rec: dict, fields: dict[str, Any]) -> None:
        _check_fields("organization", fields, ORG_FIELDS)
        for key, value in fields.items():
            if key == "custom_fields":
                _merge_custom(rec, value, self._codes("org"))
            elif key == "address" and isinstance(value, str):
                rec[key] = {"value": value}
            else:
                rec[key] = value

    def add_organization(self, name: str = "New Organization", **fields: Any) -> dict[str, Any]:
        with self.store.lock:
            id_ = self._company.next_id["organizations"]
            stamp = self._stamp(id_)
            rec = organization_record(
                id_,
                name=name,
                owner_id=1,
                add_time=stamp,
                update_time=stamp,
                custom_fields={f["field_code"]: None for f in self._company.custom("org")},
            )
            self._org_fields(rec, fields)
            self._company.next_id["organizations"] = id_ + 1
            return self._save("organizations", rec, stamp, stamp)

    def update_organization(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("organizations", id)
            self._org_fields(rec, fields)
            return self._save("organizations", rec, cols["at"], self._stamp(id))

    def delete_organization(self, id: int) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("organizations", id)
            rec["is_deleted"] = True
            return self._save("organizations", rec, cols["at"], self._stamp(id))

    # -- mutations: activities, notes ---------------------------------------------------------

    def _activity_fields(self, rec: dict, fields: dict[str, Any], stamp: int) -> None:
        _check_fields("activity", fields, ACTIVITY_FIELDS)
        for key, value in fields.items():
            if key == "due_date" and isinstance(value, date):
                value = value.isoformat()
            rec[key] = value
        if "person_id" in fields:
            pid = fields["person_id"]
            rec["participants"] = [{"person_id": pid, "primary": True}] if pid else []
        if "done" in fields:
            rec["marked_as_done_time"] = self._time(rec["id"], stamp) if fields["done"] else None

    def add_activity(self, subject: str = "Call", **fields: Any) -> dict[str, Any]:
        with self.store.lock:
            id_ = self._company.next_id["activities"]
            stamp = self._stamp(id_)
            rec = activity_record(
                id_,
                subject=subject,
                type=fields.pop("type", "call"),
                owner_id=1,
                add_time=stamp,
                update_time=stamp,
                due_date=v1_time(stamp)[:10],
            )
            self._activity_fields(rec, fields, stamp)
            self._company.next_id["activities"] = id_ + 1
            return self._save("activities", rec, stamp, stamp)

    def update_activity(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("activities", id)
            stamp = self._stamp(id)
            self._activity_fields(rec, fields, stamp)
            return self._save("activities", rec, cols["at"], stamp)

    def delete_activity(self, id: int) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("activities", id)
            rec["is_deleted"] = True
            return self._save("activities", rec, cols["at"], self._stamp(id))

    def _save_note(self, rec: dict, at: int, stamp: int) -> dict:
        rec["update_time"] = v1_time(stamp)
        rec = prune("notes", rec)
        self.store.put("notes", rec, stamp, at)
        return self._note_view(rec["id"])

    def _note_view(self, id_: int) -> dict:
        rows = self.store.query(api.note_rows_sql("id = ?", "id ASC", False), [id_])
        return json.loads(api.embed_note(rows[0], self.user_embeds()))

    def add_note(
        self,
        content: str,
        deal_id: int | None = None,
        person_id: int | None = None,
        org_id: int | None = None,
        user_id: int = 1,
    ) -> dict[str, Any]:
        """Add a v1 note (HTML content) to a deal, person and/or organization."""
        with self.store.lock:
            id_ = self._company.next_id["notes"]
            stamp = self._stamp(id_, v1=True)
            rec = note_record(
                id_,
                content=content,
                user_id=user_id,
                add_time=stamp,
                update_time=stamp,
                deal_id=deal_id,
                person_id=person_id,
                org_id=org_id,
            )
            self._company.next_id["notes"] = id_ + 1
            return self._save_note(rec, stamp, stamp)

    def edit_note(self, id: int, content: str, user_id: int | None = None) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("notes", id)
            rec["content"] = content
            if user_id is not None:
                rec["last_update_user_id"] = user_id
            return self._save_note(rec, cols["at"], self._stamp(id, v1=True))

    def delete_note(self, id: int) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("notes", id)
            rec["active_flag"] = False
            return self._save_note(rec, cols["at"], self._stamp(id, v1=True))

    # -- mutations: pipelines, stages, fields -------------------------------------------------

    def _rename(self, entity: str, id_: int, name: str) -> dict[str, Any]:
        with self.store.lock:
            found = self.store.get(entity, id_)
            if found is None:
                raise KeyError(f"{_SINGULAR[entity]} {id_} not found")
            rec, cols = found
            stamp = self._stamp(id_, v1=True)  # pipelines and stages show whole seconds
            rec.update(name=name, update_time=v2_time(stamp))
            self.store.put(entity, rec, stamp, cols["at"])
            return rec

    def rename_stage(self, id: int, name: str) -> dict[str, Any]:  # noqa: A002
        return self._rename("stages", id, name)

    def rename_pipeline(self, id: int, name: str) -> dict[str, Any]:  # noqa: A002
        return self._rename("pipelines", id, name)

    def add_deal_field_option(self, field_code: str, label: str) -> dict[str, Any]:
        """Add an option to an enum/set custom field; returns the field definition."""
        with self.store.lock:
            sql = "SELECT id, kind, json FROM fields WHERE code = ?"
            rows = self.store.query(sql, [field_code])
            if not rows:
                raise KeyError(f"field {field_code} not found")
            fid, kind, raw = rows[0]
            rec = json.loads(raw)
            if rec["field_type"] not in ("enum", "set"):
                raise ValueError(f"field {field_code} is a {rec['field_type']}, not enum/set")
            option = {"id": self._company.next_option_id, "label": label, "color": None}
            self._company.next_option_id += 1
            rec["options"] = [*rec["options"], option]
            self.store.put("fields", rec, id=fid, kind=kind)
            for f in self._company.deal_fields + self._company.person_fields:
                if f["field_code"] == field_code:
                    f["options"] = rec["options"]
            for f in self._company.org_fields:
                if f["field_code"] == field_code:
                    f["options"] = rec["options"]
            return api.strip_namespaces(api.dumps(rec))

    # -- benchmark helper ---------------------------------------------------------------------

    def _random_id(self, entity: str, rng: random.Random) -> int | None:
        top = self._company.next_id[entity] - 1
        if top < 1:
            return None
        where = "status != 'deleted'" if entity == "deals" else "gone = 0"
        for _ in range(30):
            id_ = rng.randint(1, top)
            if self.store.scalar(f"SELECT 1 FROM {entity} WHERE id = ? AND {where}", [id_]):
                return id_
        return None

    def random_mutations(self, n: int, rng: random.Random) -> list[tuple[str, int]]:
        """Apply ``n`` realistic random changes; returns (method name, record id) pairs."""
        ops = [
            ("update_deal", 25),
            ("move_deal", 14),
            ("set_deal_status", 10),
            ("add_deal", 8),
            ("archive_deal", 2),
            ("delete_deal", 2),
            ("update_person", 6),
            ("add_person", 3),
            ("delete_person", 1),
            ("update_organization", 4),
            ("add_organization", 1),
            ("add_activity", 6),
            ("update_activity", 5),
            ("delete_activity", 1),
            ("add_note", 6),
            ("edit_note", 3),
            ("delete_note", 1),
            ("rename_stage", 1),
        ]
        names = [o[0] for o in ops]
        weights = [o[1] for o in ops]
        deal_custom = self._company.custom("deal")
        done: list[tuple[str, int]] = []
        while len(done) < n:
            op = rng.choices(names, weights)[0]
            entity = next(e for e, one in _SINGULAR.items() if one in op)
            if op.startswith("add_"):
                rec = self._random_add(op, rng)
                done.append((op, rec["id"]))
                continue
            if op == "rename_stage":
                sid = rng.choice(list(self._company.stage_pipeline))
                self.rename_stage(sid, f"{rng.choice(['Phase', 'Step', 'Stage'])} {sid}")
                done.append((op, sid))
                continue
            id_ = self._random_id(entity, rng)
            if id_ is None:
                continue
            if op == "update_deal":
                choice = rng.random()
                if choice < 0.4:
                    self.update_deal(id_, value=round(rng.lognormvariate(11, 1.2)))
                elif choice < 0.6:
                    self.update_deal(id_, title=f"Revised offer #{rng.randint(1, 9999)}")
                elif choice < 0.85 and deal_custom:
                    f = rng.choice(deal_custom)
                    value = company.custom_value(f, rng, self.now_ms())
                    self.update_deal(id_, custom_fields={f["field_code"]: value})
                else:
                    self.update_deal(id_, expected_close_date=v1_time(self.now_ms())[:10])
            elif op == "move_deal":
                self.move_deal(id_, rng.choice(list(self._company.stage_pipeline)))
            elif op == "set_deal_status":
                status = rng.choice(["won", "lost", "open"])
                reason = rng.choice(company.LOST_REASONS) if status == "lost" else None
                self.set_deal_status(id_, status, lost_reason=reason)
            elif op == "archive_deal":
                self.archive_deal(id_)
            elif op == "delete_deal":
                self.delete_deal(id_)
            elif op == "update_person":
                self.update_person(id_, job_title=rng.choice(company.JOB_TITLES[:-1]))
            elif op == "delete_person":
                self.delete_person(id_)
            elif op == "update_organization":
                self.update_organization(id_, employee_count=rng.randint(5, 5000))
            elif op == "update_activity":
                self.update_activity(id_, done=True)
            elif op == "delete_activity":
                self.delete_activity(id_)
            elif op == "edit_note":
                self.edit_note(id_, f"<p>Updated: <b>{rng.randint(1, 999)}</b> units</p>")
            elif op == "delete_note":
                self.delete_note(id_)
            done.append((op, id_))
        return done

    def _random_add(self, op: str, rng: random.Random) -> dict[str, Any]:
        if op == "add_deal":
            pid = rng.choice(list(company.PIPELINE_WEIGHTS))
            return self.add_deal(
                title=f"{rng.choice(company.DEAL_SUBJECTS)} (new)",
                value=round(rng.lognormvariate(11, 1.2)),
                currency=rng.choices(company.CURRENCIES, company.CURRENCY_WEIGHTS)[0],
                owner_id=rng.choice(self._company.user_ids),
                pipeline_id=pid,
            )
        if op == "add_person":
            first = rng.choice(company.FIRST_NAMES)
            return self.add_person(f"{first} {rng.choice(company.LAST_NAMES)}")
        if op == "add_organization":
            return self.add_organization(
                f"{rng.choice(company.GULF_ROOTS)} {rng.choice(company.GULF_SUFFIXES)}"
            )
        if op == "add_activity":
            deal_id = self._random_id("deals", rng)
            return self.add_activity(rng.choice(company.ACTIVITY_SUBJECTS), deal_id=deal_id)
        deal_id = self._random_id("deals", rng)
        return self.add_note(f"<p>Follow-up {rng.randint(1, 999)}</p>", deal_id=deal_id)

    # -- faults, rate limit, request log ------------------------------------------------------

    def inject(self, path: str, kind: str, times: int = 1, after: int = 0) -> None:
        """Make the next ``times`` requests to ``path`` fail, after ``after`` good ones."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self._faults.append(_Fault(path, kind, times, after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request served (the last 100,000): method, path, query, status, headers."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            chosen = None
            for fault in self._faults:
                if fault.path != path:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                elif chosen is None and fault.times > 0:
                    chosen = fault
                    fault.times -= 1
            self._faults = [f for f in self._faults if f.times > 0]
        return chosen.kind if chosen else None

    def _take_slot(self, token: str) -> tuple[bool, list[tuple[str, str]]]:
        """Count a request in the token's rolling window; False when over the burst limit."""
        limit = self.burst_limit
        if limit is None:
            return True, []
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(token, deque())
            while window and window[0] <= now - BURST_WINDOW_S:
                window.popleft()
            allowed = len(window) < limit
            if allowed:
                window.append(now)
            else:
                self.rate_limited += 1
            remaining = max(0, limit - len(window))
            reset = math.ceil(window[0] + BURST_WINDOW_S - now) if window else 1
        headers = [
            ("x-ratelimit-limit", str(limit)),
            ("x-ratelimit-remaining", str(remaining)),
            ("x-ratelimit-reset", str(max(1, reset))),
        ]
        return allowed, headers

    def handle(self, method: str, target: str, headers: Mapping[str, str]) -> api.Reply:
        """Answer one HTTP request (no I/O): what FakeServer sends back."""
        path, _, query = target.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        params = {k: v for k, v in pairs if v != ""}
        lower = {k.lower(): v for k, v in headers.items()}
        reply = self._dispatch(method, path, params, lower, any(k == "api_token" for k, _ in pairs))
        entry = {
            "method": method,
            "path": path,
            "query": query,
            "status": None if reply.action == "reset" else reply.status,
            "headers": lower,
        }
        with self._lock:
            self._log.append(entry)
        return reply

    def _dispatch(
        self, method: str, path: str, params: dict[str, str], headers: dict[str, str], in_url: bool
    ) -> api.Reply:
        if in_url:
            self.token_in_url_seen = True
        token = headers.get("x-api-token")
        auth = headers.get("authorization", "")
        if token is None and auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        if token is None:
            token = params.get("api_token")
        if token != self.token:
            return api.Reply(401, api.UNAUTHORIZED)
        allowed, rate_headers = self._take_slot(token)
        if not allowed:
            return api.Reply(429, api.OVER_LIMIT, rate_headers)
        fault = self._take_fault(path)
        if fault is not None:
            return self._fault_reply(fault, method, path, params, rate_headers)
        reply = api.route(self, method, path, params)
        reply.headers.extend(rate_headers)
        return reply

    def _fault_reply(
        self,
        kind: str,
        method: str,
        path: str,
        params: dict[str, str],
        rate_headers: list[tuple[str, str]],
    ) -> api.Reply:
        if kind == "429":
            return api.Reply(429, api.OVER_LIMIT)
        if kind == "429-reset":
            limit = str(self.burst_limit or 40)
            headers = [
                ("x-ratelimit-limit", limit),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1"),
            ]
            return api.Reply(429, api.OVER_LIMIT, headers)
        if kind == "500":
            return api.Reply(500, api.error_body("Internal server error", errorCode=500))
        if kind == "502":
            return api.Reply(502, _HTML_502, content_type="text/html")
        if kind == "503":
            return api.Reply(503, _HTML_503, content_type="text/html")
        if kind == "401":
            return api.Reply(401, api.UNAUTHORIZED)
        if kind == "reset":
            return api.Reply(0, b"", action="reset")
        if kind == "invalid_json":
            return api.Reply(200, _NOT_JSON, rate_headers)
        reply = api.route(self, method, path, params)
        reply.headers.extend(rate_headers)
        reply.action = "hold" if kind == "timeout" else "truncated"
        return reply
