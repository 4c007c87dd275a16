"""Plugin hooks and the notebook-facing Python API."""

import asyncio

import pdsync_test_plugin
import pytest
import sqlite_utils
from click.testing import CliRunner

import pdsync
from pdsync.plugins import get_plugins, pm


@pytest.fixture
def plugin():
    pm.register(pdsync_test_plugin, name="pdsync_test_plugin")
    pdsync_test_plugin.after_sync_calls.clear()
    yield pdsync_test_plugin
    pm.unregister(name="pdsync_test_plugin")


def test_a_plugin_adds_a_column_an_entity_and_hears_about_syncs(plugin, fake, run_sync, db_path):
    result = run_sync()
    assert result.ok, result.errors
    db = sqlite_utils.Database(db_path)
    bands = dict(db.execute("select id, value_band from deals").fetchall())
    for deal in fake.records("deals"):
        want = "large" if (deal.get("value") or 0) >= 100_000 else "small"
        assert bands[deal["id"]] == want
    open_ids = {
        d["id"] for d in fake.records("deals") if d["status"] == "open" and not d["is_archived"]
    }
    assert {r["id"] for r in db["big_open_deals"].rows} == open_ids
    assert plugin.after_sync_calls == [(db["deals"].count, "success")]
    assert {
        "name": "pdsync_test_plugin",
        "hooks": sorted(
            [
                "pdsync_after_sync",
                "pdsync_entities",
                "pdsync_register_commands",
                "pdsync_transform_record",
            ]
        ),
    } in get_plugins()


def test_a_plugin_adds_a_command(plugin):
    from pdsync.cli import cli

    pm.hook.pdsync_register_commands(cli=cli)
    try:
        result = CliRunner().invoke(cli, ["hello-plugin"])
        assert result.output == "hello from a plugin\n"
    finally:
        cli.commands.pop("hello-plugin", None)


def test_without_plugins_nothing_extra(run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    assert "big_open_deals" not in db.table_names()
    assert "value_band" not in db["deals"].columns_dict


def test_sync_result_reads_well_in_a_notebook(run_sync):
    result = run_sync()
    html = result._repr_html_()
    assert "<table>" in html and "deals" in html and "success" in html
    rows = result.rows()
    assert {r["entity"] for r in rows} >= {"deals", "notes"}
    assert all(
        set(r) == {"entity", "status", "records", "requests", "tokens", "seconds", "error"}
        for r in rows
    )


def test_sync_works_inside_a_running_event_loop(fake, server, db_path):
    async def cell():
        # What a Jupyter cell does: call the library while an event loop runs.
        return pdsync.sync(db_path, token=fake.token, base_url=server.url, auth_path=None)

    assert asyncio.run(cell()).ok


def test_queries_lists_every_canned_query():
    listed = pdsync.queries()
    names = {q["name"] for q in listed}
    assert {"overdue_deals", "stuck_deals", "sync_status", "deal_notes"} <= names
    assert all(q["title"] and q["description"] for q in listed)


def test_query_runs_the_canned_sql_with_datasette_defaults(run_sync, db_path):
    run_sync()
    rows = pdsync.query(db_path, "sync_status")
    assert {r["entity_type"] for r in rows} >= {"deals", "notes"}
    with pytest.raises(KeyError, match="no canned query"):
        pdsync.query(db_path, "nope")
    with pytest.raises(TypeError, match="takes"):
        pdsync.query(db_path, "sync_status", pipeline=5)


def test_datasette_instance_for_a_notebook(run_sync, db_path):
    run_sync()
    ds = pdsync.datasette(db_path)

    async def get():
        response = await ds.client.get("/pipedrive/sync_status.json?_shape=array")
        return response.status_code, response.json()

    try:
        status, rows = asyncio.run(get())
    finally:
        from helpers import unregister_pdsync_plugins

        unregister_pdsync_plugins()
    assert status == 200
    assert {r["entity_type"] for r in rows} >= {"deals"}
