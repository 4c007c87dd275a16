"""Totals of open deals (pdsync/totals.py): always equal to the deals summed afresh."""

import sqlite3

import pytest
import sqlite_utils

from pdsync import totals


def open_groups(db) -> dict:
    """Open deals per (pipeline, stage, currency, month), counted here in Python."""
    groups: dict[tuple, list] = {}
    for d in db["deals"].rows:
        if d["status"] != "open" or d["is_archived"] or d["is_deleted"]:
            continue
        month = d["expected_close_date"][:7] if d["expected_close_date"] else None
        group = groups.setdefault((d["pipeline_id"], d["stage_id"], d["currency"], month), [0, 0])
        group[0] += 1
        group[1] += d["value"] or 0
    return groups


def stored_groups(db) -> dict:
    return {
        (r["pipeline_id"], r["stage_id"], r["currency"], r["close_month"]): [r["deals"], r["value"]]
        for r in db["open_deal_totals"].rows
    }


def assert_current(db) -> None:
    assert totals.problems(db) == []
    stored, expected = stored_groups(db), open_groups(db)
    assert set(stored) == set(expected)
    for key, (count, value) in expected.items():
        assert stored[key][0] == count, key
        assert stored[key][1] == pytest.approx(value, abs=0.001), key


def test_first_sync_fills_and_arms_the_totals(run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert {t.name for t in db["deals"].triggers} >= set(totals.TRIGGERS)
    assert db["open_deal_totals"].count > 0 and db["open_deal_owner_totals"].count > 0
    assert_current(db)


def test_every_kind_of_change_moves_a_deal_between_groups(run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    live = "status = 'open' and coalesce(is_archived, 0) = 0 and coalesce(is_deleted, 0) = 0"
    deals = list(db["deals"].rows_where(live, order_by="id"))
    won = next(db["deals"].rows_where("status = 'won'"))
    stages = [s["id"] for s in db["stages"].rows]
    changes = [
        ("update deals set value = value + 1234.56 where id = ?", deals[0]["id"]),
        ("update deals set value = null where id = ?", deals[1]["id"]),
        ("update deals set probability = 35 where id = ?", deals[2]["id"]),
        (
            f"update deals set stage_id = {stages[-1]}, pipeline_id = 99 where id = ?",
            deals[3]["id"],
        ),
        ("update deals set currency = null where id = ?", deals[4]["id"]),
        ("update deals set currency = 'XAU' where id = ?", deals[5]["id"]),  # a new group
        ("update deals set expected_close_date = null where id = ?", deals[6]["id"]),
        ("update deals set expected_close_date = '2031-02-03' where id = ?", deals[7]["id"]),
        ("update deals set owner_id = 424242 where id = ?", deals[8]["id"]),
        ("update deals set status = 'won' where id = ?", deals[9]["id"]),
        ("update deals set status = 'open' where id = ?", won["id"]),
        ("update deals set is_archived = 1 where id = ?", deals[10]["id"]),
        ("update deals set is_deleted = 1, status = 'deleted' where id = ?", deals[11]["id"]),
        ("delete from deals where id = ?", deals[12]["id"]),
        ("update deals set title = 'only the title' where id = ?", deals[13]["id"]),
    ]
    for sql, id_ in changes:
        db.execute(sql, [id_])
        assert_current(db)
    db.execute(
        "insert into deals (id, title, status, pipeline_id, stage_id, currency, value,"
        " expected_close_date) values (7777777, 'new', 'open', 1, ?, 'XAU', 5.5, '2027-01-09')",
        [stages[0]],
    )
    assert_current(db)
    owners = {(r["owner_id"], r["currency"]): r["deals"] for r in db["open_deal_owner_totals"].rows}
    assert owners[(424242, deals[8]["currency"])] == 1


def test_an_emptied_group_goes(run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    db.execute(
        "update deals set currency = 'XAU' where id = (select min(id) from deals"
        " where status = 'open' and coalesce(is_archived, 0) = 0 and coalesce(is_deleted, 0) = 0)"
    )
    assert db.execute("select count(*) from open_deal_totals where currency = 'XAU'").fetchone()[0]
    db.execute("update deals set status = 'lost' where currency = 'XAU'")
    assert not db.execute(
        "select count(*) from open_deal_totals where currency = 'XAU'"
    ).fetchone()[0]
    assert not db.execute("select count(*) from open_deal_totals where deals <= 0").fetchone()[0]
    assert_current(db)


def test_incremental_syncs_keep_them_current(fake, run_sync, db_path):
    assert run_sync().ok
    deals = [d for d in fake.records("deals") if d["status"] == "open"]
    fake.advance(2)
    fake.update_deal(deals[0]["id"], value=99999.99)
    fake.set_deal_status(deals[1]["id"], "won")
    fake.move_deal(deals[2]["id"], fake.records("stages")[-1]["id"])
    fake.archive_deal(deals[3]["id"])
    fake.delete_deal(deals[4]["id"])
    fake.add_deal(title="Fresh", stage_id=fake.records("stages")[0]["id"], value=12)
    assert run_sync().ok
    assert_current(sqlite_utils.Database(db_path))
    assert run_sync(full=True).ok
    assert_current(sqlite_utils.Database(db_path))


def test_ensure_totals_is_idempotent_and_repairs(run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    version = db.execute("pragma schema_version").fetchone()[0]
    totals.ensure_totals(db, "deals")
    assert db.execute("pragma schema_version").fetchone()[0] == version  # nothing rebuilt
    # Totals of another shape (an older pdsync, a hand edit) are rebuilt and refilled.
    db.execute("drop trigger deals_totals_au")
    db.execute("update deals set value = value + 1")  # not followed by the totals
    assert totals.problems(db)
    totals.ensure_totals(db, "deals")
    assert_current(db)
    db.execute("drop index open_deal_totals_months")
    totals.ensure_totals(db, "deals")
    assert "open_deal_totals_months" in {i.name for i in db["open_deal_totals"].indexes}
    assert_current(db)


def test_a_failed_fill_leaves_the_totals_as_they_were(run_sync, db_path, monkeypatch):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    for name in totals.TRIGGERS:
        db.execute(f"drop trigger {name}")
    db.execute("delete from open_deal_totals")
    before = db.schema
    real = totals._sum_sql

    def failing(t):
        if t.name == "open_deal_owner_totals":
            raise sqlite3.OperationalError("disk I/O error")
        return real(t)

    monkeypatch.setattr(totals, "_sum_sql", failing)
    with pytest.raises(sqlite3.OperationalError):
        totals.ensure_totals(db, "deals")
    assert db.schema == before  # no trigger armed over a half-filled table
    assert db["open_deal_totals"].count == 0
    monkeypatch.undo()
    totals.ensure_totals(db, "deals")
    assert_current(db)
