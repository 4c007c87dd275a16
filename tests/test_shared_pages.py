"""HTML pages shared between readers Datasette answers the same: each sees their own name
and CSRF token, never anyone else's, and nobody gets a page made under other permissions."""

import asyncio
import re

import test_team
from datasette import hookimpl
from itsdangerous.url_safe import URLSafeSerializer
from test_team import PASSWORD, add_user, invoke, make_token, sign_in

from pdsync.datasette_plugin import pages

synced = test_team.synced
private = test_team.private

URL = "/acme/deals?_size=5"


async def browser(ds, name):
    """Cookies a browser holds after signing in and opening one page (which gave it its
    CSRF cookie)."""
    signed_in = await sign_in(ds, name, PASSWORD)
    cookies = {"ds_actor": signed_in.cookies["ds_actor"]}
    first = await ds.client.get("/acme", cookies=cookies)
    assert first.status_code == 200
    cookies["ds_csrftoken"] = first.cookies["ds_csrftoken"]
    return cookies


async def reader_and_other(ds):
    """Two signed-in browsers (the fixture's reader, and "other"), and the cache."""
    return await browser(ds, "reader"), await browser(ds, "other"), ds._pdsync_response_cache


def shown_name(page):
    return re.search(r'<div class="actor">\s*<strong>([^<]*)</strong>', page.text).group(1)


def form_token(page):
    return re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)


def test_a_page_made_for_one_reader_is_given_to_another_as_their_own(private):
    ds, db, _ = private
    add_user(db, "other")

    async def check():
        mine, theirs, cache = await reader_and_other(ds)
        made = await ds.client.get(URL, cookies=mine)
        assert made.status_code == 200 and shown_name(made) == "reader"
        hits = cache.hits
        shared = await ds.client.get(URL, cookies=theirs)
        assert shared.status_code == 200 and cache.hits == hits + 1
        assert shown_name(shared) == "other"
        assert form_token(shared) == theirs["ds_csrftoken"]
        assert mine["ds_csrftoken"] not in shared.text and ">reader<" not in shared.text
        # Everything else is the page as made (the same rows, columns and facets).
        assert shared.text.replace("other", "reader").replace(
            theirs["ds_csrftoken"], mine["ds_csrftoken"]
        ) == made.text.replace("other", "reader")
        # Their token works for their log-out: it is the one their cookie carries.
        out = await ds.client.post(
            "/-/logout", data={"csrftoken": form_token(shared)}, cookies=theirs
        )
        assert out.status_code == 302
        # Removed: refused at once, although a page for them is one fill away.
        assert invoke("user", "remove", db, "other").exit_code == 0
        assert (await ds.client.get(URL, cookies=theirs)).status_code == 401

    asyncio.run(check())


def test_readers_answered_differently_or_with_other_cookies_get_their_own(private):
    ds, db, token = private
    add_user(db, "analyst", "sql")

    async def check():
        mine = await browser(ds, "reader")
        analyst = await browser(ds, "analyst")
        cache = ds._pdsync_response_cache
        made = await ds.client.get(URL, cookies=mine)
        hits = cache.hits
        # Allowed SQL: Datasette answers execute-sql differently, and the page shows it.
        theirs = await ds.client.get(URL, cookies=analyst)
        assert theirs.status_code == 200 and cache.hits == hits
        assert "View and edit SQL" in theirs.text and "View and edit SQL" not in made.text
        # A message waiting in a cookie: the page shows it, so it is made for them.
        flashed = {**mine, "ds_messages": ds.sign([["Hello reader", 1]], "messages")}
        with_message = await ds.client.get(URL, cookies=flashed)
        assert "Hello reader" in with_message.text and cache.hits == hits
        # A script with a token (no sign-in cookie): no log-out form, never the reader's page.
        bearer = {"authorization": f"Bearer {token}"}
        scripted = await ds.client.get(
            URL, headers=bearer, cookies={"ds_csrftoken": mine["ds_csrftoken"]}
        )
        assert scripted.status_code == 200 and cache.hits == hits
        assert "Log out" not in scripted.text and shown_name(scripted) == "dash"

    asyncio.run(check())


def test_a_page_showing_its_readers_name_elsewhere_is_not_shared(private):
    """A reader named like something on the page: their name cannot be cut out for sure."""
    ds, db, _ = private
    add_user(db, "open")  # the deals' status

    async def check():
        named = await browser(ds, "open")
        mine = await browser(ds, "reader")
        cache = ds._pdsync_response_cache
        first = await ds.client.get(URL, cookies=named)
        assert first.text.count("open") > 1
        hits = cache.hits
        made = await ds.client.get(URL, cookies=mine)
        assert shown_name(made) == "reader" and cache.hits == hits

    asyncio.run(check())


class Stranger:
    """A plugin pdsync does not know, which might show the actor somewhere."""

    @hookimpl
    def extra_body_script(self):
        return "/* hello */"


def test_no_page_is_shared_beside_a_plugin_pdsync_does_not_know(private):
    from datasette.plugins import pm

    ds, db, _ = private
    add_user(db, "other")
    stranger = Stranger()
    pm.register(stranger, name="stranger")

    async def check():
        mine, theirs, cache = await reader_and_other(ds)
        assert not pages.possible(ds)
        await ds.client.get(URL, cookies=mine)
        hits = cache.hits
        page = await ds.client.get(URL, cookies=theirs)
        assert shown_name(page) == "other" and cache.hits == hits

    try:
        asyncio.run(check())
    finally:
        pm.unregister(stranger)


def test_a_reader_without_a_valid_csrf_cookie_is_given_a_fresh_page(private):
    ds, db, _ = private
    make_token(db, "unused")  # any change to the secrets file: answers asked again

    async def check():
        mine = await browser(ds, "reader")
        cache = ds._pdsync_response_cache
        await ds.client.get(URL, cookies=mine)
        hits = cache.hits
        forged = {**mine, "ds_csrftoken": "not-signed"}
        page = await ds.client.get(URL, cookies=forged)
        assert cache.hits == hits and "not-signed" not in page.text
        assert page.cookies.get("ds_csrftoken")  # asgi-csrf made them a real one

    asyncio.run(check())


def test_scripts_with_tokens_share_pages_without_any_cookie(private):
    ds, db, _ = private
    # (Not the fixture's "dash": the page links to /-/dashboards, so that name cannot be cut.)
    one, two = make_token(db, "scriptone"), make_token(db, "scripttwo")

    async def check():
        first = await ds.client.get(URL, headers={"authorization": f"Bearer {one}"})
        assert first.status_code == 200 and shown_name(first) == "scriptone"
        assert not first.cookies  # no log-out form, so no CSRF cookie either
        cache = ds._pdsync_response_cache
        hits = cache.hits
        page = await ds.client.get(URL, headers={"authorization": f"Bearer {two}"})
        assert page.status_code == 200 and cache.hits == hits + 1
        assert shown_name(page) == "scripttwo" and "scriptone" not in page.text

    asyncio.run(check())


def test_a_page_asked_with_two_cookie_headers_is_not_shared(private):
    """Which of two Cookie headers each part of Datasette reads is not pdsync's to know: such
    a page is never cut and given to someone else."""
    ds, db, _ = private
    add_user(db, "other")

    async def check():
        mine, theirs, cache = await reader_and_other(ds)
        another = URLSafeSerializer(ds._secret).dumps("another", "csrftoken")
        twice = [
            ("cookie", f"ds_csrftoken={another}"),
            ("cookie", f"ds_actor={mine['ds_actor']}; ds_csrftoken={mine['ds_csrftoken']}"),
        ]
        made = await ds.client.get(URL, headers=twice)
        assert made.status_code == 200
        hits = cache.hits
        page = await ds.client.get(URL, cookies=theirs)
        assert shown_name(page) == "other" and cache.hits == hits
        assert mine["ds_csrftoken"] not in page.text and another not in page.text

    asyncio.run(check())
