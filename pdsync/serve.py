"""Serving a pdsync database with Datasette, this project's metadata.yml and its plugin
(the package ``pdsync.datasette_plugin``)."""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from .schema import read_only_uri

DEFAULT_PORT = 8001
_PACKAGE = Path(__file__).resolve().parent


def metadata_path() -> Path:
    """metadata.yml. It lives at the top of the repository, where plain ``datasette
    --metadata metadata.yml`` finds it; a wheel carries a copy in the package (setup.py puts
    it there), and an installed checkout (``pip install -e .``) has the package beside it."""
    packaged = _PACKAGE / "metadata.yml"
    return packaged if packaged.is_file() else _PACKAGE.parent / "metadata.yml"


def servable(db_path: str | os.PathLike) -> tuple[str, bool]:
    """The path to hand Datasette, and whether it must open the file as immutable.

    Datasette opens ``file:PATH?mode=ro`` without escaping PATH, so a ``#``, ``?`` or ``%`` in
    it would open another file or none: such a file is served through a symlink with a plain
    name (SQLite resolves it, so the -wal file is the real one's). Only where ``mode=ro``
    cannot open it (a read-only directory, where SQLite cannot make the WAL's -shm file) is
    it served as immutable, a snapshot: elsewhere someone may be syncing into it.
    """
    path = os.path.abspath(db_path)
    immutable = needs_immutable(path)
    if not any(c in path for c in "#?%"):
        return path, immutable
    folder = tempfile.mkdtemp(prefix="pdsync-serve-")
    atexit.register(shutil.rmtree, folder, True)
    name = "".join(c if c not in "#?%" else "_" for c in os.path.basename(path))
    link = os.path.join(folder, name)
    os.symlink(path, link)
    return link, immutable


def needs_immutable(db_path: str | os.PathLike) -> bool:
    """True when the file can only be read as a snapshot (see ``servable``)."""
    try:
        conn = sqlite3.connect(read_only_uri(str(db_path)), uri=True)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        finally:
            conn.close()
        return False
    except sqlite3.OperationalError:
        return not os.access(os.path.dirname(os.path.abspath(db_path)), os.W_OK)


def datasette_args(
    db_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    root: bool = False,
) -> list[str]:
    """Arguments for ``datasette serve`` with pdsync's plugin registered (see ``serve``, and
    ``python -m pdsync.datasette_plugin`` for another process)."""
    metadata = ["--metadata", str(metadata_path())] if metadata_path().exists() else []
    path, immutable = servable(db_path)
    return [
        "serve",
        *(["-i", path] if immutable else [path]),
        *metadata,
        "--host",
        host,
        "--port",
        str(port),
        "--setting",
        "sql_time_limit_ms",
        "3000",
        # Facet suggestions run a query per column on every table page: 5 s on 100k deals.
        "--setting",
        "suggest_facets",
        "off",
        # --root prints a one-time link that signs you in as root, who may press "Sync now".
        *(["--root"] if root else []),
    ]


def serve(
    db_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    root: bool = False,
) -> None:
    """Run Datasette in this process until interrupted (a CLI helper: it blocks)."""
    from .datasette_plugin import run_datasette

    run_datasette(datasette_args(db_path, host, port, root))
