"""The Python API: what the CLI calls, and what a notebook calls."""

from __future__ import annotations

import os
from pathlib import Path

import sqlite_utils

from . import __version__, plugins
from .auth import resolve_base_url, resolve_token
from .client import PipedriveClient
from .engine import ProgressCallback, Sync, SyncResult, selected_entities
from .entrypoints import may_have_plugins
from .lock import SyncLock
from .schema import check_database, check_ours, database_path


def open_database(db: str | os.PathLike | sqlite_utils.Database) -> sqlite_utils.Database:
    """A ``sqlite_utils.Database`` for ``db``; a file that is not SQLite raises DatabaseError."""
    if isinstance(db, sqlite_utils.Database):
        return db
    path = Path(db)
    if path.exists():
        check_database(str(path))
    elif not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    return sqlite_utils.Database(path, execute_plugins=sqlite_utils_plugins())


def sqlite_utils_plugins() -> bool:
    """Whether sqlite-utils may have plugins to run on a new connection: looking for them
    (importlib.metadata) costs a no-change sync a fifth of its time, for none installed."""
    from sqlite_utils.plugins import pm

    return may_have_plugins("sqlite_utils") or bool(pm.get_plugins())


def sync(
    db: str | os.PathLike | sqlite_utils.Database,
    *,
    token: str | None = None,
    base_url: str | None = None,
    full: bool = False,
    only: list[str] | tuple[str, ...] | None = None,
    progress: ProgressCallback | None = None,
    auth_path: str | os.PathLike | None = "auth.json",
    wait: bool = False,
    client_options: dict | None = None,
    every: float | None = None,
    history_budget: int | None = None,
) -> SyncResult:
    """Sync Pipedrive into ``db`` and return what happened, per entity.

    ``token`` defaults to ``PIPEDRIVE_API_TOKEN`` or auth.json; ``base_url`` to
    ``PIPEDRIVE_BASE_URL``, the company domain in auth.json, or https://api.pipedrive.com.
    Raises ``LockHeld`` if another sync is running on the same file (``wait=True`` waits).
    ``every`` is the interval of the schedule this run belongs to, if any: ``pdsync status``
    projects a day's token spend from it. ``history_budget``: tokens a UTC day for reading
    deals' changelogs (default a fifth of 30,000 x active users; 0 reads none).
    """
    selected_entities(only)  # unknown names fail before anything is opened
    token = token or resolve_token(auth_path)
    base_url = resolve_base_url(base_url, auth_path)
    database = open_database(db)
    path = database_path(database)
    try:
        check_ours(database, str(path or "the database"))
    except Exception:
        if database is not db:
            database.close()
        raise
    lock = SyncLock(path) if path else None
    if lock:
        lock.acquire(wait=wait)
    try:
        with PipedriveClient(token, base_url, **(client_options or {})) as client:
            result = Sync(
                database,
                client,
                full=full,
                only=only,
                progress=progress,
                version=__version__,
                every=every,
                history_budget=history_budget,
            ).run()
        plugins.pm.hook.pdsync_after_sync(db=database, result=result)
        return result
    finally:
        if lock:
            lock.release()
        if database is not db:  # we opened it: close it (a scheduler calls this for days)
            database.close()
