"""Serving a pdsync database with Datasette, this project's metadata.yml and plugins."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

DEFAULT_PORT = 8001


def metadata_path() -> Path:
    """metadata.yml: the repository's from a checkout, pdsync/metadata.yml from a wheel."""
    return Path(str(resources.files("pdsync").joinpath("metadata.yml")))


def plugins_dir() -> Path:
    return Path(str(resources.files("pdsync").joinpath("datasette_plugins")))


def servable(db_path: str | os.PathLike) -> tuple[str, bool]:
    """The path to hand Datasette, and whether it must open the file as immutable.

    Datasette opens ``file:PATH?mode=ro`` without escaping PATH, so a ``#``, ``?`` or ``%`` in
    it would open another file or none: such a file is served through a symlink with a plain
    name (SQLite resolves it, so the -wal file is the real one's). In a directory SQLite
    cannot write, it cannot make the WAL's -shm file and ``mode=ro`` fails: the file is
    served as immutable (a snapshot) instead.
    """
    path = os.path.abspath(db_path)
    immutable = not os.access(os.path.dirname(path), os.W_OK)
    if not any(c in path for c in "#?%"):
        return path, immutable
    folder = tempfile.mkdtemp(prefix="pdsync-serve-")
    atexit.register(shutil.rmtree, folder, True)
    name = "".join(c if c not in "#?%" else "_" for c in os.path.basename(path))
    link = os.path.join(folder, name)
    os.symlink(path, link)
    return link, immutable


def datasette_args(
    db_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    root: bool = False,
) -> list[str]:
    """Arguments for ``datasette serve`` (see ``serve``)."""
    metadata = ["--metadata", str(metadata_path())] if metadata_path().exists() else []
    path, immutable = servable(db_path)
    return [
        "serve",
        *(["-i", path] if immutable else [path]),
        *metadata,
        "--plugins-dir",
        str(plugins_dir()),
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
    from datasette.cli import cli as datasette_cli

    datasette_cli.main(datasette_args(db_path, host, port, root), prog_name="datasette")
