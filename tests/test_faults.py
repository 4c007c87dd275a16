"""Every retry and failure path, injected by the fake Pipedrive over real HTTP."""

import json

import pytest
import sqlite_utils
from helpers import differences

from pdsync.client import PipedriveClient
from pdsync.engine import Sync
from pdsync.fake import FakePipedrive, FakeServer

FAST = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 1.0}
RETRIED = ["429", "429-reset", "500", "502", "503", "timeout", "reset", "truncated", "invalid_json"]


@pytest.fixture(scope="module")
def big():
    # Enough deals for three pages, so a fault can hit a middle page.
    fake = FakePipedrive(deals=1400, seed=11)
    fake.timeout_hold = 2.0
    with FakeServer(fake) as server:
        yield fake, server
    fake.close()


def sync(fake, server, path, **kwargs):
    db = sqlite_utils.Database(str(path))
    with PipedriveClient(fake.token, server.url, **FAST) as client:
        return db, Sync(db, client, **kwargs).run()


@pytest.mark.parametrize("kind", RETRIED)
@pytest.mark.parametrize("page", ["first", "middle"])
def test_transient_fault_is_retried_and_sync_converges(big, tmp_path, kind, page):
    fake, server = big
    fake.clear_faults()
    fake.reset_log()
    fake.inject("/api/v2/deals", kind, times=2, after=0 if page == "first" else 1)
    db, result = sync(fake, server, tmp_path / "p.db", only=["deals"])
    assert result.ok, result.errors
    assert result.entities["deals"].retries == 2
    assert differences(db, fake, entities=["deals"]) == []


def test_retries_exhausted_fail_one_entity_and_keep_the_others(big, tmp_path):
    fake, server = big
    fake.clear_faults()
    fake.inject("/api/v2/persons", "503", times=100)
    db, result = sync(fake, server, tmp_path / "p.db")
    assert result.status == "partial"
    persons = result.entities["persons"]
    assert persons.status == "failed"
    assert "/api/v2/persons" in persons.error and "503" in persons.error
    assert all(e.status == "success" for n, e in result.entities.items() if n != "persons")
    meta = db["sync_metadata"].get("persons")
    assert meta["status"] == "failed" and "503" in meta["error_message"]
    fake.clear_faults()
    db, again = sync(fake, server, tmp_path / "p.db")
    assert again.ok
    assert differences(db, fake) == []


def test_failure_on_a_middle_page_keeps_committed_pages_and_resumes(big, tmp_path):
    fake, server = big
    fake.clear_faults()
    # A first load reads the newest page, then by id (first_load.py): the third page fails.
    fake.inject("/api/v2/deals", "500", times=100, after=2)
    db, result = sync(fake, server, tmp_path / "p.db", only=["deals"])
    assert result.entities["deals"].status == "failed"
    assert db["deals"].count > 500  # two pages are in (they may share records), and the cursor
    cursor = _resume_point(db)["cursor"]
    assert cursor
    db, first = _rerun(fake, server, tmp_path / "p.db")
    assert f"cursor={cursor}" in first["query"]  # resumed, not restarted
    assert differences(db, fake, entities=["deals"]) == []

    # A full pass of a loaded table reads in update_time order, a watermark with each page.
    fake.inject("/api/v2/deals", "500", times=100, after=1)
    db, result = sync(fake, server, tmp_path / "p.db", only=["deals"], full=True)
    assert result.entities["deals"].status == "failed"
    mark = db.execute(
        "select watermark from sync_streams where stream like '/api/v2/deals?%'"
    ).fetchone()[0]
    assert mark
    db, first = _rerun(fake, server, tmp_path / "p.db")
    assert "updated_since=" in first["query"]  # resumed, not restarted
    assert differences(db, fake, entities=["deals"]) == []


def _rerun(fake, server, path):
    """Sync deals again without faults: the database, and the first deals request's query."""
    fake.clear_faults()
    fake.reset_log()
    db, again = sync(fake, server, path, only=["deals"])
    assert again.ok
    return db, next(r for r in fake.requests if r["path"] == "/api/v2/deals")


def _resume_point(db):
    stored = db.execute(
        "select watermark from sync_streams where stream like '/api/v2/deals?%#first'"
    ).fetchone()[0]
    return json.loads(stored)


def test_401_mid_run_stops_everything_without_retrying(big, tmp_path):
    fake, server = big
    fake.clear_faults()
    fake.reset_log()
    fake.inject("/api/v2/deals", "401", times=1, after=1)
    db, result = sync(fake, server, tmp_path / "p.db")
    assert result.status in ("failed", "partial")
    assert "rejected the API token" in result.entities["deals"].error
    unauthorized = [r for r in fake.requests if r["status"] == 401]
    assert len(unauthorized) == 1
    assert db["sync_metadata"].get("deals")["status"] == "failed"


def test_wrong_token_is_one_clear_error(big, tmp_path):
    fake, server = big
    fake.clear_faults()
    fake.reset_log()
    db = sqlite_utils.Database(str(tmp_path / "p.db"))
    with PipedriveClient("wrong-token", server.url, **FAST) as client:
        result = Sync(db, client).run()
    assert result.status == "failed"
    assert {e.error for e in result.entities.values()} == {
        next(iter(result.entities.values())).error
    }
    assert "rejected the API token" in next(iter(result.entities.values())).error
    # No retries: every request the fake saw was a different first attempt.
    seen = [(r["path"], r["query"]) for r in fake.requests]
    assert len(seen) == len(set(seen))


def test_pacing_keeps_a_normal_sync_under_the_burst_limit(tmp_path):
    fake = FakePipedrive(deals=1400, seed=5, burst_limit=4)
    try:
        with FakeServer(fake) as server:
            db, result = sync(fake, server, tmp_path / "p.db", history_budget=0)
        assert result.ok, result.errors
        assert result.requests > 3 * 4  # more than three windows' worth: pacing had to work
        assert fake.rate_limited == 0
        assert differences(db, fake) == []
    finally:
        fake.close()


def test_unreachable_base_url_fails_fast_with_one_message(tmp_path):
    db = sqlite_utils.Database(str(tmp_path / "p.db"))
    with PipedriveClient("t", "http://127.0.0.1:9", **FAST) as client:
        result = Sync(db, client).run()
    assert result.status == "failed"
    errors = {e.error for e in result.entities.values()}
    assert len(errors) == 1
    assert "could not connect" in errors.pop()


def test_a_page_that_cannot_be_saved_fails_its_stream_without_a_gap(big, tmp_path, monkeypatch):
    import sqlite3

    from pdsync.store import Store

    fake, server = big
    fake.clear_faults()
    real_upsert = Store.upsert
    calls = {"deals": 0}

    def flaky_upsert(self, spec, rows):
        if spec.name == "deals" and not rows[0]["is_archived"]:  # /api/v2/deals, not archived
            calls["deals"] += 1
            if calls["deals"] == 2:
                raise sqlite3.OperationalError("disk I/O error")
        return real_upsert(self, spec, rows)

    monkeypatch.setattr(Store, "upsert", flaky_upsert)
    db, result = sync(fake, server, tmp_path / "p.db")
    assert result.entities["deals"].status == "failed"
    assert "could not save deals: disk I/O error" in result.entities["deals"].error
    assert result.entities["persons"].status == "success"
    monkeypatch.setattr(Store, "upsert", real_upsert)
    db, again = sync(fake, server, tmp_path / "p.db")
    assert again.ok
    assert differences(db, fake) == []


def _limit_headers(limit):
    import httpx

    return httpx.Headers(
        {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(limit - 1)}
        | {"x-ratelimit-reset": "1"}
    )


def test_limiter_keeps_every_window_under_the_limit_with_streams_competing():
    import threading
    import time

    from pdsync.client import RateLimiter

    class Quick(RateLimiter):
        WINDOW, MARGIN = 0.3, 0.015  # a shorter window, the same rules

    last = threading.local()  # each thread's departure: the limiter's clock when it let it go

    def clock():
        last.now = time.monotonic()
        return last.now

    limiter = Quick(clock=clock)
    limiter.update(_limit_headers(8))
    sent = []

    def stream(pages):
        for page in range(pages):
            limiter.acquire(page)
            sent.append(last.now)
            time.sleep(0.01)  # the round trip before the stream's next page

    threads = [threading.Thread(target=stream, args=(n,)) for n in (20, 10, 6, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    sent.sort()
    assert len(sent) == 40
    # 7 (one spare) in any window and its margin, never 8.
    window = Quick.WINDOW + Quick.MARGIN - 1e-9
    assert all(sent[i + 7] - sent[i] >= window for i in range(len(sent) - 7))


def test_limiter_lets_the_deepest_stream_lead_and_serves_the_others_in_turn():
    import threading
    import time

    from pdsync.client import RateLimiter

    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limiter.update(_limit_headers(4))  # 3 per window; the others evenly spaced, 0.68 s apart
    order = []

    def request(name, priority):
        limiter.acquire(priority)
        order.append(name)

    def waiting(name, priority):
        thread = threading.Thread(target=request, args=(name, priority))
        thread.start()
        time.sleep(0.3)
        return thread

    request("deals page 5", 5)
    first = waiting("notes page 0", 0)  # must wait for the spacing
    second = waiting("persons page 1", 1)
    request("deals page 6", 6)  # deepest: goes at once, ahead of both
    assert order == ["deals page 5", "deals page 6"]
    now[0] = 1.4  # past the spacing of both earlier requests
    first.join(timeout=5)
    time.sleep(0.3)
    # First come, first served below the leader; and the window is full (3 in 2.05 s).
    assert order == ["deals page 5", "deals page 6", "notes page 0"]
    assert second.is_alive()
    now[0] = 2.1  # the first two left the window
    second.join(timeout=5)
    assert order[-1] == "persons page 1"
