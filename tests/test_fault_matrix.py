"""Every endpoint x every fault kind x {first page, middle page}: the sync either succeeds
after retries or fails that entity with a clear message, and a rerun converges."""

import httpx
import pytest
import sqlite_utils
from helpers import differences

from pdsync.client import PipedriveClient
from pdsync.engine import Sync
from pdsync.entities import builtin_entities
from pdsync.fake import FakePipedrive, FakeServer
from pdsync.fake.entities import BY_PATH
from pdsync.fake.front import FAULTS

FAST = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 1.0}
# Every declared list endpoint, and the entity pdsync syncs from it.
ENDPOINTS = {path: declared.name for path, (declared, _) in BY_PATH.items()}
# Entities asked per parent record (pdsync.entities.Children), and their parents.
PARENTS = {
    spec.name: stream.children.parent
    for spec in builtin_entities()
    for stream in spec.streams
    if stream.children
}
# With 1,600 deals these list more than one page of 500 (test_multi_page_is_right checks it).
MULTI_PAGE = {"/api/v2/persons", "/api/v2/deals", "/api/v2/activities", "/v1/notes"}
CASES = [
    (path, kind, page)
    for path in ENDPOINTS
    for kind in FAULTS
    for page in ("first", "middle")
    if page == "first" or path in MULTI_PAGE
]


@pytest.fixture(scope="module")
def upstream():
    fake = FakePipedrive(deals=1600, seed=21)
    fake.timeout_hold = 2.0
    with FakeServer(fake) as server:
        yield fake, server
    fake.close()


def converged(db, fake, entity):
    if entity.endswith("_fields"):
        codes = {r["field_code"] for r in db[entity].rows}
        return codes == {r["field_code"] for r in fake.records(entity)}
    return differences(db, fake, entities=[entity]) == []


@pytest.mark.parametrize("path, kind, page", CASES)
def test_fault(upstream, tmp_path, path, kind, page):
    fake, server = upstream
    entity = ENDPOINTS[path]
    fake.clear_faults()
    transient = FAULTS[kind].transient
    fake.inject(path, kind, times=2 if transient else 1, after=0 if page == "first" else 1)
    db = sqlite_utils.Database(str(tmp_path / "p.db"))
    parent = PARENTS.get(entity)
    if parent:  # asked per parent record: the parents come first, without faults
        with PipedriveClient(fake.token, server.url, **FAST) as client:
            assert Sync(db, client, only=[parent]).run().ok
    with PipedriveClient(fake.token, server.url, **FAST) as client:
        result = Sync(db, client, only=[entity]).run()
    outcome = result.entities[entity]
    if not transient:
        assert kind == "401", "a new permanent fault kind needs its expected error here"
        assert outcome.status == "failed"
        assert outcome.error.startswith("Pipedrive rejected the API token (HTTP 401 on GET ")
    else:
        assert outcome.status == "success", outcome.error
        assert outcome.retries == 2
        assert converged(db, fake, entity)
    fake.clear_faults()
    with PipedriveClient(fake.token, server.url, **FAST) as client:
        assert Sync(db, client, only=[entity]).run().ok
    assert converged(db, fake, entity)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_multi_page_is_right(upstream):
    """MULTI_PAGE names exactly the endpoints that list more than one page of 500."""
    fake, server = upstream
    with httpx.Client(base_url=server.url, headers={"x-api-token": fake.token}) as client:
        more = set()
        for path in ENDPOINTS:
            body = client.get(path, params={"limit": 500}).json()
            extra = body.get("additional_data") or {}
            if extra.get("next_cursor") or (extra.get("pagination") or {}).get("next_start"):
                more.add(path)
    assert more == MULTI_PAGE
