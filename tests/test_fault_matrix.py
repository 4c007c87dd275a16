"""Every endpoint x every fault kind x {first page, middle page}: the sync either succeeds
after retries or fails that entity with a clear message, and a rerun converges."""

import pytest
import sqlite_utils
from helpers import differences

from pdsync.client import PipedriveClient
from pdsync.engine import Sync
from pdsync.fake import FakePipedrive, FakeServer

FAST = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 1.0}
RETRIED = ["429", "429-reset", "500", "502", "503", "timeout", "reset", "truncated", "invalid_json"]
ENDPOINTS = {
    "/api/v2/pipelines": "pipelines",
    "/api/v2/stages": "stages",
    "/v1/users": "users",
    "/api/v2/dealFields": "deal_fields",
    "/api/v2/personFields": "person_fields",
    "/api/v2/organizationFields": "organization_fields",
    "/api/v2/organizations": "organizations",
    "/api/v2/persons": "persons",
    "/api/v2/deals": "deals",
    "/api/v2/deals/archived": "deals",
    "/api/v2/activities": "activities",
    "/v1/notes": "notes",
}
# With 1,600 deals these list more than one page of 500.
MULTI_PAGE = {"/api/v2/persons", "/api/v2/deals", "/api/v2/activities", "/v1/notes"}
CASES = [
    (path, kind, page)
    for path in ENDPOINTS
    for kind in [*RETRIED, "401"]
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
    fake.inject(path, kind, times=2 if kind != "401" else 1, after=0 if page == "first" else 1)
    db = sqlite_utils.Database(str(tmp_path / "p.db"))
    with PipedriveClient(fake.token, server.url, **FAST) as client:
        result = Sync(db, client, only=[entity]).run()
    outcome = result.entities[entity]
    if kind == "401":
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
