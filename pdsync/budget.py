"""The day's token budget: what syncs spent today, what the schedule will spend in a day, and
the share of the smallest budget the account can have.

Pipedrive gives a company 30,000 tokens a day per seat, times its plan's multiplier (1 or
more); past that every integration gets 429 until midnight UTC. pdsync does not know the plan,
so it compares with the least it can be: 30,000 × active users, unless told the budget.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from . import timestamps

TOKENS_PER_SEAT = 30_000
_RECENT_RUNS = 12  # incremental runs a projection is taken from


def token_usage(
    db: sqlite_utils.Database, budget: int | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Today's spend (per purpose), the projected daily spend of the current schedule and the
    daily budget they are compared with. Raw numbers; None where nothing is known."""
    now = now or datetime.now(timezone.utc)
    names = set(db.table_names())
    today = now.strftime("%Y-%m-%d")
    spent: dict[str, int] = {}
    if "sync_tokens" in names:
        for purpose, tokens in db.execute(
            "select purpose, tokens from sync_tokens where day = ? order by purpose", [today]
        ):
            spent[purpose] = tokens
    seats = _active_users(db, names)
    smallest = TOKENS_PER_SEAT * seats if seats else None
    limit = budget or smallest
    per_run, every = _schedule(db, names)
    projected = round(per_run * 86400 / every) if per_run is not None and every else None
    return {
        "day": today,
        "spent_today": sum(spent.values()),
        "spent_by_purpose": spent,
        "tokens_per_run": per_run,
        "every_s": every,
        "projected_per_day": projected,
        "active_users": seats,
        "budget": limit,
        "budget_is_configured": budget is not None,
        "share_today": sum(spent.values()) / limit if limit else None,
        "share_projected": projected / limit if limit and projected is not None else None,
    }


def active_users(db: sqlite_utils.Database) -> int | None:
    """Users not deleted and active: the seats the smallest daily budget counts."""
    return _active_users(db, set(db.table_names()))


def _active_users(db: sqlite_utils.Database, names: set[str]) -> int | None:
    if "users" not in names:
        return None
    columns = set(db["users"].columns_dict)
    where = ["coalesce(is_deleted, 0) = 0"] if "is_deleted" in columns else []
    if "active_flag" in columns:
        where.append("coalesce(active_flag, 1) = 1")
    sql = "select count(*) from users" + (" where " + " and ".join(where) if where else "")
    return db.execute(sql).fetchone()[0] or None


def _schedule(db: sqlite_utils.Database, names: set[str]) -> tuple[float | None, float | None]:
    """Tokens of a typical incremental run, and the interval between runs: the one the runs
    say they were scheduled at (--every, sync_interval), else the typical gap between them
    (cron)."""
    if "sync_runs" not in names or "every_s" not in db["sync_runs"].columns_dict:
        return None, None
    runs = db.execute(
        "select started_at, tokens, every_s from sync_runs where mode = 'incremental'"
        " and status in ('success', 'partial') order by id desc limit ?",
        [_RECENT_RUNS],
    ).fetchall()
    if not runs:
        return None, None
    import statistics  # here: `pdsync status` needs it, every sync imports this module

    per_run = statistics.median(tokens or 0 for _, tokens, _ in runs)
    if runs[0][2]:
        return per_run, runs[0][2]
    starts = [timestamps.parse(started) for started, _, _ in runs if started]
    gaps = [(a - b).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    gaps = [gap for gap in gaps if gap > 0]
    return per_run, (statistics.median(gaps) if gaps else None)
