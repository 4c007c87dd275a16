"""pdsync inside Datasette: the sync status page, "Sync now", periodic sync, metadata.yml
for any database name, faster JSON, SQL functions.

This package is the Datasette plugin: ``register()`` hands it to Datasette's plugin
manager, which then finds ``templates/`` beside it (Datasette looks for a plugin's templates
in its package). ``pdsync serve`` and ``pdsync.datasette()`` call it; plain ``datasette
--plugins-dir datasette_plugins`` does through the one-line shim there.

- config.py: the ``plugins: pdsync:`` configuration and the token
- access.py: who gets in: the sign-in gate, /-/login, API tokens, permissions
- jobs.py: syncs in background threads, the periodic scheduler
- status.py: the status view-model (raw values)
- filters.py and templates/: how the page shows them
- metadata.py: metadata.yml for every pdsync database, whatever its name
- charts.py: every chart also a canned query, so readers without SQL see the charts
- cache.py: answers kept until the database changes
- pages.py: HTML pages shared between readers Datasette answers the same
- memo.py: plugin configuration read once per request
- reads.py: memory-mapped reads and JSON by orjson
- webhook.py: Pipedrive's webhooks received into an inbox, applied by a thread
- hooks.py: the hooks and routes, over all of the above
"""

from __future__ import annotations

import sys

from .hooks import (
    actor_from_request,
    asgi_wrapper,
    canned_queries,
    get_metadata,
    menu_links,
    permission_allowed,
    prepare_connection,
    prepare_jinja2_environment,
    register_output_renderer,
    register_routes,
    skip_csrf,
    startup,
)

__all__ = [
    "actor_from_request",
    "asgi_wrapper",
    "canned_queries",
    "get_metadata",
    "menu_links",
    "permission_allowed",
    "prepare_connection",
    "prepare_jinja2_environment",
    "register",
    "register_output_renderer",
    "register_routes",
    "run_datasette",
    "skip_csrf",
    "startup",
    "unregister",
]


def register() -> None:
    """Register this package as a Datasette plugin (once; later calls do nothing). Call it
    before creating a Datasette: templates are looked up when one is created."""
    from datasette.plugins import pm

    plugin = sys.modules[__name__]
    if not pm.is_registered(plugin):
        pm.register(plugin, name=__name__)


def unregister() -> None:
    """The opposite, for tests: plugins stay registered for the whole process otherwise."""
    from datasette.plugins import pm

    plugin = sys.modules[__name__]
    if pm.is_registered(plugin):
        pm.unregister(plugin)


def run_datasette(args: list[str]) -> None:
    """``datasette ARGS`` in this process, with this plugin (blocks until interrupted)."""
    from datasette.cli import cli

    register()
    cli.main(args, prog_name="datasette")
