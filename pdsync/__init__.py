"""pdsync: keep a Pipedrive CRM account in a local SQLite database, incrementally.

The names below load on first use (PEP 562), so that ``pdsync --help`` and a sync import only
what they use: the sync never needs Datasette, nor ``pdsync --help`` SQLite or httpx.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "AuthError": "errors",
    "ConnectionFailed": "errors",
    "PipedriveError": "errors",
    "PipedriveClient": "client",
    "EntityResult": "results",
    "ProgressEvent": "results",
    "SyncResult": "results",
    "LockHeld": "lock",
    "open_database": "api",
    "sync": "api",
    "datasette": "queries",
    "queries": "queries",
    "query": "queries",
}

__all__ = [
    "AuthError",
    "ConnectionFailed",
    "EntityResult",
    "LockHeld",
    "PipedriveClient",
    "PipedriveError",
    "ProgressEvent",
    "SyncResult",
    "__version__",
    "datasette",
    "open_database",
    "queries",
    "query",
    "sync",
]

if TYPE_CHECKING:
    from .api import open_database, sync
    from .client import PipedriveClient
    from .errors import AuthError, ConnectionFailed, PipedriveError
    from .lock import LockHeld
    from .queries import datasette, queries, query
    from .results import EntityResult, ProgressEvent, SyncResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # pdsync.client and the like, which importing the package used to load as a side effect
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module 'pdsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule pdsync.queries binds it to the package's name "queries",
        # which is the function pdsync.queries() (as it was when this file imported it).
        if name == "queries" and isinstance(value, types.ModuleType):
            value = value.queries
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
