"""Give every pdsync database the metadata of ``metadata.yml``, whatever its file name.

metadata.yml describes the database ``pipedrive`` (pipedrive.db): its table descriptions,
labels, facets and canned queries. A pdsync database saved as ``acme.db`` is served as
``acme``; this hook hands it the same section, so the canned queries and labels follow the
data rather than the file name. Datasette lets local metadata override what plugins return.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from datasette import hookimpl

from pdsync.schema import table_names

# From a checkout: the repository's metadata.yml; from a wheel: pdsync/metadata.yml.
METADATA = Path(__file__).resolve().parent.parent / "metadata.yml"
PDSYNC_TABLES = {"sync_metadata", "deals", "pipelines", "stages"}


@lru_cache(maxsize=1)
def pipedrive_metadata() -> dict:
    if not METADATA.exists():
        return {}
    return yaml.safe_load(METADATA.read_text()) or {}


@lru_cache(maxsize=64)
def is_pdsync_database(path: str | None) -> bool:
    return PDSYNC_TABLES <= table_names(path)


@hookimpl
def get_metadata(datasette, key, database, table):
    metadata = pipedrive_metadata()
    section = (metadata.get("databases") or {}).get("pipedrive")
    if not section:
        return {}
    top = {k: v for k, v in metadata.items() if k != "databases"}
    names = [
        name
        for name, db in datasette.databases.items()
        if is_pdsync_database(getattr(db, "path", None))
    ]
    return {**top, "databases": {name: section for name in names}}
