"""Attacks on the unchanged-records digests (unchanged.py): each tries to leave a row that
differs from Pipedrive's record while its digest says "unchanged", so --full never repairs it."""

import dataclasses
import json

import sqlite_utils

import pdsync.engine
from pdsync import plugins, unchanged
from pdsync.records import to_row
from pdsync.store import Store
from pdsync.webhook_apply import Applier
from pdsync.webhook_inbox import Inbox


def synced(run_sync):
    assert run_sync().ok
    assert run_sync(full=True).ok


def row(db, table, id_, columns):
    return db.execute(f"select {columns} from [{table}] where id = ?", [id_]).fetchone()


def spec_of(name):
    return next(s for s in plugins.entities() if s.name == name)


def digest_count(db, entity):
    sql = "select count(*) from _pdsync_digests where entity_type = ?"
    return db.execute(sql, [entity]).fetchone()[0]


def test_a_column_pdsync_made_from_a_record_key_and_dropped_is_filled_again(
    fake, run_sync, db_path, monkeypatch
):
    """A key Pipedrive sends that no spec declares (an activity's creator_user_id) becomes a
    column on the fly (upsert's ensure_columns). Dropped by a user, only a row made again
    brings it back: a full pass that skips every record as unchanged never does.
    FAILS on integration ce037c0: the column stays gone after --full."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    column = "creator_user_id"
    assert column not in spec_of("activities").table_columns  # made from the records
    before = dict(db.execute(f"select id, [{column}] from activities").fetchall())
    assert any(v is not None for v in before.values())
    db.execute(f"alter table activities drop column [{column}]")
    db.conn.commit()
    assert run_sync(full=True).ok
    assert column in db["activities"].columns_dict, f"--full never made {column} again"
    assert dict(db.execute(f"select id, [{column}] from activities").fetchall()) == before
    # Fixed by putting the table's columns in the key: the changed table costs a rewrite or
    # two (the column comes back mid-pass), then its records are skipped again.
    assert run_sync(full=True).ok
    made = []
    monkeypatch.setattr(
        pdsync.engine, "to_row", lambda spec, *a: made.append(spec.name) or to_row(spec, *a)
    )
    assert run_sync(full=True).ok
    assert "activities" not in made


def test_a_table_rebuilt_by_sqlite_utils_transform_is_repaired(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    db["persons"].transform(types={"name": str})  # drops and recreates the table
    person = fake.records("persons")[0]
    db.execute("update persons set name = 'Rebuilt then edited' where id = ?", [person["id"]])
    db.conn.commit()
    assert run_sync(full=True).ok
    assert row(db, "persons", person["id"], "name") == (person["name"],)


def test_a_table_dropped_by_a_user_is_filled_again(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    db.execute("drop table activities")
    db.conn.commit()
    assert run_sync(full=True).ok
    assert db["activities"].count == fake.count("activities")


def test_a_deal_deleted_by_a_user_is_written_back(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    deal = fake.records("deals")[5]
    db.execute("pragma foreign_keys = off")
    db.execute("delete from deals where id = ?", [deal["id"]])
    db.conn.commit()
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "title") == (deal["title"],)


def test_an_id_changed_by_a_user_update_loses_both_digests(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    person = fake.records("persons")[0]
    spare = 10**9
    db.execute("update persons set id = ? where id = ?", [spare, person["id"]])
    db.execute("insert into persons (id, name) values (?, 'Squatter')", [person["id"]])
    db.conn.commit()
    assert run_sync(full=True).ok
    assert row(db, "persons", person["id"], "name") == (person["name"],)


def test_a_line_item_removed_from_an_unchanged_looking_deal_goes(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    item = fake.records("deal_products")[0]
    other = fake.records("deal_products")[1]
    fake.remove_line_item(item["id"])
    fake.update_line_item(other["id"], quantity=other["quantity"] + 7)
    assert run_sync(full=True).ok
    assert row(db, "deal_products", item["id"], "id") is None
    assert row(db, "deal_products", other["id"], "quantity") == (other["quantity"] + 7,)


def test_a_plugin_transform_that_changes_between_runs_is_applied(
    fake, run_sync, db_path, monkeypatch
):
    def shout(entity, record):
        if entity == "persons" and isinstance(record.get("name"), str):
            return {**record, "name": record["name"].upper()}
        return record

    with monkeypatch.context() as m:  # a plugin installed
        m.setattr(plugins, "has_record_transforms", lambda: True)
        m.setattr(plugins, "transform_record", shout)
        assert run_sync().ok
        assert run_sync(full=True).ok
    db = sqlite_utils.Database(db_path)
    person = fake.records("persons")[0]
    assert row(db, "persons", person["id"], "name") == (person["name"].upper(),)
    assert run_sync(full=True).ok  # the plugin uninstalled
    assert row(db, "persons", person["id"], "name") == (person["name"],)


def test_a_webhook_deletion_then_full_pass(fake, run_sync, db_path, tmp_path):
    """A delivery flags a deal deleted; Pipedrive still has it: the full pass writes it back."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    inbox = Inbox(tmp_path / "inbox.db")
    applier = Applier(db_path, inbox)
    try:
        meta = {"action": "delete", "entity": "deal", "entity_id": str(deal["id"])}
        body = {"meta": meta, "data": None, "previous": {"id": deal["id"]}}
        inbox.add(json.dumps(body).encode(), meta)
        while applier.apply_pending():
            pass
    finally:
        applier.close()
    changed = row(db, "deals", deal["id"], "status, is_deleted")
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "status, is_deleted") == ("open", 0), changed


def test_an_equal_update_time_from_another_stream_keeps_only_the_row_version(tmp_path):
    """Deals and archived deals carry one deal at one update_time, saying different things:
    each digest saved must describe the row as it ends."""
    from pdsync.schema import prepare

    db = sqlite_utils.Database(tmp_path / "eq.db")
    entities = plugins.entities()
    prepare(db, entities)
    spec = spec_of("deals")
    store = Store(db)
    at = "2026-01-01T00:00:00Z"
    a = {"id": 1, "title": "A", "update_time": at}
    b = {"id": 1, "title": "B", "update_time": at}
    with db.conn:
        store.upsert(spec, [dict(a)])
        store.save_digests(spec, [a], [b"a" * 16])
        store.upsert(spec, [dict(b)])
        store.save_digests(spec, [b], [b"b" * 16])
    assert row(db, "deals", 1, "title") == ("B",)
    assert store.digests(spec, [1]) == {1: b"b" * 16}


def test_an_entity_transform_made_by_a_factory_gets_no_digests():
    """A plugin's entities can be made by a factory: one function, a closure per setting.
    No key sees the setting, so such an entity is never skipped: its rows are written."""

    def factory(suffix):
        def transform(row, record):
            row["title"] = f"{record.get('title')}{suffix}"

        return transform

    spec = spec_of("deals")
    assert unchanged.applies(spec)
    assert not unchanged.applies(dataclasses.replace(spec, transform=factory(" (EU)")))


def test_an_entity_transform_of_a_plugin_gets_no_digests(monkeypatch):
    """A transform's own code is in the key, but not what a plugin's helper it calls does
    (upgraded without a new pdsync): a transform outside pdsync means no digests."""
    import types

    helpers = types.ModuleType("plugin_helpers")
    helpers.region = lambda record: "EU"
    monkeypatch.setitem(__import__("sys").modules, "plugin_helpers", helpers)

    def transform(row, record):
        row["title"] = helpers.region(record)

    transform.__module__ = "plugin_helpers"
    assert not unchanged.applies(dataclasses.replace(spec_of("deals"), transform=transform))


def test_pdsync_s_own_transform_module_is_in_the_key(monkeypatch):
    """pdsync's transforms call helpers beside them (entities.py): a change there (a
    checkout between releases, where the version stays) changes the key."""
    from pdsync import entities

    spec = spec_of("deals")
    before = unchanged.key(spec, None)
    unchanged._module_code.cache_clear()
    monkeypatch.setattr(entities, "_a_helper_changed", lambda: 1, raising=False)
    _a_helper_changed = entities._a_helper_changed
    _a_helper_changed.__module__ = entities.__name__
    try:
        assert unchanged.key(spec, None) != before
    finally:
        unchanged._module_code.cache_clear()


def test_a_deal_archived_then_unarchived_moves_between_streams(fake, run_sync, db_path):
    """The deals and archived-deals streams carry one deal in turn: each move is written."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    fake.archive_deal(deal["id"])
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "is_archived, is_deleted") == (1, 0)
    fake.unarchive_deal(deal["id"])
    assert run_sync(full=True).ok
    assert row(db, "deals", deal["id"], "is_archived, is_deleted") == (0, 0)
    assert run_sync(full=True).ok  # and skipped as unchanged, not flagged gone
    assert row(db, "deals", deal["id"], "is_archived, is_deleted, status") == (0, 0, "open")


def test_a_full_pass_killed_and_resumed_still_repairs_a_row(fake, run_sync, db_path):
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    person = fake.records("persons")[1]
    gone = fake.records("persons")[0]["id"]
    db.execute("update persons set name = 'Edited' where id = ?", [person["id"]])
    db.conn.commit()
    fake.advance(2)
    fake.delete_person(gone)
    fake.inject("/api/v2/persons", "500", times=99)
    assert run_sync(full=True).entities["persons"].status == "failed"
    fake.clear_faults()
    resumed = run_sync()  # a plain run resumes the pending full pass
    assert resumed.entities["persons"].full_pass
    assert row(db, "persons", person["id"], "name") == (person["name"],)
    assert row(db, "persons", gone, "is_deleted") == (1,)
