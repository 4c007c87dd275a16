"""Leads: both lists land, changes arrive incrementally, the archive is read newest first
only down to the watermark, and the deal custom fields read as on deals."""

from __future__ import annotations

import json
from datetime import timedelta

import sqlite_utils
from helpers import differences, gone_but_not_flagged

import pdsync
import pdsync.client


def _leads(db_path):
    return {r["id"]: r for r in sqlite_utils.Database(db_path).query("select * from leads")}


def test_full_sync_equals_the_fake(fake, run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake, ["leads"]) == []
    upstream = fake.records("leads")
    assert set(_leads(db_path)) == {r["id"] for r in upstream}
    assert any(r["is_archived"] for r in upstream) and not all(r["is_archived"] for r in upstream)
    fks = {(fk.column, fk.other_table) for fk in db["leads"].foreign_keys}
    assert fks >= {
        ("owner_id", "users"),
        ("person_id", "persons"),
        ("organization_id", "organizations"),
    }


def test_custom_fields_are_the_deal_columns(fake, run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    columns = {
        r["field_code"]: (r["column_name"], r["field_type"])
        for r in db.query("select * from deal_fields where column_name is not null")
    }
    options = {
        o["id"]: o["label"] for f in fake.records("deal_fields") for o in f.get("options") or []
    }
    rows = _leads(db_path)
    assert not [c for c in db["leads"].columns_dict if len(c) == 40]  # no raw hash columns
    checked = 0
    for lead in fake.records("leads"):
        for code, (column, kind) in columns.items():
            value = lead.get(code)
            got = rows[lead["id"]][column]
            if value is None:
                assert got is None, (lead["id"], column)
            elif kind == "enum":
                assert got == options[value]
            elif kind == "set":
                assert json.loads(got) == [options[v] for v in value]
            elif isinstance(value, dict):
                assert got == value["value"]
            else:
                assert got == value
            checked += value is not None
    assert checked


def test_changes_and_conversions_land_incrementally(fake, run_sync, db_path):
    run_sync()
    fake.advance(120)
    open_leads = [r for r in fake.records("leads") if not r["is_archived"]]
    archived = [r for r in fake.records("leads") if r["is_archived"]]
    added = fake.add_lead("Inbound: cold rooms", organization_id=1, value=(9000, "USD"))
    fake.update_lead(open_leads[0]["id"], title="Renamed lead", was_seen=True)
    fake.archive_lead(open_leads[1]["id"])
    fake.archive_lead(archived[0]["id"], archived=False)
    deal = fake.convert_lead(open_leads[2]["id"])
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake, ["leads"]) == []
    rows = _leads(db_path)
    assert rows[added["id"]]["value"] == 9000 and rows[added["id"]]["currency"] == "USD"
    assert rows[open_leads[1]["id"]]["is_archived"] == 1
    assert rows[archived[0]["id"]]["is_archived"] == 0
    # A converted lead is deleted upstream without a trace in the lead lists, but its deal
    # names it (source_lead_id): the same incremental run flags it.
    assert gone_but_not_flagged(db, fake, "leads") == []
    converted = _leads(db_path)[open_leads[2]["id"]]
    assert converted["is_deleted"] == 1 and converted["converted_deal_id"] == deal["id"]
    assert db["deals"].get(deal["id"])["source_lead_id"] == open_leads[2]["id"]
    assert run_sync(full=True).ok
    assert gone_but_not_flagged(db, fake, "leads") == []
    assert _leads(db_path)[open_leads[2]["id"]]["converted_deal_id"] == deal["id"]


def test_a_listing_older_than_the_conversion_does_not_undo_it(fake, run_sync, db_path):
    """A lead page fetched before the conversion and written after its deal: the lead
    stays converted."""
    assert run_sync().ok
    lead = next(r for r in fake.records("leads") if not r["is_archived"])
    deal = fake.convert_lead(lead["id"])
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    with db.atomic():  # as the writer would write the stale page
        db.execute(
            "update leads set is_deleted = 0, converted_deal_id = null where id = ?", [lead["id"]]
        )
    row = _leads(db_path)[lead["id"]]
    assert (row["is_deleted"], row["converted_deal_id"]) == (1, deal["id"])
    # and a deal written after its lead (a first sync) flags it too
    with db.atomic():
        db.execute("update deals set source_lead_id = null where id = ?", [deal["id"]])
        db.execute(
            "update leads set is_deleted = 0, converted_deal_id = null where id = ?", [lead["id"]]
        )
        db.execute("update deals set source_lead_id = ? where id = ?", [lead["id"], deal["id"]])
    row = _leads(db_path)[lead["id"]]
    assert (row["is_deleted"], row["converted_deal_id"]) == (1, deal["id"])
    assert lead["id"] not in {r["id"] for r in pdsync.query(db_path, "open_leads")}


def test_archive_is_read_only_down_to_the_watermark(fake, run_sync, db_path, monkeypatch):
    run_sync()
    monkeypatch.setattr(pdsync.client, "PAGE_LIMIT", 3)  # pages of 3 leads
    archived = [r for r in fake.records("leads") if r["is_archived"]]
    assert len(archived) > 6  # more than two pages
    fake.advance(120)
    # Archived a while apart: the newest first, so the first page holds both changes.
    oldest = min(archived, key=lambda r: r["update_time"])
    fake.update_lead(oldest["id"], title="Archived, then edited")
    fake.reset_log()
    result = run_sync(only=["leads"])
    assert result.ok, {n: e.error for n, e in result.entities.items() if e.error}
    asked = [r for r in fake.requests if r["path"] == "/v1/leads/archived"]
    assert len(asked) == 1 and "sort=update_time+DESC" in asked[0]["query"]
    assert _leads(db_path)[oldest["id"]]["title"] == "Archived, then edited"
    # Nothing changed: still one page, not the whole archive.
    fake.reset_log()
    assert run_sync(only=["leads"]).ok
    assert len([r for r in fake.requests if r["path"] == "/v1/leads/archived"]) == 1


def test_archive_watermark_moves_only_when_the_stream_ends(fake, run_sync, db_path, monkeypatch):
    run_sync()
    monkeypatch.setattr(pdsync.client, "PAGE_LIMIT", 3)  # pages of 3 leads
    fake.advance(120)
    archived = sorted(
        (r for r in fake.records("leads") if r["is_archived"]), key=lambda r: r["update_time"]
    )
    for i, lead in enumerate(archived[:5]):
        fake.advance(100)  # further apart than the lookback
        fake.update_lead(lead["id"], title=f"Edited {i}")
    # The archive's second page fails: its first (the newest) must not move the watermark.
    fake.inject("/v1/leads/archived", "500", times=100, after=1)
    run_sync(only=["leads"])
    fake.clear_faults()
    assert run_sync(only=["leads"]).ok
    rows = _leads(db_path)
    assert [rows[lead["id"]]["title"] for lead in archived[:5]] == [f"Edited {i}" for i in range(5)]
    assert differences(sqlite_utils.Database(db_path), fake, ["leads"]) == []


def test_no_change_cost_stays_in_budget(fake, run_sync):
    run_sync()
    fake.advance(timedelta(minutes=5).total_seconds())
    fake.reset_log()
    result = run_sync()
    assert result.requests <= 16 and result.tokens <= 250


def test_an_older_database_keeps_its_deal_watermarks(tmp_path):
    """Deals asked with a new include_fields keep their streams' watermarks (m015), instead
    of refetching every deal once."""
    from pdsync.entities import by_name
    from pdsync.schema import prepare

    db = sqlite_utils.Database(str(tmp_path / "old.db"))
    db["sync_metadata"].insert({"entity_type": "deals"}, pk="entity_type")
    db["sync_streams"].insert_all(
        [
            {
                "entity_type": "deals",
                "stream": f"{path}?status=open,won,lost,deleted&include_fields=products_count",
                "watermark": "2026-11-01T00:00:00Z",
            }
            for path in ("/api/v2/deals", "/api/v2/deals/archived")
        ],
        pk=("entity_type", "stream"),
    )
    prepare(db, list(by_name().values()))
    keys = {s.key for s in by_name()["deals"].streams}
    stored = {r["stream"]: r["watermark"] for r in db["sync_streams"].rows}
    assert stored == dict.fromkeys(keys, "2026-11-01T00:00:00Z")
