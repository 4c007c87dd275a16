"""Serving: `pdsync serve`, the metadata plugin for any database name, and the wheel."""

import asyncio
import glob
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
import sqlite_utils
import yaml
from datasette.app import Datasette
from helpers import PLUGINS_DIR, free_port, unregister_pdsync_plugins, wait_for_server

import pdsync
from pdsync.datasette_plugin import metadata as metadata_plugin
from pdsync.serve import metadata_path


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    from pdsync.fake import FakePipedrive, FakeServer

    path = tmp_path_factory.mktemp("serve") / "acme.db"
    fake = FakePipedrive(deals=200, seed=2)
    with FakeServer(fake) as server:
        assert pdsync.sync(str(path), token=fake.token, base_url=server.url, auth_path=None).ok
    fake.close()
    return path


def pipedrive_queries():
    return set(yaml.safe_load(metadata_path().read_text())["databases"]["pipedrive"]["queries"])


def test_any_database_name_gets_the_canned_queries_and_labels(synced):
    async def check():
        ds = Datasette([str(synced)], plugins_dir=str(PLUGINS_DIR))
        try:
            queries = await ds.get_canned_queries("acme", None)
            # metadata.yml's (and one per chart of a dashboard that reads this database)
            charts = {q for q in queries if q.startswith("chart_")}
            assert set(queries) - charts == pipedrive_queries()
            response = await ds.client.get("/acme/sync_status.json?_shape=array")
            assert response.status_code == 200
            assert {r["entity_type"] for r in response.json()} >= {"deals", "notes"}
            assert ds.metadata("label_column", database="acme", table="stages") == "name"
        finally:
            unregister_pdsync_plugins()

    asyncio.run(check())


def test_local_metadata_for_the_database_is_merged_over_the_plugins(synced):
    local = {"databases": {"acme": {"title": "Acme CRM", "queries": {"mine": "select 1"}}}}

    async def check():
        ds = Datasette([str(synced)], metadata=local, plugins_dir=str(PLUGINS_DIR))
        try:
            queries = await ds.get_canned_queries("acme", None)
            assert set(queries) == pipedrive_queries() | {"mine"}
            assert ds.metadata("title", database="acme") == "Acme CRM"
            assert (await ds.client.get("/acme/mine.json")).status_code == 200
            # The merge must not leak into the section served to other databases.
            plain = Datasette([str(synced)], plugins_dir=str(PLUGINS_DIR))
            assert plain.metadata("title", database="acme") != "Acme CRM"
            assert "mine" not in await plain.get_canned_queries("acme", None)
        finally:
            unregister_pdsync_plugins()

    asyncio.run(check())


def test_a_database_filled_while_served_gets_the_canned_queries(tmp_path):
    from pdsync.fake import FakePipedrive, FakeServer

    path = tmp_path / "acme.db"
    path.touch()  # served before its first sync, as `pdsync serve` right after `auth` would

    async def check():
        ds = Datasette([str(path)], plugins_dir=str(PLUGINS_DIR))
        try:
            assert await ds.get_canned_queries("acme", None) == {}
            fake = FakePipedrive(deals=50, seed=3)
            with FakeServer(fake) as server:
                result = pdsync.sync(
                    str(path), token=fake.token, base_url=server.url, auth_path=None
                )
                assert result.ok
            fake.close()
            metadata_plugin._not_yet.clear()  # instead of waiting RECHECK_SECONDS
            assert set(await ds.get_canned_queries("acme", None)) == pipedrive_queries()
        finally:
            unregister_pdsync_plugins()

    asyncio.run(check())


def test_a_database_that_is_not_pdsyncs_gets_nothing(tmp_path):
    import sqlite_utils

    path = tmp_path / "other.db"
    sqlite_utils.Database(str(path))["deals"].insert({"id": 1})

    async def check():
        ds = Datasette([str(path)], plugins_dir=str(PLUGINS_DIR))
        try:
            assert await ds.get_canned_queries("other", None) == {}
        finally:
            unregister_pdsync_plugins()

    asyncio.run(check())


def test_pdsync_serve_runs_datasette_with_metadata_and_plugins(synced):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsync", "serve", str(synced), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(base)
        plugins = {p["name"]: p for p in httpx.get(base + "/-/plugins.json").json()}
        assert plugins["pdsync.datasette_plugin"]["templates"]  # its templates/ found
        assert httpx.get(base + "/-/pdsync").status_code == 200
        title = yaml.safe_load(metadata_path().read_text()).get("title")
        assert httpx.get(base + "/-/metadata.json").json().get("title") == title
        response = httpx.get(base + "/acme/sync_status.json?_shape=array")
        assert response.status_code == 200 and response.json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_warns_about_a_database_an_older_pdsync_made(synced, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pdsync import cli, serve

    served = []
    # `pdsync serve` imports pdsync.serve when it runs (see cli.py): replace it there.
    monkeypatch.setattr(serve, "serve", lambda path, *args, **kwargs: served.append(path))
    current = CliRunner().invoke(cli.cli, ["serve", str(synced)])
    assert current.exit_code == 0 and "older pdsync" not in current.stderr
    old = tmp_path / "old.db"
    old.write_bytes(synced.read_bytes())
    db = sqlite_utils.Database(old)
    db.execute("delete from _sqlite_migrations where name = 'm007_deals_totals'")
    db.conn.commit()
    db.close()
    before = old.read_bytes()
    result = CliRunner().invoke(cli.cli, ["serve", str(old)])
    assert result.exit_code == 0, result.output
    assert f"run `pdsync sync {old}` once" in result.stderr
    assert served == [str(synced), str(old)]
    assert old.read_bytes() == before  # serving never writes


def test_serve_refuses_a_missing_file(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pdsync", "serve", str(tmp_path / "nope.db")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr


def test_wheel_ships_metadata_and_plugins(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    wheel = zipfile.ZipFile(glob.glob(str(tmp_path / "pdsync-*.whl"))[0])
    names = set(wheel.namelist())
    assert {
        "pdsync/metadata.yml",
        "pdsync/datasette_plugin/hooks.py",
        "pdsync/datasette_plugin/templates/pdsync_status.html",
    } <= names
    assert wheel.read("pdsync/metadata.yml") == metadata_path().read_bytes()
    assert any(n.startswith("pdsync/fake/") for n in names)
