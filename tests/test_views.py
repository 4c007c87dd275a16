"""Views and full-text search that pdsync creates, usable from plain sqlite3."""

import sqlite3

import sqlite_utils


def test_deal_details_view_from_plain_sqlite3(fake, run_sync, db_path):
    run_sync()
    conn = sqlite3.connect(db_path)  # no pdsync, no custom functions
    conn.row_factory = sqlite3.Row
    rows = {r["id"]: r for r in conn.execute("select * from deal_details")}
    stages = {s["id"]: s for s in fake.records("stages")}
    pipelines = {p["id"]: p["name"] for p in fake.records("pipelines")}
    users = {u["id"]: u["name"] for u in fake.records("users")}
    orgs = {o["id"]: o["name"] for o in fake.records("organizations")}
    for deal in fake.records("deals"):
        row = rows[deal["id"]]
        assert row["stage"] == stages[deal["stage_id"]]["name"]
        assert row["pipeline"] == pipelines[deal["pipeline_id"]]
        assert row["owner"] == users[deal["owner_id"]]
        assert row["org_name"] == orgs.get(deal.get("org_id"))
        assert row["days_since_update"] >= 0
        assert row["days_in_stage"] >= 0


def test_full_text_search_follows_changes(fake, run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    deal = fake.records("deals")[0]
    fake.advance(2)
    fake.update_deal(deal["id"], title="Zanzibar desalination upgrade")
    note = fake.records("notes")[0]
    fake.edit_note(note["id"], "<p>Call back about the <b>quokka</b> order</p>")
    assert run_sync().ok
    found = db.execute("select rowid from deals_fts where deals_fts match 'zanzibar'").fetchall()
    assert found == [(deal["id"],)]
    old_word = deal["title"].split()[0]
    ids = [
        r[0]
        for r in db.execute(
            "select rowid from deals_fts where deals_fts match ?", [f'"{old_word}"']
        )
    ]
    assert deal["id"] not in ids or old_word in "Zanzibar desalination upgrade"
    assert db.execute("select rowid from notes_fts where notes_fts match 'quokka'").fetchall() == [
        (note["id"],)
    ]
    assert db["deals_fts"].count == db["deals"].count


def test_views_survive_every_sync(run_sync, db_path):
    run_sync()
    run_sync()
    db = sqlite_utils.Database(db_path)
    assert "deal_details" in db.view_names()
    assert db.execute("select count(*) from deal_details").fetchone()[0] == db["deals"].count
