"""The plugin's configuration: ``plugins: pdsync:`` in metadata.yml, per database under
``databases: NAME: plugins: pdsync:``. The API token never goes there (Datasette shows
metadata at ``/-/metadata``): it comes from ``PIPEDRIVE_API_TOKEN`` or ``auth_file``."""

from __future__ import annotations

from pathlib import Path

from pdsync.auth import resolve_base_url, resolve_token
from pdsync.redact import Redactor
from pdsync.timestamps import parse_interval

CONFIG = "pdsync"
PERMISSION = "pdsync-sync"
DEFAULT_STALE_AFTER = 30 * 60.0  # seconds; pdsync's suggested cron interval
DEFAULT_AUTH_FILE = "auth.json"  # like `pdsync sync`: relative to the working directory


def plugin_config(datasette, database: str | None = None) -> dict:
    return datasette.plugin_config(CONFIG, database=database) or {}


def sync_interval(config: dict) -> float | None:
    """The configured periodic sync interval in seconds, or None (raises on a bad value)."""
    value = config.get("sync_interval")
    return None if value in (None, "", False) else parse_interval(value, maximum=None)


def history_budget(config: dict) -> int | None:
    """Tokens a UTC day for deal history in scheduled syncs (None: the default; 0: none)."""
    value = config.get("history_budget")
    if value in (None, "", False):
        return None
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return None  # the status page says nothing of it; the default stands


def stale_after(config: dict) -> tuple[float, str | None]:
    """Seconds after which data is stale, and a configuration problem to show, if any."""
    for key in ("stale_after", "sync_interval"):
        value = config.get(key)
        if value not in (None, "", False):
            try:
                return parse_interval(value, maximum=None), None
            except ValueError as exc:
                return DEFAULT_STALE_AFTER, f"plugin configuration {key}: {exc}"
    return DEFAULT_STALE_AFTER, None


def auth_path(config: dict) -> str | None:
    value = config.get("auth_file", DEFAULT_AUTH_FILE)
    return str(Path(value).expanduser()) if value else None


def credentials(config: dict) -> tuple[str, str]:
    """(token, base URL) the way ``pdsync sync`` finds them; ConfigError says what is missing."""
    path = auth_path(config)
    token = resolve_token(path)
    base_url = resolve_base_url(config.get("base_url") or None, path)
    return token, base_url


def redactor(config: dict) -> Redactor:
    """Hides the configured token (and URL credentials) in what a page shows, even in
    messages an older pdsync stored before it redacted them itself."""
    try:
        token = resolve_token(auth_path(config))  # even when the base URL is misconfigured
    except Exception:  # no token configured: nothing of it to hide
        token = None
    return Redactor(token)
