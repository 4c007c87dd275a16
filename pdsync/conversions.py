"""Leads converted to deals, known from the deals: no lead list says so.

Pipedrive deletes a lead it converts, so ``/v1/leads`` simply stops listing it and only a
full pass would notice. But the new deal names the lead (``source_lead_id``, which v2 deals
send when asked with ``include_fields``), and the deal is in the next incremental run. These
triggers flag the lead ``is_deleted`` with its ``converted_deal_id`` in the transaction that
writes the deal, and keep it flagged if a listing fetched before the conversion is written
after it.
"""

from __future__ import annotations

import sqlite_utils

_FLAG = """update leads set is_deleted = 1, converted_deal_id = new.id
  where id = new.source_lead_id
    and (coalesce(is_deleted, 0) = 0 or converted_deal_id is not new.id)"""
_KEEP = """update leads set is_deleted = 1,
    converted_deal_id = (select id from deals where source_lead_id = new.id order by id limit 1)
  where id = new.id and exists (select 1 from deals where source_lead_id = new.id)"""

TRIGGERS = {
    "pdsync_deal_converted_lead_insert": (
        f"after insert on deals when new.source_lead_id is not null begin {_FLAG}; end"
    ),
    "pdsync_deal_converted_lead_update": (
        "after update of source_lead_id on deals when new.source_lead_id is not null"
        f" begin {_FLAG}; end"
    ),
    "pdsync_lead_converted_insert": f"after insert on leads begin {_KEEP}; end",
    "pdsync_lead_converted_update": (
        "after update of is_deleted, converted_deal_id on leads"
        " when coalesce(new.is_deleted, 0) = 0 or new.converted_deal_id is null"
        f" begin {_KEEP}; end"
    ),
}


def ensure_conversion_triggers(db: sqlite_utils.Database) -> None:
    """Create the triggers once deals and leads have the columns they read. Idempotent."""
    names = set(db.table_names())
    if not {"deals", "leads"} <= names:
        return
    if "source_lead_id" not in db["deals"].columns_dict:
        return
    if "converted_deal_id" not in db["leads"].columns_dict:
        return
    # The deals' partial index (entities.py) from the start, not after the first load: a lead
    # written meanwhile would scan every deal. Nulls stay out of it, so loading costs nothing.
    db.execute(
        "create index if not exists [idx_deals_converted_leads] on [deals] (source_lead_id)"
        " where source_lead_id is not null"
    )
    for name, body in TRIGGERS.items():
        db.execute(f"create trigger if not exists [{name}] {body}")
