"""Serving a pdsync database with Datasette, this project's metadata.yml and plugins."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_PORT = 8001


def metadata_path() -> Path:
    """metadata.yml: the repository's from a checkout, pdsync/metadata.yml from a wheel."""
    return Path(str(resources.files("pdsync").joinpath("metadata.yml")))


def plugins_dir() -> Path:
    return Path(str(resources.files("pdsync").joinpath("datasette_plugins")))


def datasette_args(
    db_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    root: bool = False,
) -> list[str]:
    """Arguments for ``datasette serve`` (see ``serve``)."""
    metadata = ["--metadata", str(metadata_path())] if metadata_path().exists() else []
    return [
        "serve",
        str(db_path),
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
