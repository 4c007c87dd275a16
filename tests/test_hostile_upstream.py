"""A hostile or broken upstream, and careless input (issue 12).

pdsync talks to the fake Pipedrive through a tampering proxy (tests/tamper.py) over real HTTP
on 127.0.0.1. Every case must end within its bound, leave no token anywhere (database, WAL,
logs, CLI output, status pages), lose nothing, and converge once the upstream is fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from urllib.parse import quote, quote_plus

import httpx
import pytest
import sqlite_utils
from click.testing import CliRunner
from helpers import FAST_CLIENT, differences
from tamper import BAD_RECORDS, Proxy
from test_ui import make_ds, run

import pdsync
from pdsync.cli import cli
from pdsync.fake import FakePipedrive
from pdsync.lock import SyncLock
from pdsync.serve import servable

TOKEN = "pd7c41e0b9a2f35d8e61c0aa4b7f29e3d0c5b81a"  # 40 hex characters, like Pipedrive's
FORMS = {TOKEN, quote(TOKEN, safe=""), quote_plus(TOKEN)}
PASSWORD = "hunter2-in-a-url"


@pytest.fixture
def fake():
    fake = FakePipedrive(deals=300, seed=7, token=TOKEN)
    yield fake
    fake.close()


@pytest.fixture
def proxy(server):
    with Proxy(server.url) as proxy:
        yield proxy


def bounded(seconds: float, fn, *args, **kwargs):
    """``fn(...)``, which must return within ``seconds`` (a hang fails, never blocks CI)."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], time.monotonic() - started


def sync(proxy, db_path, seconds=30, **options):
    client = {**FAST_CLIENT, "max_retries": 1, **options.pop("client", {})}
    return bounded(
        seconds,
        pdsync.sync,
        db_path,
        token=TOKEN,
        base_url=proxy.url,
        auth_path=None,
        client_options=client,
        **options,
    )


def invoke(*args, env=None):
    base = {"PIPEDRIVE_API_TOKEN": TOKEN}
    return CliRunner().invoke(cli, list(args), env={**base, **(env or {})})


def assert_no_token(db_path, *texts):
    """No form of the token in the database, its WAL, or any of ``texts``."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            with open(db_path + suffix, "rb") as f:
                data = f.read()
            for form in FORMS:
                assert form.encode() not in data, f"token in {db_path + suffix}"
    for text in texts:
        for form in FORMS:
            assert form not in text
        assert PASSWORD not in text


def converges(proxy, fake, db_path, **options):
    """Once the upstream is fixed, one sync makes the database equal the fake again."""
    proxy.rules.clear()
    result, _ = sync(proxy, db_path, **options)
    assert result.ok, result.errors
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake, options.get("only")) == []
    db.close()


def status_page(db_path):
    """What an anonymous visitor sees: the status page and its JSON."""

    async def check():
        ds = make_ds(db_path)
        page = await ds.client.get("/-/pdsync")
        data = await ds.client.get("/-/pdsync.json")
        assert page.status_code == 200 and data.status_code == 200
        return page.text, data.text

    return run(check)


# -- secrets ------------------------------------------------------------------------------


def test_an_upstream_that_echoes_the_request_never_gets_the_token_stored_or_shown(
    proxy, fake, db_path, caplog
):
    proxy.rules["/api/v2/deals"] = "echo_400"  # JSON error envelope quoting the headers
    proxy.rules["/v1/notes"] = "echo_text"  # a proxy's text page, token URL-encoded too
    result = invoke("sync", db_path, "--base-url", proxy.url, "-v")
    assert result.exit_code == 1
    assert proxy.hits["echo_400"] and proxy.hits["echo_text"]
    assert "deals failed: Pipedrive answered HTTP 400" in result.output
    assert "x-api-token: [redacted]" in result.output
    assert "Traceback" not in result.output
    status = invoke("status", db_path, "--json")
    errors = {row["entity_type"]: row["error_message"] for row in json.loads(status.output)}
    assert "[redacted]" in errors["deals"] and "[redacted]" in errors["notes"]
    page, data = status_page(db_path)
    assert "HTTP 400" in page
    runs = sqlite_utils.Database(db_path).execute("select errors from sync_runs").fetchall()
    assert "[redacted]" in runs[-1][0]
    assert_no_token(db_path, result.output, status.output, page, data, caplog.text)
    converges(proxy, fake, db_path)


def test_messages_stored_by_an_older_pdsync_lose_the_token_on_the_next_sync(
    proxy, fake, db_path, monkeypatch
):
    monkeypatch.setenv("PIPEDRIVE_API_TOKEN", TOKEN)  # Datasette serves with the token set
    result, _ = sync(proxy, db_path)
    assert result.ok
    db = sqlite_utils.Database(db_path)
    leaked = f"HTTP 400: echo x-api-token: {TOKEN}"
    db["sync_metadata"].update("deals", {"error_message": leaked})
    db["sync_runs"].update(1, {"errors": json.dumps({"deals": leaked})})
    page, _ = status_page(db_path)  # the page hides it at once (it knows the token)...
    assert TOKEN not in page and "echo x-api-token: [redacted]" in page
    db.close()
    converges(proxy, fake, db_path)  # ...and the next sync rewrites what is stored
    assert_no_token(db_path)


@pytest.mark.parametrize(
    "token, says",
    [
        (TOKEN[:20] + "\n" + TOKEN[20:], "it has control characters"),
        (TOKEN[:20] + "é" + TOKEN[20:], "it has non-ASCII characters"),
    ],
)
def test_a_token_that_cannot_be_a_header_gets_one_line_and_no_request(proxy, db_path, token, says):
    result = invoke("sync", db_path, "--base-url", proxy.url, env={"PIPEDRIVE_API_TOKEN": token})
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: the Pipedrive API token cannot be sent: {says}")
    assert proxy.requests == []
    assert TOKEN[:20] not in result.output and TOKEN[20:] not in result.output


def test_a_password_in_the_base_url_is_refused_without_showing_it(proxy, db_path):
    url = proxy.url.replace("http://", f"http://pdsync:{PASSWORD}@")
    result = invoke("sync", db_path, "--base-url", url)
    assert result.exit_code == 1
    assert "must not hold a user name or password" in result.output
    assert "http://[redacted]@127.0.0.1" in result.output
    assert_no_token(db_path, result.output)
    assert proxy.requests == [] and not os.path.exists(db_path)


# -- deadlines ------------------------------------------------------------------------------


def test_a_repeated_cursor_stops_the_stream_instead_of_looping(proxy, fake, db_path):
    proxy.rules["/api/v2/deals"] = "repeated_cursor"
    result, seconds = sync(proxy, db_path, only=["deals"])
    deals = result.entities["deals"]
    assert deals.status == "failed" and "cannot loop" in deals.error
    # A first load: the newest page, page one by id, then page one's cursor again: stop.
    assert proxy.hits["repeated_cursor"] == 3
    assert seconds < 20
    converges(proxy, fake, db_path, only=["deals"])


@pytest.mark.parametrize(
    "path, kind, requests",
    [
        ("/v1/users", "stuck_offset", 1),  # next_start does not move: stop at once
        ("/v1/notes", "ignored_offset", 3),  # the same page three times in a row: stop
    ],
)
def test_a_v1_offset_that_does_not_move_on_stops_the_stream(
    proxy, fake, db_path, path, kind, requests
):
    proxy.rules[path] = kind
    entity = path.rsplit("/", 1)[1]
    result, seconds = sync(proxy, db_path, only=[entity])
    failed = result.entities[entity]
    assert failed.status == "failed" and "cannot loop" in failed.error, failed.error
    assert proxy.hits[kind] == requests
    assert seconds < 20
    converges(proxy, fake, db_path, only=[entity])


def test_pages_of_records_without_ids_are_told_apart_by_their_content():
    """Changelog entries have no id: a long changelog's pages differ, a stuck one's do not."""
    from pdsync.client import LoopingStream, _Repeats

    def entry(n: int) -> dict:
        return {"field_key": "value", "old_value": n, "new_value": n + 1, "time": f"t{n}"}

    moving = _Repeats("/v1/deals/1/changelog")
    for page in range(5):
        moving.check([entry(page * 2), entry(page * 2 + 1)])
    stuck = _Repeats("/v1/deals/1/changelog")
    stuck.check([entry(0), entry(1)])
    stuck.check([entry(0), entry(1)])
    with pytest.raises(LoopingStream, match="same page came back 3 times"):
        stuck.check([entry(0), entry(1)])


@pytest.mark.parametrize(
    "kind, no_proxy",
    [("trickle", False), ("trickle_headers", False), ("trickle_headers", True), ("stall", False)],
)
def test_a_slow_answer_is_cut_off_at_its_deadline(
    proxy, fake, db_path, monkeypatch, kind, no_proxy
):
    if no_proxy:  # once made pdsync fall back to httpx's unbounded sockets
        monkeypatch.setenv("NO_PROXY", "localhost,example.com")
    proxy.rules["/api/v2/deals"] = kind
    deadline = 1.5
    result, seconds = sync(proxy, db_path, client={"deadline": deadline, "timeout": 1.0})
    deals = result.entities["deals"]
    assert deals.status == "failed" and "timed out" in deals.error, deals.error
    assert proxy.hits[kind] == 2  # one retry (max_retries=1), each cut off
    # Two attempts of at most the deadline each, a retry's pause, on a busy machine; without
    # the deadline a trickled page of deals takes hours.
    assert deals.duration_ms < (2 * deadline + 5) * 1000, deals.duration_ms
    # Line items are asked per deal: with the deals failed, they wait for the next run.
    items = result.entities["deal_products"]
    assert items.status == "failed" and items.error.startswith("not fetched because deals failed")
    others = {e.status for n, e in result.entities.items() if n not in ("deals", "deal_products")}
    assert others == {"success"}
    converges(proxy, fake, db_path)


def test_an_undecodable_body_fails_cleanly_and_frees_the_other_streams(proxy, fake, db_path):
    # Every answer is bad gzip, the very first one included: it used to escape as an
    # exception that left the rate limiter's probe flag set, and every stream waited for ever.
    proxy.rules["*"] = "bad_gzip"
    result, seconds = sync(proxy, db_path)
    assert result.status == "failed"
    assert all("could not be decoded" in e.error for e in result.entities.values())
    assert seconds < 20
    converges(proxy, fake, db_path)


@pytest.mark.parametrize("kind", ["budget_spent", "budget_429"])
def test_a_rate_limit_reset_hours_away_stops_the_sync_with_one_line(proxy, fake, db_path, kind):
    proxy.rules["*"] = kind
    started = time.monotonic()
    result = invoke("sync", db_path, "--base-url", proxy.url, "--retries", "3")
    assert time.monotonic() - started < 15
    assert result.exit_code == 1
    assert "the daily token budget is spent" in result.output
    assert "resets in 27h 46m" in result.output
    assert "Traceback" not in result.output
    assert proxy.hits[kind] <= 2  # no retries: nothing to gain for 27 hours
    converges(proxy, fake, db_path)


# -- bad records ----------------------------------------------------------------------------


def test_bad_notes_never_reach_updated_since(proxy, fake, db_path):
    # v1 notes page by moving updated_since to the newest update_time seen: "not a time"
    # sorted after every digit and made every later request a 400.
    proxy.rules["/v1/notes"] = "bad_records"
    result, _ = sync(proxy, db_path, only=["notes"])
    notes = result.entities["notes"]
    assert notes.status == "success", notes.error
    assert notes.rejected == len(BAD_RECORDS)
    assert not any("not a time" in query for query in proxy.queries)
    converges(proxy, fake, db_path, only=["notes"])


def test_a_full_pass_does_not_take_refused_records_for_gone(proxy, fake, db_path):
    result, _ = sync(proxy, db_path, only=["deals"])
    assert result.ok
    proxy.rules["/api/v2/deals"] = "bad_records"
    result, _ = sync(proxy, db_path, only=["deals"], full=True)
    deals = result.entities["deals"]
    assert deals.rejected == len(BAD_RECORDS)
    # Three refused records had no usable id: any deal not seen may be one of them, so the
    # pass flags nothing as gone, and says so.
    assert deals.flagged_gone == 0
    assert "nothing flagged as gone" in deals.warning
    db = sqlite_utils.Database(db_path)
    flagged = db.execute("select count(*) from deals where is_deleted = 1").fetchone()[0]
    upstream_deleted = sum(1 for d in fake.records("deals") if d.get("is_deleted"))
    assert flagged == upstream_deleted
    db.close()
    converges(proxy, fake, db_path, only=["deals"])


def test_bad_records_are_refused_named_and_never_move_the_watermark(proxy, fake, db_path):
    proxy.rules["/api/v2/deals"] = "bad_records"
    result, _ = sync(proxy, db_path, only=["deals"])
    deals = result.entities["deals"]
    assert deals.status == "success"  # the rest of the page is saved
    assert deals.rejected == len(BAD_RECORDS)
    db = sqlite_utils.Database(db_path)
    meta = db["sync_metadata"].get("deals")
    assert meta["records_rejected"] == len(BAD_RECORDS)
    warning = meta["warning_message"]
    assert "is in the future" in warning and "is not a timestamp" in warning
    assert "without a usable id ('abc')" in warning
    marks = [r[0] for r in db.execute("select watermark from sync_streams")]
    assert all(m and m < "9999" for m in marks if m)
    assert db.execute("select count(*) from deals where update_time >= '9999'").fetchone()[0] == 0
    status = invoke("status", db_path)
    line = next(line for line in status.output.splitlines() if line.startswith("deals "))
    assert f"success ({len(BAD_RECORDS)} refused)" in line and "refused" in line
    page, data = status_page(db_path)
    assert f"{len(BAD_RECORDS)} refused" in page
    entity = next(e for e in json.loads(data)["databases"][0]["entities"] if e["entity"] == "deals")
    assert entity["records_rejected"] == len(BAD_RECORDS)
    # Fixed upstream: the next incremental run fetches the refused deals again (the watermark
    # stayed before them) and stores them right.
    db.close()
    converges(proxy, fake, db_path, only=["deals"])
    assert sqlite_utils.Database(db_path)["sync_metadata"].get("deals")["records_rejected"] == 0


def test_a_row_and_watermark_stored_from_bad_data_are_repaired(proxy, fake, db_path):
    result, _ = sync(proxy, db_path, only=["deals"])
    assert result.ok
    db = sqlite_utils.Database(db_path)
    victim = db.execute("select id from deals order by id limit 1").fetchone()[0]
    # What an older pdsync stored from a record dated year 9999.
    db["deals"].update(victim, {"update_time": "9999-12-31T23:59:59Z", "title": "bad"})
    db.execute("update sync_streams set watermark = '9999-12-31T23:59:59Z'")
    db.conn.commit()
    db.close()
    # An incremental run sees the absurd watermark and reconciles in full.
    result, _ = sync(proxy, db_path, only=["deals"])
    assert result.ok and result.entities["deals"].full_pass
    db = sqlite_utils.Database(db_path)
    assert db["deals"].get(victim)["title"] != "bad"
    assert differences(db, fake, ["deals"]) == []
    marks = [r[0] for r in db.execute("select watermark from sync_streams")]
    assert marks and all(m < "9999" for m in marks)


# -- careless input -------------------------------------------------------------------------


def test_another_applications_database_is_refused_and_left_unchanged(proxy, tmp_path):
    path = str(tmp_path / "crm.db")
    other = sqlite_utils.Database(path)
    other["deals"].insert_all(({"id": i, "title": f"theirs {i}"} for i in range(50)), pk="id")
    other.close()
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    result = invoke("sync", path, "--base-url", proxy.url)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {path} is not a pdsync database (it has deals but no sync_metadata); "
        "pdsync writes only to a new file or one it made"
    ]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["crm.db"]  # no -wal, no lock file
    assert proxy.requests == []


def test_paths_with_special_characters_work(proxy, fake, tmp_path):
    folder = tmp_path / "q?4 #1 100%"
    folder.mkdir()
    path = str(folder / "pipe#drive?%.db")
    result, _ = sync(proxy, path)
    assert result.ok, result.errors
    status = invoke("status", path)
    assert status.exit_code == 0 and "deals" in status.output, status.output
    served, immutable = servable(path)
    assert not immutable and os.path.realpath(served) == path
    # Nothing stray beside it, or where a cut-short path would point.
    assert sorted(os.listdir(tmp_path)) == ["q?4 #1 100%"]
    assert {n for n in os.listdir(folder)} <= {
        "pipe#drive?%.db" + s for s in ("", "-wal", "-shm", ".lock")
    }

    async def check():
        ds = make_ds(served)
        name = next(iter(ds.databases.keys() - {"_internal"}))
        response = await ds.client.get(f"/{name}/sync_status.json?_shape=array")
        assert response.status_code == 200, response.text
        return response.json()

    assert {r["entity_type"] for r in run(check)} >= {"deals", "notes"}


def test_a_symlink_to_the_database_takes_the_same_lock(tmp_path):
    real = tmp_path / "pipedrive.db"
    real.touch()
    (tmp_path / "link.db").symlink_to(real)
    assert SyncLock(str(tmp_path / "link.db")).path == SyncLock(str(real)).path


@pytest.fixture
def mounted(tmp_path):
    """A small tmpfs of our own, to make full and read-only (needs mount rights: root)."""
    point = tmp_path / "mnt"
    point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def remount(point, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)


def test_a_full_disk_says_so_and_keeps_what_was_committed(proxy, fake, mounted):
    path = str(mounted / "pipedrive.db")
    result = invoke("sync", path, "--base-url", proxy.url)
    assert result.exit_code == 1
    assert "the disk is full" in result.output or "database or disk is full" in result.output
    assert "Traceback" not in result.output and "not a usable" not in result.output
    remount(mounted, "size=64m")
    converges(proxy, fake, path)


def test_status_and_serve_work_in_a_read_only_directory(proxy, fake, mounted):
    remount(mounted, "size=64m")
    path = str(mounted / "pipedrive.db")
    result, _ = sync(proxy, path)
    assert result.ok
    remount(mounted, "ro")
    status = invoke("status", path, "--json")
    assert status.exit_code == 0, status.output
    assert {row["entity_type"] for row in json.loads(status.output)} >= {"deals", "notes"}
    served, immutable = servable(path)
    assert immutable

    async def check():
        ds = make_ds(served, immutable=True)
        response = await ds.client.get("/pipedrive/overdue_deals.json?_shape=array")
        assert response.status_code == 200, response.text
        return response.json()

    assert run(check)
    again = invoke("sync", path, "--base-url", proxy.url)
    assert again.exit_code == 1 and "read-only" in again.output, again.output
    assert "Traceback" not in again.output


def test_dashboards_follow_a_database_with_another_name(proxy, tmp_path):
    path = str(tmp_path / "acme.db")
    result, _ = sync(proxy, path)
    assert result.ok

    async def check():
        ds = make_ds(path)
        await ds.invoke_startup()
        page = await ds.client.get("/-/dashboards/deals")
        chart = await ds.client.get("/-/dashboards/deals/deals-per-stage")
        return page, chart

    page, chart = run(check)
    assert page.status_code == 200, page.text[:300]
    assert chart.status_code == 200, chart.text[:300]
    assert "/acme/" in chart.text or "acme" in chart.text


def test_a_token_that_would_inject_a_header_is_refused_before_httpx_sees_it(proxy):
    with pytest.raises(pdsync.client.AuthError) as caught:
        pdsync.client.PipedriveClient(TOKEN + "\r\nX-Evil: 1", proxy.url)
    assert str(caught.value) == (
        "the Pipedrive API token cannot be sent: it has control characters (a newline or a tab?)"
    )
    assert proxy.requests == []


def test_absurd_rate_limit_headers_are_ignored_not_obeyed(proxy, fake, db_path):
    # int(float("inf")) raised where nobody expected it, and every other stream waited.
    proxy.rules["*"] = "absurd_headers"
    result, _ = sync(proxy, db_path)
    assert result.ok, result.errors
    assert proxy.hits["absurd_headers"] >= 12
    assert differences(sqlite_utils.Database(db_path), fake) == []


def test_values_no_column_expects_cost_one_record_not_the_page(proxy, fake, db_path):
    proxy.rules["/api/v2/deals"] = "odd_values"
    result, _ = sync(proxy, db_path)  # with the deal fields: custom fields get their columns
    deals = result.entities["deals"]
    assert deals.status == "success" and deals.rejected == 1, deals.error
    huge, odd = proxy.odd_ids
    db = sqlite_utils.Database(db_path)
    # Bound as text (an integer past 64 bits failed the whole page); the REAL column makes
    # it the nearest float, as for any other value.
    assert db["deals"].get(huge)["value"] == float(2**64 - 1)
    assert f"deals {odd}: TypeError" in db["sync_metadata"].get("deals")["warning_message"]
    db.close()
    converges(proxy, fake, db_path)


def test_a_sync_metadata_table_of_someone_elses_is_not_pdsyncs(proxy, tmp_path):
    path = str(tmp_path / "other.db")
    other = sqlite_utils.Database(path)
    other["sync_metadata"].insert({"key": "last_run", "value": "yesterday"})
    other.close()
    result = invoke("sync", path, "--base-url", proxy.url)
    assert result.exit_code == 1 and "is not a pdsync database" in result.output
    assert proxy.requests == []


def test_sqlite_errors_name_the_problem(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database" * 100)
    result = invoke("sync", str(path), "--base-url", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "is not a SQLite database" in result.output
    assert path.read_bytes() == b"not a database" * 100


def test_the_real_api_shape_is_untouched_by_the_proxy(proxy, fake):
    """The proxy forwards faithfully when it has no rule (else the cases above prove little)."""
    direct = httpx.get(
        proxy.url + "/api/v2/pipelines", headers={"x-api-token": TOKEN}, timeout=5
    ).json()
    assert direct["success"] is True
    assert {p["id"] for p in direct["data"]} == {p["id"] for p in fake.records("pipelines")}
