"""One timestamp format for every column: UTC, second precision, ``2025-01-15T10:30:00Z``.

Pipedrive v2 sends RFC 3339 with or without milliseconds (and in principle with an offset);
v1 sends ``2025-01-15 10:30:00`` in UTC. Storing one shape lets text comparison, ``ORDER BY``
and SQLite's date functions agree.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# A record's update_time may run this far ahead of our clock (clocks drift); a later one is
# not believed, so that it cannot move a watermark past every real change.
FUTURE_TOLERANCE = timedelta(hours=1)

# Fast path for the shapes Pipedrive actually sends, so normalising 400k deals stays cheap.
_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|\+00:00)?$")


def normalize(value: str | None) -> str | None:
    """Return ``value`` as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC; '' and None become None.

    Text that is not a timestamp is returned unchanged rather than lost.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    # Most of what v2 sends is already in shape, with or without milliseconds.
    if len(value) == 20 and value[10] == "T" and value[19] == "Z":
        return value
    if len(value) == 24 and value[10] == "T" and value[19] == "." and value[23] == "Z":
        return value[:19] + "Z"
    match = _UTC.match(value)
    if match:
        return f"{match.group(1)}T{match.group(2)}Z"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).strftime(FORMAT)


def parse(value: str) -> datetime:
    """Parse a normalised timestamp into an aware UTC datetime."""
    # The stored shape without strptime, whose module costs every sync 1.5 ms to load;
    # anything else (a non-str included) gets strptime's answer or error, as it always did.
    if isinstance(value, str) and value.isascii() and _STORED.match(value):
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)
    return datetime.strptime(value, FORMAT).replace(tzinfo=timezone.utc)


def format(moment: datetime) -> str:  # noqa: A001 - mirrors datetime.strftime naming
    """Format an aware datetime (or a naive one taken as UTC) in the stored shape."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(FORMAT)


def now() -> str:
    return format(datetime.now(timezone.utc))


def latest_plausible() -> str:
    """The latest update_time a record can truly carry now."""
    return format(datetime.now(timezone.utc) + FUTURE_TOLERANCE)


_STORED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def is_stored_shape(value: object) -> bool:
    """``value`` is a real moment in the stored shape (not 2025-13-45T...)."""
    if not isinstance(value, str) or not _STORED.match(value):
        return False
    try:
        datetime.fromisoformat(value[:-1])  # C: strptime here cost a fifth of a first sync
    except ValueError:
        return False
    return True


def plausible(value: object, latest: str | None = None) -> bool:
    """``value`` is a stored timestamp no later than ``latest`` (``latest_plausible()``)."""
    return is_stored_shape(value) and value <= (latest or latest_plausible())


_SIZES = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))  # largest first
_UNIT_SECONDS = dict(_SIZES)
# Longer than any schedule anyone means; beyond it time.sleep() and timedelta overflow.
MAX_INTERVAL = 366 * 86400


def parse_interval(text: str | int | float, maximum: float | None = MAX_INTERVAL) -> float:
    """``"30m"`` -> 1800.0 seconds (s, m, h, d; a bare number is seconds), at most
    ``maximum`` (a year; None: no limit, for a threshold rather than a sleep).

    Raises ``ValueError`` with a message fit for the user.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
        if not match:
            raise ValueError(f"{text!r} is not an interval like 90s, 30m, 1h or 1d")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds <= 0 or (maximum is not None and seconds > maximum):
        limit = "" if maximum is None else f" and at most {format_interval(maximum)}"
        raise ValueError(f"{text!r} is not an interval longer than 0s{limit}")
    return seconds


def format_interval(seconds: float) -> str:
    """1800 -> ``"30m"``, 5400 -> ``"1h 30m"``: the two largest units, as parse_interval reads."""
    seconds = int(round(seconds))
    parts = []
    for unit, size in _SIZES:
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from stored (or any ISO) text; None for anything else.

    Unlike ``parse``, never raises: it reads what a table holds, whoever wrote it."""
    if not value or not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def seconds_since(value: Any, now: datetime | None = None) -> float | None:
    moment = parse_timestamp(value)
    if moment is None:
        return None
    return ((now or datetime.now(timezone.utc)) - moment).total_seconds()


def ago(value: Any, now: datetime | None = None) -> str | None:
    """``"3h ago"`` (the largest whole unit), ``"in 5m"``; None for no or bad timestamps."""
    seconds = seconds_since(value, now)
    if seconds is None:
        return None
    future = seconds < 0
    seconds = abs(seconds)
    unit, size = next((u, s) for u, s in _SIZES if seconds >= s or u == "s")
    amount = f"{int(seconds // size)}{unit}"
    return f"in {amount}" if future else f"{amount} ago"


def days_since(value: Any, now: datetime | None = None) -> int | None:
    """Whole days from ``value`` to now (UTC), truncated like the views' ``cast(...)``."""
    seconds = seconds_since(value, now)
    return None if seconds is None else int(seconds / 86400)
