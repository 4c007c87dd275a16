"""Projects and tasks of the demo company: their records in the API's shape (v2, as
GET /api/v2/projects and /api/v2/tasks return them), the project field definitions, and the
record generators, registered after every other generator so that the records the others
make stay the same for a given seed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .catalogue import field_rows
from .company import field_definition, makers
from .generators import YEAR_MS, Gen, generates
from .records import precise, prune
from .wire import DAY_MS, day, trunc, v2_time

# What a Gulf MEP contractor delivers after a won deal, and the steps of each delivery.
PROJECT_KINDS = ("Installation", "Commissioning", "Maintenance contract", "Site survey")
TASK_STEPS = (
    "Kick-off meeting",
    "Site survey",
    "Submit shop drawings",
    "Order equipment",
    "Install",
    "Test and commission",
    "Handover to client",
    "Collect final payment",
)
PHASES = (1, 2, 3, 4)  # board 1's phases: planning, delivery, handover, done
LABELS = (1, 2, 3)


def project_record(
    id_: int,
    *,
    title: str,
    status: str,
    owner_id: int,
    phase_id: int,
    start_date: str,
    end_date: str | None,
    deal_ids: list[int],
    person_ids: list[int],
    org_ids: list[int],
    label_ids: list[int],
    health_status: int | None,
    add_time: int,
    update_time: int,
    status_change_time: int,
    archive_time: int | None,
    custom_fields: dict[str, Any],
) -> dict[str, Any]:
    """A project exactly as GET /api/v2/projects returns it."""
    ms = precise(id_)
    return prune(
        "projects",
        {
            "id": id_,
            "title": title,
            "description": f"Delivery of {title.lower()}",
            "status": status,
            "board_id": 1,
            "phase_id": phase_id,
            "owner_id": owner_id,
            "start_date": start_date,
            "end_date": end_date,
            "deal_ids": deal_ids,
            "person_ids": person_ids,
            "org_ids": org_ids,
            "label_ids": label_ids,
            "health_status": health_status,
            "add_time": v2_time(add_time, ms),
            "update_time": v2_time(update_time, ms),
            "status_change_time": v2_time(status_change_time, ms),
            "archive_time": None if archive_time is None else v2_time(archive_time, ms),
            "custom_fields": custom_fields,
        },
    )


def task_record(
    id_: int,
    *,
    title: str,
    creator_id: int,
    project_id: int,
    is_done: bool,
    is_milestone: bool,
    due_date: str | None,
    start_date: str | None,
    parent_task_id: int | None,
    assignee_ids: list[int],
    priority: int | None,
    add_time: int,
    update_time: int,
    done_time: int | None,
) -> dict[str, Any]:
    """A task exactly as GET /api/v2/tasks returns it (times with milliseconds)."""
    return {
        "id": id_,
        "title": title,
        "creator_id": creator_id,
        "description": None,
        "project_id": project_id,
        "is_done": is_done,
        "is_milestone": is_milestone,
        "due_date": due_date,
        "start_date": start_date,
        "parent_task_id": parent_task_id,
        "assignee_ids": assignee_ids,
        "priority": priority,
        "add_time": v2_time(add_time, True),
        "update_time": v2_time(update_time, True),
        "marked_as_done_time": None if done_time is None else v2_time(done_time, True),
    }


def _project_field(name: str, code: str, ftype: str, custom: bool, **more: Any) -> dict:
    """A /api/v2/projectFields definition: the namespaces its example shows."""
    rec = field_definition("activity", name, code, ftype, custom, **more)
    rec["important_fields"] = {"enabled": False, "stage_ids": []}
    rec["required_fields"] = {"enabled": name == "Title"}
    return rec


@generates("project_fields", lambda deals: 0)
def project_fields(g: Gen) -> Iterator[tuple]:
    opt = g.company.next_option_id
    built_in = [
        _project_field("Title", "title", "varchar", False),
        _project_field("Status", "status", "status", False),
        _project_field("Owner", "owner_id", "user", False),
        _project_field("Phase", "phase_id", "projects_phase", False),
        _project_field("Start date", "start_date", "date", False),
        _project_field("End date", "end_date", "date", False),
    ]
    custom = [
        _project_field("Site", f"{g.rng.getrandbits(160):040x}", "varchar", True),
        _project_field(
            "Contract type",
            f"{g.rng.getrandbits(160):040x}",
            "enum",
            True,
            options=[
                {"id": opt + i, "label": label, "color": None}
                for i, label in enumerate(("Supply only", "Supply and install", "Turnkey"))
            ],
        ),
    ]
    g.company.next_option_id = opt + 3
    g.company.project_fields = built_in + custom
    yield from field_rows(g, "project", g.company.project_fields)


# A share of won deals becomes a delivery project: realistic for accounts that use Projects
# (an add-on), and small next to deals, as Pipedrive's own projects lists are.
PROJECT_SHARE = 0.03


@generates("projects", lambda deals: max(4, deals // 8))  # an upper bound: ids are not all used
def projects(g: Gen) -> Iterator[tuple]:
    """Projects for some won deals, started when the deal was won: recent ones open, older
    ones completed (some archived), a few canceled or deleted."""
    r, pick = g.r, g.pick
    custom_fields = [f for f in g.company.project_fields if f["is_custom_field"]]
    made = makers(custom_fields, g.rng, g.now_ms, g.addresses)
    won = g.store.query(
        "SELECT id, ut, owner_id, person_id, org_id, title FROM deals WHERE status = 'won'"
        " ORDER BY id"
    )
    id_ = 0
    for deal_id, won_ut, owner_id, person_id, org_id, title in won:
        if r() >= PROJECT_SHARE and id_ >= 6:  # a few even in tiny companies
            continue
        id_ += 1
        at = trunc(won_ut, precise(id_))
        ut = trunc(g.between(at, g.latest, 1.5), precise(id_))
        age = g.now_ms - at
        status = "open" if age < YEAR_MS // 3 else pick(("completed", "completed", "canceled"))
        if id_ % 13 == 5:
            status = "deleted"
        # Fixed residues guarantee archived and deleted projects even in tiny companies.
        archived = (status == "completed" and age > YEAR_MS and r() < 0.5) or id_ % 7 == 3
        if archived:
            status = "completed"
        rec = project_record(
            id_,
            title=f"{pick(PROJECT_KINDS)}: {title.split(' – ')[-1]}",
            status=status,
            owner_id=owner_id or pick(g.owners),
            phase_id=PHASES[
                0 if status == "open" and r() < 0.5 else (1 if status == "open" else 3)
            ],
            start_date=day(at),
            end_date=day(at + (30 + int(r() * 90)) * DAY_MS) if r() < 0.8 else None,
            deal_ids=[deal_id],
            person_ids=[person_id] if person_id else [],
            org_ids=[org_id] if org_id else [],
            label_ids=[pick(LABELS)] if r() < 0.3 else [],
            health_status=pick((1, 2, 3)) if status == "open" else None,
            add_time=at,
            update_time=ut,
            status_change_time=ut,
            archive_time=ut if archived else None,
            custom_fields={code: make() if r() < 0.6 else None for code, make in made},
        )
        yield g.store.row("projects", rec, ut, at)


@generates("tasks", lambda deals: max(20, deals // 2))  # an upper bound
def tasks(g: Gen) -> Iterator[tuple]:
    """The delivery steps of each project, some with subtasks; done ones in order."""
    r, pick = g.r, g.pick
    id_ = 0
    rows = g.store.query("SELECT id, at, ut, status, owner_id FROM projects ORDER BY id")
    for project_id, at, ut, status, owner_id in rows:
        steps = 2 + int(r() * 4)
        done_steps = steps if status == "completed" else int(r() * steps)
        for step in range(steps):
            id_ += 1
            parent = None
            if step > 0 and r() < 0.2:
                parent = id_ - 1  # a subtask of the step before
            task_at = trunc(g.between(at, ut), True)
            done = step < done_steps
            due = at + (7 + 10 * step) * DAY_MS
            rec = task_record(
                id_,
                title=TASK_STEPS[step % len(TASK_STEPS)],
                creator_id=owner_id,
                project_id=project_id,
                is_done=done,
                is_milestone=step == steps - 1,
                due_date=day(due) if r() < 0.8 else None,
                start_date=day(task_at) if r() < 0.4 else None,
                parent_task_id=parent,
                assignee_ids=sorted({owner_id, pick(g.owners)}) if r() < 0.7 else [owner_id],
                priority=pick((1, 2, 3)) if r() < 0.3 else None,
                add_time=task_at,
                update_time=ut if done else task_at,
                done_time=ut if done else None,
            )
            yield g.store.row("tasks", rec, ut if done else task_at, task_at)
