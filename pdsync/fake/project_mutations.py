"""Mutations of projects and tasks, as the Pipedrive UI or API makes them: the fake clock's
time becomes the record's update_time. Mixed into FakePipedrive through Churn."""

from __future__ import annotations

from typing import Any

from .company import Company
from .entities import BY_NAME
from .projects import project_record, task_record
from .records import precise, prune
from .store import Store
from .wire import day, trunc, v2_time


def _check(fields: dict[str, Any], entity: str) -> None:
    unknown = set(fields) - BY_NAME[entity].writable
    if unknown:
        raise ValueError(f"unsupported {entity} fields: {', '.join(sorted(unknown))}")


class ProjectMutations:
    """Add, edit, archive and delete projects; add, edit, complete and delete tasks."""

    store: Store
    _company: Company

    def now_ms(self) -> int:
        raise NotImplementedError

    def _project(self, id_: int) -> tuple[dict[str, Any], dict[str, Any]]:
        found = self.store.get("projects", id_)
        if found is None or found[1]["status"] == "deleted":
            raise KeyError(f"project {id_} not found")
        return found

    def _save_project(self, rec: dict, at: int) -> dict[str, Any]:
        stamp = trunc(self.now_ms(), precise(rec["id"]))
        rec["update_time"] = v2_time(stamp, precise(rec["id"]))
        rec = prune("projects", rec)
        self.store.put("projects", rec, stamp, at)
        return rec

    def add_project(
        self, title: str = "New project", deal_id: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """A project, linked to ``deal_id`` (and its person and organization) when given."""
        _check(fields, "projects")
        with self.store.lock:
            id_ = self._company.next_id["projects"]
            stamp = trunc(self.now_ms(), precise(id_))
            deal = self.store.get("deals", deal_id)[1] if deal_id else {}
            rec = project_record(
                id_,
                title=title,
                status="open",
                owner_id=fields.pop("owner_id", deal.get("owner_id") or 1),
                phase_id=1,
                start_date=day(stamp),
                end_date=None,
                deal_ids=[deal_id] if deal_id else [],
                person_ids=[deal["person_id"]] if deal.get("person_id") else [],
                org_ids=[deal["org_id"]] if deal.get("org_id") else [],
                label_ids=[],
                health_status=None,
                add_time=stamp,
                update_time=stamp,
                status_change_time=stamp,
                archive_time=None,
                custom_fields={f["field_code"]: None for f in self._company.custom("project")},
            )
            rec.update(fields)
            self._company.next_id["projects"] = id_ + 1
            return self._save_project(rec, stamp)

    def update_project(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        """Change a project's title, status, phase, dates, links or custom fields."""
        _check(fields, "projects")
        with self.store.lock:
            rec, cols = self._project(id)
            if "custom_fields" in fields:
                fields["custom_fields"] = {
                    **rec.get("custom_fields", {}),
                    **fields["custom_fields"],
                }
            if fields.get("status", rec["status"]) != rec["status"]:
                rec["status_change_time"] = v2_time(self.now_ms(), precise(id))
            rec.update(fields)
            return self._save_project(rec, cols["at"])

    def archive_project(self, id: int, archived: bool = True) -> dict[str, Any]:  # noqa: A002
        """Move a project to (or back from) /api/v2/projects/archived."""
        with self.store.lock:
            rec, cols = self._project(id)
            rec["archive_time"] = v2_time(self.now_ms(), precise(id)) if archived else None
            return self._save_project(rec, cols["at"])

    def delete_project(self, id: int) -> dict[str, Any]:  # noqa: A002
        """Delete a project: only ``status=deleted`` lists it now; its tasks go with it."""
        with self.store.lock:
            rec, cols = self._project(id)
            rec["status"] = "deleted"
            self.store.query(
                "UPDATE tasks SET deleted_at = ? WHERE project_id = ? AND deleted_at IS NULL",
                [self.now_ms(), id],
            )
            return self._save_project(rec, cols["at"])

    # -- tasks --------------------------------------------------------------------------------

    def _task(self, id_: int) -> tuple[dict[str, Any], dict[str, Any]]:
        found = self.store.get("tasks", id_)
        if found is None or found[1]["deleted_at"] is not None:
            raise KeyError(f"task {id_} not found")
        return found

    def _save_task(self, rec: dict, at: int) -> dict[str, Any]:
        stamp = self.now_ms()  # task times carry milliseconds
        rec["update_time"] = v2_time(stamp, True)
        self.store.put("tasks", rec, stamp, at)
        return rec

    def add_task(self, project_id: int, title: str = "New task", **fields: Any) -> dict[str, Any]:
        """A task in a project (assignee_ids, due_date, parent_task_id, priority...)."""
        _check(fields, "tasks")
        with self.store.lock:
            project, _ = self._project(project_id)
            id_ = self._company.next_id["tasks"]
            stamp = self.now_ms()
            rec = task_record(
                id_,
                title=title,
                creator_id=project["owner_id"],
                project_id=project_id,
                is_done=False,
                is_milestone=False,
                due_date=None,
                start_date=None,
                parent_task_id=None,
                assignee_ids=[project["owner_id"]],
                priority=None,
                add_time=stamp,
                update_time=stamp,
                done_time=None,
            )
            rec.update(fields)
            self._company.next_id["tasks"] = id_ + 1
            return self._save_task(rec, stamp)

    def update_task(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        _check(fields, "tasks")
        with self.store.lock:
            rec, cols = self._task(id)
            if "is_done" in fields and fields["is_done"] != rec["is_done"]:
                done = fields["is_done"]
                rec["marked_as_done_time"] = v2_time(self.now_ms(), True) if done else None
            rec.update(fields)
            return self._save_task(rec, cols["at"])

    def complete_task(self, id: int) -> dict[str, Any]:  # noqa: A002
        return self.update_task(id, is_done=True)

    def delete_task(self, id: int) -> None:  # noqa: A002
        with self.store.lock:
            rec, cols = self._task(id)
            self.store.put("tasks", rec, cols["ut"], cols["at"], deleted_at=self.now_ms())
