"""Checks that a pdsync database says what the fake Pipedrive says, computed independently
of pdsync's own code (so a bug there cannot hide behind the same bug here)."""

import json
import re
import socket
import time
from pathlib import Path

import httpx
import sqlite_utils

# Per table, the columns compared with the fake's records.
COMPARED = {
    "pipelines": ["name", "order_nr"],
    "stages": ["name", "pipeline_id", "order_nr", "days_to_rotten", "is_deal_rot_enabled"],
    "users": ["name", "email"],
    "organizations": ["name", "owner_id", "update_time"],
    "persons": ["name", "org_id", "owner_id", "update_time"],
    "deals": [
        "title",
        "status",
        "pipeline_id",
        "stage_id",
        "owner_id",
        "person_id",
        "org_id",
        "value",
        "currency",
        "is_archived",
        "is_deleted",
        "add_time",
        "update_time",
        "stage_change_time",
        "won_time",
        "lost_time",
        "close_time",
        "expected_close_date",
        "lost_reason",
    ],
    "activities": ["subject", "deal_id", "done", "update_time"],
    "notes": ["content", "deal_id", "update_time"],
    "products": ["name", "code", "tax", "category", "owner_id", "update_time"],
    "deal_products": [
        "deal_id",
        "product_id",
        "name",
        "order_nr",
        "quantity",
        "item_price",
        "discount",
        "discount_type",
        "tax",
        "sum",
        "currency",
        "add_time",
        "update_time",
    ],
    "currencies": ["code", "name"],
    "activity_types": ["name", "key_string", "update_time"],
    "lead_labels": ["name", "color"],
    "leads": [
        "title",
        "owner_id",
        "person_id",
        "organization_id",
        "label_ids",
        "source_name",
        "value",
        "currency",
        "expected_close_date",
        "is_archived",
        "was_seen",
        "add_time",
        "update_time",
    ],
    "projects": [
        "title",
        "status",
        "owner_id",
        "phase_id",
        "start_date",
        "end_date",
        "deal_id",
        "deal_ids",
        "health_status",
        "is_archived",
        "update_time",
        "archive_time",
    ],
    "tasks": [
        "title",
        "project_id",
        "parent_task_id",
        "is_done",
        "is_milestone",
        "due_date",
        "assignee_ids",
        "priority",
        "update_time",
        "marked_as_done_time",
    ],
}
# Changed by the fake's churn but refreshed on the hourly rotation, not by every run
# (pdsync/plan.py): an incremental run is not expected to have their changes yet.
ROTATED = ("projects", "tasks")
EVERY_RUN = [entity for entity in COMPARED if entity not in ROTATED]
# Retries back off for real in production; in tests they should not take seconds.
FAST_CLIENT = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 2.0}
UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def utc(text):
    """'2025-01-15 10:30:00' or '2025-01-15T10:30:00.123Z' -> '2025-01-15T10:30:00Z'."""
    if not text:
        return None
    return text[:10] + "T" + text[11:19] + "Z"


def expected(entity, record, column):
    value = record.get(column)
    if entity == "leads" and column in ("value", "currency", "label_ids"):
        money = record.get("value") or {}  # {amount, currency} or null
        if column == "label_ids":
            return json.dumps(value, separators=(",", ":"))
        amount = money.get("amount")
        return money.get("currency") if column == "currency" else amount and float(amount)
    if entity == "projects" and column == "is_archived":
        return int(record.get("archive_time") is not None)
    if column in ("deal_ids", "assignee_ids"):  # arrays are stored as JSON
        return json.dumps(value, separators=(",", ":"))
    if entity == "projects" and column == "deal_id":
        return (record.get("deal_ids") or [None])[0]
    if column == "status" and record.get("is_deleted"):
        return "deleted"
    if isinstance(value, bool):
        return int(value)
    if column.endswith("_time"):
        return utc(value)
    if (
        column in ("value", "quantity", "item_price", "discount", "sum", "tax")
        and value is not None
    ):
        return float(value)
    return value


def differences(db: sqlite_utils.Database, fake, entities=None):
    """Everything the database gets wrong about the fake, as readable strings."""
    problems = []
    for entity, columns in COMPARED.items():
        if entities and entity not in entities:
            continue
        upstream = {r["id"]: r for r in fake.records(entity)}
        local = {r["id"]: r for r in db.query(f"select * from [{entity}]")}
        for id_, record in upstream.items():
            row = local.get(id_)
            if row is None:
                problems.append(f"{entity} {id_}: missing")
                continue
            for column in columns:
                want, got = expected(entity, record, column), row.get(column)
                if isinstance(want, float) and isinstance(got, (int, float)):
                    ok = abs(want - got) < 1e-6
                else:
                    ok = want == got
                if not ok:
                    problems.append(f"{entity} {id_}.{column}: want {want!r}, got {got!r}")
            if (
                entity not in ("pipelines", "stages", "users", "deal_products")
                and row.get("is_deleted")
                and not (record.get("is_deleted"))
            ):
                problems.append(f"{entity} {id_}: flagged deleted but exists upstream")
    if not entities or "deal_products" in entities:
        # A line item removed upstream must not linger (it is deleted, not flagged).
        upstream = {r["id"] for r in fake.records("deal_products")}
        extra = [r["id"] for r in db.query("select id from deal_products")]
        problems += [f"deal_products {i}: removed upstream" for i in extra if i not in upstream]
    return problems


def gone_but_not_flagged(db, fake, entity):
    """Ids the database still shows as live although Pipedrive no longer has them."""
    upstream = {r["id"] for r in fake.records(entity)}
    rows = db.query(f"select id from [{entity}] where coalesce(is_deleted, 0) = 0")
    return sorted(r["id"] for r in rows if r["id"] not in upstream)


def custom_field_problems(db, fake):
    """Enum and set custom fields must read as their option labels."""
    problems = []
    definitions = {d["field_code"]: d for d in fake.records("deal_fields")}
    columns = {
        r["field_code"]: r["column_name"]
        for r in db.query(
            "select field_code, column_name from deal_fields where column_name is not null"
        )
    }
    rows = {r["id"]: r for r in db.query("select * from deals")}
    for deal in fake.records("deals"):
        for code, value in (deal.get("custom_fields") or {}).items():
            definition = definitions[code]
            column = columns.get(code)
            if column is None:
                problems.append(f"deal field {definition['field_name']!r} has no column")
                continue
            labels = {o["id"]: o["label"] for o in definition.get("options") or []}
            got = rows[deal["id"]][column]
            if definition["field_type"] == "enum" and value is not None:
                if got != labels[value]:
                    problems.append(
                        f"deal {deal['id']} {column}: want {labels[value]!r}, got {got!r}"
                    )
            elif definition["field_type"] == "set" and value:
                if json.loads(got) != [labels[v] for v in value]:
                    problems.append(f"deal {deal['id']} {column}: got {got!r}")
            elif definition["field_type"] == "monetary" and value:
                if (
                    got != value["value"]
                    or rows[deal["id"]][f"{column}_currency"] != value["currency"]
                ):
                    problems.append(f"deal {deal['id']} {column}: got {got!r}")
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(base: str, tries: int = 100) -> None:
    """Until a Datasette started in a subprocess answers (10 s at most)."""
    for _ in range(tries):
        try:
            httpx.get(base + "/-/versions.json", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {base}")


PLUGINS_DIR = Path(__file__).resolve().parents[1] / "datasette_plugins"


def unregister_pdsync_plugins() -> None:
    """Datasette keeps plugins registered for the whole process: pdsync's package, and the
    datasette_plugins/ shim that registered it. Each test's Datasette must start without."""
    from datasette.plugins import pm

    from pdsync import datasette_plugin

    datasette_plugin.unregister()
    for plugin in list(pm.get_plugins()):
        if Path(getattr(plugin, "__file__", "") or "/").parent == PLUGINS_DIR:
            pm.unregister(plugin)


def age_last_success(db_path, names, hours=2):
    """Pretend the last successful sync of the entities ``names`` was ``hours`` ago (their
    hourly refresh falls due)."""
    db = sqlite_utils.Database(db_path)
    for name in names:
        db.execute(
            "update sync_metadata set last_success_time ="
            " strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?) where entity_type = ?",
            [f"-{hours} hours", name],
        )
    db.conn.commit()
