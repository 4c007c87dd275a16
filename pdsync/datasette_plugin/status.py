"""The status view-model: what ``/-/pdsync`` shows and ``/-/pdsync.json`` returns.

Raw values only (counts, milliseconds, seconds, timestamps): the page's template formats
them (filters.py), and scripts get data rather than text to parse. Every stored message
passes through the redactor: a message an older pdsync stored may quote the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from pdsync import plugins
from pdsync.backfill import progress as history_progress
from pdsync.budget import token_usage
from pdsync.redact import Redactor
from pdsync.schema import is_pdsync
from pdsync.timestamps import seconds_since

from .config import PERMISSION, plugin_config, redactor, stale_after, sync_interval
from .jobs import latest_job, scheduler_for
from .webhook import status_for as webhook_status

RECENT_RUNS = 20

log = logging.getLogger("pdsync.datasette")


async def pdsync_databases(datasette, actor=None, check_permissions: bool = False) -> list:
    """The attached pdsync databases (those the actor may view, if asked to check)."""
    out = []
    for name, db in list(datasette.databases.items()):
        if name == "_internal":
            continue
        try:
            if not is_pdsync(set(await db.table_names())):
                continue
        except sqlite3.Error:  # a file that cannot be opened: not ours to break every page over
            continue
        if check_permissions and not await datasette.permission_allowed(
            actor, "view-database", resource=name, default=True
        ):
            continue
        out.append(db)
    return out


def entity_order() -> list[str]:
    try:
        return plugins.entity_order()
    except Exception:  # a broken pdsync plugin must not take the status page down
        log.exception("pdsync plugins' entities")
        return []


def _entity(row: dict, threshold: float, now: datetime, redact: Redactor) -> dict:
    age = seconds_since(row.get("last_success_time"), now)
    return {
        "entity": row["entity_type"],
        "last_sync_time": row.get("last_sync_time"),
        "status": row.get("status") or "",
        "records_synced": row.get("records_synced"),
        "records_total": row.get("records_total"),
        "duration_ms": row.get("last_sync_duration_ms"),
        "error_message": redact.text(row.get("error_message") or ""),
        # A run can succeed and still have refused records: never "success" alone.
        "records_rejected": row.get("records_rejected") or 0,
        "warning_message": redact.text(row.get("warning_message") or ""),
        "requests": row.get("requests"),
        "tokens": row.get("tokens"),
        "last_success_time": row.get("last_success_time"),
        "stale": age is None or age > threshold,
    }


def _errors(value: Any, redact: Redactor) -> dict[str, str] | str:
    """sync_runs.errors holds a JSON object entity -> message (or, hand-edited, anything)."""
    if not value:
        return {}
    try:
        errors = json.loads(value)
    except (TypeError, ValueError):
        return redact.text(value)
    if isinstance(errors, dict):
        return {str(entity): redact.text(message) for entity, message in errors.items()}
    return redact.text(errors)


async def _runs(db, redact: Redactor) -> list[dict]:
    if not await db.table_exists("sync_runs"):
        return []
    result = await db.execute(
        "select id, started_at, finished_at, duration_ms, status, mode, records_synced,"
        " requests, tokens, errors from sync_runs order by id desc limit ?",
        [RECENT_RUNS],
    )
    return [{**dict(row), "errors": _errors(row["errors"], redact)} for row in result.rows]


def _job(db, can_sync: bool, order: list[str]) -> dict | None:
    job = latest_job(db.path)
    if job is None:
        return None
    status = job.as_dict()
    status["entities"].sort(key=lambda e: plugins.entity_sort_key(e["entity"], order))
    if not can_sync:
        status["trigger"] = status["trigger"].split(" by ")[0]  # who: for admins only
    return status


async def database_status(datasette, db, actor) -> dict:
    config = plugin_config(datasette, db.name)
    threshold, config_error = stale_after(config)
    now = datetime.now(timezone.utc)
    redact = redactor(config)
    order = entity_order()
    rows = sorted(
        (dict(r) for r in (await db.execute("select * from sync_metadata")).rows),
        key=lambda r: plugins.entity_sort_key(r["entity_type"], order),
    )
    entities = [_entity(row, threshold, now, redact) for row in rows]
    stale = [e for e in entities if e["stale"]]
    scheduler = scheduler_for(datasette)
    try:
        interval = sync_interval(config)
    except ValueError as exc:
        interval, config_error = None, f"plugin configuration sync_interval: {exc}"
    next_due = scheduler.next_due.get(db.name) if scheduler and interval else None
    can_sync = bool(
        await datasette.permission_allowed(actor, PERMISSION, resource=db.name, default=False)
    )
    budget = config.get("daily_budget")
    tokens = await db.execute_fn(
        lambda conn: token_usage(
            sqlite_utils.Database(conn), budget=int(budget) if budget else None
        )
    )
    history_budget = config.get("history_budget")
    history = await db.execute_fn(
        lambda conn: history_progress(
            sqlite_utils.Database(conn),
            int(history_budget) if history_budget not in (None, "") else None,
        )
    )
    return {
        "name": db.name,
        "entities": entities,
        "runs": await _runs(db, redact),
        "stale": bool(stale) or not entities,
        # the stale entities, and the oldest of their last successes (None: never)
        "stale_entities": [e["entity"] for e in stale],
        "oldest_success_time": min((e["last_success_time"] or "" for e in stale), default="")
        or None,
        "stale_after_seconds": threshold,
        "config_error": config_error,
        "job": _job(db, can_sync, order),
        "sync_interval_seconds": interval,
        "periodic": bool(scheduler and interval),
        "next_sync_in_seconds": (
            max(0.0, next_due - time.time()) if next_due is not None else None
        ),
        "mutable": db.is_mutable and bool(db.path),
        "can_sync": can_sync,
        "tokens": tokens,  # the day's Pipedrive tokens: see pdsync.budget.token_usage
        "history": history,  # deal history's progress: see pdsync.backfill.progress
        "webhooks": await asyncio.to_thread(webhook_status, db),  # None: never received one
    }


async def instance_status(datasette, actor) -> list[dict]:
    return [
        await database_status(datasette, db, actor)
        for db in await pdsync_databases(datasette, actor, check_permissions=True)
    ]
