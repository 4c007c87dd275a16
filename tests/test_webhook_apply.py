"""Applying deliveries: the sync's own transformation, deletes for every entity, order."""

import json
import sqlite3

import pytest
import sqlite_utils

from pdsync.webhook_apply import Applier, DatabaseBusy
from pdsync.webhook_inbox import Inbox

PROJECT_REFERENCE = "a6a3a4506513270e269e0d37f2a74de452e6b438"  # the fake's varchar field
SCOPE_OF_SUPPLY = "81e74ef5e8e25d940ed904759531985d5d9dc9f8"  # its set field


@pytest.fixture
def synced(run_sync, db_path, tmp_path):
    assert run_sync().ok
    inbox = Inbox(tmp_path / "inbox.db")
    applier = Applier(db_path, inbox)
    yield sqlite_utils.Database(db_path), inbox, applier
    applier.close()


def deliver(inbox, applier, entity, action, entity_id, data=None, previous=None, at=None):
    meta = {"action": action, "entity": entity, "entity_id": str(entity_id), "timestamp": at}
    body = {"meta": meta, "data": data, "previous": previous}
    inbox.add(json.dumps(body).encode(), meta)
    while applier.apply_pending():
        pass


def test_a_change_goes_through_the_sync_transformation(synced, fake):
    db, inbox, applier = synced
    deal = next(d for d in fake.records("deals") if d["status"] == "open" and d["value"])
    before = db.execute("select * from deals where id = ?", [deal["id"]]).fetchone()
    columns = [c[0] for c in db.execute("select * from deals limit 0").description]
    before = dict(zip(columns, before, strict=True))
    total = "select sum(value) from open_deal_totals"
    total_before = db.execute(total).fetchone()[0]
    options = json.loads(
        db.execute(
            "select options from deal_fields where field_code = ?", [SCOPE_OF_SUPPLY]
        ).fetchone()[0]
    )
    data = {
        "id": deal["id"],
        "title": "Zanzibar dredging",
        "value": deal["value"] + 1000,
        "update_time": "2030-01-01T00:00:00.000Z",
        "custom_fields": {PROJECT_REFERENCE: "PRJ-WEBHOOK", SCOPE_OF_SUPPLY: [options[0]["id"]]},
    }
    deliver(inbox, applier, "deal", "change", deal["id"], data, {"title": deal["title"]})
    row = db.execute(
        "select title, value, project_reference, scope_of_supply, expected_close_date, owner_id"
        " from deals where id = ?",
        [deal["id"]],
    ).fetchone()
    assert row[:4] == (
        "Zanzibar dredging",
        deal["value"] + 1000,
        "PRJ-WEBHOOK",
        json.dumps([options[0]["label"]]),  # readable, as the sync stores it
    )
    # What the webhook did not carry keeps what the sync stored.
    assert row[4:] == (before["expected_close_date"], before["owner_id"])
    assert db.execute(total).fetchone()[0] == total_before + 1000  # totals by their triggers
    found = db.execute("select rowid from deals_fts where deals_fts match 'zanzibar'").fetchall()
    assert found == [(deal["id"],)]  # full-text search current


@pytest.mark.parametrize(
    "entity, table",
    [
        ("deal", "deals"),
        ("person", "persons"),
        ("organization", "organizations"),
        ("activity", "activities"),
        ("note", "notes"),
        ("product", "products"),
    ],
)
def test_a_delete_marks_the_row_for_every_entity(synced, fake, entity, table):
    db, inbox, applier = synced
    record = fake.records(table)[0]
    assert db.execute(
        f"select is_deleted from {table} where id = ?", [record["id"]]
    ).fetchone() == (0,)
    deliver(inbox, applier, entity, "delete", record["id"], None, record, "2030-01-01T00:00:00Z")
    assert db.execute(
        f"select is_deleted from {table} where id = ?", [record["id"]]
    ).fetchone() == (1,)
    if table == "deals":
        assert db.execute("select status from deals where id = ?", [record["id"]]).fetchone() == (
            "deleted",
        )


def test_a_record_made_and_deleted_between_syncs_is_kept_as_deleted(synced):
    db, inbox, applier = synced
    previous = {"id": 999999, "name": "Short-lived", "update_time": "2030-01-01T00:00:00Z"}
    deliver(inbox, applier, "person", "delete", 999999, None, previous, "2030-01-01T00:00:01Z")
    assert db.execute("select name, is_deleted from persons where id = 999999").fetchone() == (
        "Short-lived",
        1,
    )


def test_out_of_order_an_older_version_never_wins(synced, fake):
    db, inbox, applier = synced
    deal = fake.records("deals")[1]

    def title():
        return db.execute("select title from deals where id = ?", [deal["id"]]).fetchone()[0]

    newer = {"id": deal["id"], "title": "Newer", "update_time": "2030-01-01T00:00:00.900Z"}
    older = {"id": deal["id"], "title": "Older", "update_time": "2030-01-01T00:00:00.100Z"}
    deliver(inbox, applier, "deal", "change", deal["id"], newer)
    deliver(inbox, applier, "deal", "change", deal["id"], older)  # same second, earlier
    assert title() == "Newer"
    # A deletion from before the last change (a deal deleted, then restored) changes nothing.
    deliver(inbox, applier, "deal", "delete", deal["id"], None, deal, "2029-12-31T00:00:00Z")
    assert db.execute("select is_deleted from deals where id = ?", [deal["id"]]).fetchone() == (0,)
    states = inbox.conn().execute("select state, note from deliveries order by seq").fetchall()
    assert states[1] == ("applied", "older than what was applied: skipped")


def test_a_locked_database_keeps_deliveries_waiting(synced, fake, db_path):
    db, inbox, applier = synced
    deal = fake.records("deals")[2]
    applier.busy_timeout = 0.1
    applier.close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("begin exclusive")
    meta = {"action": "change", "entity": "deal", "entity_id": str(deal["id"])}
    body = {"meta": meta, "data": {"id": deal["id"], "title": "Waited"}}
    inbox.add(json.dumps(body).encode(), meta)
    with pytest.raises(DatabaseBusy):
        applier.apply_pending()
    assert len(inbox.pending()) == 1  # nothing lost, nothing marked
    holder.execute("rollback")
    holder.close()
    assert applier.apply_pending() == 1
    assert db.execute("select title from deals where id = ?", [deal["id"]]).fetchone() == (
        "Waited",
    )


def test_unknown_objects_and_actions_are_ignored(synced):
    _, inbox, applier = synced
    deliver(inbox, applier, "board", "create", 1, {"id": 1})
    deliver(inbox, applier, "deal", "archive", 1, {"id": 1})
    states = inbox.conn().execute("select state from deliveries").fetchall()
    assert states == [("ignored",), ("ignored",)]


def test_the_inbox_is_private_to_its_owner(tmp_path):
    inbox = Inbox(tmp_path / "x.webhooks.db")
    inbox.add(b"{}", {"entity": "deal"})
    for suffix in ("", "-wal", "-shm"):
        assert (tmp_path / f"x.webhooks.db{suffix}").stat().st_mode & 0o777 == 0o600


def test_a_stage_move_by_webhook_is_deal_history(synced, fake):
    """The next sync finds the row already moved: the move is recorded when it is applied."""
    db, inbox, applier = synced
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    stages = [s["id"] for s in fake.records("stages") if s["pipeline_id"] == deal["pipeline_id"]]
    other = next(s for s in stages if s != deal["stage_id"])
    moved = "2030-01-01T00:00:00Z"
    data = {
        "id": deal["id"],
        "stage_id": other,
        "update_time": moved,
        "stage_change_time": moved,
    }
    deliver(inbox, applier, "deal", "change", deal["id"], data, {"stage_id": deal["stage_id"]})
    found = db.execute(
        "select old_value, new_value, time, source from deal_changes"
        " where deal_id = ? and field_key = 'stage_id' and time = ?",
        [deal["id"], moved],
    ).fetchall()
    assert found == [(str(deal["stage_id"]), str(other), moved, "observed")]
    # Fields the delivery did not carry are not changes.
    fields = db.execute(
        "select field_key from deal_changes where deal_id = ? and time = ?", [deal["id"], moved]
    ).fetchall()
    assert fields == [("stage_id",)]


def test_a_delivery_that_cannot_be_applied_is_refused_and_the_next_ones_are_applied(synced, fake):
    """Whatever goes wrong with one delivery undoes it alone: the batch is not retried for
    ever behind it."""
    db, inbox, applier = synced
    deal, person = fake.records("deals")[4], fake.records("persons")[4]
    bad = [
        # update_time as a number, the stored one text: not comparable.
        (
            {"action": "change", "entity": "deal", "entity_id": str(deal["id"])},
            {"id": deal["id"], "title": "Numeric time", "update_time": 1893456000.0},
        ),
        # A timestamp in the year 10^290.
        (
            {
                "action": "delete",
                "entity": "person",
                "entity_id": str(person["id"]),
                "timestamp": 10**300,
            },
            None,
        ),
    ]
    for meta, data in bad:
        inbox.add(json.dumps({"meta": meta, "data": data}).encode(), meta)
    meta = {"action": "change", "entity": "deal", "entity_id": str(deal["id"])}
    good = {"id": deal["id"], "title": "After the bad ones", "update_time": "2030-01-01T00:00:00Z"}
    inbox.add(json.dumps({"meta": meta, "data": good}).encode(), meta)

    assert applier.apply_pending() == 3
    states = inbox.conn().execute("select state, note from deliveries order by seq").fetchall()
    assert [s for s, _ in states] == ["failed", "failed", "applied"]
    assert "TypeError" in states[0][1] and "out of range" in states[1][1]
    assert db.execute("select title from deals where id = ?", [deal["id"]]).fetchone() == (
        "After the bad ones",
    )
    assert db.execute("select is_deleted from persons where id = ?", [person["id"]]).fetchone() == (
        0,
    )
    refused = {r["reason"]: r["count"] for r in inbox.summary()["refused"]}
    assert refused == {"not applicable": 2}
    assert inbox.pending() == []


def test_version_of_refuses_what_is_no_time():
    from pdsync.webhook_apply import version_of

    assert version_of(1_700_000_000) == 1_700_000_000.0
    assert version_of(1_700_000_000_500) == 1_700_000_000.5
    for value in (10**300, 1e300, float("inf"), float("nan"), -5, "99999-01-01T00:00:00Z"):
        assert version_of(value) is None, value


def test_a_run_without_a_usable_start_is_not_checked_for_gaps(synced):
    db, inbox, applier = synced
    inbox.add(b"{}", {"entity": "deal"})
    for started in (None, "not a time"):
        db.execute(
            "update sync_runs set started_at = ? where id = (select max(id) from sync_runs)",
            [started],
        )
        inbox.set_state("gaps_run", None)
        assert applier.check_gaps(0) is None
        assert applier.check_gaps(0) is None  # and not asked again


def test_ignored_deliveries_are_pruned_in_time(tmp_path):
    inbox = Inbox(tmp_path / "x.webhooks.db")
    inbox.add(b"{}", {"entity": "board"}, "ignored", "not synced")
    applied_at = inbox.conn().execute("select applied_at from deliveries").fetchone()[0]
    assert applied_at is not None
    # One stored by an older pdsync, without applied_at, received long ago.
    inbox.add(b"{}", {"entity": "board"}, "ignored", "not synced")
    inbox.conn().execute(
        "update deliveries set applied_at = null, received_at = '2020-01-01T00:00:00Z'"
        " where seq = 2"
    )
    assert inbox.prune() == 1
    assert [r[0] for r in inbox.conn().execute("select seq from deliveries")] == [1]


def test_two_changes_in_one_second_end_on_the_later_event(synced, fake):
    """Pipedrive's update_time has whole seconds: the event's own timestamp (milliseconds)
    decides between two changes made in the same second and delivered out of order."""
    db, inbox, applier = synced
    deal = fake.records("deals")[5]
    second = "2030-01-01T00:00:00Z"
    later = {"id": deal["id"], "title": "Later", "update_time": second}
    earlier = {"id": deal["id"], "title": "Earlier", "update_time": second}
    deliver(inbox, applier, "deal", "change", deal["id"], later, at=1893456000900)
    deliver(inbox, applier, "deal", "change", deal["id"], earlier, at=1893456000100)
    assert db.execute("select title from deals where id = ?", [deal["id"]]).fetchone() == ("Later",)


def test_an_inbox_from_before_the_tiebreak_is_upgraded(tmp_path):
    path = tmp_path / "old.webhooks.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "create table versions (entity text not null, entity_id text not null,"
        " version real not null, primary key (entity, entity_id)) without rowid"
    )
    conn.execute("insert into versions values ('deal', '1', 5.0)")
    conn.commit()
    conn.close()
    inbox = Inbox(path)
    assert inbox.versions("deal", ["1"]) == {"1": (5.0, 0.0)}
    inbox.settle([], [("deal", "1", 5.0, 7.0)])
    assert inbox.versions("deal", ["1"]) == {"1": (5.0, 7.0)}


def test_a_database_that_cannot_be_written_marks_no_delivery(synced, fake, db_path):
    """Only a delivery's own problem fails it: a read-only database fails them all alike,
    so they wait for it to be writable again."""
    from pdsync.store import Store

    db, inbox, applier = synced
    deal = fake.records("deals")[6]
    meta = {"action": "change", "entity": "deal", "entity_id": str(deal["id"])}
    body = {"meta": meta, "data": {"id": deal["id"], "title": "Waits for a writable file"}}
    inbox.add(json.dumps(body).encode(), meta)
    applier.close()
    read_only = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    applier._db = sqlite_utils.Database(read_only)  # as a file made read-only would be
    applier._store = Store(applier._db)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        applier.apply_pending()
    assert len(inbox.pending()) == 1
    applier.close()
    assert applier.apply_pending() == 1
    assert db.execute("select title from deals where id = ?", [deal["id"]]).fetchone() == (
        "Waits for a writable file",
    )


def test_a_record_a_webhook_creates_during_a_full_pass_is_not_taken_for_gone(
    synced, run_sync, fake
):
    """The pass never saw it (created after its page was listed): its reconciliation must
    not flag what was written at or after the pass started."""
    from pdsync import timestamps

    db, inbox, applier = synced
    new_id = db.execute("select max(id) from persons").fetchone()[0] + 1000
    gone = fake.records("persons")[0]["id"]
    fake.delete_person(gone)  # no webhook registered: only the pass can find it out
    delivered = []

    def progress(event):
        # After the pass's first page of persons is committed, before it reconciles.
        if event.entity == "persons" and not event.done and not delivered:
            now = timestamps.now()
            data = {"id": new_id, "name": "Created mid-pass", "add_time": now, "update_time": now}
            deliver(inbox, applier, "person", "create", new_id, data)
            delivered.append(new_id)

    result = run_sync(full=True, progress=progress)
    assert result.ok and delivered
    row = db.execute(
        "select name, coalesce(is_deleted, 0) from persons where id = ?", [new_id]
    ).fetchone()
    assert row == ("Created mid-pass", 0)
    # What the pass did not see and was last changed before it started is still flagged.
    assert result.entities["persons"].flagged_gone == 1
    assert db.execute("select is_deleted from persons where id = ?", [gone]).fetchone() == (1,)


def test_a_full_pass_flags_a_deletion_whatever_the_time_on_this_machine(synced, run_sync, fake):
    """Which rows are newer than the pass is judged in Pipedrive's clock (the newest
    update_time stored when it began), not this machine's: with Pipedrive's clock half an
    hour ahead, a person last changed then deleted upstream is still flagged."""
    db, inbox, applier = synced
    person = fake.records("persons")[1]["id"]
    fake.advance(30 * 60)
    fake.update_person(person, name="Changed on a clock ahead of ours")
    assert run_sync().ok
    fake.advance(60)
    fake.delete_person(person)  # no webhook registered: only the pass can find it out
    result = run_sync(full=True)
    assert result.ok
    assert result.entities["persons"].flagged_gone == 1
    assert db.execute("select is_deleted from persons where id = ?", [person]).fetchone() == (1,)


def test_a_merged_record_names_the_one_it_went_into(synced, run_sync, fake):
    """Pipedrive's merge: a delete whose meta says ``merged_to_id`` (a string), and a change
    of the survivor. The deleted row keeps the survivor's id, and a later sync, which still
    lists the deleted deal (status=deleted), leaves it there."""
    db, inbox, applier = synced
    merged, into = (d["id"] for d in fake.records("deals")[:2])
    deleted_at = fake.delete_deal(merged)["update_time"]
    meta = {
        "action": "delete",
        "entity": "deal",
        "entity_id": str(merged),
        "timestamp": deleted_at,
        "merged_to_id": str(into),
    }
    inbox.add(json.dumps({"meta": meta, "data": None, "previous": {"id": merged}}).encode(), meta)
    org = fake.records("organizations")[0]["id"]
    deliver(inbox, applier, "organization", "delete", org, previous={"id": org})  # no merge
    while applier.apply_pending():
        pass
    row = db.execute("select status, is_deleted, merged_to_id from deals where id = ?", [merged])
    assert row.fetchone() == ("deleted", 1, into)
    assert db.execute("select merged_to_id from deals where id = ?", [into]).fetchone() == (None,)
    row = db.execute("select is_deleted, merged_to_id from organizations where id = ?", [org])
    assert row.fetchone() == (1, None)

    assert run_sync().ok
    row = db.execute("select status, merged_to_id from deals where id = ?", [merged])
    assert row.fetchone() == ("deleted", into)
