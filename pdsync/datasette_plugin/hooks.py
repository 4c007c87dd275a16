"""Every hook Datasette calls, and the routes: each a few lines over config, jobs, status,
metadata and reads.

- ``/-/pdsync`` and ``/-/pdsync.json``: the sync status of each pdsync database (GET, HEAD).
- ``POST /-/pdsync/webhook``: Pipedrive's webhooks (see webhook.py).
- ``POST /-/pdsync/sync``: "Sync now", with Datasette's CSRF check and the ``pdsync-sync``
  permission (root, users and tokens given ``--can sync``, or the ``allow`` block of this
  plugin's configuration).
- ``/-/login``: signing in with a password (see access.py, with the gate and API tokens).
"""

from __future__ import annotations

from datasette import Forbidden, NotFound, hookimpl
from datasette.utils import actor_matches_allow
from datasette.utils.asgi import Response

from pdsync.schema import is_pdsync
from pdsync.timestamps import ago, days_since

from . import access, cache, charts, memo, metadata, reads, webhook
from .config import PERMISSION, plugin_config
from .filters import FILTERS
from .jobs import SyncRefused, start_scheduler, start_sync, stop_scheduler
from .status import instance_status, pdsync_databases

TEMPLATE = "pdsync_status.html"


# -- routes ------------------------------------------------------------------------------


async def _check_view(datasette, request) -> None:
    if not await datasette.permission_allowed(request.actor, "view-instance", default=True):
        raise Forbidden("view-instance denied")


async def _render(datasette, request, status: int = 200) -> Response:
    databases = await instance_status(datasette, request.actor)
    running = any(d["job"] and d["job"]["running"] for d in databases)
    html = await datasette.render_template(
        TEMPLATE,
        {"databases": databases, "running": running, "permission": PERMISSION},
        request=request,
    )
    return Response.html(html, status=status)


async def status_page(request, datasette) -> Response:
    await _check_view(datasette, request)
    return await _render(datasette, request)


async def status_json(request, datasette) -> Response:
    await _check_view(datasette, request)
    return Response.json({"databases": await instance_status(datasette, request.actor)})


async def sync_now(request, datasette) -> Response:
    if request.method != "POST":
        return Response.text("POST a form to start a sync", status=405)
    await _check_view(datasette, request)
    name = (await request.post_vars()).get("database") or ""
    if not await datasette.permission_allowed(
        request.actor, PERMISSION, resource=name or None, default=False
    ):
        raise Forbidden(f"You need the {PERMISSION} permission to start a sync")
    try:
        db = datasette.get_database(name)
    except KeyError:
        raise NotFound(f"Database not found: {name}") from None
    if not db.path or not db.is_mutable:
        message = f"{name} is served immutable (or in memory): Datasette would not see a sync."
        datasette.add_message(request, message, datasette.ERROR)
        return await _render(datasette, request, status=409)
    if not is_pdsync(set(await db.table_names())):
        raise NotFound(f"{name} is not a pdsync database")
    try:
        start_sync(name, db.path, plugin_config(datasette, name), _who(request.actor))
    except SyncRefused as exc:
        datasette.add_message(request, str(exc), datasette.ERROR)
        return await _render(datasette, request, status=exc.status)
    datasette.add_message(request, f"Sync of {name} started.", datasette.INFO)
    return Response.redirect(datasette.urls.path("/-/pdsync"))


def _who(actor: dict | None) -> str:
    name = (actor or {}).get("id")
    return f"Sync now by {name}" if name else "Sync now"


def read_only(view):
    """``view`` for GET and HEAD; any other method gets what Datasette's own read-only views
    answer: 405, "Method not allowed" as text (Datasette 0.65 sends no Allow header)."""

    async def route(request, datasette) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.text("Method not allowed", status=405)
        response = await view(request, datasette)
        if request.method == "HEAD":
            response.body = b""  # as Datasette's BaseView.head
        return response

    route.__name__ = view.__name__
    return route


# -- hooks -------------------------------------------------------------------------------


@hookimpl(tryfirst=True)  # our /-/login before datasette-auth-passwords' own
def register_routes():
    return [
        (r"^/-/login$", access.login),
        (r"^/-/pdsync$", read_only(status_page)),
        (r"^/-/pdsync\.json$", read_only(status_json)),
        (r"^/-/pdsync/sync$", sync_now),  # POST only: it checks the method itself
        (r"^/-/pdsync/webhook$", webhook.receive),  # its own basic auth, no CSRF token
        # datasette-dashboards' script, charts reading their canned queries (charts.py)
        (r"^/-/static-plugins/datasette_dashboards/dashboards\.js$", charts.dashboards_js),
    ]


@hookimpl
def skip_csrf(datasette, scope):
    # Pipedrive cannot send a CSRF token: exactly this route, nothing else.
    return webhook.skip_csrf(datasette, scope)


@hookimpl
def menu_links(datasette, actor):
    async def links():
        if not await pdsync_databases(datasette):
            return []
        return [{"href": datasette.urls.path("/-/pdsync"), "label": "Sync status"}]

    return links


@hookimpl
def actor_from_request(datasette, request):
    return access.actor_for_token(datasette, request)


@hookimpl
def permission_allowed(datasette, actor, action, resource):
    decided = access.permission(datasette, actor, action, resource)
    if decided is not None or action != PERMISSION:
        return decided
    if actor and actor.get("id") == "root":
        return True
    database = resource if isinstance(resource, str) else None
    allow = plugin_config(datasette, database).get("allow")
    if allow is not None and actor_matches_allow(actor, allow):
        return True
    return None


@hookimpl
def prepare_connection(conn):
    reads.memory_map(conn)
    # For ad-hoc SQL in Datasette; views and canned queries use plain SQL so that any SQLite
    # client can run them.
    conn.create_function("days_since", 1, days_since)
    conn.create_function("pdsync_ago", 1, ago)


@hookimpl
def prepare_jinja2_environment(env):
    env.filters.update(FILTERS)


@hookimpl
def register_output_renderer(datasette):
    return {"extension": "json", "render": reads.render_json}


@hookimpl
def get_metadata(datasette, key, database, table):
    return metadata.metadata_for(datasette)


@hookimpl
def startup(datasette):
    metadata.point_dashboards(datasette)
    charts.name_charts(datasette)
    charts.patch_dashboards()


@hookimpl
def canned_queries(datasette, database):
    return charts.canned_queries(datasette, database)


@hookimpl
def asgi_wrapper(datasette):
    memo.install(datasette)

    def wrap(app):
        guarded = memo.wrap(access.gate(datasette, cache.wrap(datasette, app)))

        async def lifespan_aware(scope, receive, send):
            if webhook.skip_csrf(datasette, scope) and scope.get("method") == "POST":
                # Deliveries skip the stack they do not need (see webhook.asgi).
                return await webhook.asgi(datasette, scope, receive, send)
            if scope["type"] != "lifespan":
                return await guarded(scope, receive, send)

            async def watching_receive():
                message = await receive()
                if message["type"] == "lifespan.startup":
                    start_scheduler(datasette)
                    webhook.start_appliers(datasette)
                elif message["type"] == "lifespan.shutdown":
                    stop_scheduler(datasette)
                    webhook.stop_appliers()
                return message

            return await app(scope, watching_receive, send)

        return lifespan_aware

    return wrap
