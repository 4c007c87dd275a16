"""random_mutations: realistic random changes for the benchmarks and the property tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from . import company
from .entities import BY_NAME
from .project_mutations import ProjectMutations
from .sales_mutations import SalesMutations
from .wire import v1_time

# (mutation method, weight): how often each kind of change happens.
_OPS = [
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
    ("add_line_item", 4),
    ("update_line_item", 2),
    ("remove_line_item", 1),
    ("update_product", 1),
    ("add_lead", 3),
    ("update_lead", 2),
    ("archive_lead", 1),
    ("convert_lead", 1),
    ("add_project", 1),
    ("update_project", 1),
    ("archive_project", 1),
    ("add_task", 2),
    ("update_task", 1),
    ("complete_task", 2),
]
# Which entity a method changes, by the singular in its name (first match wins).
_ENTITY_OF = {op: next(e.name for e in BY_NAME.values() if e.singular in op) for op, _ in _OPS}


class Churn(SalesMutations, ProjectMutations):
    """Mixed into FakePipedrive: random calls of the mutation methods."""

    def _random_id(self, entity: str, rng: random.Random) -> int | None:
        top = self._company.next_id[entity] - 1
        if top < 1:
            return None
        declared = BY_NAME[entity]
        sql = f"SELECT 1 FROM {declared.table.name} WHERE id = ? AND {declared.live}"
        for _ in range(30):
            id_ = rng.randint(1, top)
            if self.store.scalar(sql, [id_]):
                return id_
        return None

    def _live_deal(self, rng: random.Random) -> int | None:
        """A deal that is not deleted (line items go on those)."""
        for _ in range(30):
            id_ = self._random_id("deals", rng)
            if id_ is not None and not self.store.scalar(
                "SELECT deleted_at FROM deals WHERE id = ?", [id_]
            ):
                return id_
        return None

    def random_mutations(self, n: int, rng: random.Random) -> list[tuple[str, int | str]]:
        """Apply ``n`` realistic random changes; returns (method name, record id) pairs."""
        names = [o[0] for o in _OPS]
        weights = [o[1] for o in _OPS]
        changes = self._changes()
        done: list[tuple[str, int | str]] = []
        while len(done) < n:
            op = rng.choices(names, weights)[0]
            if op.startswith("add_"):
                rec = self._random_add(op, rng)
                done.append((op, rec["id"]))
                continue
            if op == "rename_stage":
                sid = rng.choice(list(self._company.stage_pipeline))
                self.rename_stage(sid, f"{rng.choice(['Phase', 'Step', 'Stage'])} {sid}")
                done.append((op, sid))
                continue
            id_ = self._random_id(_ENTITY_OF[op], rng)
            if id_ is None:
                continue
            try:
                changes[op](id_, rng)
            except KeyError:  # e.g. a line item of a deleted deal: Pipedrive would refuse too
                continue
            done.append((op, self._lead_id(id_) if _ENTITY_OF[op] == "leads" else id_))
        return done

    def _changes(self) -> dict[str, Callable[[int, random.Random], Any]]:
        """How each update/delete method is called on a random live record."""
        return {
            "update_deal": self._random_deal_update,
            "move_deal": lambda id_, rng: self.move_deal(
                id_, rng.choice(list(self._company.stage_pipeline))
            ),
            "set_deal_status": self._random_status,
            "archive_deal": lambda id_, rng: self.archive_deal(id_),
            "delete_deal": lambda id_, rng: self.delete_deal(id_),
            "update_person": lambda id_, rng: self.update_person(
                id_, job_title=rng.choice(company.JOB_TITLES[:-1])
            ),
            "delete_person": lambda id_, rng: self.delete_person(id_),
            "update_organization": lambda id_, rng: self.update_organization(
                id_, employee_count=rng.randint(5, 5000)
            ),
            "update_activity": lambda id_, rng: self.update_activity(id_, done=True),
            "delete_activity": lambda id_, rng: self.delete_activity(id_),
            "edit_note": lambda id_, rng: self.edit_note(
                id_, f"<p>Updated: <b>{rng.randint(1, 999)}</b> units</p>"
            ),
            "delete_note": lambda id_, rng: self.delete_note(id_),
            "update_line_item": lambda id_, rng: self.update_line_item(
                id_, quantity=rng.randint(1, 40), discount=rng.choice((0, 5, 10))
            ),
            "remove_line_item": lambda id_, rng: self.remove_line_item(id_),
            "update_product": lambda id_, rng: self.update_product(id_, tax=rng.choice((0, 5, 15))),
            "update_lead": lambda id_, rng: self.update_lead(
                self._lead_id(id_), was_seen=True, value=(rng.randint(1, 900) * 1000, "SAR")
            ),
            "archive_lead": lambda id_, rng: self.archive_lead(self._lead_id(id_)),
            "convert_lead": lambda id_, rng: self.convert_lead(self._lead_id(id_)),
            "update_project": lambda id_, rng: self.update_project(
                id_, phase_id=rng.choice((1, 2, 3)), health_status=rng.choice((1, 2, 3))
            ),
            "archive_project": lambda id_, rng: self.archive_project(id_),
            "update_task": lambda id_, rng: self.update_task(id_, priority=rng.randint(1, 3)),
            "complete_task": lambda id_, rng: self.complete_task(id_),
        }

    def _lead_id(self, key: int) -> str:
        """The UUID of the lead the store keeps under ``key``."""
        return self.store.scalar("SELECT uuid FROM leads WHERE id = ?", [key])

    def _random_deal_update(self, id_: int, rng: random.Random) -> None:
        deal_custom = self._company.custom("deal")
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

    def _random_status(self, id_: int, rng: random.Random) -> None:
        status = rng.choice(["won", "lost", "open"])
        reason = rng.choice(company.LOST_REASONS) if status == "lost" else None
        self.set_deal_status(id_, status, lost_reason=reason)

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
        if op == "add_lead":
            labels = [r["id"] for r in self.records("lead_labels")]
            return self.add_lead(
                f"{rng.choice(company.DEAL_SUBJECTS)} (inbound)",
                owner_id=rng.choice(self._company.user_ids),
                organization_id=self._random_id("organizations", rng),
                label_ids=rng.sample(labels, 1),
            )
        if op == "add_project":
            deal_id = self._live_deal(rng)
            return self.add_project(f"Installation #{rng.randint(1, 999)}", deal_id=deal_id)
        if op == "add_task":
            project_id = self._random_id("projects", rng)
            if project_id is None:
                return self.add_project("Onboarding")  # no project yet: still a change
            return self.add_task(project_id, f"Follow-up {rng.randint(1, 99)}")
        if op == "add_line_item":
            deal_id = self._live_deal(rng)
            product_id = self._random_id("products", rng)
            if deal_id is None or product_id is None:
                return self.add_deal(title="New deal")  # an empty company: still a change
            return self.add_line_item(deal_id, product_id, quantity=rng.randint(1, 20))
        deal_id = self._random_id("deals", rng)
        return self.add_note(f"<p>Follow-up {rng.randint(1, 999)}</p>", deal_id=deal_id)
