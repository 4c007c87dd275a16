"""Who may see a served database: people's password hashes, scripts' API tokens, and the
secret that signs Datasette's sign-in cookies, in one 0600 JSON file next to the database.

Why a file of its own: metadata.yml is published at ``/-/metadata.json``, and the synced
database is served (and downloadable) itself, so neither may hold a secret. Tokens are kept
as sha256 digests (a token is 32 random bytes: a fast hash is enough, unlike a password), so
the file never holds a usable token. Passwords are hashed by datasette-auth-passwords
(PBKDF2-SHA256, 480,000 rounds). Every change rewrites the file atomically under a lock, so a
server reading it never sees half a file, and a revoked token or removed user stops at once.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import stat
import time
from contextlib import contextmanager
from pathlib import Path

SUFFIX = ".secrets.json"
TOKEN_PREFIX = "pdsync_"
# What `--can` grants: "sync" presses Sync now, "sql" runs arbitrary SQL.
ABILITIES = ("sync", "sql")
# How long a sign-in lasts, from the moment of signing in (not extended by use): a month, so
# people sign in about once a month, and a lost laptop's cookie stops within one.
SESSION_SECONDS = 30 * 86400
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class SecretsError(Exception):
    """A secrets file that cannot be used, or a request it refuses; the message is for the user."""


def secrets_path(db_path: str | os.PathLike, config_dir: str | os.PathLike | None = None) -> Path:
    """``pipedrive.db`` -> ``pipedrive.db.secrets.json``, beside it or in ``config_dir``."""
    db = Path(os.path.abspath(db_path))
    return (Path(config_dir).expanduser() if config_dir else db.parent) / (db.name + SUFFIX)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise SecretsError(
            f"{name!r} is not a usable name: letters, digits and _ . @ - (at most 64),"
            " starting with a letter or digit"
        )
    if name.lower() == "root":
        # Datasette (and pdsync's own rules) trust an actor whose id is "root" with everything.
        raise SecretsError("'root' is Datasette's own administrator: choose another name")
    return name


def load(path: Path) -> dict:
    """The file's content; an absent file is an empty one. Raises SecretsError, never more."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SecretsError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise SecretsError(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
        )
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise SecretsError(f"{path} is not a pdsync secrets file (not a JSON object)")
    return data


@contextmanager
def _editing(path: Path):
    """Read-modify-write under an exclusive lock; written to a 0600 temporary file first and
    renamed over the old one, so readers see the old file or the new, never a mix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SecretsError(f"cannot write next to {path}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load(path)
        yield data
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise SecretsError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        os.close(lock)


def cookie_secret(path: Path) -> str:
    """The secret that signs Datasette's cookies, made once: a restart keeps everyone signed in."""
    secret = load(path).get("cookie_secret")
    if secret:
        return secret
    with _editing(path) as data:
        data.setdefault("cookie_secret", secrets.token_hex(32))
        return data["cookie_secret"]


def _abilities(can: tuple[str, ...] | list[str]) -> list[str]:
    unknown = sorted(set(can) - set(ABILITIES))
    if unknown:
        raise SecretsError(f"unknown ability {unknown[0]!r}: choose from {', '.join(ABILITIES)}")
    return sorted(set(can))


# -- people ------------------------------------------------------------------------------


def add_user(path: Path, name: str, password: str, can=()) -> None:
    check_name(name)
    if not password:
        raise SecretsError("the password is empty")
    can = _abilities(can)
    password_hash = _passwords().hash_password(password)  # slow on purpose: outside the lock
    with _editing(path) as data:
        users = data.setdefault("users", {})
        if name in users:
            raise SecretsError(f"user {name} exists: `pdsync user remove` it first")
        # A new session id with every new password: cookies signed for the old one stop
        # working (see still_valid), so a reset locks out whoever signed in before it.
        users[name] = {
            "password_hash": password_hash,
            "can": can,
            "created": _now(),
            "session": secrets.token_hex(8),
        }


def remove_user(path: Path, name: str) -> None:
    with _editing(path) as data:
        if data.get("users", {}).pop(name, None) is None:
            raise SecretsError(f"no user named {name}")


def users(path: Path) -> list[dict]:
    found = load(path).get("users", {})
    return [
        {"name": n, "can": u.get("can", []), "created": u.get("created")} for n, u in found.items()
    ]


def user_actor(data: dict, name: str, password: str) -> dict | None:
    """The actor for a right name and password, else None (same work either way)."""
    user = data.get("users", {}).get(name)
    # A missing user still costs a hash, so timing does not tell which names exist.
    password_hash = user["password_hash"] if user else _dummy_hash()
    try:
        right = _passwords().verify_password(password, password_hash)
    except (AssertionError, ValueError):  # a hash edited by hand into nonsense
        right = False
    if right and user:
        # "since": when they signed in, for the session's end (see still_valid).
        return {"id": name, "pdsync": "user", "session": user.get("session"), "since": int(_now())}
    return None


@functools.cache
def _dummy_hash() -> str:
    return _passwords().hash_password(secrets.token_hex(8))


def _passwords():
    """datasette-auth-passwords' PBKDF2 functions. Imported when a password is hashed or
    checked: the package imports Datasette, which `pdsync user list` and a sync never need."""
    from datasette_auth_passwords import utils

    return utils


# -- tokens ------------------------------------------------------------------------------


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(path: Path, name: str, expires_after: float | None = None, can=()) -> str:
    """A new token, returned once: only its digest is kept."""
    check_name(name)
    can = _abilities(can)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _editing(path) as data:
        tokens = data.setdefault("tokens", {})
        if any(t["name"] == name for t in tokens.values()):
            raise SecretsError(f"a token named {name} exists: `pdsync token revoke` it first")
        now = _now()
        tokens[digest(token)] = {
            "name": name,
            "can": can,
            "created": now,
            "expires": now + expires_after if expires_after else None,
        }
    return token


def revoke_token(path: Path, name: str) -> None:
    with _editing(path) as data:
        tokens = data.get("tokens", {})
        found = [key for key, t in tokens.items() if t["name"] == name]
        if not found:
            raise SecretsError(f"no token named {name}")
        for key in found:
            del tokens[key]


def tokens(path: Path) -> list[dict]:
    return [
        {k: t.get(k) for k in ("name", "can", "created", "expires")}
        for t in load(path).get("tokens", {}).values()
    ]


def token_actor(data: dict, token: str) -> tuple[dict | None, str]:
    """(actor, "") for a live token, else (None, why it was refused)."""
    entry = data.get("tokens", {}).get(digest(token))
    if entry is None:
        return None, "unknown or revoked token"
    if entry.get("expires") is not None and entry["expires"] <= _now():
        return None, "token expired"
    return {"id": entry["name"], "pdsync": "token"}, ""


def abilities(data: dict, actor: dict | None) -> list[str]:
    """What a pdsync user's or token's actor may do beyond reading."""
    if not actor or actor.get("pdsync") not in ("user", "token"):
        return []
    if actor["pdsync"] == "user":
        entry = data.get("users", {}).get(actor.get("id"))
    else:
        entry = next(
            (t for t in data.get("tokens", {}).values() if t["name"] == actor.get("id")), None
        )
    return list((entry or {}).get("can", []))


def still_valid(data: dict, actor: dict | None, session_seconds: float = SESSION_SECONDS) -> bool:
    """False for a signed-in user since removed, or added again with a new password (their
    cookie would outlive them otherwise), or who signed in more than ``session_seconds`` ago.

    The end is checked here, not only by the cookie's own expiry: a shorter setting ends
    older sessions at once, and a cookie from before sessions ended (no "since") is over."""
    if actor and actor.get("pdsync") == "user":
        user = data.get("users", {}).get(actor.get("id"))
        since = actor.get("since")
        return (
            user is not None
            and user.get("session") == actor.get("session")
            and isinstance(since, (int, float))
            and since <= _now() < since + session_seconds
        )
    return True


class Cached:
    """The file re-read only when it changed (inode, size or mtime): one stat a request."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._key: tuple | None = None
        self._data: dict = {}

    def data(self) -> dict:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        except OSError as exc:
            raise SecretsError(f"cannot read {self.path}: {exc.strerror}") from None
        if key != self._key or key is None:
            self._data = load(self.path) if key else {}
            self._key = key
        return self._data

    @property
    def version(self) -> tuple | None:
        """Which file ``data()`` last read (inode, size, mtime): it changes with the file."""
        return self._key


def _now() -> float:
    return time.time()
