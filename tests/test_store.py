"""Store.upsert writes what changed and only that: a row stored with the same values is not
rewritten (no trigger, index or full-text work), a newer version is never overwritten. Any
shortcut to "unchanged" (docs/benchmarks.md section 12 measured one) must keep these."""

import sqlite_utils

from pdsync.entities import EntitySpec, Stream
from pdsync.store import Store

SPEC = EntitySpec(
    name="things",
    streams=(Stream("/v1/things"),),
    incremental=True,
    columns={"id": int, "title": str, "value": float, "update_time": str},
)
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"


def database(*stored: dict) -> sqlite_utils.Database:
    """The table holding ``stored``, and a trigger counting every update of a row."""
    db = sqlite_utils.Database(memory=True)
    db["things"].create(SPEC.columns, pk="id")
    db["things"].insert_all(stored)
    db["_writes"].create({"id": int})
    db.execute(
        "create trigger _count after update on things"
        " begin insert into _writes values (new.id); end"
    )
    return db


def thing(i: int, title: str = "a", value: float | None = 1.5, update_time: str = T0) -> dict:
    return {"id": i, "title": title, "value": value, "update_time": update_time}


def rows(db: sqlite_utils.Database) -> list[tuple]:
    return db.execute("select * from things order by id").fetchall()


def writes(db: sqlite_utils.Database) -> list[int]:
    return [row[0] for row in db.execute("select id from _writes order by id")]


def test_only_rows_that_differ_are_written():
    db = database(*(thing(i) for i in range(1, 601)))
    store = Store(db)
    page = [thing(i) for i in range(1, 601)]
    page[10] = thing(11, title="b")  # one column differs
    page[550] = thing(551, value=None)  # a value gone is a change too
    page.append(thing(601))  # a new record
    store.upsert(SPEC, page)
    assert writes(db) == [11, 551]
    assert db.execute("select title from things where id = 11").fetchone() == ("b",)
    assert db.execute("select value from things where id = 551").fetchone() == (None,)
    assert db.execute("select count(*) from things").fetchone() == (601,)


def test_a_row_missing_a_column_writes_it_empty():
    db = database(thing(1))
    store = Store(db)
    store.upsert(SPEC, [{"id": 1, "title": "a", "update_time": T0}, thing(2)])
    assert rows(db) == [(1, "a", None, T0), (2, "a", 1.5, T0)]
    assert writes(db) == [1]


def test_an_older_version_still_never_overwrites_a_newer_one():
    db = database(thing(1, title="new", update_time=T1))
    store = Store(db)
    store.upsert(SPEC, [thing(1, title="old", update_time=T0)])
    assert rows(db) == [(1, "new", 1.5, T1)]


def test_an_id_twice_in_a_page_keeps_the_last_version():
    # The stored version comes back after another of the same update_time in one page: both
    # are written in order, so the page's last version is what stays.
    db = database(thing(1, title="stored"))
    store = Store(db)
    store.upsert(SPEC, [thing(1, title="other"), thing(1, title="stored")])
    assert rows(db) == [(1, "stored", 1.5, T0)]
    assert writes(db) == [1, 1]


def test_a_value_of_another_type_is_left_to_sqlite():
    # Text '2' in a TEXT column and the number 2 differ in Python; SQLite stores both as '2'.
    db = database(thing(1, title="2"))
    store = Store(db)
    store.upsert(SPEC, [thing(1, title=2)])
    assert rows(db) == [(1, "2", 1.5, T0)]
    assert writes(db) == []
