"""pdsync: keep a Pipedrive CRM account in a local SQLite database, incrementally."""

from .api import __version__, open_database, sync
from .client import AuthError, ConnectionFailed, PipedriveClient, PipedriveError
from .lock import LockHeld
from .queries import datasette, queries, query
from .results import EntityResult, ProgressEvent, SyncResult

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
