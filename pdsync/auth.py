"""Where the API token and the base URL come from.

The token lives in the ``PIPEDRIVE_API_TOKEN`` environment variable or in auth.json (mode 0600),
never on the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .client import DEFAULT_BASE_URL
from .redact import bad_header_value, url_without_credentials

TOKEN_KEY = "pipedrive_api_token"
DOMAIN_KEY = "pipedrive_company_domain"


class ConfigError(ValueError):
    """Settings pdsync cannot work with; the message says what to do."""


def load_auth(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} should hold a JSON object")
    return data


def save_auth(path: str | os.PathLike, token: str, company_domain: str | None = None) -> None:
    """Merge the token (and domain) into ``path``, keeping other tools' keys, mode 0600."""
    data = load_auth(path)
    data[TOKEN_KEY] = token
    if company_domain:
        data[DOMAIN_KEY] = company_domain
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def resolve_token(auth_path: str | os.PathLike | None) -> str:
    token = os.environ.get("PIPEDRIVE_API_TOKEN") or ""
    if not token and auth_path:
        token = load_auth(auth_path).get(TOKEN_KEY) or ""
    if not token.strip():
        raise ConfigError(
            "no Pipedrive API token: set PIPEDRIVE_API_TOKEN or run `pdsync auth`"
            + (f" (looked in {auth_path})" if auth_path else "")
        )
    return token.strip()


def resolve_base_url(base_url: str | None, auth_path: str | os.PathLike | None) -> str:
    """``--base-url``, then ``PIPEDRIVE_BASE_URL``, then the company domain, then the default."""
    url = base_url or os.environ.get("PIPEDRIVE_BASE_URL")
    if not url and auth_path:
        domain = load_auth(auth_path).get(DOMAIN_KEY)
        if domain:
            domain = re.sub(r"^https?://", "", domain).split(".pipedrive.com")[0].strip("/")
            url = f"https://{domain}.pipedrive.com"
    url = (url or DEFAULT_BASE_URL).rstrip("/")
    shown = url_without_credentials(url)
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"base URL must start with http:// or https://, got {shown!r}")
    if shown != url:
        # It would travel in every request and end up in error messages: Pipedrive takes
        # the token in a header, never a password in the URL.
        raise ConfigError(f"base URL must not hold a user name or password: {shown}")
    if bad_header_value(url):
        raise ConfigError(f"base URL has characters a URL cannot have: {shown!r}")
    return url
