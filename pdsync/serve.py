"""Serving a pdsync database with Datasette, this project's metadata.yml and its plugin
(the package ``pdsync.datasette_plugin``)."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path

from . import access

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
    from .schema import readable_only_as_snapshot  # sqlite-utils: not for `pdsync --help`

    return readable_only_as_snapshot(str(db_path))


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


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere: assume the network


def serving_mode(host: str, public: bool = False, private: bool = False) -> str:
    """``local`` on loopback, else ``private`` (sign-in required) unless ``public``.

    ``private`` forces sign-in on loopback too: behind a reverse proxy on the same machine
    every visitor arrives from 127.0.0.1."""
    if public and private:
        raise ValueError("--public and --private contradict each other")
    if private:
        return "private"
    if is_loopback(host):
        return "local"
    return "public" if public else "private"


def prepare_access(
    db_path: str | os.PathLike, mode: str, config_dir: str | os.PathLike | None = None
) -> tuple[Path | None, dict]:
    """The secrets file to serve with (None: none, local mode without one) and its content.

    Beyond loopback the file is made if missing, for the cookie secret; a file that cannot be
    read raises ``access.SecretsError`` with a message for the user."""
    path = access.secrets_path(db_path, config_dir)
    if mode == "local" and not path.exists():
        return None, {}
    data = access.load(path)
    if not data.get("cookie_secret"):
        access.cookie_secret(path)
        data = access.load(path)
    return path, data


def serve(
    db_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    root: bool = False,
    mode: str = "local",
    secrets_file: str | os.PathLike | None = None,
    session_length: str | None = None,
) -> None:
    """Run Datasette in this process until interrupted (a CLI helper: it blocks).

    The mode and the secrets file reach the plugin through the environment, and the cookie
    secret through ``DATASETTE_SECRET``: none of it shows in ``ps``, ``/-/metadata.json`` or
    ``/-/settings.json``."""
    from .datasette_plugin import run_datasette
    from .datasette_plugin.access import MODE_ENV, SECRETS_ENV, SESSION_ENV

    os.environ[MODE_ENV] = mode
    if session_length:
        os.environ[SESSION_ENV] = session_length
    if secrets_file:
        os.environ[SECRETS_ENV] = str(secrets_file)
        os.environ["DATASETTE_SECRET"] = access.cookie_secret(Path(secrets_file))
    run_datasette(datasette_args(db_path, host, port, root))
