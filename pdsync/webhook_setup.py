"""Registering pdsync's webhooks with Pipedrive, and the credentials deliveries carry.

``install`` asks Pipedrive what webhooks exist (``GET /v1/webhooks``) and creates only the
missing ones (``POST /v1/webhooks``, version 2.0, one per object, every action): running it
again creates nothing. Credentials are generated (a user name and 32 random bytes) and sent
to Pipedrive once; the secrets file keeps only their sha256 digest (like API tokens,
``pdsync.access``), so the file never holds a usable password. A rerun that has to create a
webhook makes new credentials for it; the older ones stay valid for the webhooks that use them.

A webhook is this database's only when its ``http_auth_user`` is one of this database's
credentials: another pdsync instance on the same Pipedrive company names its webhooks the
same way, and those are reported, never deleted.

``install`` also makes the webhook inbox (``pdsync.webhook_inbox``) beside the secrets file:
the receiver accepts deliveries only where one exists, so a replica given a copy of the
secrets file (and not of the inbox) refuses them instead of applying them to a copy.
Requests and tokens are counted in ``sync_tokens`` under the purpose ``webhooks``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlite_utils

from . import access
from .errors import AuthError, PipedriveError
from .redact import Redactor, bad_header_value
from .webhook_apply import ENTITIES
from .webhook_inbox import Inbox, inbox_for_secrets

PURPOSE = "webhooks"
KEY = "webhooks"  # in the secrets file
NAME = "pdsync"  # the webhooks' name prefix in Pipedrive
TIMEOUT = 30.0
# Objects whose webhooks pdsync registers: those of the entities it syncs.
OBJECTS = tuple(ENTITIES)
# Tokens per request, from Pipedrive's endpoints_token_costs.csv (/webhooks).
COSTS = {"GET": 10, "POST": 10, "DELETE": 6}


def _digest(user: str, password: str) -> str:
    return hashlib.sha256(f"{user}:{password}".encode("utf-8", "surrogatepass")).hexdigest()


def check_credentials(data: dict, user: str, password: str) -> bool:
    """True when (user, password) is one pair install generated. Every stored digest is
    compared, in constant time, so timing says nothing about which one or how close."""
    given = _digest(user, password)
    right = False
    for entry in _credentials(data):
        right |= hmac.compare_digest(given, str(entry.get("digest", "")))
    return right


def _credentials(data: Any) -> list[dict]:
    """The stored credentials; none when a hand-edited file holds something else there."""
    hooks = data.get(KEY) if isinstance(data, dict) else None
    entries = hooks.get("credentials") if isinstance(hooks, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def make_inbox(secrets_file: Path) -> Path:
    """The inbox beside ``secrets_file``, made now if missing: where it exists, deliveries
    are received (see the module's docstring)."""
    path = inbox_for_secrets(secrets_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as the secrets file's is
        Inbox(path).close()
    except (OSError, sqlite3.Error) as exc:
        raise access.SecretsError(f"cannot make the webhook inbox {path}: {exc}") from None
    return path


def new_credentials(secrets_file: Path) -> tuple[str, str]:
    user = "pdsync-" + secrets.token_hex(4)
    password = secrets.token_urlsafe(32)
    with access._editing(secrets_file) as data:  # noqa: SLF001 - the file's one writer
        hooks = data.setdefault(KEY, {})
        if not isinstance(hooks, dict) or not isinstance(hooks.setdefault("credentials", []), list):
            raise access.SecretsError(
                f"{secrets_file}: {KEY!r} is not what pdsync wrote there: remove it"
            )
        hooks["credentials"].append(
            {"user": user, "digest": _digest(user, password), "created": access._now()}  # noqa: SLF001
        )
    make_inbox(secrets_file)
    return user, password


def forget_credentials(secrets_file: Path) -> None:
    with access._editing(secrets_file) as data:  # noqa: SLF001
        data.pop(KEY, None)


def known_users(secrets_file: Path) -> set[str]:
    return {str(c["user"]) for c in _credentials(access.load(secrets_file)) if c.get("user")}


def subscription_url(public_url: str, database: str | None = None) -> str:
    url = public_url.rstrip("/")
    if not url.endswith("/-/pdsync/webhook"):
        url += "/-/pdsync/webhook"
    return f"{url}?database={database}" if database else url


# -- Pipedrive's /v1/webhooks ---------------------------------------------------------------


@dataclass
class Spend:
    requests: int = 0
    tokens: int = 0


@dataclass
class Api:
    """The three webhook requests, each with a deadline, the token in a header only."""

    token: str
    base_url: str
    spend: Spend = field(default_factory=Spend)
    transport: httpx.BaseTransport | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise AuthError("no Pipedrive API token given")
        problem = bad_header_value(self.token)
        if problem:
            raise AuthError(f"the Pipedrive API token cannot be sent: {problem}")
        self.redact = Redactor(self.token)
        self._http = httpx.Client(
            base_url=self.base_url.rstrip("/"),
            headers={"x-api-token": self.token, "accept": "application/json"},
            timeout=httpx.Timeout(TIMEOUT, connect=10.0),
            transport=self.transport,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        self.spend.requests += 1
        self.spend.tokens += COSTS[method]
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise PipedriveError(
                self.redact.text(f"{method} {path}: {type(exc).__name__}: {exc}")
            ) from None
        if response.status_code == 401:
            raise AuthError("Pipedrive refused the API token (401)")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= 400 or not isinstance(payload, dict):
            error = payload.get("error") if isinstance(payload, dict) else None
            raise PipedriveError(
                self.redact.text(
                    f"{method} {path}: HTTP {response.status_code}"
                    + (f": {error}" if error else "")
                )
            )
        return payload.get("data")

    def webhooks(self) -> list[dict]:
        data = self._call("GET", "/v1/webhooks")
        return [w for w in data or [] if isinstance(w, dict)]

    def create(self, url: str, event_object: str, user: str, password: str) -> dict:
        return self._call(
            "POST",
            "/v1/webhooks",
            {
                "subscription_url": url,
                "event_action": "*",
                "event_object": event_object,
                "name": f"{NAME} {event_object}",
                "http_auth_user": user,
                "http_auth_password": password,
                "version": "2.0",
            },
        )

    def delete(self, webhook_id: int) -> None:
        self._call("DELETE", f"/v1/webhooks/{int(webhook_id)}")


# -- what Pipedrive has, compared with what pdsync needs ------------------------------------


def ours(hook: dict, url: str, users: set[str]) -> bool:
    return hook.get("subscription_url") == url and hook.get("http_auth_user") in users


def plan(hooks: list[dict], url: str, users: set[str]) -> dict[str, Any]:
    """For each object: the matching live webhook, or None (missing); what is ours but
    wrong (another URL, v1, inactive) or duplicated; and what is named like ours but has
    other credentials (``others``: another pdsync instance's, never touched)."""
    wanted: dict[str, dict | None] = dict.fromkeys(OBJECTS)
    extra: list[dict] = []
    others: list[dict] = []
    for hook in hooks:
        if hook.get("http_auth_user") not in users:
            if str(hook.get("name", "")).startswith(NAME):
                others.append(hook)
            continue
        obj = hook.get("event_object")
        good = (
            ours(hook, url, users)
            and hook.get("version") == "2.0"
            and hook.get("event_action") == "*"
            and hook.get("is_active", 1) in (1, True)
            and obj in wanted
        )
        if good and wanted[obj] is None:
            wanted[obj] = hook
        else:
            extra.append(hook)
    return {"wanted": wanted, "extra": extra, "others": others}


def install(api: Api, secrets_file: Path, url: str) -> dict[str, list]:
    """Create the missing webhooks; remove our own that no longer match (another URL, a
    duplicate). Returns {"created": [...], "kept": [...], "removed": [...], "others": [...]}
    (others: named like ours, another instance's credentials: left alone)."""
    make_inbox(secrets_file)  # before any webhook exists: its deliveries find it
    users = known_users(secrets_file)
    state = plan(api.webhooks(), url, users)
    missing = [obj for obj, hook in state["wanted"].items() if hook is None]
    created, removed = [], []
    if missing:
        user, password = new_credentials(secrets_file)
        for obj in missing:
            created.append(api.create(url, obj, user, password))
    for hook in state["extra"]:
        api.delete(hook["id"])
        removed.append(hook)
    kept = [hook for hook in state["wanted"].values() if hook is not None]
    return {"created": created, "kept": kept, "removed": removed, "others": state["others"]}


def remove(api: Api, secrets_file: Path) -> dict[str, list]:
    """Delete every webhook made for this database (by its credentials' user), and forget
    the credentials. Returns {"removed": [...], "others": [...]} (others: named like ours,
    another instance's: left alone)."""
    users = known_users(secrets_file)
    removed, others = [], []
    for hook in api.webhooks():
        if hook.get("http_auth_user") in users:
            api.delete(hook["id"])
            removed.append(hook)
        elif str(hook.get("name", "")).startswith(NAME):
            others.append(hook)
    forget_credentials(secrets_file)
    return {"removed": removed, "others": others}


def count_spend(db_path: str, spend: Spend) -> None:
    """Requests and tokens spent on webhooks, against today in ``sync_tokens``."""
    if not spend.requests or not Path(db_path).exists():
        return
    from .store import Store

    db = sqlite_utils.Database(db_path)
    try:
        if "sync_tokens" in db.table_names():
            with db.atomic():
                Store(db).add_spend(PURPOSE, spend.requests, spend.tokens)
    finally:
        db.close()
