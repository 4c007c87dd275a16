"""Charts for every signed-in reader, through canned queries, with arbitrary SQL still closed."""

import asyncio
import sqlite3
from urllib.parse import urlencode

import test_team
from datasette_dashboards import replace_opts_in_query
from test_team import PASSWORD, sign_in

from pdsync.datasette_plugin import charts

# test_team's fixtures: a synced database, served privately with a reader and a token.
synced = test_team.synced
private = test_team.private


def chart_configs(ds):
    return [
        (slug, chart_slug, chart)
        for slug, dashboard in ds.plugin_config("datasette-dashboards").items()
        for chart_slug, chart in dashboard["charts"].items()
    ]


def expected_rows(db, chart, options):
    """What datasette-dashboards itself would fetch: its own [[ ]] handling, then the SQL."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        sql = replace_opts_in_query(chart["query"], options)
        names = set(charts.VARIABLE.findall(chart["query"]))
        params = {n: options.get(n, "") for n in names}
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def test_a_signed_in_reader_without_sql_sees_every_chart_and_no_sql(private):
    ds, db, _ = private

    async def check():
        signed = await sign_in(ds, "reader", PASSWORD)
        cookies = {"ds_actor": signed.cookies["ds_actor"]}
        assert (await ds.client.get("/-/actor.json", cookies=cookies)).json()["actor"]
        # Still no arbitrary SQL for them.
        sql = await ds.client.get("/acme.json?sql=select+1", cookies=cookies)
        assert sql.status_code == 403

        for slug in ("deals", "products"):
            page = await ds.client.get(f"/-/dashboards/{slug}", cookies=cookies)
            assert page.status_code == 200, (slug, page.text[:300])
        script = await ds.client.get("/-/static-plugins/datasette_dashboards/dashboards.js")
        assert script.status_code == 200 and "chart.canned" in script.text
        assert script.text.rstrip().endswith("}")

        pipeline = sqlite3.connect(db).execute("select name from pipelines limit 1").fetchone()[0]
        configs = chart_configs(ds)
        assert len(configs) >= 5
        for slug, chart_slug, chart in configs:
            assert chart["db"] == "acme" and chart["canned"] == charts.canned_name(slug, chart_slug)
            one = await ds.client.get(f"/-/dashboards/{slug}/{chart_slug}", cookies=cookies)
            assert one.status_code == 200, (chart_slug, one.text[:300])
            for options in ({}, {"pipeline": pipeline}, {"currency": "EUR"}):
                # The URL the replaced getDataUrl builds: the dashboard's filters as they are.
                query = urlencode(options)
                url = f"/acme/{chart['canned']}.json?{query}&_shape=objects"
                data = await ds.client.get(url, cookies=cookies)
                assert data.status_code == 200, (url, data.text[:300])
                rows = data.json()["rows"]
                assert rows == expected_rows(db, chart, options), (chart_slug, options)
                if not options:
                    assert rows, chart_slug  # the fake's company has data for every chart

    asyncio.run(check())


def test_anonymous_still_gets_neither_charts_nor_their_data(private):
    ds, _, _ = private

    async def check():
        for url in ("/-/dashboards/deals", "/acme/chart_deals_deals_per_stage.json"):
            assert (await ds.client.get(url)).status_code == 401

    asyncio.run(check())


def test_optional_parts_become_plain_sql():
    sql = "select 1 where a = 1 [[ and pipeline = :pipeline ]] group by 1"
    assert charts.canned_sql(sql) == (
        "select 1 where a = 1 and (:pipeline = '' or (pipeline = :pipeline)) group by 1"
    )
    assert charts.canned_sql("select 1") == "select 1"


def test_a_slug_needing_percent_encoding_is_checked_as_the_dashboard_reads_it():
    """datasette-dashboards unquotes the slugs: so does the check, and a dashboard or chart
    it cannot find is refused rather than let through unchecked."""
    from types import SimpleNamespace

    from datasette.utils.asgi import Forbidden

    config = {
        "team deals": {"charts": {"by owner": {"db": "acme", "query": "select 1"}}},
    }

    class Datasette:
        def plugin_config(self, name):
            return config

        async def permission_allowed(self, actor, action, resource=None, default=None):
            return False  # neither execute-sql nor view-query of any chart

    async def check(slug, chart_slug=None):
        url_vars = {"slug": slug, **({"chart_slug": chart_slug} if chart_slug else {})}
        request = SimpleNamespace(actor={"id": "reader"}, url_vars=url_vars)
        await charts.check_charts_permission(request, Datasette(), "acme")

    for args in (
        ("team%20deals",),
        ("team%20deals", "by%20owner"),
        ("no%20such",),
        ("team%20deals", "no%20such"),
    ):
        try:
            asyncio.run(check(*args))
        except Forbidden:
            continue
        raise AssertionError(f"{args} let through")
