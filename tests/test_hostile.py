"""Hostile upstream data: each case is stored deliberately or refused and counted, never a
crash or a silently wrong row."""

import json

import httpx
import sqlite_utils
from helpers import FAST_CLIENT

from pdsync.client import PipedriveClient
from pdsync.engine import Sync

HUGE = "x" * 1_000_000


class Tamper(httpx.HTTPTransport):
    """Rewrites the first /api/v2/deals page the way a broken or changed API might."""

    def __init__(self):
        super().__init__()
        self.done = False

    def handle_request(self, request):
        response = super().handle_request(request)
        if request.url.path != "/api/v2/deals" or self.done:
            return response
        self.done = True
        body = json.loads(response.read())
        first, second = body["data"][0], body["data"][1]
        self.ids = first["id"], second["id"]
        first["brand_new_field"] = {"nested": ["Pipedrive", "added", "this"]}
        first["title"] = "🚀 <script>alert('x')</script> Ünïcödé " + HUGE
        second["value"] = "not a number"
        body["data"] += [
            {"title": "no id at all"},
            "not an object",
            {"id": None, "title": "null id"},
            dict(first),  # the same deal twice on one page: stored once
        ]
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=json.dumps(body).encode()
        )


def test_hostile_records(fake, server, db_path, caplog):
    db = sqlite_utils.Database(db_path)
    tamper = Tamper()
    with PipedriveClient(fake.token, server.url, transport=tamper, **FAST_CLIENT) as client:
        result = Sync(db, client, only=["deals"]).run()
    assert result.ok, result.errors
    deals = result.entities["deals"]
    assert deals.rejected == 3
    assert db["sync_metadata"].get("deals")["records_rejected"] == 3
    assert caplog.text.count("skipped a record") == 3
    first, second = tamper.ids
    row = db["deals"].get(first)
    assert row["title"].startswith("🚀 <script>alert('x')</script> Ünïcödé ")
    assert len(row["title"]) > 1_000_000  # stored whole
    assert json.loads(row["brand_new_field"]) == {"nested": ["Pipedrive", "added", "this"]}
    assert db["deals"].get(second)["value"] == "not a number"  # kept as sent, not coerced
    assert db.execute("select count(*) from deals where id = ?", [first]).fetchone()[0] == 1
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
