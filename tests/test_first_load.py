"""A first load reads v2 lists in id order (first_load.py): it resumes from its cursor,
survives a cursor Pipedrive no longer takes, and misses nothing changed while it read."""

import json
from urllib.parse import parse_qs

import pytest
import sqlite_utils
from helpers import FAST_CLIENT, differences

from pdsync import first_load
from pdsync.client import CursorPage, PipedriveClient
from pdsync.engine import Sync
from pdsync.entities import builtin_entities
from pdsync.fake import FakePipedrive
from pdsync.timestamps import normalize as utc_text

DEALS = "/api/v2/deals"


@pytest.fixture
def fake():
    """Four pages of deals and two of persons: room for a pass to be interrupted (conftest's
    server, db_path and run_sync use this fake)."""
    fake = FakePipedrive(deals=1700, seed=18)
    yield fake
    fake.close()


def _asked(fake, path):
    return [parse_qs(r["query"]) for r in fake.requests if r["path"] == path]


def _interrupted_first_load(run_sync):
    """A first sync of deals stopped after two of its pages (the newest, one by id)."""

    def interrupt(event):
        if event.entity == "deals" and event.records >= 500:  # the newest page is not counted
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sync(only=["deals"], progress=interrupt)


def _first_rows(db_path):
    db = sqlite_utils.Database(db_path)
    return {
        r["stream"]: json.loads(r["watermark"])
        for r in db.query("select stream, watermark from sync_streams where stream like '%#first'")
    }


def test_a_first_sync_reads_v2_lists_in_id_order_and_v1_lists_as_before(fake, run_sync, db_path):
    result = run_sync(only=["deals", "notes"])
    assert result.ok
    asked = _asked(fake, DEALS)
    # The newest page first (where the pass began), then every page by id.
    assert asked[0]["sort_by"] == ["update_time"] and asked[0]["sort_direction"] == ["desc"]
    assert [q["sort_by"] for q in asked[1:]] == [["id"]] * (len(asked) - 1)
    assert len(asked) == 1 + 4  # 1,700 deals (some archived), 500 a page
    notes = _asked(fake, "/v1/notes")
    assert notes and all(q["sort"] == ["update_time ASC"] for q in notes)
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake, ["deals", "notes"]) == []
    # Each record counted once, though the newest page was read twice.
    assert result.entities["deals"].records == db["deals"].count
    assert _first_rows(db_path) == {}  # the pass is over: only watermarks remain
    newest = max(r["update_time"] for r in db.query("select update_time from deals"))
    mark = db.execute(
        "select watermark from sync_streams where stream like ?", [DEALS + "?%"]
    ).fetchone()[0]
    assert mark == newest

    # The next run is incremental, in update_time order, from that watermark.
    fake.reset_log()
    assert run_sync(only=["deals"]).ok
    again = _asked(fake, DEALS)
    assert len(again) == 1 and again[0]["sort_by"] == ["update_time"]
    assert "updated_since" in again[0]


def test_records_changed_during_an_id_order_first_load_are_read_by_the_next_run(
    fake, run_sync, db_path
):
    alive = [r for r in fake.records("deals") if r.get("status") != "deleted"]
    ids = sorted(r["id"] for r in alive if not r.get("is_archived"))
    archived = sorted(r["id"] for r in alive if r.get("is_archived"))
    persons = sorted(r["id"] for r in fake.records("persons"))
    changed = {}

    def mutate(event):
        # Once the pass has read past the lowest ids and not yet the highest.
        if changed or event.entity != "deals" or event.records < 500:
            return
        fake.update_deal(ids[0], title="changed behind the cursor")
        # Later changes are newer by more than the look-back: a watermark taken from the
        # newest record the pass read would skip the change behind the cursor.
        fake.advance(300)
        fake.update_deal(ids[-1], title="changed ahead of the cursor")
        fake.archive_deal(ids[1])  # from the deals list to the archived one
        fake.unarchive_deal(archived[0])
        fake.delete_deal(ids[2])
        changed["added"] = fake.add_deal(title="added mid-pass")["id"]
        fake.update_person(persons[0], name="Renamed mid-pass")

    first = run_sync(progress=mutate)
    assert first.ok, first.errors
    assert changed, "the pass never reached the point where records change"
    db = sqlite_utils.Database(db_path)
    # The pass had read the lowest id before it changed: the first run cannot have it.
    assert db["deals"].get(ids[0])["title"] != "changed behind the cursor"

    second = run_sync()
    assert second.ok, second.errors
    assert db["deals"].get(ids[0])["title"] == "changed behind the cursor"
    assert differences(db, fake) == []


def test_an_interrupted_first_load_resumes_from_its_cursor(fake, run_sync, db_path):
    _interrupted_first_load(run_sync)
    state = _first_rows(db_path)
    deals_state = next(v for k, v in state.items() if k.startswith(DEALS + "?"))
    assert deals_state["begun"] and deals_state["cursor"] and deals_state["since"]
    db = sqlite_utils.Database(db_path)
    assert 0 < db["deals"].count < fake.count("deals")

    fake.reset_log()
    result = run_sync(only=["deals"])
    assert result.ok, result.errors
    asked = _asked(fake, DEALS)
    # Carried on from the stored cursor: no newest page again, not page one again.
    assert asked[0]["cursor"] == [deals_state["cursor"]]
    assert all(q["sort_by"] == ["id"] for q in asked)
    assert result.entities["deals"].full_pass is False
    assert differences(db, fake, ["deals"]) == []
    assert _first_rows(db_path) == {}


def test_a_refused_cursor_starts_the_id_order_pass_again(fake, run_sync, db_path):
    _interrupted_first_load(run_sync)
    db = sqlite_utils.Database(db_path)
    for stream, state in _first_rows(db_path).items():
        state["cursor"] = "expired"  # what a cursor Pipedrive no longer knows looks like
        db.execute(
            "update sync_streams set watermark = ? where stream = ?", [json.dumps(state), stream]
        )
    db.conn.commit()
    fake.update_deal(min(r["id"] for r in fake.records("deals")), title="changed meanwhile")

    fake.reset_log()
    result = run_sync(only=["deals"])
    assert result.ok, result.errors
    asked = [r for r in fake.requests if r["path"] == DEALS]
    assert asked[0]["status"] == 400 and "cursor=expired" in asked[0]["query"]
    assert "cursor" not in parse_qs(asked[1]["query"])  # from the beginning, by id
    assert differences(db, fake, ["deals"]) == []


def test_a_refused_record_is_asked_for_again_without_reading_the_list_again(fake, server, db_path):
    """A record refused mid-pass must come back next run, as an incremental run's held
    watermark brings it back: the watermark comes down to its update_time, not to nothing
    (which would read the whole list again)."""
    middle = sorted(fake.records("deals"), key=lambda r: r["id"])[fake.count("deals") // 2]

    def spoil(spec, record):
        if spec.name == "deals" and record.get("id") == middle["id"]:
            return {**record, "update_time": "2999-01-01T00:00:00Z"}
        return record

    db = sqlite_utils.Database(db_path)
    with PipedriveClient(fake.token, server.url, **FAST_CLIENT) as client:
        first = Sync(db, client, only=["deals"], transform_record=spoil).run()
    assert first.entities["deals"].rejected >= 1  # the newest page may have it too
    assert db["deals"].count == fake.count("deals") - 1
    mark = db.execute(
        "select watermark from sync_streams where stream like ?", [DEALS + "?%"]
    ).fetchone()[0]
    assert mark is not None and mark <= utc_text(middle["update_time"])

    fake.reset_log()
    with PipedriveClient(fake.token, server.url, **FAST_CLIENT) as client:
        again = Sync(db, client, only=["deals"]).run()
    assert again.ok, again.errors
    assert differences(db, fake, ["deals"]) == []
    assert len(_asked(fake, DEALS)) < 4  # from the refused record on, not the whole list


def test_a_refused_record_without_a_time_leaves_no_watermark():
    """Nothing to bring the watermark down to: the next run reads the stream whole."""
    spec = next(s for s in builtin_entities() if s.name == "deals")
    page = CursorPage([{"id": 1, "update_time": "2025-01-01T00:00:00Z"}, {"id": 2}], None)
    rows = [{"id": 1, "update_time": "2025-01-01T00:00:00Z"}]
    begun = first_load.State(begun=True, since="2025-06-01T00:00:00Z")
    assert first_load.after(begun, spec, page, rows, [2]).held
    page = CursorPage([{"id": 1, "update_time": "2025-01-01T00:00:00Z"}, {"id": 3}], None)
    page[1]["update_time"] = "not a time"
    assert first_load.after(begun, spec, page, rows, [3]).held
    page = CursorPage([{"id": 4, "update_time": "2025-02-01T00:00:00Z"}], "next")
    floor = first_load.after(begun, spec, page, [], [4])
    assert not floor.held and floor.floor == "2025-02-01T00:00:00Z"
