"""Webhooks end to end: the fake Pipedrive delivers over real HTTP to a real `pdsync serve`.

No sync runs between a change upstream and the assertion that it shows through Datasette's
JSON API: the webhook alone carries it.
"""

import base64
import dataclasses
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from helpers import FAST_CLIENT, wait_for_server

import pdsync
from pdsync import access, cli, webhook_setup
from pdsync.fake import FakePipedrive, FakeServer
from pdsync.fake.webhooks import Timing, merge_persons

SCALE = 0.002  # Pipedrive's delays: retries after 6, 60, 300 ms; a ban of 3.6 s


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`pdsync serve DB` in a subprocess, restartable on the same port."""

    def __init__(self, db_path: Path, env: dict):
        self.db_path = db_path
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pdsync", "serve", str(self.db_path), "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_server(self.base, tries=200)

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def row(self, table, key):
        rows = httpx.get(f"{self.base}/acme/{table}/{key}.json?_shape=array", timeout=5).json()
        return rows[0] if rows else None


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("webhooks")
    db_path = folder / "acme.db"
    fake = FakePipedrive(deals=150, seed=5)
    with FakeServer(fake) as server:
        assert pdsync.sync(str(db_path), token=fake.token, base_url=server.url, auth_path=None).ok
        env = {
            **os.environ,
            "PIPEDRIVE_API_TOKEN": fake.token,
            "PIPEDRIVE_BASE_URL": server.url,
            "PDSYNC_WEBHOOK_SLACK": "0.5",
        }
        served = Served(db_path, env)
        served.start()
        fake.webhooks(Timing().scaled(SCALE))
        result = CliRunner().invoke(
            cli.cli,
            ["webhooks", "install", str(db_path), "--url", served.base, "-a", str(folder / "no")],
            env={"PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url},
        )
        assert result.exit_code == 0, result.output
        try:
            yield fake, server, served
        finally:
            served.stop()
    fake.close()


def runs(served):
    return len(httpx.get(f"{served.base}/acme/sync_runs.json?_shape=array").json())


def test_a_change_a_delete_a_stage_move_and_a_merge_show_without_a_sync(live):
    fake, _, served = live
    before = runs(served)
    deal = fake.records("deals")[3]
    fake.update_deal(deal["id"], title="Renamed upstream")
    wait_until(lambda: served.row("deals", deal["id"])["title"] == "Renamed upstream")

    other_stage = next(
        s["id"]
        for s in fake.records("stages")
        if s["pipeline_id"] == deal["pipeline_id"] and s["id"] != deal["stage_id"]
    )
    fake.move_deal(deal["id"], other_stage)
    wait_until(lambda: served.row("deals", deal["id"])["stage_id"] == other_stage)

    person = fake.records("persons")[5]
    assert served.row("persons", person["id"])["is_deleted"] == 0
    fake.delete_person(person["id"])
    wait_until(lambda: served.row("persons", person["id"])["is_deleted"] == 1)

    with_deals = {d["person_id"] for d in fake.records("deals") if d.get("person_id")}
    merged, into = sorted(with_deals - {person["id"]})[:2]
    moved = [d["id"] for d in fake.records("deals") if d.get("person_id") == merged]
    merge_persons(fake, merged, into)
    wait_until(lambda: served.row("persons", merged)["is_deleted"] == 1)
    assert served.row("persons", merged)["merged_to_id"] == into  # meta.merged_to_id, kept
    for deal_id in moved:
        wait_until(lambda deal_id=deal_id: served.row("deals", deal_id)["person_id"] == into)
    assert served.row("persons", into)["is_deleted"] == 0
    assert runs(served) == before  # no sync ran: the webhooks carried it all


def post(served, body, user=None, password=None, headers=None):
    sent = {"content-type": "application/json", **(headers or {})}
    if user is not None:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        sent["authorization"] = f"Basic {pair}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{served.base}/-/pdsync/webhook", content=content, headers=sent, timeout=10)


def credentials(served):
    """A fresh pair the receiver accepts (the installed one is known only to the fake)."""
    return webhook_setup.new_credentials(access.secrets_path(served.db_path))


def delivery(entity_id, title, update_time, action="change"):
    return {
        "meta": {
            "action": action,
            "entity": "deal",
            "entity_id": str(entity_id),
            "id": f"test-{title}",
            "timestamp": update_time,
            "version": "2.0",
            "attempt": 1,
        },
        "data": {"id": entity_id, "title": title, "update_time": update_time},
        "previous": {"title": "before"},
    }


def test_wrong_or_missing_credentials_are_401_and_counted(live):
    _, _, served = live
    body = delivery(1, "nope", "2030-01-01T00:00:00Z")
    assert post(served, body).status_code == 401
    response = post(served, body, "pdsync-someone", "guess")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    user, _ = credentials(served)
    assert post(served, body, user, "wrong").status_code == 401

    def refused():
        status = httpx.get(f"{served.base}/-/pdsync.json").json()["databases"][0]["webhooks"]
        return {r["reason"]: r["count"] for r in status["refused"]}

    # Counted with the inbox's next commit, which nobody waits for.
    wait_until(lambda: refused().get("no credentials", 0) >= 1)
    wait_until(lambda: refused().get("wrong credentials", 0) >= 2)


def test_bad_bodies_get_one_line_answers(live):
    _, _, served = live
    user, password = credentials(served)
    response = post(served, b"{not json", user, password)
    assert response.status_code == 400 and "\n" not in response.json()["error"]
    assert post(served, b"[1, 2]", user, password).status_code == 400
    assert post(served, b"x" * (1024 * 1024 + 1), user, password).status_code == 413
    board = {"meta": {"action": "create", "entity": "board", "entity_id": "1"}, "data": {}}
    assert post(served, board, user, password).json() == {"ok": True, "ignored": True}


def test_csrf_still_guards_every_other_post(live):
    _, _, served = live
    user, password = credentials(served)
    cookie = {"cookie": "ds_csrftoken=whatever"}
    form = {"content-type": "application/x-www-form-urlencoded", **cookie}
    refused = httpx.post(f"{served.base}/-/pdsync/sync", content=b"database=acme", headers=form)
    assert refused.status_code == 403 and "did not match cookie" in refused.text
    login = httpx.post(f"{served.base}/-/login", content=b"username=a&password=b", headers=form)
    assert login.status_code == 403
    deal = live[0].records("deals")[10]
    body = delivery(deal["id"], "Through a cookie", "2030-01-02T00:00:00Z")
    assert post(served, body, user, password, headers=cookie).status_code == 200


def test_a_duplicate_and_an_older_replay_change_nothing(live):
    _, _, served = live
    user, password = credentials(served)
    deal = live[0].records("deals")[20]
    newer = delivery(deal["id"], "Newer", "2030-02-01T00:00:00.500Z")
    assert post(served, newer, user, password).status_code == 200
    wait_until(lambda: served.row("deals", deal["id"])["title"] == "Newer")
    row = served.row("deals", deal["id"])
    # The same delivery again, then an older version, then one older by a fraction of a
    # second only (the database keeps whole seconds; the inbox keeps milliseconds).
    assert post(served, newer, user, password).status_code == 200
    older = delivery(deal["id"], "Older", "2030-01-15T00:00:00Z")
    assert post(served, older, user, password).status_code == 200
    barely = delivery(deal["id"], "Barely older", "2030-02-01T00:00:00.100Z")
    assert post(served, barely, user, password).status_code == 200
    summary = lambda: httpx.get(f"{served.base}/-/pdsync.json").json()["databases"][0]  # noqa: E731
    wait_until(lambda: summary()["webhooks"]["pending"] == 0)
    assert served.row("deals", deal["id"]) == row


def test_killed_right_after_answering_the_delivery_is_applied_on_restart(live):
    _, _, served = live
    user, password = credentials(served)
    deal = live[0].records("deals")[30]
    # Hold the database, as a first sync's index build would: the receiver still answers
    # (its inbox is another file), and nothing can be applied before the kill.
    holder = sqlite3.connect(served.db_path, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        started = time.monotonic()
        body = delivery(deal["id"], "Survived kill -9", "2030-03-01T00:00:00Z")
        assert post(served, body, user, password).status_code == 200
        assert time.monotonic() - started < 2
        served.kill9()
    finally:
        holder.execute("rollback")
        holder.close()
    served.start()
    wait_until(lambda: served.row("deals", deal["id"])["title"] == "Survived kill -9")


def test_a_ban_loses_events_and_the_next_periodic_sync_recovers_them(live, tmp_path):
    fake, server, served = live
    hub = fake.webhooks()
    # Retries stay fast; the ban lasts long enough for the server to restart within it.
    hub.timing = dataclasses.replace(hub.timing, ban_for=60.0)
    deals = fake.records("deals")[40:60]
    served.stop()  # Pipedrive's first tries now fail: 10 of them ban the webhook
    for deal in deals[:10]:
        fake.update_deal(deal["id"], title=f"While down {deal['id']}")
    wait_until(lambda: any(s["banned_until"] > time.time() for s in hub.state.values()))
    served.start()
    lost_before = hub.lost
    during_ban = deals[10]
    fake.update_deal(during_ban["id"], title="Lost in the ban")
    assert hub.lost > lost_before
    time.sleep(1)
    assert served.row("deals", during_ban["id"])["title"] != "Lost in the ban"
    # The scheduled sync is the safety net: it brings what the ban lost.
    assert pdsync.sync(
        str(served.db_path),
        token=fake.token,
        base_url=server.url,
        auth_path=None,
        client_options=FAST_CLIENT,
    ).ok
    assert served.row("deals", during_ban["id"])["title"] == "Lost in the ban"
    status = lambda: httpx.get(f"{served.base}/-/pdsync.json").json()["databases"][0]  # noqa: E731
    gaps = wait_until(lambda: status()["webhooks"]["gaps"], timeout=15)
    assert any(g["entity"] == "deal" and g["count"] >= 1 for g in gaps)
    page = httpx.get(f"{served.base}/-/pdsync").text
    assert "no webhook announced" in page and "pdsync webhooks list" in page

    # `pdsync status` says the same, from the same numbers.
    shown = status()["webhooks"]
    said = CliRunner().invoke(cli.cli, ["status", str(served.db_path)])
    assert said.exit_code == 0, said.output
    lines = said.output.splitlines()
    assert f"Webhooks: last delivery received {shown['last_received']} (" in said.output
    for entity in shown["entities"]:
        counts = [f"{entity[k] or 0:,}" for k in ("received", "applied", "ignored", "failed")]
        assert any(line.split()[:5] == [entity["entity"], *counts] for line in lines), entity
    for reason in shown["refused"]:
        assert f"{reason['count']:,} {reason['reason']} (last" in said.output
    warning = next(line for line in lines if line.startswith("WARNING:"))
    assert "changes no webhook announced" in warning
    for gap in shown["gaps"]:
        assert f"{gap['count']:,} {gap['entity']}" in warning and str(gap["example"]) in warning
    assert f"pdsync webhooks list {served.db_path}" in warning
    assert f"pdsync webhooks install {served.db_path} --url PUBLIC_URL" in warning


def test_install_twice_makes_no_duplicates_and_list_and_remove_say_what_is_there(
    fake, server, run_sync, db_path
):
    import sqlite_utils

    assert run_sync().ok
    env = {"PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}
    auth = ["-a", str(Path(db_path).parent / "none.json")]

    def run(*args):
        return CliRunner().invoke(cli.cli, ["webhooks", *args, db_path, *auth], env=env)

    url = "https://crm.example.com"
    first = run("install", "--url", url)
    assert first.exit_code == 0, first.output
    hooks = fake.webhooks().hooks
    objects = sorted(h["event_object"] for h in hooks.values())
    assert objects == sorted(webhook_setup.OBJECTS)
    assert {h["subscription_url"] for h in hooks.values()} == {url + "/-/pdsync/webhook"}
    assert {h["version"] for h in hooks.values()} == {"2.0"}
    secrets = access.secrets_path(db_path)
    assert secrets.stat().st_mode & 0o777 == 0o600
    password = next(iter(hooks.values()))["http_auth_password"]
    assert password and password not in secrets.read_text()  # only its digest is kept

    again = run("install", "--url", url)
    assert again.exit_code == 0 and "0 created" in again.output
    assert len(fake.webhooks().hooks) == len(objects)
    listed = run("list")
    assert listed.exit_code == 0 and "MISSING" not in listed.output

    gone = next(h for h in hooks.values() if h["event_object"] == "person")
    fake.webhooks().hooks.pop(gone["id"])  # as Pipedrive does after 3 days of failures
    listed = run("list")
    assert listed.exit_code == 1 and "MISSING  -  person" in listed.output
    repaired = run("install", "--url", url)
    assert "1 created" in repaired.output and len(fake.webhooks().hooks) == len(objects)

    spent = (
        sqlite_utils.Database(db_path)
        .execute("select sum(requests), sum(tokens) from sync_tokens where purpose = 'webhooks'")
        .fetchone()
    )
    assert spent[0] >= len(objects) + 5 and spent[1] > 0

    removed = run("remove")
    assert removed.exit_code == 0 and fake.webhooks().hooks == {}
    assert "webhooks" not in json.loads(secrets.read_text())


def test_the_fake_retries_bans_and_deletes_like_pipedrive():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 500

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            received.append((body["meta"]["attempt"], self.headers["authorization"]))
            self.send_response(Handler.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/-/pdsync/webhook"
    with FakePipedrive(deals=20, seed=1) as fake:
        hub = fake.webhooks(Timing(retries=(0.01, 0.02, 0.03), ban_for=60, delete_after=600))
        with FakeServer(fake) as server:
            created = httpx.post(
                server.url + "/v1/webhooks",
                headers={"x-api-token": fake.token},
                json={
                    "subscription_url": url,
                    "event_action": "*",
                    "event_object": "deal",
                    "name": "t",
                    "http_auth_user": "u",
                    "http_auth_password": "p",
                    "version": "2.0",
                },
            ).json()["data"]
        deal = fake.records("deals")[0]["id"]
        fake.update_deal(deal, title="once")
        wait_until(lambda: len(received) == 4)  # the first try and 3 retries
        assert [attempt for attempt, _ in received] == [1, 2, 3, 4]
        assert received[0][1] == "Basic " + base64.b64encode(b"u:p").decode()
        for i in range(9):  # 10 failed first tries in a row: banned
            fake.update_deal(deal, title=f"again {i}")
        wait_until(lambda: hub.state[created["id"]]["banned_until"] > time.time())
        fake.update_deal(deal, title="lost")
        assert hub.lost == 1
        # 3 days (scaled) without a success: the webhook is deleted.
        hub.timing = Timing(retries=(0.01,), ban_for=0, delete_after=0.05)
        hub.state[created["id"]]["banned_until"] = 0
        time.sleep(0.1)
        fake.update_deal(deal, title="last")
        wait_until(lambda: not hub.hooks)
        assert hub.deleted and hub.deleted[0]["id"] == created["id"]
    receiver.shutdown()


def in_process(check, **datasette_args):
    """``check(ds)`` against a Datasette in this process, with pdsync's plugin."""
    import asyncio

    from datasette.app import Datasette
    from helpers import unregister_pdsync_plugins

    from pdsync import datasette_plugin

    async def run():
        datasette_plugin.register()
        try:
            await check(Datasette(**datasette_args))
        finally:
            unregister_pdsync_plugins()

    asyncio.run(run())


def basic(user, password):
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_private_mode_lets_deliveries_through_to_their_own_check(
    run_sync, db_path, tmp_path, monkeypatch, fake
):
    from pdsync.datasette_plugin.access import MODE_ENV, SECRETS_ENV

    assert run_sync().ok
    secrets = tmp_path / "elsewhere" / "acme.secrets.json"
    monkeypatch.setenv(MODE_ENV, "private")
    monkeypatch.setenv(SECRETS_ENV, str(secrets))
    access.cookie_secret(secrets)
    # As `pdsync webhooks install DB --config-dir elsewhere` keeps them: the database's own.
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path, secrets.parent))
    deal = fake.records("deals")[0]
    body = json.dumps(delivery(deal["id"], "Private", "2030-01-01T00:00:00Z"))

    async def check(ds):
        page = await ds.client.get("/-/pdsync.json")
        assert page.status_code == 401  # everything else needs signing in
        anonymous = await ds.client.post("/-/pdsync/webhook", content=body)
        assert anonymous.status_code == 401 and "credentials" in anonymous.json()["error"]
        ok = await ds.client.post("/-/pdsync/webhook", content=body, headers=basic(user, password))
        assert ok.status_code == 200, ok.text

    in_process(check, files=[db_path])
    # The database's own inbox, in the configured secrets file's directory.
    assert (secrets.parent / "pipedrive.db.webhooks.db").exists()
    assert not (secrets.parent / "acme.webhooks.db").exists()
    wait_until(
        lambda: (
            sqlite3.connect(db_path)
            .execute("select title from deals where id = ?", [deal["id"]])
            .fetchone()[0]
            == "Private"
        )
    )


def test_a_snapshot_keeps_deliveries_waiting_and_says_so(run_sync, db_path, fake):
    from pdsync.webhook_inbox import Inbox, inbox_path

    assert run_sync().ok
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path))
    deal = fake.records("deals")[0]
    body = json.dumps(delivery(deal["id"], "Snapshot", "2030-01-01T00:00:00Z"))

    async def check(ds):
        ok = await ds.client.post("/-/pdsync/webhook", content=body, headers=basic(user, password))
        assert ok.status_code == 200, ok.text
        status = (await ds.client.get("/-/pdsync.json")).json()["databases"][0]["webhooks"]
        assert status["pending"] == 1 and status["applied_here"] is False
        assert "read-only snapshot" in (await ds.client.get("/-/pdsync")).text

    in_process(check, immutables=[db_path])
    time.sleep(0.5)
    title = sqlite3.connect(db_path).execute("select title from deals where id = ?", [deal["id"]])
    assert title.fetchone()[0] == deal["title"]  # not written
    assert len(Inbox(inbox_path(db_path)).pending()) == 1  # kept for when it is writable


def test_csrf_is_skipped_for_exactly_the_webhook_route(tmp_path):
    from datasette.app import Datasette

    from pdsync.datasette_plugin import hooks

    def scope(path, kind="http"):
        return {"type": kind, "path": path, "method": "POST"}

    ds = Datasette([], settings={"base_url": "/crm/"})
    assert hooks.skip_csrf(ds, scope("/-/pdsync/webhook"))
    assert hooks.skip_csrf(ds, scope("/crm/-/pdsync/webhook"))
    for other in ("/-/pdsync/sync", "/-/pdsync/webhook/", "/-/pdsync/webhooks", "/-/login"):
        assert not hooks.skip_csrf(ds, scope(other)), other
    assert not hooks.skip_csrf(ds, scope("/-/pdsync/webhook", "websocket"))


def deal_body(fake, title):
    deal = fake.records("deals")[0]
    return deal["id"], json.dumps(delivery(deal["id"], title, "2030-01-01T00:00:00Z"))


def test_a_commit_slower_than_the_answer_leaves_the_receiver_working(
    run_sync, db_path, fake, monkeypatch
):
    from pdsync.datasette_plugin import webhook
    from pdsync.webhook_inbox import Inbox, inbox_path

    assert run_sync().ok
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path))
    monkeypatch.setattr(webhook, "ANSWER_WITHIN", 0.3)  # Pipedrive's deadline, scaled
    add_many = Inbox.add_many
    slow = [True]

    def first_one_slow(self, *args, **kwargs):
        if slow and args[0]:
            slow.clear()
            time.sleep(0.8)  # an fsync stuck longer than the answer may wait
        return add_many(self, *args, **kwargs)

    monkeypatch.setattr(Inbox, "add_many", first_one_slow)
    _, first = deal_body(fake, "First")
    _, second = deal_body(fake, "Second")

    auth = basic(user, password)

    async def check(ds):
        import asyncio

        late = await ds.client.post("/-/pdsync/webhook", content=first, headers=auth)
        assert late.status_code == 503 and "again" in late.json()["error"]
        await asyncio.sleep(0.8)  # the slow commit ends
        ok = await ds.client.post("/-/pdsync/webhook", content=second, headers=auth)
        assert ok.status_code == 200, ok.text

    in_process(check, immutables=[db_path])  # nothing applied: the inbox shows what came
    inbox = Inbox(inbox_path(db_path))
    bodies = [json.loads(body)["data"]["title"] for _, body in inbox.pending()]
    assert bodies[-1] == "Second"


def test_a_full_disk_answers_503_for_an_ignored_delivery_too(run_sync, db_path, monkeypatch):
    from pdsync.webhook_inbox import Inbox

    assert run_sync().ok
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path))

    def full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Inbox, "add_many", full)
    board = json.dumps({"meta": {"action": "create", "entity": "board", "entity_id": "1"}})

    async def check(ds):
        answer = await ds.client.post(
            "/-/pdsync/webhook", content=board, headers=basic(user, password)
        )
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"ok": False, "error": "not stored: send it again"}

    in_process(check, files=[db_path])


def test_plain_datasette_finds_the_configured_secrets_file(
    run_sync, db_path, tmp_path, monkeypatch, fake
):
    from pdsync.datasette_plugin.access import SECRETS_ENV

    assert run_sync().ok
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    secrets = tmp_path / "conf" / "crm.secrets.json"
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path, secrets.parent))
    _, body = deal_body(fake, "Configured")

    async def check(ds):
        ok = await ds.client.post("/-/pdsync/webhook", content=body, headers=basic(user, password))
        assert ok.status_code == 200, ok.text

    metadata = {"plugins": {"pdsync": {"secrets_file": str(secrets)}}}
    in_process(check, files=[db_path], metadata=metadata)
    assert not access.secrets_path(db_path).exists()  # nothing made beside the database


def test_a_replica_with_the_primarys_secrets_refuses_deliveries(run_sync, db_path, tmp_path, fake):
    """A replica restores the database and gets the secrets file (for its users), not the
    inbox: what it applied would be lost at its next restore, so it answers 503."""
    import shutil

    from pdsync.webhook_inbox import inbox_path

    assert run_sync().ok
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path))
    replica = tmp_path / "replica" / "pipedrive.db"
    replica.parent.mkdir()
    shutil.copy(db_path, replica)
    shutil.copy(access.secrets_path(db_path), access.secrets_path(replica))
    os.chmod(access.secrets_path(replica), 0o600)
    deal_id, body = deal_body(fake, "On a replica")

    async def check(ds):
        refused = await ds.client.post(
            "/-/pdsync/webhook", content=body, headers=basic(user, password)
        )
        assert refused.status_code == 503
        assert "primary" in refused.json()["error"]

    in_process(check, files=[str(replica)])
    assert not inbox_path(replica).exists()
    title = sqlite3.connect(replica).execute("select title from deals where id = ?", [deal_id])
    assert title.fetchone()[0] != "On a replica"


@pytest.mark.parametrize("hooks", [["not", "a", "dict"], "x", {"credentials": {"user": "a"}}])
def test_a_hand_edited_webhooks_entry_means_no_credentials(run_sync, db_path, fake, hooks):
    assert run_sync().ok
    user, password = webhook_setup.new_credentials(access.secrets_path(db_path))
    secrets = access.secrets_path(db_path)
    data = json.loads(secrets.read_text())
    data["webhooks"] = hooks
    secrets.write_text(json.dumps(data))
    os.chmod(secrets, 0o600)
    assert webhook_setup.known_users(secrets) == set()
    _, body = deal_body(fake, "Edited")

    async def check(ds):
        answer = await ds.client.post(
            "/-/pdsync/webhook", content=body, headers=basic(user, password)
        )
        assert answer.status_code == 401, answer.text

    in_process(check, files=[db_path])
    with pytest.raises(access.SecretsError, match="not what pdsync wrote"):
        webhook_setup.new_credentials(secrets)


def test_two_databases_on_one_company_never_remove_each_others_webhooks(fake, server, tmp_path):
    env = {"PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}

    def run(*args, db):
        auth = ["-a", str(tmp_path / "none.json")]
        return CliRunner().invoke(cli.cli, ["webhooks", *args, str(db), *auth], env=env)

    first, second = tmp_path / "a" / "one.db", tmp_path / "b" / "two.db"
    assert run("install", "--url", "https://one.example.com", db=first).exit_code == 0
    theirs = set(fake.webhooks().hooks)
    assert len(theirs) == len(webhook_setup.OBJECTS)
    installed = run("install", "--url", "https://two.example.com", db=second)
    assert installed.exit_code == 0, installed.output
    assert f"{len(webhook_setup.OBJECTS)} created" in installed.output
    assert theirs <= set(fake.webhooks().hooks)  # the first instance's are all still there
    assert "another pdsync's: left alone" in installed.output
    removed = run("remove", db=second)
    assert removed.exit_code == 0, removed.output
    assert set(fake.webhooks().hooks) == theirs
    assert f"{len(webhook_setup.OBJECTS)} removed" in removed.output


def test_a_held_database_is_tried_ever_more_rarely(tmp_path, monkeypatch):
    """Each try reads and decodes up to 500 deliveries: not every few milliseconds for the
    minutes a sync's index build holds the database."""
    from pdsync.datasette_plugin import webhook
    from pdsync.webhook_apply import DatabaseBusy

    tries = []

    class Held:
        def __init__(self, db_path, inbox):
            self.inbox = inbox

        def apply_pending(self):
            tries.append(time.monotonic())
            raise DatabaseBusy("database is locked")

        def close(self):
            pass

    monkeypatch.setattr(webhook, "Applier", Held)
    thread = webhook.ApplierThread(str(tmp_path / "x.db"), tmp_path / "x.webhooks.db")
    thread.thread.start()
    try:
        time.sleep(1.5)
    finally:
        thread.stop.set()
        thread.wake.set()
        thread.thread.join(5)
    assert not thread.thread.is_alive()
    assert 3 <= len(tries) <= 15, len(tries)
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[-1] > 0.2 and gaps[0] < 0.1  # soon at first, then ever more rarely


def test_databases_sharing_a_secrets_file_keep_their_own_inbox_and_credentials(
    run_sync, db_path, tmp_path, monkeypatch, fake
):
    """One server, two pdsync databases, one PDSYNC_SECRETS_FILE (`pdsync serve
    --config-dir`'s, here the first database's): a delivery for one database is stored,
    applied and authenticated as that database's only."""
    from pdsync.datasette_plugin.access import SECRETS_ENV
    from pdsync.webhook_inbox import Inbox, inbox_path

    other = str(tmp_path / "other.db")
    assert run_sync().ok and run_sync(db=other).ok
    config = tmp_path / "config"
    monkeypatch.setenv(SECRETS_ENV, str(access.secrets_path(db_path, config)))
    mine = webhook_setup.new_credentials(access.secrets_path(db_path, config))
    theirs = webhook_setup.new_credentials(access.secrets_path(other, config))
    deal = fake.records("deals")[0]

    def body(title):
        return json.dumps(delivery(deal["id"], title, "2030-01-01T00:00:00Z"))

    async def check(ds):
        url = "/-/pdsync/webhook?database="
        wrong = await ds.client.post(url + "other", content=body("Crossed"), headers=basic(*mine))
        assert wrong.status_code == 401  # the first database's credentials are not the other's
        ok = await ds.client.post(url + "other", content=body("Other's"), headers=basic(*theirs))
        assert ok.status_code == 200, ok.text
        ok = await ds.client.post(url + "pipedrive", content=body("Mine"), headers=basic(*mine))
        assert ok.status_code == 200, ok.text

    in_process(check, files=[db_path, other])

    def title(path):
        return sqlite3.connect(path).execute("select title from deals where id = ?", [deal["id"]])

    wait_until(lambda: title(other).fetchone()[0] == "Other's")
    wait_until(lambda: title(db_path).fetchone()[0] == "Mine")
    for path, received in ((db_path, ["Mine"]), (other, ["Other's"])):
        inbox = Inbox(inbox_path(path, config)).conn()
        bodies = [
            json.loads(b)["data"]["title"] for (b,) in inbox.execute("select body from deliveries")
        ]
        assert bodies == received


def test_status_says_whether_webhooks_are_installed(run_sync, db_path, tmp_path):
    assert run_sync().ok
    said = CliRunner().invoke(cli.cli, ["status", db_path])
    assert said.exit_code == 0, said.output
    assert f"Webhooks: not installed for this database (`pdsync webhooks install {db_path}" in (
        said.output
    )
    config = tmp_path / "config"
    webhook_setup.new_credentials(access.secrets_path(db_path, config))  # makes the inbox
    said = CliRunner().invoke(cli.cli, ["status", db_path, "--config-dir", str(config)])
    assert "Webhooks: installed; no delivery received yet." in said.output
    assert not access.secrets_path(db_path).exists()  # status made nothing beside it


def test_the_demo_shows_its_fakes_changes_without_a_sync(tmp_path):
    """`pdsync demo` registers the served instance with its fake: a change the fake makes
    reaches a row, seen through the JSON API, and no sync runs."""
    from pdsync.cli import DEMO_CHANGES_ENV
    from pdsync.timestamps import normalize
    from pdsync.webhook_apply import ENTITIES
    from pdsync.webhook_inbox import inbox_path

    db_path = tmp_path / "demo.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, DEMO_CHANGES_ENV: "0.5"}
    for name in ("PIPEDRIVE_API_TOKEN", "PIPEDRIVE_BASE_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "pdsync", "demo", str(db_path), "--deals", "50"]
    demo = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_server(base, tries=600)  # builds the company and syncs it first

        def row(table, key):
            rows = httpx.get(f"{base}/demo/{table}/{key}.json?_shape=array", timeout=5).json()
            return rows[0] if isinstance(rows, list) and rows else None

        def a_change_shows():
            if not inbox_path(db_path).exists():
                return None  # no webhook registered
            inbox = sqlite3.connect(f"file:{inbox_path(db_path)}?mode=ro", uri=True)
            try:
                applied = inbox.execute(
                    "select body from deliveries where state = 'applied' and action != 'delete'"
                    " order by seq desc"
                ).fetchall()
            finally:
                inbox.close()
            for (body,) in applied:
                event = json.loads(body)
                table, data = ENTITIES[event["meta"]["entity"]], event["data"]
                found = row(table, event["meta"]["entity_id"])
                if found and found.get("update_time") == normalize(data["update_time"]):
                    return found
            return None

        wait_until(a_change_shows, timeout=60)
        runs = httpx.get(f"{base}/demo/sync_runs.json?_shape=array", timeout=5).json()
        assert len(runs) == 1  # the demo's first sync, and no other
    finally:
        demo.terminate()
        demo.wait(15)
