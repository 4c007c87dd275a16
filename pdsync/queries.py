"""The canned queries, from the same metadata.yml Datasette serves (one source of truth)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

import sqlite_utils
import yaml

from .api import open_database
from .serve import metadata_path, plugins_dir

_NAMED = re.compile(r"(?<!:):([a-zA-Z_][a-zA-Z0-9_]*)")


@lru_cache(maxsize=1)
def _metadata() -> dict:
    return yaml.safe_load(metadata_path().read_text()) or {}


def _definitions() -> dict[str, dict]:
    section = (_metadata().get("databases") or {}).get("pipedrive") or {}
    return {
        name: (query if isinstance(query, dict) else {"sql": query})
        for name, query in (section.get("queries") or {}).items()
    }


def queries() -> list[dict[str, Any]]:
    """Every canned query: name, title, description and parameters."""
    return [
        {
            "name": name,
            "title": query.get("title", name),
            "description": query.get("description", ""),
            "params": query.get("params") or _NAMED.findall(query["sql"]),
        }
        for name, query in _definitions().items()
    ]


def query(
    db: str | os.PathLike | sqlite_utils.Database, name: str, **params: Any
) -> list[dict[str, Any]]:
    """Run canned query ``name`` with Datasette's rules: every parameter is text, a missing
    one is ''. Returns a list of dicts (``pandas.DataFrame(rows)`` takes it as it is).

    Unlike Datasette's pages, which show a list's first 100 rows, a list returns every row
    here unless ``limit`` is given: a notebook wants all of them."""
    definitions = _definitions()
    if name not in definitions:
        raise KeyError(f"no canned query {name!r}; choose from {', '.join(sorted(definitions))}")
    sql = definitions[name]["sql"]
    names = set(definitions[name].get("params") or []) | set(_NAMED.findall(sql))
    unknown = set(params) - names
    if unknown:
        raise TypeError(f"{name} takes {', '.join(sorted(names)) or 'no parameters'}")
    values = {p: "" if params.get(p) is None else str(params[p]) for p in names}
    if "limit" in names and params.get("limit") is None:
        values["limit"] = "all"
    database = open_database(db)
    return list(database.query(sql, values))


def datasette(db: str | os.PathLike | sqlite_utils.Database, **kwargs: Any):
    """A Datasette instance for ``db`` with pdsync's metadata and plugins, for
    ``await ds.client.get("/pipedrive/overdue_deals.json")`` in a notebook."""
    from datasette.app import Datasette

    if isinstance(db, sqlite_utils.Database):
        path = db.conn.execute("pragma database_list").fetchone()[2]
        if not path:
            raise ValueError("Datasette needs a database file, not an in-memory database")
        db = path
    return Datasette(
        [str(db)],
        metadata=_metadata(),
        plugins_dir=str(plugins_dir()),
        **{"settings": {"suggest_facets": False}, **kwargs},
    )
