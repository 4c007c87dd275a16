"""Charts for every reader: each chart of metadata.yml's dashboards is also a canned query.

datasette-dashboards (0.8) fetches a chart's data as arbitrary SQL (``/db.json?sql=...``)
and refuses its pages to anyone not allowed ``execute-sql``. Beyond loopback arbitrary SQL
is only for actors given it (a heavy query slows every reader), so charts were theirs alone.
Here, without opening any SQL:

- every chart becomes a canned query of its database, ``chart_<dashboard>_<chart>``, from
  the chart's own SQL (one definition): the ``[[ and X :name ... ]]`` parts datasette-
  dashboards drops when the filter is empty become ``and (:name = '' or (X ...))``;
- the chart's configuration names it (``canned``), and the dashboards' script fetches
  ``/db/chart_....json?filters`` for a chart that has one (``getDataUrl`` replaced, in the
  script as served);
- a dashboard's pages need ``execute-sql`` only where one of its charts has no canned
  query; otherwise ``view-query`` of each chart's, which signed-in readers have.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from datasette.utils.asgi import Forbidden, Response

OPTIONAL = re.compile(r"\[\[\s*and\s+(?P<condition>.*?)\s*\]\]", re.DOTALL)
VARIABLE = re.compile(r":(?P<name>[a-zA-Z0-9_]+)")

# Appended to datasette-dashboards' dashboards.js: a later declaration of the same function
# replaces it, and the chart scripts call it by name when they run.
DATA_URL_JS = """
// pdsync: a chart with a canned query reads it (readers need no arbitrary SQL).
function getDataUrl(chart, query_string, absolute_url) {
  if (chart.canned) {
    const name = encodeURIComponent(chart.canned)
    return `${absolute_url}${chart.db}/${name}.json?${query_string}&_shape=objects`
  }
  const query = encodeURIComponent(chart.query)
  return `${absolute_url}${chart.db}.json?sql=${query}&${query_string}&_shape=objects`
}
"""


def canned_name(dashboard: str, chart: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"chart_{dashboard}_{chart}")


def canned_sql(query: str) -> str:
    """The chart's SQL with datasette-dashboards' optional parts as plain SQL."""

    def plain(match: re.Match) -> str:
        condition = match.group("condition")
        names = VARIABLE.findall(condition)
        if not names:
            return f"and ({condition})"
        return f"and (:{names[0]} = '' or ({condition}))"

    return OPTIONAL.sub(plain, query)


def dashboards_config(datasette) -> dict:
    return datasette.plugin_config("datasette-dashboards") or {}


def name_charts(datasette) -> None:
    """On startup (after metadata.point_dashboards): every chart with SQL names its canned
    query, in new dicts (the metadata object may be shared)."""
    local = datasette._metadata_local or {}
    plugins = local.get("plugins") or {}
    config = plugins.get("datasette-dashboards")
    if not config:
        return
    named = {
        slug: {
            **dashboard,
            "charts": {
                chart_slug: (
                    {**chart, "canned": canned_name(slug, chart_slug)}
                    if chart.get("query") and chart.get("db")
                    else chart
                )
                for chart_slug, chart in (dashboard.get("charts") or {}).items()
            },
        }
        for slug, dashboard in config.items()
    }
    datasette._metadata_local = {**local, "plugins": {**plugins, "datasette-dashboards": named}}


def canned_queries(datasette, database: str) -> dict:
    """The charts' canned queries for ``database`` (the ``canned_queries`` hook)."""
    found = {}
    for slug, dashboard in dashboards_config(datasette).items():
        for chart_slug, chart in (dashboard.get("charts") or {}).items():
            if chart.get("db") == database and chart.get("query"):
                found[canned_name(slug, chart_slug)] = {
                    "sql": canned_sql(chart["query"]),
                    "title": f"Chart: {chart.get('title') or chart_slug}",
                    "description": f"The data of the chart at /-/dashboards/{slug}.",
                }
    return found


async def check_charts_permission(request, datasette, database) -> None:
    """Replaces datasette-dashboards' execute-sql check of a dashboard's pages."""
    actor = request.actor
    allowed = await datasette.permission_allowed(actor, "execute-sql", database, default=None)
    if allowed is not False:
        return
    # As datasette-dashboards reads them: percent-decoded. A dashboard or chart not found
    # here is refused, never waved through with nothing checked.
    slug = unquote(request.url_vars.get("slug") or "")
    dashboard = dashboards_config(datasette).get(slug)
    charts = (dashboard or {}).get("charts") or {}
    only = request.url_vars.get("chart_slug")
    only = None if only is None else unquote(only)
    if dashboard is None or (only is not None and only not in charts):
        raise Forbidden("execute-sql denied")
    wanted = [
        c for s, c in charts.items() if c.get("db") == database and (only is None or s == only)
    ]
    for chart in wanted:
        name = chart.get("canned")
        if not name or not await datasette.permission_allowed(
            actor, "view-query", (database, name), default=True
        ):
            raise Forbidden("execute-sql denied")


def patch_dashboards() -> None:
    """datasette-dashboards' pages call its module's check by name: ours answers instead."""
    import datasette_dashboards

    datasette_dashboards.check_permission_execute_sql = check_charts_permission


async def dashboards_js(request, datasette) -> Response:
    """dashboards.js as datasette-dashboards ships it, and pdsync's getDataUrl after it."""
    import datasette_dashboards

    script = Path(datasette_dashboards.__file__).parent / "static" / "dashboards.js"
    return Response(
        script.read_text() + DATA_URL_JS,
        content_type="application/javascript; charset=utf-8",
    )
