"""A database made by the original design (or an older pdsync) upgrades in place."""

import itertools
import sqlite3
import time

import sqlite_utils
from helpers import differences

from pdsync import pacing, totals
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
        "m008_warning_message",
        "m009_daily_tokens",
        "m010_parents_asked",
        "m011_deal_history",
        "m015_projects",
        "m016_history_failures",
        "m017_history_long_changelogs",
        "m018_digests",
        "m019_state",
    ]


def test_shape_is_idempotent(run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    schema = db.schema
    run_sync()
    assert db.schema == schema


def test_a_first_sync_spaces_its_schema_changes(fake, run_sync, db_path, monkeypatch):
    """Readers fail to reconnect a full-text table when their statement is prepared across
    schema changes milliseconds apart (docs/benchmarks.md, section 7): a first sync commits
    its index builds in batches, at least pacing.GAP apart. Timed on the writer's side, when
    each schema change has committed: a watching thread sees changes late on a busy machine."""
    committed: list[tuple[float, int]] = []
    changed = pacing.SchemaPacer.changed

    def record(pacer: pacing.SchemaPacer) -> None:
        committed.append((time.monotonic(), pacer.version()))
        changed(pacer)

    monkeypatch.setattr(pacing.SchemaPacer, "changed", record)
    assert run_sync().ok
    final = sqlite3.connect(db_path).execute("pragma schema_version").fetchone()[0]
    assert len(committed) >= 3, committed  # the tables, then index builds
    assert committed[-1][1] == final  # every schema change went through the pacer
    gaps = [round((b[0] - a[0]) * 1000) for a, b in itertools.pairwise(committed)]
    assert min(gaps) >= pacing.GAP * 1000, gaps


def test_an_incremental_sync_makes_no_schema_change(fake, run_sync, db_path):
    """Every schema change makes each Datasette connection reload the schema; a routine
    sync (cron, --every, Sync now) makes none."""
    assert run_sync().ok
    fake.advance(2)
    fake.update_deal(fake.records("deals")[0]["id"], title="Changed", value=12.5)

    def version() -> int:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return conn.execute("pragma schema_version").fetchone()[0]
        finally:
            conn.close()

    before = version()
    result = run_sync()
    assert result.ok and result.entities["deals"].records >= 1
    assert version() == before
