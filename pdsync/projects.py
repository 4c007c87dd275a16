"""The specs of projects and tasks (Pipedrive Projects, v2), apart from entities.py's.

Neither list takes ``updated_since`` nor a sort (cursor pages in id order), so each is read
whole and reconciled: a project or task missing from a complete read is flagged
``is_deleted``. Reading them whole on every run would cost a request per 500 records each
time; they are refreshed on the hourly rotation instead (plan.py), a large account's a few
pages a run (paced.py).
"""

from __future__ import annotations

from datetime import timedelta

from .entities import EntitySpec, Row, Stream, _field_definitions

# Project work moves by the day, not the minute: an hour behind keeps incremental runs cheap.
PROJECTS_REFRESH = timedelta(hours=1)


def _first(row: Row, record: dict, name: str, key: str) -> None:
    ids = record.get(key)
    row[name] = ids[0] if isinstance(ids, list) and ids and isinstance(ids[0], int) else None


def _projects_transform(row: Row, record: dict) -> None:
    # Pipedrive links a project to deals, persons and organizations by arrays (kept as JSON);
    # the first of each is a column with a foreign key, so Datasette labels it.
    _first(row, record, "deal_id", "deal_ids")
    _first(row, record, "person_id", "person_ids")
    _first(row, record, "org_id", "org_ids")
    row["is_archived"] = int(record.get("archive_time") is not None)
    row["is_deleted"] = int(record.get("status") == "deleted")


def projects() -> EntitySpec:
    return EntitySpec(
        name="projects",
        streams=(Stream("/api/v2/projects"), Stream("/api/v2/projects/archived")),
        incremental=False,
        columns={
            "id": int,
            "title": str,
            "description": str,
            "status": str,  # open, completed, canceled
            "board_id": int,
            "phase_id": int,
            "owner_id": int,
            "start_date": str,
            "end_date": str,
            "deal_id": int,  # the first of deal_ids
            "person_id": int,  # the first of person_ids
            "org_id": int,  # the first of org_ids
            "deal_ids": str,
            "person_ids": str,
            "org_ids": str,
            "label_ids": str,
            "health_status": int,
            "add_time": str,
            "update_time": str,
            "status_change_time": str,
            "archive_time": str,
            "is_archived": int,
            "is_deleted": int,
            "custom_fields": str,
        },
        foreign_keys=(
            ("owner_id", "users", "id"),
            ("deal_id", "deals", "id"),
            ("person_id", "persons", "id"),
            ("org_id", "organizations", "id"),
        ),
        indexes=(("deal_id",), ("owner_id",), ("update_time",)),
        fields_table="project_fields",
        record_path="/api/v2/projects/{id}",  # archived or not; a deleted one says so
        transform=_projects_transform,
        refresh=PROJECTS_REFRESH,
        description="Projects (delivery after a won deal), archived ones flagged is_archived.",
    )


def _tasks_transform(row: Row, record: dict) -> None:
    _first(row, record, "assignee_id", "assignee_ids")
    row["is_deleted"] = 0  # listed: a deleted task is only missing from the list


def tasks() -> EntitySpec:
    return EntitySpec(
        name="tasks",
        streams=(Stream("/api/v2/tasks"),),
        incremental=False,
        columns={
            "id": int,
            "title": str,
            "project_id": int,
            "parent_task_id": int,
            "creator_id": int,
            "assignee_id": int,  # the first of assignee_ids
            "assignee_ids": str,
            "description": str,
            "is_done": int,
            "is_milestone": int,
            "priority": int,
            "due_date": str,
            "start_date": str,
            "add_time": str,
            "update_time": str,
            "marked_as_done_time": str,
            "is_deleted": int,
        },
        foreign_keys=(
            ("project_id", "projects", "id"),
            ("parent_task_id", "tasks", "id"),
            ("creator_id", "users", "id"),
            ("assignee_id", "users", "id"),
        ),
        indexes=(("project_id",), ("assignee_id",), ("due_date",)),
        transform=_tasks_transform,
        refresh=PROJECTS_REFRESH,
        description="Tasks of projects, subtasks pointing at their parent_task_id.",
    )


def project_specs() -> list[EntitySpec]:
    """Project fields, projects and tasks, in the order their tables are created."""
    return [
        _field_definitions("project_fields", "/api/v2/projectFields", "Project", PROJECTS_REFRESH),
        projects(),
        tasks(),
    ]
