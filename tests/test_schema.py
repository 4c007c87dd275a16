"""A database made by the original design (or an older pdsync) upgrades in place."""

import sqlite_utils
from helpers import differences

from pdsync import totals
from pdsync.schema import migrations


def test_original_design_database_upgrades_in_place(fake, run_sync, db_path):
    db = sqlite_utils.Database(db_path)
    # What the v1-based original design left behind: its sync_metadata and v1 timestamps.
    db["sync_metadata"].insert(
        {
            "entity_type": "deals",
            "last_sync_time": "2026-07-01 10:00:00",
            "last_sync_duration_ms": 1200,
            "records_synced": 3,
            "records_total": 3,
            "status": "success",
            "error_message": None,
        },
        pk="entity_type",
    )
    db["deals"].insert(
        {
            "id": 999999,
            "title": "Old cached deal",
            "status": "open",
            "update_time": "2026-06-30 09:00:00",
        },
        pk="id",
    )
    result = run_sync()
    assert result.ok, result.errors
    columns = set(db["sync_metadata"].columns_dict)
    assert {"watermark", "requests", "tokens", "full_pending", "last_success_time"} <= columns
    old = db["deals"].get(999999)
    assert old["update_time"] == "2026-06-30T09:00:00Z"
    # The old row predates any watermark, so the first run reconciled it: gone upstream.
    assert (old["status"], old["is_deleted"]) == ("deleted", 1)
    assert differences(db, fake) == []
    assert totals.problems(db) == []  # the old deal counted, then taken away when flagged
    assert {("stage_id", "stages")} <= {
        (fk.column, fk.other_table) for fk in db["deals"].foreign_keys
    }
    applied = [m.name for m in migrations.applied(db)]
    assert applied == [
        "m001_sync_metadata",
        "m002_incremental_state",
        "m003_utc_timestamps",
        "m004_rejected_records",
        "m005_deals_read_indexes",
        "m006_deals_owner_index",
        "m007_deals_totals",
    ]


def test_shape_is_idempotent(run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    schema = db.schema
    run_sync()
    assert db.schema == schema
