"""Jinja filters for the status page: the formatting the view-model leaves out.

Registered on Datasette's Jinja environment (``prepare_jinja2_environment``) under
``pdsync_*`` names, so they cannot clash with another plugin's.
"""

from __future__ import annotations

from typing import Any

from pdsync.timestamps import ago, format_interval


def format_count(value: Any) -> str:
    """1234 -> ``"1,234"``; None -> ``""``."""
    if value is None or value == "":
        return ""
    try:
        return f"{value:,}"
    except (TypeError, ValueError):  # whatever an older or hand-edited table holds
        return str(value)


def format_duration(ms: Any) -> str:
    """229 -> ``"229ms"``, 5300 -> ``"5.3s"``, 95000 -> ``"1m 35s"``; None -> ``""``."""
    if ms is None or ms == "":
        return ""
    if float(ms) < 1000:
        return f"{int(ms)}ms"
    seconds = float(ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_interval(seconds)


def format_errors(errors: Any) -> str:
    """A run's errors (entity -> message) as one line."""
    if isinstance(errors, dict):
        return "; ".join(f"{entity}: {message}" for entity, message in errors.items())
    return "" if errors is None else str(errors)


def format_seconds(seconds: Any) -> str:
    """An interval in seconds as parse_interval reads it (``"1h 30m"``); None -> ``""``."""
    return "" if seconds is None else format_interval(seconds)


FILTERS = {
    "pdsync_count": format_count,
    "pdsync_duration": format_duration,
    "pdsync_errors": format_errors,
    "pdsync_interval": format_seconds,
    "pdsync_ago": ago,
}
