"""The Datasette side of issue 4: status page, "Sync now", periodic sync, SQL functions, charts.

Everything goes through ``datasette.client`` (no server): see tests/test_browser.py for a real
browser against a real ``datasette serve``.
"""

import asyncio
import re
import time
from pathlib import Path

import pytest
import sqlite_utils
import yaml
from datasette.app import Datasette
from helpers import PLUGINS_DIR, unregister_pdsync_plugins
from markupsafe import escape

import pdsync
from pdsync.datasette_plugin import jobs
from pdsync.lock import SyncLock
from pdsync.serve import metadata_path
from pdsync.timestamps import parse_interval

ROOT = Path(__file__).resolve().parents[1]
SECRET = "tok-3f9c1e7a-secret-never-shown"


def metadata(**pdsync_config):
    """metadata.yml, plus this plugin's configuration."""
    merged = yaml.safe_load(metadata_path().read_text()) or {}
    merged.setdefault("plugins", {})
    if pdsync_config:
        merged["plugins"]["pdsync"] = pdsync_config
    return merged


def run(coro_fn, *args):
    """Build a Datasette inside the event loop, run the check, always unregister plugins."""

    async def main():
        try:
            return await coro_fn(*args)
        finally:
            unregister_pdsync_plugins()

    return asyncio.run(main())


def make_ds(path, immutable=False, **config):
    files = [] if immutable else [str(path)]
    return Datasette(
        files,
        immutables=[str(path)] if immutable else [],
        metadata=metadata(**config),
        plugins_dir=str(PLUGINS_DIR),  # as plain `datasette --plugins-dir` loads it
    )


def cookie(ds, actor):
    return ds.sign({"a": actor}, "actor")


async def csrf(ds, cookies):
    """The CSRF cookie and form token a browser gets from the status page."""
    page = await ds.client.get("/-/pdsync", cookies=cookies)
    assert page.status_code == 200
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.text)
    assert token, "the Sync now form carries a csrftoken field"
    return {**cookies, "ds_csrftoken": page.cookies["ds_csrftoken"]}, token.group(1)


async def post_sync(ds, actor, database="pipedrive"):
    cookies = {"ds_actor": cookie(ds, actor)}
    cookies, token = await csrf(ds, cookies)
    return await ds.client.post(
        "/-/pdsync/sync",
        data={"csrftoken": token, "database": database},
        cookies=cookies,
    )


async def wait_for_job(ds, database="pipedrive", timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await ds.client.get("/-/pdsync.json")).json()
        job = next(d for d in status["databases"] if d["name"] == database)["job"]
        if job and not job["running"]:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("the sync did not finish")


@pytest.fixture
def synced(run_sync, db_path):
    assert run_sync().ok
    return db_path


@pytest.fixture
def configured(fake, server, monkeypatch):
    """Plugin configuration pointing at the fake; the token comes from the environment."""
    monkeypatch.setenv("PIPEDRIVE_API_TOKEN", fake.token)
    return {"base_url": server.url, "auth_file": ""}


# -- pure helpers ------------------------------------------------------------------------


def test_helpers():
    from datetime import datetime, timezone

    from pdsync import timestamps as ts
    from pdsync.datasette_plugin import filters

    now = datetime(2025, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
    assert ts.parse_interval("30m") == 1800
    assert ts.parse_interval("90s") == 90 and ts.parse_interval("1d") == 86400
    assert ts.parse_interval(45) == 45
    for bad in ("", "soon", "0m", "-5m"):
        with pytest.raises(ValueError):
            ts.parse_interval(bad)
    assert ts.format_interval(1800) == "30m" and ts.format_interval(5400) == "1h 30m"
    assert ts.ago("2025-01-15T09:00:00Z", now) == "3h ago"
    assert ts.ago("2025-01-13T11:00:00Z", now) == "2d ago"
    assert ts.ago("2025-01-15T11:59:30Z", now) == "30s ago"
    assert ts.ago("2025-01-15T12:05:00Z", now) == "in 5m"
    assert ts.ago(None, now) is None and ts.ago("not a time", now) is None
    assert ts.days_since("2025-01-10T13:00:00Z", now) == 4  # 4 days 23 hours
    assert ts.days_since("2025-01-15 12:00:00", now) == 0
    assert filters.format_duration(229) == "229ms" and filters.format_duration(5300) == "5.3s"
    assert filters.format_duration(95_000) == "1m 35s"
    assert filters.format_errors({"deals": "boom", "notes": "bang"}) == "deals: boom; notes: bang"
    assert filters.format_count(1234) == "1,234" and filters.format_count(None) == ""
    assert jobs.scrub(f"401 for {SECRET}", SECRET) == "401 for [redacted]"


# -- the status page ---------------------------------------------------------------------


def test_status_page_shows_every_entity_and_the_recent_runs(synced):
    async def check():
        ds = make_ds(synced)
        home = await ds.client.get("/")
        assert 'href="/-/pdsync">Sync status</a>' in home.text  # the menu link
        response = await ds.client.get("/-/pdsync")
        assert response.status_code == 200
        page = response.text
        rows = {r["entity_type"]: r for r in sqlite_utils.Database(synced)["sync_metadata"].rows}
        for entity, row in rows.items():
            assert f"<td>{entity}</td>" in page
            assert f"{row['last_sync_time']} (" in page
            assert f"{row['records_total']:,}" in page
        deals = re.search(r"<td>deals</td>(.*?)</tr>", page, re.S).group(1)
        assert "success" in deals and "ago" in deals
        assert f"{rows['deals']['records_total']:,}" in deals
        assert "Up to date" in page and "Data may be out of date" not in page
        run = sqlite_utils.Database(synced)["sync_runs"].get(1)
        assert f"{run['started_at']} (" in page and "incremental" in page
        assert f"{run['records_synced']:,}" in page
        # anonymous: no form, a hint instead
        assert "Sync now" not in page.replace("to sync from here", "")
        assert "Sign in" in page

        data = (await ds.client.get("/-/pdsync.json")).json()
        (db,) = data["databases"]
        assert db["name"] == "pipedrive" and not db["stale"] and db["can_sync"] is False
        assert {e["entity"] for e in db["entities"]} == set(rows)
        assert db["runs"][0]["id"] == 1 and db["runs"][0]["status"] == "success"
        # The day's tokens (issue 18): the first sync's, against 30,000 per active user.
        # The run also read every deal's changelog (deal history), counted apart.
        tokens = db["tokens"]
        read = tokens["spent_by_purpose"]["history"]
        assert read == 20 * db["history"]["deals"] and db["history"]["pending"] == 0
        assert tokens["spent_today"] == run["tokens"] + read
        assert tokens["spent_by_purpose"] == {"sync": run["tokens"], "history": read}
        assert tokens["budget"] == 30_000 * tokens["active_users"]
        total = run["tokens"] + read
        assert (
            f"Today ({tokens['day']} UTC): {total:,} (history {read:,}, sync {run['tokens']:,})"
            in page
        )
        deals = db["history"]["deals"]
        assert (
            f"History: 100 % of deals\n    ({deals:,} of {deals:,} changelogs read), complete"
            in page
        )
        assert "the least this account's daily budget can be" in page
        # data, not text: the page formats it
        for entity in db["entities"]:
            row = rows[entity["entity"]]
            assert entity["records_total"] == row["records_total"]
            assert entity["duration_ms"] == row["last_sync_duration_ms"]
            assert entity["last_sync_time"] == row["last_sync_time"]
        assert db["stale_after_seconds"] == 1800 and db["runs"][0]["errors"] == {}

        def keys(value):
            if isinstance(value, dict):
                return set(value) | {k for v in value.values() for k in keys(v)}
            return {k for v in value for k in keys(v)} if isinstance(value, list) else set()

        assert not {k for k in keys(data) if k.endswith(("_text", "_ago"))}

    run(check)


def test_warning_when_the_last_successful_sync_is_older_than_the_interval(synced):
    db = sqlite_utils.Database(synced)
    db.execute(
        "update sync_metadata set last_success_time = '2020-01-01T00:00:00Z',"
        " status = 'failed', error_message = ? where entity_type = 'deals'",
        ["<script>alert('x')</script> & 429"],
    )
    db.conn.commit()

    async def check(config, expect_warning):
        ds = make_ds(synced, **config)
        (status,) = (await ds.client.get("/-/pdsync.json")).json()["databases"]
        deals = next(e for e in status["entities"] if e["entity"] == "deals")
        assert deals["error_message"] == "<script>alert('x')</script> & 429"
        assert status["stale"] is bool(expect_warning)
        if expect_warning:
            assert status["stale_entities"] == ["deals"]
            assert status["oldest_success_time"] == "2020-01-01T00:00:00Z"
            assert status["stale_after_seconds"] == parse_interval(expect_warning)
        # the page says it, and escapes what a table holds
        page = (await ds.client.get("/-/pdsync")).text
        if expect_warning:
            assert "Data may be out of date" in page
            warning = re.search(r'class="pdsync-warning"[^>]*>(.*?)</p>', page, re.S).group(1)
            assert "deals" in warning and "2020-01-01T00:00:00Z" in warning
            assert f"({expect_warning})" in warning
        else:
            assert "Data may be out of date" not in page
        # error messages are escaped, never markup
        assert "<script>alert" not in page
        assert str(escape("<script>alert('x')</script> & 429")) in page

    run(check, {}, "30m")  # the default
    run(check, {"sync_interval": "2h"}, "2h")
    run(check, {"stale_after": "100000d"}, None)


def test_a_database_that_is_not_pdsyncs_is_not_listed(tmp_path, synced):
    other = tmp_path / "other.db"
    sqlite_utils.Database(str(other))["deals"].insert({"id": 1})

    async def check():
        ds = Datasette([str(synced), str(other)], plugins_dir=str(PLUGINS_DIR))
        data = (await ds.client.get("/-/pdsync.json")).json()
        assert [d["name"] for d in data["databases"]] == ["pipedrive"]
        response = await post_sync(ds, {"id": "root"}, database="other")
        assert response.status_code == 404

    run(check)


def test_sql_functions(synced):
    async def check():
        ds = make_ds(synced)
        sql = (
            "select days_since('2000-01-01T00:00:00Z') as old, days_since(null) as none,"
            " pdsync_ago(strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-3 hours')) as ago"
        )
        response = await ds.client.get("/pipedrive.json", params={"sql": sql, "_shape": "array"})
        (row,) = response.json()
        assert row["old"] > 9000 and row["none"] is None
        assert row["ago"] == "3h ago"
        # the same days as the view's own SQL
        sql = "select id, days_since_update, days_since(update_time) as d from deal_details"
        response = await ds.client.get("/pipedrive.json", params={"sql": sql, "_shape": "array"})
        rows = response.json()
        assert rows and all(r["days_since_update"] == r["d"] for r in rows)

    run(check)


# -- Sync now: permissions and CSRF ------------------------------------------------------


def test_sync_permission(synced):
    async def check(config, alice_allowed):
        ds = make_ds(synced, **config)
        await ds.invoke_startup()
        assert await ds.permission_allowed({"id": "root"}, "pdsync-sync") is True
        assert await ds.permission_allowed(None, "pdsync-sync") is False
        assert await ds.permission_allowed({"id": "bob"}, "pdsync-sync") is False
        assert await ds.permission_allowed({"id": "alice"}, "pdsync-sync") is alice_allowed

    run(check, {}, False)
    run(check, {"allow": {"id": "alice"}}, True)


def test_anonymous_gets_403(synced):
    async def check():
        ds = make_ds(synced)
        # No cookies at all: CSRF does not apply, the permission check does.
        response = await ds.client.post("/-/pdsync/sync", data={"database": "pipedrive"})
        assert response.status_code == 403
        assert jobs.latest_job(synced) is None

    run(check)


def test_an_actor_without_the_permission_gets_403_unless_allowed(synced, configured):
    async def check(config, expected):
        ds = make_ds(synced, **config)
        response = await post_sync(ds, {"id": "alice"})
        assert response.status_code == expected
        if expected == 302:
            await wait_for_job(ds)
        alice = {"ds_actor": cookie(ds, {"id": "alice"})}
        (status,) = (await ds.client.get("/-/pdsync.json", cookies=alice)).json()["databases"]
        assert status["can_sync"] is (expected == 302)

    run(check, configured, 403)
    run(check, {**configured, "allow": {"id": ["alice", "carol"]}}, 302)


def test_a_post_without_the_csrf_token_is_rejected(synced, configured):
    async def check():
        ds = make_ds(synced, **configured)
        cookies, _ = await csrf(ds, {"ds_actor": cookie(ds, {"id": "root"})})
        response = await ds.client.post(
            "/-/pdsync/sync", data={"database": "pipedrive"}, cookies=cookies
        )
        assert response.status_code == 403
        assert "did not match cookie" in response.text  # asgi-csrf, before any view
        response = await ds.client.post(
            "/-/pdsync/sync",
            data={"database": "pipedrive", "csrftoken": "forged"},
            cookies=cookies,
        )
        assert response.status_code == 403
        assert jobs.latest_job(synced) is None
        assert sqlite_utils.Database(synced)["sync_runs"].count == 1

    run(check)


def test_get_is_not_a_way_to_start_a_sync(synced, configured):
    async def check():
        ds = make_ds(synced, **configured)
        cookies = {"ds_actor": cookie(ds, {"id": "root"})}
        response = await ds.client.get("/-/pdsync/sync?database=pipedrive", cookies=cookies)
        assert response.status_code == 405

    run(check)


READ_ONLY_ROUTES = ["/-/pdsync", "/-/pdsync.json"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_read_only_routes_refuse_other_methods_as_datasette_does(synced, method):
    async def check():
        ds = make_ds(synced)
        # Datasette's own read-only view, for the answer to match.
        theirs = await ds.client.request(method, "/-/versions.json")
        assert theirs.status_code == 405
        for path in READ_ONLY_ROUTES:
            ours = await ds.client.request(method, path)
            assert ours.status_code == 405, (path, ours.text[:200])
            assert ours.text == theirs.text, path
            assert ours.headers.get("content-type") == theirs.headers.get("content-type")
            assert ours.headers.get("allow") == theirs.headers.get("allow"), path
        # Only POST starts a sync; the other methods are refused before any permission check.
        if method != "POST":
            response = await ds.client.request(method, "/-/pdsync/sync")
            assert response.status_code == 405
        assert jobs.latest_job(synced) is None

    run(check)


def test_read_only_routes_still_answer_get_and_head(synced):
    async def check():
        ds = make_ds(synced)
        for path in READ_ONLY_ROUTES:
            got = await ds.client.get(path)
            assert got.status_code == 200, path
            assert got.content, path
            head = await ds.client.request("HEAD", path)
            assert head.status_code == 200 and head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path

    run(check)


# -- Sync now: it really syncs -----------------------------------------------------------


def test_sync_now_updates_the_database_from_pipedrive(synced, fake, configured):
    deal_id = sqlite_utils.Database(synced).execute("select min(id) from deals").fetchone()[0]
    fake.update_deal(deal_id, title="Renamed while Datasette was running")

    async def check():
        ds = make_ds(synced, **configured)
        response = await post_sync(ds, {"id": "root"})
        assert response.status_code == 302
        assert response.headers["location"] == "/-/pdsync"
        job = await wait_for_job(ds)
        assert job["status"] == "success", job
        assert job["trigger"] == "Sync now"  # who pressed it: only for those who may sync
        root = {"ds_actor": cookie(ds, {"id": "root"})}
        as_root = (await ds.client.get("/-/pdsync.json", cookies=root)).json()["databases"][0]
        assert as_root["job"]["trigger"] == "Sync now by root"
        title = (await ds.client.get(f"/pipedrive/deals/{deal_id}.json?_shape=array")).json()[0][
            "title"
        ]
        assert title == "Renamed while Datasette was running"
        assert job["run_id"] == 2 and job["records"] >= 1 and job["finished_at"]
        progress = {e["entity"]: e for e in job["entities"]}
        assert progress["deals"]["done"] and progress["deals"]["records"] >= 1
        assert [e["entity"] for e in job["entities"]][:2] == ["pipelines", "stages"]  # sync order
        status = (await ds.client.get("/-/pdsync.json")).json()["databases"][0]
        assert [r["id"] for r in status["runs"]][:2] == [2, 1]

    run(check)
    assert sqlite_utils.Database(synced)["deals"].get(deal_id)["title"] == (
        "Renamed while Datasette was running"
    )


def test_a_second_sync_is_refused_while_one_runs(synced, fake, configured):
    fake.latency = 0.4  # every request: the sync takes a few seconds

    async def check():
        ds = make_ds(synced, **configured)
        first = await post_sync(ds, {"id": "root"})
        assert first.status_code == 302
        (status,) = (await ds.client.get("/-/pdsync.json")).json()["databases"]
        assert status["job"]["running"] and status["job"]["status"] == "running"
        page = (await ds.client.get("/-/pdsync")).text
        assert "Sync running" in page and 'http-equiv="refresh"' in page  # it follows the job
        second = await post_sync(ds, {"id": "root"})
        assert second.status_code == 409
        assert "already running" in second.text
        job = await wait_for_job(ds)
        assert job["status"] == "success"
        assert 'http-equiv="refresh"' not in (await ds.client.get("/-/pdsync")).text

        # A sync outside Datasette (cron, a terminal) holds pdsync's file lock.
        fake.latency = 0
        lock = SyncLock(synced)
        lock.acquire()
        try:
            third = await post_sync(ds, {"id": "root"})
        finally:
            lock.release()
        assert third.status_code == 409
        assert "another pdsync sync" in third.text and "already running" in third.text

    run(check)
    assert sqlite_utils.Database(synced)["sync_runs"].count == 2


def test_sync_now_without_a_token_says_what_to_do(synced, server, monkeypatch):
    monkeypatch.delenv("PIPEDRIVE_API_TOKEN", raising=False)

    async def check():
        ds = make_ds(synced, base_url=server.url, auth_file="")
        response = await post_sync(ds, {"id": "root"})
        assert response.status_code == 503
        assert "PIPEDRIVE_API_TOKEN" in response.text

    run(check)


def test_sync_now_reads_the_token_from_the_auth_file(synced, fake, server, tmp_path, monkeypatch):
    from pdsync.auth import save_auth

    monkeypatch.delenv("PIPEDRIVE_API_TOKEN", raising=False)
    save_auth(tmp_path / "auth.json", fake.token)

    async def check():
        ds = make_ds(synced, base_url=server.url, auth_file=str(tmp_path / "auth.json"))
        assert (await post_sync(ds, {"id": "root"})).status_code == 302
        assert (await wait_for_job(ds))["status"] == "success"

    run(check)


def test_an_immutable_database_is_not_synced(synced, configured):
    async def check():
        ds = make_ds(synced, immutable=True, **configured)
        response = await post_sync(ds, {"id": "root"})
        assert response.status_code == 409, response.text
        assert "immutable" in response.text

    run(check)


# -- the token never shows ---------------------------------------------------------------


def test_the_token_never_appears_on_a_page(tmp_path, monkeypatch):
    from pdsync.fake import FakePipedrive, FakeServer

    fake = FakePipedrive(deals=100, seed=3, token=SECRET)
    path = str(tmp_path / "pipedrive.db")
    monkeypatch.setenv("PIPEDRIVE_API_TOKEN", SECRET)
    pages = [
        "/",
        "/-/pdsync",
        "/-/pdsync.json",
        "/-/metadata.json",
        "/-/plugins.json",
        "/-/settings.json",
        "/-/dashboards",
        "/-/dashboards/deals",
        "/pipedrive",
        "/pipedrive/sync_status",
        "/pipedrive/sync_metadata",
        "/pipedrive/sync_runs",
        "/pipedrive/sync_runs.json",
    ]

    async def check(url):
        ds = make_ds(path, base_url=url, auth_file="")
        root = {"ds_actor": cookie(ds, {"id": "root"})}
        assert (await post_sync(ds, {"id": "root"})).status_code == 302
        assert (await wait_for_job(ds))["status"] == "success"
        fake.inject("/api/v2/deals", "401")  # an upstream error page
        assert (await post_sync(ds, {"id": "root"})).status_code == 302
        await wait_for_job(ds)

        # An error that quotes the token (pdsync's never do; a plugin's might) is scrubbed.
        def leaky(*args, **kwargs):
            raise RuntimeError(f"upstream said: bad token {kwargs.get('token')}")

        with monkeypatch.context() as patch:
            patch.setattr(pdsync, "sync", leaky)
            assert (await post_sync(ds, {"id": "root"})).status_code == 302
            job = await wait_for_job(ds)
        assert job["status"] == "failed" and "[redacted]" in job["message"]

        seen = []
        for page in pages:
            for cookies in (None, root):
                response = await ds.client.get(page, cookies=cookies)
                assert response.status_code in (200, 302), page
                assert SECRET not in response.text, page
                seen.append(page)
        assert "[redacted]" in (await ds.client.get("/-/pdsync")).text
        return seen

    try:
        with FakeServer(fake) as server:
            assert pdsync.sync(path, base_url=server.url, auth_path=None).ok
            assert run(check, server.url)
    finally:
        fake.close()
    db = sqlite_utils.Database(path)
    for table in db.table_names():
        for row in db[table].rows:
            assert SECRET not in repr(row), table


# -- periodic sync -----------------------------------------------------------------------


def test_periodic_sync_runs_from_the_server_lifespan(synced, configured):
    """The scheduler starts on lifespan.startup (as uvicorn sends it) and stops on shutdown."""

    async def check():
        ds = make_ds(synced, sync_interval="1s", **configured)
        app = ds.app()
        messages: asyncio.Queue = asyncio.Queue()
        sent = []

        async def receive():
            return await messages.get()

        async def send(message):
            sent.append(message["type"])

        lifespan = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        )
        await messages.put({"type": "lifespan.startup"})
        db = sqlite_utils.Database(synced)
        deadline = time.monotonic() + 30
        while db["sync_runs"].count < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert db["sync_runs"].count >= 3, "two periodic syncs, a second apart"
        status = (await ds.client.get("/-/pdsync.json")).json()["databases"][0]
        assert status["periodic"] and status["sync_interval_seconds"] == 1
        assert 0 <= status["next_sync_in_seconds"] <= 1
        assert status["job"]["trigger"] == "every 1s"
        await messages.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 10)
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert jobs.scheduler_for(ds) is None
        await asyncio.sleep(0.3)
        job = jobs.latest_job(synced)
        job.done.wait(30)
        count = db["sync_runs"].count
        await asyncio.sleep(2.5)
        assert db["sync_runs"].count == count, "no sync after shutdown"

    run(check)


def test_no_periodic_sync_without_an_interval(synced, configured):
    async def check():
        ds = make_ds(synced, **configured)
        app = ds.app()
        messages: asyncio.Queue = asyncio.Queue()

        async def send(message):
            pass

        task = asyncio.create_task(app({"type": "lifespan"}, messages.get, send))
        await messages.put({"type": "lifespan.startup"})
        await asyncio.sleep(1)
        assert jobs.scheduler_for(ds) is None
        await messages.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 10)

    run(check)
    assert sqlite_utils.Database(synced)["sync_runs"].count == 1


# -- charts ------------------------------------------------------------------------------


def dashboard_config():
    return yaml.safe_load(metadata_path().read_text())["plugins"]["datasette-dashboards"]


def test_dashboard_page_uses_only_local_scripts(synced):
    async def check():
        ds = make_ds(synced)
        response = await ds.client.get("/-/dashboards/deals")
        assert response.status_code == 200
        page = response.text
        for chart in dashboard_config()["deals"]["charts"]:
            assert f'id="chart-{chart}"' in page
        assets = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
        assert any("vega-lite" in a for a in assets)
        for asset in assets:
            assert asset.startswith("/") and not asset.startswith("//"), asset
        assert 'href="/-/dashboards">Dashboards</a>' in page

    run(check)


def test_chart_queries_never_add_up_currencies(synced):
    charts = dashboard_config()["deals"]["charts"]
    db = sqlite_utils.Database(synced)
    open_deals = (
        "from deal_details where status = 'open' and coalesce(is_archived, 0) = 0"
        " and coalesce(is_deleted, 0) = 0"
    )
    commonest = db.execute(
        f"select currency {open_deals} group by currency order by count(*) desc limit 1"
    ).fetchone()[0]
    currencies = [r[0] for r in db.execute(f"select distinct currency {open_deals}")]
    assert len(currencies) > 1, "the fake company has deals in several currencies"

    def sql_for(chart, pipeline):
        sql = chart["query"]
        if pipeline:  # what datasette-dashboards does with [[ ... ]] when the filter is set
            return re.sub(r"\[\[(.*?)\]\]", r"\1", sql)
        return re.sub(r"\[\[.*?\]\]", "", sql)

    async def fetch(ds, sql, **params):
        response = await ds.client.get(
            "/pipedrive.json", params={"sql": sql, "_shape": "array", **params}
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def check():
        ds = make_ds(synced)
        for name in ("value-per-stage", "value-per-owner"):
            rows = await fetch(ds, sql_for(charts[name], False))
            assert rows and {r["currency"] for r in rows} == {commonest}
            for currency in currencies:
                rows = await fetch(ds, sql_for(charts[name], False), currency=currency)
                assert {r["currency"] for r in rows} == {currency}
                expected = db.execute(
                    f"select sum(value) {open_deals} and currency = ?", [currency]
                ).fetchone()[0]
                assert sum(r["value"] for r in rows) == pytest.approx(expected)
        pipeline = db.execute("select name from pipelines order by order_nr limit 1").fetchone()[0]
        rows = await fetch(ds, sql_for(charts["deals-per-stage"], True), pipeline=pipeline)
        assert rows and {r["pipeline"] for r in rows} == {pipeline}
        assert [r["stage_order"] for r in rows] == sorted(r["stage_order"] for r in rows)
        total = db.execute(f"select count(*) {open_deals}").fetchone()[0]
        rows = await fetch(ds, sql_for(charts["deals-per-stage"], False))
        assert sum(r["deals"] for r in rows) == total
        rows = await fetch(ds, sql_for(charts["deal-age"], False))
        assert sum(r["deals"] for r in rows) == total
        assert all(r["days_to"] - r["days_from"] == 30 for r in rows)
        for name, chart in dashboard_config()["deals"]["filters"].items():
            options = await fetch(ds, chart["query"])
            assert options, name

    run(check)


def test_readme_documents_the_plugin():
    readme = (ROOT / "README.md").read_text()
    assert "## Status page, Sync now and charts" in readme
    for word in (
        "/-/pdsync",
        "pdsync-sync",
        "sync_interval",
        "auth_file",
        "base_url",
        "allow",
        "days_since(",
        "pdsync_ago(",
        "/-/dashboards/deals",
    ):
        assert word in readme, word
