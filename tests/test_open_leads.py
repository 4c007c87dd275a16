"""open_leads, checked against expectations computed here from the fake's records."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlite_utils
from helpers import FAST_CLIENT
from test_canned_queries import METADATA_PATH, normalized

import pdsync
from pdsync.fake import FakePipedrive, FakeServer
from pdsync.queries import AFTER_KEY, LIST_LIMIT


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakePipedrive(deals=900, seed=5, now=now)
    try:
        # Ties on add_time (an import): pages must break them, neither skipping nor repeating.
        fake.freeze(now + timedelta(minutes=1))
        labels = fake.records("lead_labels")
        for i in range(4):
            fake.add_lead(f"Imported {i}", owner_id=2, label_ids=[labels[0]["id"]])
        converted = next(r for r in fake.records("leads") if not r["is_archived"])
        fake.convert_lead(converted["id"])
        path = str(tmp_path_factory.mktemp("leads") / "pipedrive.db")
        with FakeServer(fake) as server:
            for full in (False, True):  # the first flags the converted lead (its deal says)
                result = pdsync.sync(
                    path,
                    token=fake.token,
                    base_url=server.url,
                    auth_path=None,
                    client_options=FAST_CLIENT,
                    full=full,
                )
                assert result.ok, result.errors
        yield fake, path, converted["id"]
    finally:
        fake.close()


def _seconds(text: str) -> str:
    return text[:19] + "Z"


def expected(fake, owner=None, label=None, source=None):
    users = {u["id"]: u["name"] for u in fake.records("users")}
    label_names = {lab["id"]: lab["name"] for lab in fake.records("lead_labels")}
    rows = []
    for lead in fake.records("leads"):
        names = [label_names[i] for i in lead["label_ids"]]
        if lead["is_archived"]:
            continue
        if owner is not None and owner not in (lead["owner_id"], users[lead["owner_id"]]):
            continue
        if label is not None and label not in names:
            continue
        if source is not None and lead["source_name"] != source:
            continue
        added = datetime.fromisoformat(_seconds(lead["add_time"]).replace("Z", "+00:00"))
        # Whole days, cut towards zero as SQLite's cast does (the imports are a minute ahead).
        age = int((datetime.now(timezone.utc) - added).total_seconds() / 86400)
        rows.append((lead["id"], users[lead["owner_id"]], names, _seconds(lead["add_time"]), age))
    return sorted(rows, key=lambda r: r[3], reverse=True)


def got(path, **params):
    return [
        (r["id"], r["owner"], json.loads(r["labels"]), r["add_time"], r["age_days"])
        for r in pdsync.query(path, "open_leads", **params)
    ]


def same(rows, want):
    """Equal up to the order of leads added in the same second (their order is the rowid)."""
    assert [r[3] for r in rows] == [w[3] for w in want]
    assert sorted(rows) == sorted(want)


def test_every_open_lead_newest_first_with_age(synced):
    fake, path, converted = synced
    rows = got(path)
    same(rows, expected(fake))
    assert converted not in {r[0] for r in rows}
    assert len(rows) > 30


def test_owner_label_and_source(synced):
    fake, path, _ = synced
    users = fake.records("users")
    same(got(path, owner=users[1]["name"]), expected(fake, owner=users[1]["name"]))
    same(got(path, owner=str(users[1]["id"])), expected(fake, owner=users[1]["id"]))
    assert got(path, owner="Nobody at all") == []
    for label in fake.records("lead_labels"):
        same(got(path, label=label["name"]), expected(fake, label=label["name"]))
        assert got(path, label=label["id"]) == got(path, label=label["name"])
    same(got(path, source="Web forms"), expected(fake, source="Web forms"))
    both = got(path, owner="2", label=fake.records("lead_labels")[0]["name"], source="API")
    same(both, expected(fake, owner=2, label=fake.records("lead_labels")[0]["name"], source="API"))
    assert len(both) >= 4  # the imported ones


def test_limit_and_after_walk_every_row_once(synced):
    fake, path, _ = synced
    everything = pdsync.query(path, "open_leads")
    walked, after = [], ""
    while True:
        page = pdsync.query(path, "open_leads", limit=3, after=after)
        walked += page
        if len(page) < 3:
            break
        after = f"{page[-1]['add_time']},{page[-1]['rowid']}"
    assert [r["id"] for r in walked] == [r["id"] for r in everything]
    assert pdsync.query(path, "open_leads", after="not a key") == []


def test_says_the_limit_and_after_clauses_word_for_word():
    import yaml

    sql = normalized(
        yaml.safe_load(METADATA_PATH.read_text())["databases"]["pipedrive"]["queries"][
            "open_leads"
        ]["sql"]
    )
    assert normalized(AFTER_KEY) in sql
    assert sql.count(normalized(LIST_LIMIT)) == 1


def test_leads_table_is_labelled_in_datasette(synced):
    _, path, _ = synced
    db = sqlite_utils.Database(path)
    assert {fk.other_table for fk in db["leads"].foreign_keys} >= {
        "users",
        "persons",
        "organizations",
    }
