"""Plugin configuration looked up once per request, not once per cell.

Why: datasette-render-markdown's ``render_cell`` asks ``datasette.plugin_config`` for its
configuration for every text cell of a page, and each answer costs Datasette a merge of
every plugin's metadata (``get_metadata``) with metadata.yml: 1,500 lookups for the deals
page (100 rows), 7,000 for a canned query's 1,000 rows, a quarter to a half of the Python
such a page costs on the event loop (docs/benchmarks.md, section 9).

Within one request the answer is the same each time (metadata only changes between
requests, if at all), so the first answer is kept for the rest of the request, in a context
variable the ASGI wrapper sets: nothing outlives the request, and outside a request (a
test, a script) every call goes to Datasette as before. Each caller gets its own copy, as
Datasette gives one (it resolves ``$env`` and ``$file`` into a fresh dict), so a plugin that
edits what it was given changes nothing for the next.
"""

from __future__ import annotations

import copy
from contextvars import ContextVar

_answers: ContextVar[dict | None] = ContextVar("pdsync_plugin_config", default=None)


def install(datasette) -> None:
    """Route ``datasette.plugin_config`` through the per-request memory (once)."""
    if getattr(datasette, "_pdsync_memo", False):
        return
    original = datasette.plugin_config

    def plugin_config(plugin_name, database=None, table=None, fallback=True):
        answers = _answers.get()
        if answers is None:
            return original(plugin_name, database=database, table=table, fallback=fallback)
        key = (plugin_name, database, table, fallback)
        if key not in answers:
            answers[key] = original(plugin_name, database=database, table=table, fallback=fallback)
        found = answers[key]
        return found if found is None else copy.deepcopy(found)

    datasette.plugin_config = plugin_config
    datasette._pdsync_memo = True


def wrap(app):
    """The ASGI wrapper: a fresh memory for each request, gone when it ends."""

    async def remembering(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        token = _answers.set({})
        try:
            return await app(scope, receive, send)
        finally:
            _answers.reset(token)

    return remembering
