"""Unchanged records cost nothing: a --full pass skips what it stored as it is (unchanged.py),
and whatever else writes a row makes the next pass write it again."""

import json
from collections import Counter

import pytest
import sqlite_utils

import pdsync.engine
from pdsync import plugins, unchanged
from pdsync.records import CustomFieldMap
from pdsync.store import Store
from pdsync.webhook_apply import Applier
from pdsync.webhook_inbox import Inbox

WATCHED = ("deals", "persons", "activities", "deal_products")


def watch_writes(db):
    """Count every insert, update and delete of the watched tables (full-text, indexes and
    totals only change with them)."""
    db.execute("create table _writes (tbl text)")
    for table in WATCHED:
        for event in ("insert", "update", "delete"):
            db.execute(
                f"create trigger _watch_{event}_{table} after {event} on {table}"
                f" begin insert into _writes values ('{table}'); end"
            )
    db.conn.commit()


def writes(db):
    return dict(db.execute("select tbl, count(*) from _writes group by tbl").fetchall())


@pytest.fixture
def rows_made(monkeypatch):
    """Records turned into rows, per entity."""
    made = Counter()
    to_row = pdsync.engine.to_row

    def counting(spec, *args, **kwargs):
        made[spec.name] += 1
        return to_row(spec, *args, **kwargs)

    monkeypatch.setattr(pdsync.engine, "to_row", counting)
    return made


def synced(run_sync):
    """A first sync, then a --full pass: digests are written by full passes only (a first
    load's would cost it for nothing)."""
    assert run_sync().ok
    assert run_sync(full=True).ok


def row(db, table, id_, columns):
    return db.execute(f"select {columns} from [{table}] where id = ?", [id_]).fetchone()


def test_a_full_pass_of_an_unchanged_account_writes_nothing(fake, run_sync, db_path, rows_made):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    # Its triggers change the schema, which voids any digest (unchanged.check_schema): the
    # pass after them keeps the digests, and even that one writes no row (the upsert finds
    # each as it is stored).
    watch_writes(db)
    assert run_sync(full=True).ok
    assert writes(db) == {}
    rows_made.clear()
    result = run_sync(full=True)
    assert result.ok, result.errors
    assert writes(db) == {}
    # Nor were the records made into rows: their digests said they are stored as they are.
    assert not {name: n for name, n in rows_made.items() if name in WATCHED}
    # They still count as synced, and as seen: nothing is taken for gone.
    assert result.entities["deals"].records >= fake.count("deals")
    assert result.entities["deal_products"].records == fake.count("deal_products")
    assert all(e.flagged_gone == 0 for e in result.entities.values())
    assert (
        db.execute("select count(*) from deals where is_deleted = 1").fetchone()[0]
        == (db.execute("select count(*) from deals where status = 'deleted'").fetchone()[0])
    )


def test_a_row_written_by_hand_is_written_back_by_the_next_full_pass(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    deal = fake.records("deals")[0]
    person = fake.records("persons")[0]
    line_item = fake.records("deal_products")[0]
    db.execute("update deals set title = 'Edited in sqlite' where id = ?", [deal["id"]])
    db.execute("update persons set name = null where id = ?", [person["id"]])
    db.execute("delete from deal_products where id = ?", [line_item["id"]])
    db.conn.commit()
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "title") == (deal["title"],)
    assert row(db, "persons", person["id"], "name") == (person["name"],)
    assert row(db, "deal_products", line_item["id"], "deal_id") == (line_item["deal_id"],)


def test_a_row_flagged_gone_and_seen_again_is_unflagged(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    spec = next(s for s in plugins.entities() if s.name == "persons")
    person = fake.records("persons")[0]["id"]
    others = [r[0] for r in db.execute("select id from persons where id != ?", [person])]
    with db.conn:
        assert Store(db).mark_gone(spec, keep_ids=others) == 1
    assert row(db, "persons", person, "is_deleted") == (1,)
    assert run_sync(full=True).ok
    assert row(db, "persons", person, "is_deleted") == (0,)


def test_a_webhook_change_in_between_is_replaced_by_pipedrives_version(
    fake, run_sync, db_path, tmp_path
):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    deal = fake.records("deals")[0]
    stored = row(db, "deals", deal["id"], "update_time")[0]
    inbox = Inbox(tmp_path / "inbox.db")
    applier = Applier(db_path, inbox)
    try:
        # A delivery of the same moment as the stored version (so the update_time guard
        # lets Pipedrive's version back in), saying something else.
        data = {"id": deal["id"], "title": "From a webhook", "update_time": stored}
        meta = {"action": "change", "entity": "deal", "entity_id": str(deal["id"])}
        inbox.add(json.dumps({"meta": meta, "data": data, "previous": None}).encode(), meta)
        while applier.apply_pending():
            pass
    finally:
        applier.close()
    assert row(db, "deals", deal["id"], "title") == ("From a webhook",)
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "title") == (deal["title"],)


def test_a_table_rebuilt_without_its_triggers_forgets_its_digests(fake, run_sync, db_path):
    """A rebuild (sqlite-utils' transform, a user's) drops the table's triggers: writes made
    without them must not be taken for unchanged."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    deal = fake.records("deals")[0]
    for event in ("insert", "update", "delete"):
        db.execute(f"drop trigger _pdsync_digest_{event}_deals")
    db.execute("update deals set title = 'Rebuilt' where id = ?", [deal["id"]])
    db.conn.commit()
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "title") == (deal["title"],)


def test_new_field_definitions_make_every_digest_stale(fake, run_sync, db_path, rows_made):
    synced(run_sync)
    field = next(f for f in fake.records("deal_fields") if f["field_type"] == "enum")
    fake.add_deal_field_option(field["field_code"], "Brand-new option")
    rows_made.clear()
    assert run_sync(full=True).ok
    assert rows_made["deals"] >= fake.count("deals")  # each written again (no digest matched)
    rows_made.clear()
    assert run_sync(full=True).ok
    assert rows_made["deals"] == 0  # and known again since


def test_the_key_covers_what_shapes_a_row_besides_the_record():
    spec = next(s for s in plugins.entities() if s.name == "deals")
    definition = {
        "is_custom_field": True,
        "field_code": "a" * 40,
        "column_name": "region",
        "field_type": "enum",
        "options": [{"id": 1, "label": "North"}],
    }
    renamed = {**definition, "options": [{"id": 1, "label": "Nord"}]}
    added = {**definition, "field_code": "b" * 40, "column_name": "size"}
    keys = [
        unchanged.key(spec, None),
        unchanged.key(spec, CustomFieldMap.from_definitions([definition])),
        unchanged.key(spec, CustomFieldMap.from_definitions([renamed])),
        unchanged.key(spec, CustomFieldMap.from_definitions([definition, added])),
        unchanged.key(next(s for s in plugins.entities() if s.name == "persons"), None),
    ]
    assert len(set(keys)) == len(keys)
    assert unchanged.key(spec, CustomFieldMap.from_definitions([definition])) == keys[1]


def test_a_digest_is_kept_only_for_the_version_the_row_holds(tmp_path):
    """Two streams can carry one deal: the update_time guard keeps the newer version, and
    the older record's digest must not then pass for the row's."""
    db = sqlite_utils.Database(tmp_path / "guard.db")
    entities = plugins.entities()
    from pdsync.schema import prepare

    prepare(db, entities)
    spec = next(s for s in entities if s.name == "deals")
    store = Store(db)
    newer = {"id": 1, "title": "Newer", "update_time": "2026-01-02T00:00:00Z"}
    older = {"id": 1, "title": "Older", "update_time": "2026-01-01T00:00:00Z"}
    with db.conn:
        store.upsert(spec, [dict(newer)])
        store.save_digests(spec, [newer], [b"n" * 16])
        store.upsert(spec, [dict(older)])  # refused by the guard
        store.save_digests(spec, [older], [b"o" * 16])
    assert row(db, "deals", 1, "title") == ("Newer",)
    assert store.digests(spec, [1]) == {1: b"n" * 16}
    with db.conn:
        db.execute("update deals set title = 'Edited' where id = 1")
    assert store.digests(spec, [1]) == {}


def test_a_column_dropped_and_made_again_is_filled_by_the_next_full_pass(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    db.execute("alter table persons drop column visible_to")
    db.conn.commit()
    assert run_sync(full=True).ok
    person = fake.records("persons")[0]
    assert row(db, "persons", person["id"], "visible_to") == (person["visible_to"],)


def test_an_id_twice_in_a_page_is_never_skipped():
    spec = next(s for s in plugins.entities() if s.name == "deals")
    run_key = unchanged.key(spec, None)
    first, last = {"id": 1, "title": "First"}, {"id": 1, "title": "Last"}

    class Stored:
        def digests(self, spec, ids):
            return {1: unchanged.digest(run_key, last)}

    records, digests, same = unchanged.sort(Stored(), spec, run_key, [first, last])
    assert (records, same) == ([first, last], [])  # written in order: the last one wins
    records, digests, same = unchanged.sort(Stored(), spec, run_key, [last])
    assert (records, same) == ([], [last])


def test_an_id_sqlite_cannot_hold_is_left_to_to_row():
    spec = next(s for s in plugins.entities() if s.name == "deals")
    run_key = unchanged.key(spec, None)
    huge = {"id": 2**63, "title": "Beyond SQLite's integers"}

    class Stored:
        def digests(self, spec, ids):
            assert ids == [1]
            return {}

    records, _, same = unchanged.sort(Stored(), spec, run_key, [huge, {"id": 1}])
    assert (records, same) == ([huge, {"id": 1}], [])
