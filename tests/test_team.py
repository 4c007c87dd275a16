"""Serving to a team: the sign-in gate beyond loopback, people with passwords, API tokens,
the secrets file, and what an anonymous visitor can reach."""

import asyncio
import os
import re
import stat
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner
from datasette.app import Datasette
from helpers import unregister_pdsync_plugins, wait_for_server

import pdsync
from pdsync import access, cli
from pdsync.datasette_plugin import access as plugin_access
from pdsync.serve import is_loopback, metadata_path, serving_mode

PASSWORD = "correct horse battery staple"

# One of every kind of URL: pages, JSON, CSV, SQL, the download, plugin pages, introspection.
PRIVATE_URLS = [
    "/",
    "/acme",
    "/acme.json",
    "/acme.db",
    "/acme/deals",
    "/acme/deals.json",
    "/acme/deals.csv",
    "/acme/deals/1",
    "/acme/deals/1.json",
    "/acme.json?sql=select+1",
    "/acme?sql=select+1",
    "/acme.csv?sql=select+1",
    "/acme/overdue_deals",
    "/acme/overdue_deals.json",
    "/acme/deal_details.json",
    "/-/metadata.json",
    "/-/settings.json",
    "/-/plugins.json",
    "/-/versions.json",
    "/-/databases.json",
    "/-/actor.json",
    "/-/threads.json",
    "/-/permissions",
    "/-/pdsync",
    "/-/pdsync.json",
    "/-/dashboards",
    "/-/dashboards/deals",
    "/-/password-tool",
    "/does-not-exist",
]


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    from pdsync.fake import FakePipedrive, FakeServer

    path = tmp_path_factory.mktemp("team") / "acme.db"
    fake = FakePipedrive(deals=120, seed=3)
    with FakeServer(fake) as server:
        assert pdsync.sync(str(path), token=fake.token, base_url=server.url, auth_path=None).ok
    fake.close()
    return path


def invoke(*args, stdin=None):
    return CliRunner().invoke(cli.cli, [str(a) for a in args], input=stdin)


def add_user(db, name, *can):
    flags = [x for c in can for x in ("--can", c)]
    result = invoke("user", "add", db, name, *flags, stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output


def make_token(db, name, *extra):
    result = invoke("token", "create", db, name, *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_loopback_decides_the_mode():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(host) and serving_mode(host) == "local"
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        assert serving_mode(host) == "private" and serving_mode(host, public=True) == "public"
    assert serving_mode("127.0.0.1", private=True) == "private"  # behind a reverse proxy
    both = invoke("serve", __file__, "--public", "--private")
    assert both.exit_code == 2 and "contradict" in both.output


def test_secrets_file_is_0600_and_holds_no_usable_secret(synced):
    add_user(synced, "carol")
    token = make_token(synced, "carols-script")
    path = access.secrets_path(synced)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text and token not in text
    assert access.digest(token) in text
    assert invoke("user", "remove", synced, "carol").exit_code == 0
    assert invoke("token", "revoke", synced, "carols-script").exit_code == 0


def test_bad_input_gets_one_line_and_changes_nothing(synced, tmp_path):
    db = tmp_path / "b.db"
    db.write_bytes(synced.read_bytes())
    before = db.read_bytes()
    add_user(db, "dana")
    again = invoke("user", "add", db, "dana", stdin="other\n")
    assert again.exit_code == 1 and again.output.strip() == (
        "Error: user dana exists: `pdsync user remove` it first"
    )
    for args, message in [
        (("user", "add", db, "../x"), "is not a usable name"),
        (("user", "add", db, "eve"), "the password is empty"),
        (("user", "remove", db, "nobody"), "no user named nobody"),
        (("token", "revoke", db, "nothing"), "no token named nothing"),
        (("token", "create", db, "t", "--expires-after", "soon"), "is not an interval"),
    ]:
        result = invoke(*args, stdin="\n")
        assert result.exit_code in (1, 2) and message in result.output, result.output
        assert "Traceback" not in result.output
    secrets = access.secrets_path(db)
    os.chmod(secrets, 0o644)
    for args in (("user", "list", db), ("serve", db, "--host", "0.0.0.0")):
        result = invoke(*args)
        assert result.exit_code == 1
        assert result.output.strip().endswith("(mode 0644): chmod 600 it")
    secrets.write_text("not json")
    os.chmod(secrets, 0o600)
    result = invoke("token", "list", db)
    assert result.exit_code == 1 and "is not a pdsync secrets file" in result.output
    assert db.read_bytes() == before  # the database is never touched


# -- through datasette.client ---------------------------------------------------------------


@pytest.fixture
def private(synced, tmp_path, monkeypatch):
    """A Datasette in private mode over a copy of the database, with one reader, one syncer and
    one token."""
    db = tmp_path / "acme.db"
    db.write_bytes(synced.read_bytes())
    add_user(db, "reader")
    add_user(db, "boss", "sync")
    token = make_token(db, "dash")
    monkeypatch.setenv(plugin_access.MODE_ENV, "private")
    monkeypatch.setenv(plugin_access.SECRETS_ENV, str(access.secrets_path(db)))
    pdsync.datasette_plugin.register()
    import yaml

    ds = Datasette([str(db)], metadata=yaml.safe_load(metadata_path().read_text()))
    yield ds, db, token
    unregister_pdsync_plugins()


async def sign_in(ds, name, password):
    page = await ds.client.get("/-/login")
    csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
    return await ds.client.post(
        "/-/login",
        data={"username": name, "password": password, "csrftoken": csrf},
        cookies={"ds_csrftoken": page.cookies["ds_csrftoken"]},
    )


def test_private_refuses_anonymous_everywhere_and_opens_for_people_and_tokens(private):
    ds, db, token = private

    async def check():
        for url in PRIVATE_URLS:
            response = await ds.client.get(url)
            assert response.status_code == 401, url
            assert response.json() == {
                "ok": False,
                "error": "sign in, or send a token",
                "status": 401,
            }, url
            browser = await ds.client.get(url, headers={"accept": "text/html"})
            assert browser.status_code == 302 and "/-/login" in browser.headers["location"]
        assert (
            await ds.client.post("/-/pdsync/sync", data={"database": "acme"})
        ).status_code == 401
        assert (await ds.client.get("/-/login")).status_code == 200
        assert (await ds.client.get("/-/static/app.css")).status_code == 200

        bearer = {"authorization": f"Bearer {token}"}
        rows = await ds.client.get("/acme/overdue_deals.json?_shape=array", headers=bearer)
        assert rows.status_code == 200 and isinstance(rows.json(), list)
        deals = await ds.client.get("/acme/deals.json?_shape=array&_size=3", headers=bearer)
        assert deals.status_code == 200 and len(deals.json()) == 3
        # Arbitrary SQL needs an actor allowed it.
        assert (await ds.client.get("/acme.json?sql=select+1", headers=bearer)).status_code == 403

        wrong = await sign_in(ds, "reader", "wrong")
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        assert "ds_actor" not in wrong.cookies
        nobody = await sign_in(ds, "nobody", PASSWORD)
        assert nobody.status_code == 401
        signed = await sign_in(ds, "reader", PASSWORD)
        assert signed.status_code == 302
        cookies = {"ds_actor": signed.cookies["ds_actor"]}
        page = await ds.client.get("/acme/deals", cookies=cookies)
        assert page.status_code == 200 and "reader" in page.text
        actor = (await ds.client.get("/-/actor.json", cookies=cookies)).json()["actor"]
        assert (actor["id"], actor["pdsync"]) == ("reader", "user") and actor["session"]

        # The sync permission: not for readers or tokens, for users given --can sync.
        people, now = access.load(access.secrets_path(db))["users"], int(time.time())
        reader, boss = (
            {"id": name, "pdsync": "user", "session": people[name]["session"], "since": now}
            for name in ("reader", "boss")
        )
        assert not await ds.permission_allowed(reader, "pdsync-sync", "acme", default=False)
        assert not await ds.permission_allowed(actor_of(token, db), "pdsync-sync", "acme")
        assert await ds.permission_allowed(boss, "pdsync-sync", "acme", default=False)
        assert await ds.permission_allowed({"id": "root"}, "pdsync-sync", "acme")
        refused = await ds.client.post("/-/pdsync/sync", data={"database": "acme"}, cookies=cookies)
        assert refused.status_code == 403

        # Removing a person signs them out at once, even with the cookie they hold.
        assert invoke("user", "remove", db, "reader").exit_code == 0
        assert (await ds.client.get("/acme/deals", cookies=cookies)).status_code == 401

    asyncio.run(check())


def test_a_new_password_signs_out_the_old_sessions(private):
    """Resetting a password (remove, add again) must lock out whoever signed in before."""
    ds, db, _ = private

    async def check():
        add_user(db, "reset-me")
        before = await sign_in(ds, "reset-me", PASSWORD)
        old = {"ds_actor": before.cookies["ds_actor"]}
        assert (await ds.client.get("/acme/deals", cookies=old)).status_code == 200
        assert invoke("user", "remove", db, "reset-me").exit_code == 0
        add_user(db, "reset-me")
        assert (await ds.client.get("/acme/deals", cookies=old)).status_code == 401
        after = await sign_in(ds, "reset-me", PASSWORD)
        new = {"ds_actor": after.cookies["ds_actor"]}
        assert (await ds.client.get("/acme/deals", cookies=new)).status_code == 200

    asyncio.run(check())


def test_root_is_not_a_name_a_user_or_token_can_take(synced):
    for command in (["user", "add", synced, "root"], ["token", "create", synced, "Root"]):
        result = invoke(*command, stdin=PASSWORD + "\n")
        assert result.exit_code == 1 and "Datasette's own administrator" in result.output


@pytest.mark.parametrize(
    "target, lands",
    [
        ("/acme/deals?_size=5", "/acme/deals?_size=5"),
        ("//example.com/x", "/"),
        ("/\t/example.com", "/"),
        ("/%09/example.com", "/%09/example.com"),  # still encoded: a path on this site
        ("/x\r\nSet-Cookie: a=b", "/"),
        ("https://example.com/", "/"),
    ],
)
def test_after_sign_in_only_a_path_on_this_site(target, lands):
    from pdsync.datasette_plugin.access import _next

    class Site:
        class urls:  # noqa: N801 - Datasette's attribute name
            path = staticmethod(lambda path: path)

    assert _next(Site, target) == lands


def test_the_demo_serves_on_loopback_only(tmp_path):
    result = CliRunner().invoke(cli.cli, ["demo", str(tmp_path / "d.db"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "not a loopback address" in result.output
    assert not (tmp_path / "d.db").exists()


def actor_of(token, db):
    return access.token_actor(access.load(access.secrets_path(db)), token)[0]


def test_tokens_expire_and_revoke_at_once(private, monkeypatch):
    ds, db, token = private
    short = make_token(db, "short", "--expires-after", "60s")

    async def get(token):
        response = await ds.client.get(
            "/acme/deals.json?_size=1", headers={"authorization": f"Bearer {token}"}
        )
        return response.status_code, response.json().get("error")

    async def check():
        assert await get(short) == (200, None)
        later = time.time() + 61
        with monkeypatch.context() as clock:
            clock.setattr(access, "_now", lambda: later)
            assert await get(short) == (401, "token expired")
        assert await get(token) == (200, None)
        assert invoke("token", "revoke", db, "dash").exit_code == 0
        assert await get(token) == (401, "unknown or revoked token")
        assert await get("pdsync_made-up") == (401, "unknown or revoked token")

    asyncio.run(check())


def test_nothing_secret_in_introspection(private):
    ds, db, token = private
    secrets = access.load(access.secrets_path(db))

    async def check():
        bearer = {"authorization": f"Bearer {token}"}
        for url in ("/-/metadata.json", "/-/settings.json", "/-/plugins.json", "/", "/-/pdsync"):
            text = (await ds.client.get(url, headers=bearer)).text
            for user in secrets["users"].values():
                assert user["password_hash"].split("$")[-1] not in text, url
            for digest in secrets["tokens"]:
                assert digest not in text, url
            assert token not in text and secrets_file_name(db) not in text, url

    asyncio.run(check())


def secrets_file_name(db):
    return access.secrets_path(db).name


# -- over real HTTP, with a real `pdsync serve` ---------------------------------------------


def start(db, *args, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsync", "serve", str(db), "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"  # traffic only ever goes to loopback
    try:
        wait_for_server(base)  # a 401 is an answer too
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1]) from None
    return proc, base


def stop(proc):
    proc.terminate()
    return proc.communicate(timeout=10)[1]


def test_pdsync_serve_beyond_loopback(synced, tmp_path):
    from test_serve import free_port

    db = tmp_path / "acme.db"
    db.write_bytes(synced.read_bytes())
    port = free_port()
    # Nobody yet: the server says so, refuses everyone, and makes the cookie secret.
    proc, base = start(db, "--host", "0.0.0.0", port=port)
    try:
        for url in PRIVATE_URLS:
            assert httpx.get(base + url).status_code == 401, url
        assert httpx.get(base + "/-/static/app.css").status_code == 200
        login = httpx.get(base + "/-/login")
        assert login.status_code == 200 and "pdsync user add" in login.text
    finally:
        said = stop(proc)
    assert "Sign-in required: 0 user(s), 0 token(s)." in said and "pdsync user add" in said
    assert stat.S_IMODE(os.stat(access.secrets_path(db)).st_mode) == 0o600
    secret = access.load(access.secrets_path(db))["cookie_secret"]

    add_user(db, "ann")
    token = make_token(db, "dash", "--expires-after", "30d")
    proc, base = start(db, "--host", "0.0.0.0", port=port)
    try:
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.get(base + "/acme/deals.json?_size=1", headers=bearer).status_code == 200
        with httpx.Client(base_url=base) as browser:
            page = browser.get("/-/login")
            csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
            signed = browser.post(
                "/-/login", data={"username": "ann", "password": PASSWORD, "csrftoken": csrf}
            )
            assert signed.status_code == 302
            session = browser.cookies["ds_actor"]
    finally:
        stop(proc)

    # A restart keeps the cookie secret, so sessions and tokens still work.
    proc, base = start(db, "--host", "0.0.0.0", port=port)
    try:
        assert access.load(access.secrets_path(db))["cookie_secret"] == secret
        page = httpx.get(base + "/acme/deals", cookies={"ds_actor": session})
        assert page.status_code == 200 and "ann" in page.text
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.get(base + "/acme/deals.json", headers=bearer).status_code == 200
        assert invoke("token", "revoke", db, "dash").exit_code == 0
        assert httpx.get(base + "/acme/deals.json", headers=bearer).status_code == 401
        for text in (
            httpx.get(base + u, cookies={"ds_actor": session}).text
            for u in ("/-/metadata.json", "/-/settings.json", "/-/plugins.json")
        ):
            assert secret not in text and "password_hash" not in text
        odd = httpx.get(base + "/acme.json", headers={"authorization": "Basic w6k="})
        assert odd.status_code == 400
    finally:
        said = stop(proc)
    assert "Traceback" not in said and token not in said and secret not in said


def test_pdsync_serve_public_and_local(synced, tmp_path):
    from test_serve import free_port

    db = tmp_path / "acme.db"
    db.write_bytes(synced.read_bytes())
    port = free_port()
    proc, base = start(db, "--host", "0.0.0.0", "--public", port=port)
    try:
        assert httpx.get(base + "/acme/deals.json").status_code == 200
        assert httpx.get(base + "/acme.json?sql=select+1").status_code == 403
    finally:
        said = stop(proc)
    assert "PUBLIC: anyone who can reach this address" in said
    proc, base = start(db, port=port)  # 127.0.0.1: as always, SQL included
    try:
        assert httpx.get(base + "/acme.json?sql=select+1").status_code == 200
        assert httpx.get(base + "/acme/deals.json").status_code == 200
    finally:
        said = stop(proc)
    assert "Only this machine can connect" in said


# -- how long a sign-in lasts ---------------------------------------------------------------


def test_a_sign_in_ends_after_its_session_length(private, monkeypatch):
    ds, db, _ = private

    async def check():
        signed = await sign_in(ds, "reader", PASSWORD)
        header = signed.headers["set-cookie"]
        assert f"Max-Age={30 * 86400}" in header  # the browser forgets it after a month too
        cookie = {"ds_actor": signed.cookies["ds_actor"]}
        decoded = ds.unsign(cookie["ds_actor"], "actor")
        assert decoded["e"] and decoded["a"]["since"] <= time.time()
        assert (await ds.client.get("/acme/deals.json", cookies=cookie)).status_code == 200

        now = time.time()
        monkeypatch.setattr(access, "_now", lambda: now + 29 * 86400)
        assert (await ds.client.get("/acme/deals.json", cookies=cookie)).status_code == 200
        monkeypatch.setattr(access, "_now", lambda: now + 30 * 86400 + 1)
        assert (await ds.client.get("/acme/deals.json", cookies=cookie)).status_code == 401
        html = {"accept": "text/html"}
        browser = await ds.client.get("/acme/deals", cookies=cookie, headers=html)
        assert browser.status_code == 302 and "/-/login" in browser.headers["location"]

        # A shorter setting ends older sessions at once; a fresh sign-in gets the new length.
        monkeypatch.setattr(access, "_now", time.time)
        monkeypatch.setenv(plugin_access.SESSION_ENV, "1h")
        again = await sign_in(ds, "reader", PASSWORD)
        assert "Max-Age=3600" in again.headers["set-cookie"]
        fresh = {"ds_actor": again.cookies["ds_actor"]}
        assert (await ds.client.get("/acme/deals.json", cookies=fresh)).status_code == 200
        monkeypatch.setattr(access, "_now", lambda: time.time() + 3601)
        assert (await ds.client.get("/acme/deals.json", cookies=fresh)).status_code == 401

    asyncio.run(check())


def test_a_cookie_without_a_sign_in_time_opens_nothing(private):
    """Cookies signed before sessions ended (no "since") are over, as is one whose signed
    expiry passed, even for a user who still exists."""
    ds, db, _ = private
    session = access.load(access.secrets_path(db))["users"]["reader"]["session"]
    actor = {"id": "reader", "pdsync": "user", "session": session}

    async def check():
        old = {"ds_actor": ds.sign({"a": actor}, "actor")}
        assert (await ds.client.get("/acme/deals.json", cookies=old)).status_code == 401
        past = {**actor, "since": int(time.time()) - 60}
        from datasette.utils import baseconv

        ended = baseconv.base62.encode(int(time.time()) - 1)
        expired = {"ds_actor": ds.sign({"a": past, "e": ended}, "actor")}
        assert (await ds.client.get("/acme/deals.json", cookies=expired)).status_code == 401
        live = {"ds_actor": ds.sign({"a": past}, "actor")}
        assert (await ds.client.get("/acme/deals.json", cookies=live)).status_code == 200

    asyncio.run(check())


def test_a_bad_session_length_is_one_line(synced):
    result = invoke("serve", synced, "--session-length", "forever")
    assert result.exit_code == 2 and "is not an interval" in result.output
    assert "Traceback" not in result.output
