"""Projects and tasks: both lists land whole, with their links labelled; changes arrive when
the hourly rotation comes round (or when named); what Pipedrive stops listing is flagged."""

from __future__ import annotations

import json

import httpx
import sqlite_utils
from helpers import age_last_success, differences, gone_but_not_flagged


def _rows(db_path, table):
    return {r["id"]: r for r in sqlite_utils.Database(db_path).query(f"select * from {table}")}


def test_full_sync_equals_the_fake(fake, run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake, ["projects", "tasks"]) == []
    projects = fake.records("projects")
    assert set(_rows(db_path, "projects")) == {p["id"] for p in projects}
    assert any(p["archive_time"] for p in projects) and not all(p["archive_time"] for p in projects)
    # A deleted project is listed only when asked with status=deleted: not synced as live.
    assert not [p for p in projects if p["status"] == "deleted"]
    assert set(_rows(db_path, "tasks")) == {t["id"] for t in fake.records("tasks")}
    fks = {(fk.column, fk.other_table) for fk in db["projects"].foreign_keys}
    assert fks >= {
        ("owner_id", "users"),
        ("deal_id", "deals"),
        ("person_id", "persons"),
        ("org_id", "organizations"),
    }
    fks = {(fk.column, fk.other_table) for fk in db["tasks"].foreign_keys}
    assert fks >= {("project_id", "projects"), ("creator_id", "users"), ("assignee_id", "users")}


def test_project_custom_fields_are_readable_columns(fake, run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    columns = {
        r["field_code"]: r["column_name"]
        for r in db.query("select * from project_fields where column_name is not null")
    }
    assert set(columns.values()) == {"site", "contract_type"}
    options = {
        o["id"]: o["label"] for f in fake.records("project_fields") for o in f.get("options") or []
    }
    rows = _rows(db_path, "projects")
    seen = 0
    for project in fake.records("projects"):
        for code, value in project["custom_fields"].items():
            got = rows[project["id"]][columns[code]]
            assert got == (options.get(value, value) if value is not None else None)
            seen += value is not None
    assert seen


def test_only_names_them_and_changes_converge(fake, run_sync, db_path):
    assert run_sync().ok
    project = fake.records("projects")[0]["id"]
    added = fake.add_project("Handover of tower B", deal_id=3)
    fake.update_project(project, title="Renamed project", phase_id=2)
    archived = fake.records("projects")[1]["id"]
    fake.archive_project(archived)
    gone = fake.records("projects")[2]["id"]
    fake.delete_project(gone)
    task = fake.add_task(added["id"], "Snag list", due_date="2026-01-05")
    done = next(t["id"] for t in fake.records("tasks") if not t["is_done"])
    fake.complete_task(done)
    edited = fake.records("tasks")[0]["id"]
    fake.update_task(edited, title="Kick-off (moved)", priority=2)
    result = run_sync(only=["projects", "tasks"])
    assert result.ok and set(result.entities) == {"projects", "tasks"}
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake, ["projects", "tasks"]) == []
    assert gone_but_not_flagged(db, fake, "projects") == []
    assert gone_but_not_flagged(db, fake, "tasks") == []
    projects, tasks = _rows(db_path, "projects"), _rows(db_path, "tasks")
    assert projects[archived]["is_archived"] == 1 and projects[gone]["is_deleted"] == 1
    assert projects[added["id"]]["deal_id"] == 3
    assert tasks[task["id"]]["project_id"] == added["id"]
    assert tasks[done]["is_done"] == 1 and tasks[done]["marked_as_done_time"]


def test_refreshed_on_the_hourly_rotation(fake, run_sync, db_path):
    assert run_sync().ok
    fake.add_task(fake.records("projects")[0]["id"], "Late addition")
    soon = run_sync()
    assert "tasks" not in soon.entities  # fetched a moment ago: not due
    assert differences(sqlite_utils.Database(db_path), fake, ["tasks"]) != []
    age_last_success(db_path, ["projects", "tasks", "project_fields"])
    later = run_sync()
    assert {"projects", "tasks"} <= set(later.entities), sorted(later.entities)
    assert differences(sqlite_utils.Database(db_path), fake, ["projects", "tasks"]) == []


def test_fake_filters_projects_and_tasks(fake, server):
    with httpx.Client(base_url=server.url, headers={"x-api-token": fake.token}) as client:

        def listed(path, **params):
            body = client.get(path, params={"limit": 500, **params})
            assert body.status_code == 200, body.text
            return body.json()["data"]

        every = listed("/api/v2/projects", status="open,completed,canceled,deleted")
        assert {p["status"] for p in every} >= {"deleted", "open"}
        assert all(p["status"] != "deleted" for p in listed("/api/v2/projects"))
        assert all(p["archive_time"] for p in listed("/api/v2/projects/archived"))
        first = listed("/api/v2/projects")[0]
        deal = first["deal_ids"][0]
        assert [p["id"] for p in listed("/api/v2/projects", deal_id=deal)] == [first["id"]]
        assert client.get("/api/v2/projects", params={"status": "won"}).status_code == 400
        tasks = listed("/api/v2/tasks")
        project = tasks[0]["project_id"]
        assert {t["project_id"] for t in listed("/api/v2/tasks", project_id=project)} == {project}
        assert all(t["is_done"] for t in listed("/api/v2/tasks", is_done="true"))
        assert all(
            t["parent_task_id"] is None for t in listed("/api/v2/tasks", parent_task_id="null")
        )
        user = tasks[0]["assignee_ids"][0]
        assert all(user in t["assignee_ids"] for t in listed("/api/v2/tasks", assignee_id=user))
        assert json.dumps(tasks[0])  # plain JSON


def test_a_project_archived_mid_pass_is_not_taken_for_deleted(fake, run_sync, db_path):
    """A paced pass reads the active and the archived projects over several runs. A project
    archived after the archived stream was done, ahead of the active cursor, is listed by
    neither cursor: before flagging it, the pass asks GET /api/v2/projects/{id}."""
    owner = fake.records("projects")[0]["owner_id"]
    for i in range(1100):  # three pages of 500 active projects: a pass over two runs
        fake.add_project(f"Fit-out {i}", owner_id=owner)
    assert run_sync().ok
    age_last_success(db_path, ["projects"])
    db = sqlite_utils.Database(db_path)
    first = run_sync()
    assert first.ok and "projects" in first.entities, first.errors
    cursors = dict(
        db.execute(
            "select stream, watermark from sync_streams"
            " where entity_type = 'projects' and stream like '%#cursor'"
        ).fetchall()
    )
    assert cursors.get("/api/v2/projects/archived#cursor") == ""  # the archived stream is done
    assert cursors.get("/api/v2/projects#cursor"), "the active stream should be half-way"
    active = [p["id"] for p in fake.records("projects") if not p["archive_time"]]
    moved, deleted = active[-1], active[-2]  # both ahead of the active cursor
    fake.archive_project(moved)
    fake.delete_project(deleted)
    runs = 0
    while db.execute(
        "select count(*) from sync_streams"
        " where entity_type = 'projects' and stream like '%#cursor'"
    ).fetchone()[0]:
        runs += 1
        assert runs <= 5, "the pass never finished"
        assert run_sync().ok
    rows = _rows(db_path, "projects")
    assert (rows[moved]["is_archived"], rows[moved]["is_deleted"]) == (1, 0)
    assert rows[deleted]["is_deleted"] == 1
    assert differences(db, fake, ["projects"]) == []
    assert gone_but_not_flagged(db, fake, "projects") == []
