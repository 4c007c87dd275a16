"""Review of shared HTML pages (pages.py): ways one reader's page could reach another reader
that it must not. Each test names the leak it shows; each passes once the leak is closed."""

import asyncio

import pytest
import sqlite_utils
import test_team
import yaml
from datasette.app import Datasette
from helpers import unregister_pdsync_plugins
from markupsafe import escape
from test_shared_pages import browser
from test_team import add_user

import pdsync
from pdsync import access
from pdsync.datasette_plugin import access as plugin_access
from pdsync.serve import metadata_path

synced = test_team.synced
private = test_team.private

SARA, OMAR = "sara@gulf-fitout.example", "omar@gulf-fitout.example"
# A canned query a team adds to metadata.yml: "my deals", by the reader's pdsync user name.
MY_DEALS = (
    "select d.id, d.title from deals d join users u on u.id = d.owner_id"
    " where u.email = :_actor_id order by d.id"
)


@pytest.fixture
def my_deals(synced, tmp_path, monkeypatch):
    db = tmp_path / "acme.db"
    db.write_bytes(synced.read_bytes())
    add_user(db, SARA)
    add_user(db, OMAR)
    monkeypatch.setenv(plugin_access.MODE_ENV, "private")
    monkeypatch.setenv(plugin_access.SECRETS_ENV, str(access.secrets_path(db)))
    pdsync.datasette_plugin.register()
    metadata = yaml.safe_load(metadata_path().read_text())
    metadata["databases"]["acme"] = {"queries": {"my_deals": {"sql": MY_DEALS}}}
    ds = Datasette([str(db)], metadata=metadata)
    yield ds, db
    unregister_pdsync_plugins()


def owned_titles(db, email):
    rows = sqlite_utils.Database(db).query(
        "select d.title from deals d join users u on u.id = d.owner_id where u.email = ?",
        [email],
    )
    return [r["title"] for r in rows]


def test_leak_canned_query_reading_the_actor_is_not_shared(my_deals):
    """A canned query with :_actor_id shows each reader their own rows: the page made for
    Sara must never be Omar's."""
    ds, db = my_deals
    sara_deals, omar_deals = owned_titles(db, SARA), owned_titles(db, OMAR)
    # Titles only one of them owns, as the page shows them.
    sara_deals = [str(escape(t)) for t in sara_deals if t not in omar_deals]
    omar_deals = [str(escape(t)) for t in omar_deals if t not in sara_deals]
    assert sara_deals and omar_deals

    async def check():
        sara, omar = await browser(ds, SARA), await browser(ds, OMAR)
        made = await ds.client.get("/acme/my_deals", cookies=sara)
        assert made.status_code == 200 and sara_deals[0] in made.text
        page = await ds.client.get("/acme/my_deals", cookies=omar)
        assert page.status_code == 200
        assert sara_deals[0] not in page.text, "Omar was given Sara's deals"
        assert omar_deals[0] in page.text

    asyncio.run(check())


def test_leak_host_header_of_one_reader_is_not_in_anothers_page(private):
    """Datasette writes absolute URLs from the request's Host (the Next page link, the JSON
    alternate link and header): one reader's Host must not reach another's page."""
    ds, db, _ = private
    add_user(db, "other")

    async def check():
        mine, theirs = await browser(ds, "reader"), await browser(ds, "other")
        url = "/acme/deals?_size=5"
        made = await ds.client.get(url, cookies=mine, headers={"host": "evil.example"})
        assert made.status_code == 200 and "http://evil.example/" in made.text
        page = await ds.client.get(url, cookies=theirs)
        assert page.status_code == 200
        assert "evil.example" not in page.text, "another reader's Host in the page"
        assert "evil.example" not in page.headers.get("link", "")
        # The same for data, shared by everyone allowed to see it (its next_url).
        data = "/acme/deals.json?_size=5"
        made = await ds.client.get(data, cookies=mine, headers={"host": "evil.example"})
        assert made.json()["next_url"].startswith("http://evil.example/")
        answer = await ds.client.get(data, cookies=theirs)
        assert "evil.example" not in answer.text, "another reader's Host in the data"

    asyncio.run(check())


@pytest.fixture
def snapshot(synced, tmp_path, monkeypatch):
    """Served immutable, as `pdsync serve` does a file it can only read: it can be downloaded."""
    db = tmp_path / "acme.db"
    db.write_bytes(synced.read_bytes())
    add_user(db, "SQLite")  # in every database file's header, once
    add_user(db, "other")
    monkeypatch.setenv(plugin_access.MODE_ENV, "private")
    monkeypatch.setenv(plugin_access.SECRETS_ENV, str(access.secrets_path(db)))
    pdsync.datasette_plugin.register()
    ds = Datasette(immutables=[str(db)], metadata=yaml.safe_load(metadata_path().read_text()))
    yield ds, db
    unregister_pdsync_plugins()


def test_leak_a_download_is_not_rewritten_with_a_readers_name(snapshot):
    """Only HTML pages carry a reader's name: a download (the database file, a blob) that
    happens to hold the first reader's name once must reach the next reader unchanged."""
    ds, db = snapshot

    async def check():
        named, theirs = await browser(ds, "SQLite"), await browser(ds, "other")
        made = await ds.client.get("/acme.db", cookies=named)
        assert made.status_code == 200 and made.content.count(b"SQLite") == 1
        download = await ds.client.get("/acme.db", cookies=theirs)
        assert download.status_code == 200
        assert download.content == made.content, "the file was rewritten for its reader"

    asyncio.run(check())
