"""What FakePipedrive's mutation methods do: change a record the way the Pipedrive UI or API
would, with the fake clock's time as its new update_time, so a sync sees it as a change.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from .company import Company
from .endpoints import embed, rows_sql, strip_namespaces
from .entities import BY_NAME, NOTES
from .history import History
from .records import (
    activity_record,
    deal_record,
    note_record,
    organization_record,
    person_record,
    precise,
    prune,
)
from .store import Store
from .wire import dumps, trunc, v1_time, v2_time


def check_fields(kind: str, fields: dict[str, Any], entity: str) -> None:
    unknown = set(fields) - BY_NAME[entity].writable
    if unknown:
        raise ValueError(f"unsupported {kind} fields: {', '.join(sorted(unknown))}")


def merge_custom(rec: dict, values: dict[str, Any] | None, codes: set[str]) -> None:
    """PATCH semantics: only the given custom fields change; None clears one."""
    unknown = set(values or {}) - codes
    if unknown:
        raise ValueError(f"unknown custom field codes: {', '.join(sorted(unknown))}")
    rec["custom_fields"] = {**(rec.get("custom_fields") or {}), **(values or {})}


class Mutations:
    """Mixed into FakePipedrive: add, update and delete records of the generated company."""

    store: Store
    history: History
    _company: Company

    def now_ms(self) -> int:
        raise NotImplementedError

    def user_embeds(self) -> dict[int, bytes]:
        raise NotImplementedError

    def _stamp(self, id_: int, v1: bool = False) -> int:
        return trunc(self.now_ms(), False if v1 else precise(id_))

    # -- mutations: deals ---------------------------------------------------------------------

    def _load(self, entity: str, id_: int) -> tuple[dict[str, Any], dict[str, Any]]:
        declared = BY_NAME[entity]
        found = self.store.get(declared.table.name, id_)
        if found is None:
            raise KeyError(f"{declared.singular} {id_} not found")
        live = f"SELECT {declared.live} FROM {declared.table.name} WHERE id = ?"
        if not self.store.scalar(live, [id_]):
            raise KeyError(f"{declared.singular} {id_} is deleted")
        return found

    def _save_deal(self, rec: dict, cols: dict, stamp: int, deleted_at: int | None = None) -> dict:
        """Where every change of a deal is written: its changelog hears of it here."""
        rec["update_time"] = v2_time(stamp, precise(rec["id"]))
        rec = prune("deals", rec)
        before = self.store.get("deals", rec["id"])
        self.store.put("deals", rec, stamp, cols["at"], deleted_at=deleted_at)
        self.history.record_change(before[0] if before else None, rec, trunc(stamp, True))
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
        check_fields("deal", fields, "deals")
        for key, value in fields.items():
            if key == "custom_fields":
                merge_custom(rec, value, self._codes("deal"))
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
        check_fields("person", fields, "persons")
        if "name" in fields:
            first, _, last = fields["name"].partition(" ")
            rec.update(first_name=first, last_name=last)
        for key, value in fields.items():
            if key == "custom_fields":
                merge_custom(rec, value, self._codes("person"))
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
        check_fields("organization", fields, "organizations")
        for key, value in fields.items():
            if key == "custom_fields":
                merge_custom(rec, value, self._codes("org"))
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
        check_fields("activity", fields, "activities")
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
        rows = self.store.query(rows_sql(NOTES, "id = ?", "id ASC", False), [id_])
        return json.loads(embed(NOTES, rows[0], self.user_embeds()))

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
                raise KeyError(f"{BY_NAME[entity].singular} {id_} not found")
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
            return strip_namespaces(BY_NAME["deal_fields"], dumps(rec))
