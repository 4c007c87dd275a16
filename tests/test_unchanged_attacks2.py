"""More attacks on the unchanged-records digests (unchanged.py): each tries to leave a row that
differs from what a sync without digests would write, while a digest says "unchanged"."""

import sqlite_utils

import pdsync.engine
from pdsync.records import to_row
from tests.test_unchanged_attacks import row, synced


def test_a_table_renamed_away_and_made_again_gets_its_triggers(fake, run_sync, db_path):
    """A user keeps a copy of persons (ALTER TABLE ... RENAME) and lets pdsync make the table
    again. SQLite moves the digest triggers with the renamed table, so their names are still
    there: the new table must get its own, and the old digests must go, or the next full pass
    skips every unchanged record and the new table stays without them."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    db.execute("alter table persons rename to persons_backup")
    db.conn.commit()
    assert run_sync().ok  # makes persons again; fetches only what changed since (nothing)
    assert run_sync(full=True).ok
    assert db["persons"].count == fake.count("persons")
    # and the new table's rows are guarded: a hand edit is written back by the next pass
    person = fake.records("persons")[0]
    db.execute("update persons set name = 'Edited' where id = ?", [person["id"]])
    db.conn.commit()
    assert run_sync(full=True).ok
    assert row(db, "persons", person["id"], "name") == (person["name"],)


def test_line_items_renamed_away_are_filled_again_by_a_full_pass(fake, run_sync, db_path):
    """deal_products gets no column beyond its declared ones (which would forget its digests
    by chance): made again empty, a --full asks every deal, and each line item's old digest
    (its triggers went with the renamed table) said "unchanged": none was written."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    db.execute("alter table deal_products rename to deal_products_backup")
    db.conn.commit()
    assert run_sync(full=True).ok
    assert db["deal_products"].count == fake.count("deal_products")


def test_a_column_dropped_and_added_again_by_a_user_is_filled_again(fake, run_sync, db_path):
    """SQLite cannot change a column's type: a user drops it and adds it again, as text.
    The table has the same column names as before, but every value of the column is gone,
    and DDL fires no trigger: a --full that skips unchanged records never fills it."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    before = dict(db.execute("select id, job_title from persons").fetchall())
    db.execute("alter table persons drop column job_title")
    db.execute("alter table persons add column job_title text")
    db.conn.commit()
    assert run_sync(full=True).ok
    assert dict(db.execute("select id, job_title from persons").fetchall()) == before


def test_a_last_column_dropped_and_added_again_as_it_was_is_filled_again(fake, run_sync, db_path):
    """The table's last column, dropped and added back as sqlite-utils made it: its values
    are gone, and the CREATE TABLE text and the column names are what they were, so no key
    can tell. The schema version can: any change between runs voids the digests."""
    synced(run_sync)
    db = sqlite_utils.Database(db_path)
    name, kind = list(db["persons"].columns_dict.items())[-1]
    before = dict(db.execute(f"select id, [{name}] from persons").fetchall())
    assert any(v is not None for v in before.values())
    text = db["persons"].schema
    db.execute(f"alter table persons drop column [{name}]")
    db["persons"].add_column(name, kind)
    db.conn.commit()
    assert db["persons"].schema == text  # the table reads as it did
    assert run_sync(full=True).ok
    assert dict(db.execute(f"select id, [{name}] from persons").fetchall()) == before


def test_runs_that_change_no_schema_keep_the_digests(fake, run_sync, db_path, monkeypatch):
    """The schema version is noted when a run ends, after its own changes: the next run
    finds it as it was and skips, before making a row, every record stored as it is."""
    synced(run_sync)
    assert run_sync().ok  # an incremental run between full passes changes no schema
    made = []
    monkeypatch.setattr(
        pdsync.engine, "to_row", lambda spec, *a: made.append(spec.name) or to_row(spec, *a)
    )
    assert run_sync(full=True).ok
    assert not {"deals", "persons", "organizations", "activities"} & set(made)
    # and a change of the schema between runs, any, makes the next pass make them again
    db = sqlite_utils.Database(db_path)
    db.execute("create table a_users_table (x)")
    db.conn.commit()
    assert run_sync(full=True).ok
    assert {"deals", "persons", "organizations", "activities"} <= set(made)


def _key_after(monkeypatch, module, name, value):
    """The deals key once ``module.name`` is ``value`` (a checkout between releases)."""
    from pdsync import plugins, unchanged

    spec = next(s for s in plugins.entities() if s.name == "deals")
    unchanged._module_code.cache_clear()
    before = unchanged.key(spec, None)
    unchanged._module_code.cache_clear()
    monkeypatch.setattr(module, name, value)
    try:
        return before, unchanged.key(spec, None)
    finally:
        unchanged._module_code.cache_clear()


def test_a_constant_that_shapes_rows_is_in_the_key(monkeypatch):
    """records.py's constants decide which keys are timestamps (and timestamps.py's how
    they are written): another value there, the version unchanged, writes other rows. The
    key held only the code of functions, which names a constant but not its value."""
    from pdsync import records, timestamps

    before, after = _key_after(monkeypatch, records, "_TIMES_OF_DAY", frozenset({"due_time", "x"}))
    assert after != before
    before, after = _key_after(monkeypatch, timestamps, "FORMAT", "%Y-%m-%d %H:%M:%S")
    assert after != before
    # and the read-only mappings of how a custom field's type becomes columns
    numeric = type(records._NUMERIC)({**records._NUMERIC, "int": float})
    before, after = _key_after(monkeypatch, records, "_NUMERIC", numeric)
    assert after != before
    second = type(records._SECOND_COLUMN)({**records._SECOND_COLUMN, "daterange": "end"})
    before, after = _key_after(monkeypatch, records, "_SECOND_COLUMN", second)
    assert after != before


def test_a_default_argument_that_shapes_rows_is_in_the_key(monkeypatch):
    """A function's defaults live beside its code object, not in it."""
    from pdsync import records

    def excerpt(text, limit=40):
        return text[:limit]

    def excerpt_longer(text, limit=80):
        return text[:limit]

    excerpt.__module__ = excerpt_longer.__module__ = records.__name__
    _, shorter = _key_after(monkeypatch, records, "excerpt", excerpt)
    _, longer = _key_after(monkeypatch, records, "excerpt", excerpt_longer)
    assert shorter != longer
