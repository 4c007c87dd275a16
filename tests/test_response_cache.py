"""pdsync's response cache: an answer served again only while it is what Datasette would say
now (same actor, no commit since, not too old), and never past the sign-in gate."""

import asyncio

import sqlite_utils
import test_team
from datasette import hookimpl
from test_team import PASSWORD, add_user, invoke, make_token, sign_in

from pdsync.datasette_plugin import cache as response_cache
from pdsync.datasette_plugin import memo

# test_team's fixtures: a synced database, served privately with a reader and a token.
synced = test_team.synced
private = test_team.private


def cache_of(ds):
    return ds._pdsync_response_cache


async def started(ds):
    # The ASGI wrappers (gate, cache) are built with the app, on the first request.
    await ds.client.get("/-/login")
    return cache_of(ds)


def test_a_repeated_answer_comes_from_the_cache_until_the_data_changes(private):
    ds, db, token = private
    bearer = {"authorization": f"Bearer {token}"}
    url = "/acme/deals.json?_sort=id&_size=5&_col=title"

    async def check():
        cache = await started(ds)
        first = await ds.client.get(url, headers=bearer)
        hits = cache.hits
        again = await ds.client.get(url, headers=bearer)
        assert again.status_code == 200 and again.content == first.content
        assert cache.hits == hits + 1

        # A sync (here: any other connection) commits: the next answer is made anew.
        deal_id = first.json()["rows"][0][0]
        sqlite_utils.Database(db)["deals"].update(deal_id, {"title": "Renamed by a sync"})
        fresh = await ds.client.get(url, headers=bearer)
        assert fresh.json()["rows"][0][1] == "Renamed by a sync"
        assert cache.hits == hits + 1

    asyncio.run(check())


def test_the_cache_never_answers_for_someone_else_or_past_the_gate(private):
    ds, db, token = private
    add_user(db, "other")

    async def check():
        cache = await started(ds)
        reader = await sign_in(ds, "reader", PASSWORD)
        other = await sign_in(ds, "other", PASSWORD)
        mine = {"ds_actor": reader.cookies["ds_actor"]}
        theirs = {"ds_actor": other.cookies["ds_actor"]}
        # A page that sets a cookie (a browser's first, given a CSRF token) is not kept; the
        # browser sends the cookie back after that, and from then on its page is.
        first = await ds.client.get("/acme/deals", cookies=mine)
        mine["ds_csrftoken"] = first.cookies["ds_csrftoken"]
        page = await ds.client.get("/acme/deals", cookies=mine)
        assert page.status_code == 200 and "reader" in page.text
        hits = cache.hits
        again = await ds.client.get("/acme/deals", cookies=mine)
        assert again.text == page.text and cache.hits == hits + 1
        first = await ds.client.get("/acme/deals", cookies=theirs)
        theirs["ds_csrftoken"] = first.cookies["ds_csrftoken"]
        seen = await ds.client.get("/acme/deals", cookies=theirs)
        # Shared with the reader's (test_shared_pages.py), but theirs: their name, not the
        # reader's.
        assert "<strong>other</strong>" in seen.text and "<strong>reader</strong>" not in seen.text
        # Removed: refused at once, although their page is in the cache.
        assert invoke("user", "remove", db, "reader").exit_code == 0
        assert (await ds.client.get("/acme/deals", cookies=mine)).status_code == 401
        # Anonymous: refused, never served someone's cached page.
        assert (await ds.client.get("/acme/deals")).status_code == 401

    asyncio.run(check())


def test_old_answers_expire_and_live_pages_are_never_kept(private, monkeypatch):
    ds, db, token = private
    bearer = {"authorization": f"Bearer {token}"}

    async def check():
        cache = await started(ds)
        url = "/acme/overdue_deals.json?_shape=array"
        await ds.client.get(url, headers=bearer)
        await ds.client.get(url, headers=bearer)
        hits = cache.hits
        monkeypatch.setattr(cache, "max_age", 0.0)  # days overdue move with the clock
        await ds.client.get(url, headers=bearer)
        assert cache.hits == hits
        monkeypatch.setattr(cache, "max_age", response_cache.MAX_AGE)
        for live in ("/-/pdsync.json", "/-/actor.json"):
            await ds.client.get(live, headers=bearer)
            await ds.client.get(live, headers=bearer)
        assert cache.hits == hits
        # Arbitrary SQL refused (403) is not kept either, and stays refused.
        for _ in range(2):
            refused = await ds.client.get("/acme.json?sql=select+1", headers=bearer)
            assert refused.status_code == 403
        assert cache.hits == hits

    asyncio.run(check())


def test_the_cache_can_be_turned_off(private, monkeypatch):
    ds, _, _ = private

    async def app(scope, receive, send):
        pass

    assert response_cache.wrap(ds, app) is not app
    monkeypatch.setenv(response_cache.OFF_ENV, "off")
    assert response_cache.wrap(ds, app) is app


def test_data_is_shared_only_between_readers_allowed_the_same(private):
    """Two tokens share a JSON answer; an answer to SQL made for someone allowed it is never
    handed to someone who is not."""
    ds, db, token = private
    second = make_token(db, "second")
    sql_token = make_token(db, "analyst", "--can", "sql")

    def bearer(t):
        return {"authorization": f"Bearer {t}"}

    async def check():
        cache = await started(ds)
        url = "/acme/pipeline_summary.json"
        await ds.client.get(url, headers=bearer(token))
        hits = cache.hits
        shared = await ds.client.get(url, headers=bearer(second))
        assert shared.status_code == 200 and cache.hits == hits + 1
        sql = "/acme.json?sql=select+count(*)+from+deals"
        allowed = await ds.client.get(sql, headers=bearer(sql_token))
        assert allowed.status_code == 200
        again = await ds.client.get(sql, headers=bearer(sql_token))
        assert again.content == allowed.content and cache.hits == hits + 2
        refused = await ds.client.get(sql, headers=bearer(token))
        assert refused.status_code == 403 and cache.hits == hits + 2

    asyncio.run(check())


def test_readers_asking_at_once_wait_for_one_answer(private):
    ds, db, token = private
    bearer = {"authorization": f"Bearer {token}"}

    async def check():
        cache = await started(ds)
        misses = cache.misses
        url = "/acme/owner_kpis.json"
        answers = await asyncio.gather(*(ds.client.get(url, headers=bearer) for _ in range(4)))
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        assert cache.misses == misses + 1  # made once, the three others waited for it

    asyncio.run(check())


def test_answers_that_read_the_reader_are_never_shared(private):
    """A canned query a team adds with a magic parameter (:_actor_id) answers differently per
    reader, with the same permissions: its answers are not kept."""
    ds, db, token = private
    first = make_token(db, "analyst")
    second = make_token(db, "auditor")
    queries = ds._metadata_local.setdefault("databases", {}).setdefault("acme", {})
    queries.setdefault("queries", {})["whoami"] = {"sql": "select :_actor_id as who"}

    async def check():
        cache = await started(ds)
        url = "/acme/whoami.json?_shape=array"
        hits = cache.hits
        mine = await ds.client.get(url, headers={"authorization": f"Bearer {first}"})
        theirs = await ds.client.get(url, headers={"authorization": f"Bearer {second}"})
        assert mine.status_code == theirs.status_code == 200
        assert mine.json() != theirs.json()
        assert cache.hits == hits

    asyncio.run(check())


def test_a_locked_database_is_not_waited_for_on_the_event_loop(tmp_path):
    """The cache asks each database's ``data_version`` on the event loop: a writer holding
    the lock (a database not in WAL mode) must not stall every request while it waits. It
    does not wait: the answer is "cannot be known" (the request goes to Datasette, nothing
    is kept); once the lock is released, versions are known again."""
    import sqlite3
    import threading
    import types

    path = tmp_path / "locked.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("create table t (x)")
    database = types.SimpleNamespace(is_mutable=True, path=str(path))
    datasette = types.SimpleNamespace(databases={"locked": database})
    cache = response_cache.ResponseCache()
    assert cache.version(datasette, None) is not None

    writer.execute("begin exclusive")
    writer.execute("insert into t values (1)")
    # Released a second from now: a watcher that waited for the lock would get a version.
    release = threading.Timer(1.0, lambda: writer.execute("commit"))
    release.start()
    try:
        assert cache.version(datasette, None) is None
    finally:
        release.join()
    assert cache.version(datasette, None) is not None
    writer.close()


def test_remembered_permissions_follow_metadata_and_revocation(private):
    """A hit skips Datasette's permission work by remembering its answers: a new ``allow``
    block still refuses at once, and so does revoking the token."""
    ds, db, token = private
    bearer = {"authorization": f"Bearer {token}"}
    url = "/acme/deals.json?_size=3"

    async def check():
        cache = await started(ds)
        assert (await ds.client.get(url, headers=bearer)).status_code == 200
        hits = cache.hits
        assert (await ds.client.get(url, headers=bearer)).status_code == 200
        assert cache.hits == hits + 1
        # Only the reader may see deals now: the token is refused, not served the answer.
        local = ds._metadata_local
        tables = {"deals": {"allow": {"id": "reader"}}}
        ds._metadata_local = {**local, "databases": {"acme": {"tables": tables}}}
        assert (await ds.client.get(url, headers=bearer)).status_code == 403
        ds._metadata_local = local
        assert (await ds.client.get(url, headers=bearer)).status_code == 200
        assert invoke("token", "revoke", db, "dash").exit_code == 0
        assert (await ds.client.get(url, headers=bearer)).status_code == 401

    asyncio.run(check())


class Doorman:
    """Another plugin's permission rule, changing without anything pdsync can see."""

    open = True

    @hookimpl
    def permission_allowed(self, actor, action, resource):
        if action == "view-table" and not Doorman.open:
            return False
        return None


def test_permission_answers_are_not_remembered_beside_another_plugins_rules(private):
    from datasette.plugins import pm

    ds, db, token = private
    bearer = {"authorization": f"Bearer {token}"}
    url = "/acme/deals.json?_size=3"
    doorman = Doorman()
    pm.register(doorman, name="doorman")

    async def check():
        await started(ds)
        for _ in range(2):
            assert (await ds.client.get(url, headers=bearer)).status_code == 200
        Doorman.open = False
        assert (await ds.client.get(url, headers=bearer)).status_code == 403

    try:
        asyncio.run(check())
    finally:
        pm.unregister(doorman)
        Doorman.open = True


def test_plugin_configuration_is_fresh_for_each_request(private):
    """datasette-render-markdown's configuration, read for every cell, is read once per
    request: still honoured, and a change is seen by the next request."""
    ds, db, _ = private
    local = ds._metadata_local

    def with_markdown(columns):
        config = {"datasette-render-markdown": {"columns": columns}}
        return {**local, "databases": {"acme": {"plugins": config}}}

    async def check():
        await started(ds)
        reader = await sign_in(ds, "reader", PASSWORD)
        cookies = {"ds_actor": reader.cookies["ds_actor"]}
        url = "/acme/deals?_size=3&_col=title"
        ds._metadata_local = with_markdown(["title"])
        page = await ds.client.get(url, cookies=cookies)
        assert page.status_code == 200
        assert page.text.count('<div style="white-space: normal"><p>') == 3
        ds._metadata_local = with_markdown([])
        plain = await ds.client.get(url, cookies=cookies)
        assert plain.status_code == 200 and "white-space: normal" not in plain.text
        # Within a request each caller still gets its own copy: what one changes, the next
        # does not see.
        seen = []

        async def app(scope, receive, send):
            first = ds.plugin_config("datasette-render-markdown", database="acme")
            first["columns"].append("status")
            seen.append(ds.plugin_config("datasette-render-markdown", database="acme"))

        await memo.wrap(app)({"type": "http"}, None, None)
        assert seen == [{"columns": []}]

    asyncio.run(check())
