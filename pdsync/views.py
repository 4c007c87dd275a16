"""Views over the synced tables, for Datasette, canned queries, notebooks and plain sqlite3.

Plain SQL only (no custom functions), so they work from any SQLite client. Ages are whole
days from now in UTC; every timestamp column holds ``YYYY-MM-DDTHH:MM:SSZ``, which SQLite's
``julianday`` reads as UTC.
"""

from __future__ import annotations

import sqlite_utils

from .transaction import write_transaction

VIEWS = {
    # One row per deal with the names people look for, and the ages canned queries use.
    "deal_details": """
select
  deals.id,
  deals.title,
  deals.status,
  deals.pipeline_id,
  pipelines.name as pipeline,
  deals.stage_id,
  stages.name as stage,
  stages.order_nr as stage_order,
  deals.owner_id,
  users.name as owner,
  deals.org_id,
  organizations.name as org_name,
  deals.person_id,
  persons.name as person_name,
  deals.value,
  deals.currency,
  coalesce(deals.probability, stages.deal_probability) as probability,
  deals.expected_close_date,
  deals.add_time,
  deals.update_time,
  deals.stage_change_time,
  deals.close_time,
  deals.won_time,
  deals.lost_time,
  deals.lost_reason,
  deals.is_archived,
  deals.is_deleted,
  cast(julianday('now') - julianday(deals.update_time) as integer) as days_since_update,
  cast(
    julianday('now') - julianday(coalesce(deals.stage_change_time, deals.add_time)) as integer
  ) as days_in_stage,
  cast(julianday('now') - julianday(deals.add_time) as integer) as age_days,
  stages.is_deal_rot_enabled,
  stages.days_to_rotten
from deals
  left join pipelines on pipelines.id = deals.pipeline_id
  left join stages on stages.id = deals.stage_id
  left join users on users.id = deals.owner_id
  left join organizations on organizations.id = deals.org_id
  left join persons on persons.id = deals.person_id
""",
    # Each deal's path through stages, from its stage moves in deal_changes (observed or read
    # from its changelog) and its current stage: it entered its first stage when it was added
    # (the stage its first move left, or its stage now if it never moved). The current stage
    # has no left_at; its days count to the close of a won or lost deal (none if it closed
    # before it got there), else to now.
    "deal_stage_history": """
with moves as (
  select
    deal_id,
    cast(old_value as integer) as from_stage,
    cast(new_value as integer) as to_stage,
    time,
    row_number() over (partition by deal_id order by time, id) as n,
    lead(time) over (partition by deal_id order by time, id) as next_time
  from deal_changes
  where field_key = 'stage_id'
),
segments as (
  select deals.id as deal_id, coalesce(moves.from_stage, deals.stage_id) as stage_id,
    deals.add_time as entered_at, moves.time as left_at
  from deals left join moves on moves.deal_id = deals.id and moves.n = 1
  union all
  select deal_id, to_stage, time, next_time from moves
)
select
  segments.deal_id,
  coalesce(stages.pipeline_id, case when segments.left_at is null then deals.pipeline_id end)
    as pipeline_id,
  segments.stage_id,
  segments.entered_at,
  segments.left_at,
  round(julianday(max(coalesce(
    segments.left_at,
    case when deals.status in ('won', 'lost') then deals.close_time end,
    strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
  ), segments.entered_at)) - julianday(segments.entered_at), 2) as days_in_stage
from segments
  join deals on deals.id = segments.deal_id
  left join stages on stages.id = segments.stage_id
""",
}

# Full-text search, kept current by triggers (sqlite-utils' enable_fts).
FTS = {
    "deals": ["title"],
    "organizations": ["name"],
    "persons": ["name"],
    "notes": ["content"],
}


def ensure_views(db: sqlite_utils.Database) -> None:
    """Create or replace the views (only when their definition changed)."""
    tables = set(db.table_names())
    for name, sql in VIEWS.items():
        if not {"deals", "pipelines", "stages", "users", "organizations", "persons"} <= tables:
            return
        if name == "deal_stage_history" and "deal_changes" not in tables:
            continue
        existing = db.execute(
            "select sql from sqlite_master where type = 'view' and name = ?", [name]
        ).fetchone()
        wanted = f"CREATE VIEW [{name}] AS {sql.strip()}"
        if existing and existing[0] == wanted:
            continue
        with write_transaction(db):
            db.execute(f"drop view if exists [{name}]")
            db.execute(wanted)


def ensure_fts(db: sqlite_utils.Database, table: str) -> None:
    """Full-text index ``table`` if it should have one.

    The index exists from the table's creation, so search_deals answers (with what is
    indexed so far) while a first sync runs. It is filled once after the first load, far
    cheaper than a trigger per inserted row, and kept current by triggers from then on.
    Filling and arming happen in one transaction: a sync killed in between leaves it as it
    was, and the next sync does it (sqlite-utils' enable_fts commits in three steps).
    """
    columns = FTS.get(table)
    if not columns:
        return
    fts = f"{table}_fts"
    quoted = ", ".join(f"[{c}]" for c in columns)
    if not db[fts].exists():
        # sqlite-utils' own shape, so that detect_fts and search() find it.
        db.execute(
            f"CREATE VIRTUAL TABLE [{fts}] USING FTS5 (\n    {quoted},\n"
            f"    tokenize='unicode61',\n    content=[{table}]\n)"
        )
    if set(_fts_triggers(table)) <= {t.name for t in db[table].triggers}:
        return
    if not has_rows(db, table):
        return  # still empty: armed after its first load
    new = ", ".join(f"new.[{c}]" for c in columns)
    old = ", ".join(f"old.[{c}]" for c in columns)
    insert = f"insert into [{fts}] (rowid, {quoted}) values (new.rowid, {new});"
    delete = f"insert into [{fts}] ([{fts}], rowid, {quoted}) values ('delete', old.rowid, {old});"
    ai, ad, au = _fts_triggers(table)
    with write_transaction(db):
        db.execute(f"insert into [{fts}] ([{fts}]) values ('rebuild')")
        for name in (ai, ad, au):
            db.execute(f"drop trigger if exists [{name}]")
        db.execute(f"create trigger [{ai}] after insert on [{table}] begin {insert} end")
        db.execute(f"create trigger [{ad}] after delete on [{table}] begin {delete} end")
        db.execute(f"create trigger [{au}] after update on [{table}] begin {delete} {insert} end")


def has_rows(db: sqlite_utils.Database, table: str) -> bool:
    return db.execute(f"select exists (select 1 from [{table}])").fetchone()[0] == 1


def _fts_triggers(table: str) -> tuple[str, str, str]:
    return (f"{table}_ai", f"{table}_ad", f"{table}_au")  # sqlite-utils' names
