"""The canned queries, from the same metadata.yml Datasette serves (one source of truth)."""

from __future__ import annotations

import copy
import os
import re
from functools import lru_cache
from typing import Any

import sqlite_utils
import yaml

from .api import open_database
from .schema import database_path
from .serve import metadata_path

_NAMED = re.compile(r"(?<!:):([a-zA-Z_][a-zA-Z0-9_]*)")

# metadata.yml spells these idioms out wherever it uses them (Datasette runs plain SQL), and
# tests/test_canned_queries.py checks that every occurrence is one of these, word for word:
# an idiom copied by hand 17 times would otherwise drift in one of them.

# A parameter that takes an id (digits only) or else an exact name, so that the pipeline
# "5 Stars" is never pipeline 5: the ids it names (none for an unknown one).
ID_OR_NAME = """select id from {table} where case when trim(:{param}) not glob '*[^0-9]*'
  then id = cast(trim(:{param}) as integer) else name = trim(:{param}) end"""
# The same, where an empty parameter names every row (for an `in (...)` with no `or`).
EVERY_OR_ID_OR_NAME = """select id from {table} where case when trim(:{param}) = '' then 1
  when trim(:{param}) not glob '*[^0-9]*' then id = cast(trim(:{param}) as integer)
  else name = trim(:{param}) end"""
# A whole-number parameter; empty or anything else gives the default.
WHOLE_NUMBER = """case when trim(:{param}) <> '' and trim(:{param}) not glob '*[^0-9]*'
  then cast(trim(:{param}) as integer) else {default} end"""

# Every list of deals says these. A list is complete unless the caller asks for fewer rows:
# Datasette stops it at max_returned_rows and says "truncated", and `after` carries on from
# the last row shown.
LIST_LIMIT = "limit " + WHOLE_NUMBER.format(param="limit", default=-1)
# `after` is "VALUE,ID": the last row's sort value and id (the value may hold commas, the id
# is the digits after the last one). low/high stand for "no key" on a first page, below and
# above any value; a malformed key is null, which matches no row.
AFTER_KEY = """after_key(low, high, id) as (
  -- after = "VALUE,ID", the last row's sort value and id: (VALUE, ID) to start
  -- after, and no key ('' below any value, high above any) when after is empty
  select
    case when k = '' then '' when r like '%,' and r <> k then substr(r, 1, length(r) - 1) end,
    case when k = '' then char(1114111)
      when r like '%,' and r <> k then substr(r, 1, length(r) - 1) end,
    case when k = '' then 0
      when r like '%,' and r <> k then cast(substr(k, length(r) + 1) as integer) end
  from (select trim(:after) as k, rtrim(trim(:after), '0123456789') as r)
)"""


@lru_cache(maxsize=1)
def metadata() -> dict:
    """metadata.yml, parsed once ({} if it is missing). Callers must not change it."""
    path = metadata_path()
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _definitions() -> dict[str, dict]:
    section = (metadata().get("databases") or {}).get("pipedrive") or {}
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

    Every row, with no 1,000-row page as in Datasette, unless ``limit`` asks for fewer."""
    definitions = _definitions()
    if name not in definitions:
        raise KeyError(f"no canned query {name!r}; choose from {', '.join(sorted(definitions))}")
    sql = definitions[name]["sql"]
    names = set(definitions[name].get("params") or []) | set(_NAMED.findall(sql))
    unknown = set(params) - names
    if unknown:
        raise TypeError(f"{name} takes {', '.join(sorted(names)) or 'no parameters'}")
    values = {p: "" if params.get(p) is None else str(params[p]) for p in names}
    database = open_database(db)
    return list(database.query(sql, values))


def datasette(db: str | os.PathLike | sqlite_utils.Database, **kwargs: Any):
    """A Datasette instance for ``db`` with pdsync's metadata and plugin, for
    ``await ds.client.get("/pipedrive/overdue_deals.json")`` in a notebook."""
    from datasette.app import Datasette

    from . import datasette_plugin

    if isinstance(db, sqlite_utils.Database):
        path = database_path(db)
        if not path:
            raise ValueError("Datasette needs a database file, not an in-memory database")
        db = path
    datasette_plugin.register()
    return Datasette(
        [str(db)],
        # A copy: Datasette adds the canned_queries hook's queries (the charts') to the
        # metadata's queries in place, which would change metadata.yml for every later caller.
        metadata=copy.deepcopy(metadata()),
        **{"settings": {"suggest_facets": False}, **kwargs},
    )
