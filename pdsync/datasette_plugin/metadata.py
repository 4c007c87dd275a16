"""Give every pdsync database the metadata of ``metadata.yml``, whatever its file name.

metadata.yml describes the database ``pipedrive`` (pipedrive.db): its table descriptions,
labels, facets and canned queries. A pdsync database saved as ``acme.db`` is served as
``acme``; this hook hands it the same section, so the canned queries and labels follow the
data rather than the file name. Datasette lets local metadata override what plugins return.
"""

from __future__ import annotations

import copy
import time

from pdsync.queries import metadata as pipedrive_metadata
from pdsync.schema import is_pdsync_file

_known: set[str] = set()  # pdsync databases stay pdsync databases
_not_yet: dict[str, float] = {}  # path -> when it was last seen not to be one
RECHECK_SECONDS = 2.0


def is_pdsync_database(path: str | None) -> bool:
    """Datasette asks ~25 times per request. A file that is not (yet) a pdsync database is
    looked at again every few seconds: a first sync may be filling it right now."""
    if path is None:
        return False
    if path in _known:
        return True
    checked = _not_yet.get(path)
    if checked is not None and time.monotonic() - checked < RECHECK_SECONDS:
        return False
    if is_pdsync_file(path):
        _known.add(path)
        _not_yet.pop(path, None)
        return True
    _not_yet[path] = time.monotonic()
    return False


def metadata_for(datasette) -> dict:
    """What the ``get_metadata`` hook returns: metadata.yml's ``pipedrive`` section for every
    pdsync database, and its top level where local metadata has none."""
    metadata = pipedrive_metadata()
    section = (metadata.get("databases") or {}).get("pipedrive")
    if not section:
        return {}
    local = datasette._metadata_local or {}
    local_databases = local.get("databases") or {}
    databases = {}
    for name, db in datasette.databases.items():
        if not is_pdsync_database(getattr(db, "path", None)):
            continue
        mine = local_databases.get(name)
        if mine is None:
            # Datasette adds the canned_queries hook's queries (the charts') to this dict in
            # place: a fresh one, or they would join metadata.yml's for every later database.
            databases[name] = {**section, "queries": dict(section.get("queries") or {})}
        elif not (mine.get("queries") or {}).keys() >= section.get("queries", {}).keys():
            # Datasette merges local metadata into what we return, in place: hand it a copy.
            databases[name] = copy.deepcopy(section)
        # else local metadata already is metadata.yml (pdsync serve on pipedrive.db). Handing
        # it over again would make Datasette merge the whole tree into itself on each of the
        # ~25 metadata() calls of a request: 5 ms of a 30 ms canned query.
    top = {k: v for k, v in metadata.items() if k != "databases" and k not in local}
    return {**top, "databases": databases} if databases or top else {}


def point_dashboards(datasette) -> None:
    """On startup: metadata.yml's charts read the database ``pipedrive``. Served under another name
    (``pdsync serve acme.db``) and alone, the pdsync database gets them: otherwise the
    Dashboards menu would link to a page that answers 404."""
    local = datasette._metadata_local or {}
    plugins = local.get("plugins") or {}
    if not plugins.get("datasette-dashboards") or "pipedrive" in datasette.databases:
        return
    ours = [
        name
        for name, db in datasette.databases.items()
        if is_pdsync_database(getattr(db, "path", None))
    ]
    if len(ours) == 1:
        # New dicts, not edits: the metadata object may be shared (tests, embedders).
        dashboards = copy.deepcopy(plugins["datasette-dashboards"])
        _point_at(dashboards, "pipedrive", ours[0])
        datasette._metadata_local = {
            **local,
            "plugins": {**plugins, "datasette-dashboards": dashboards},
        }


def _point_at(config, old: str, new: str) -> None:
    """Every ``db: old`` in the dashboards' configuration becomes ``db: new``, in place."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "db" and value == old:
                config[key] = new
            else:
                _point_at(value, old, new)
    elif isinstance(config, list):
        for value in config:
            _point_at(value, old, new)
