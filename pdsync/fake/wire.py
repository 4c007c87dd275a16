"""How values look on the wire: compact JSON and Pipedrive's v1/v2 timestamps.

Times inside the fake are integer milliseconds since the epoch (UTC); these turn them into the
text a record shows, and parse the RFC 3339 parameters clients send.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

DAY_MS = 86_400_000
PURGE_AFTER_MS = 30 * DAY_MS

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def dumps(rec: Any) -> bytes:
    """Compact UTF-8 JSON, as Pipedrive sends it."""
    return _ENCODER.encode(rec).encode()


# -- time -------------------------------------------------------------------------------------


_DAYS: dict[int, str] = {}
_HM = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_SS = [f"{s:02d}" for s in range(60)]
_MS = [f".{i:03d}Z" for i in range(1000)]


def _day(days: int) -> str:
    text = _DAYS.get(days)
    if text is None:
        t = time.gmtime(days * 86400)
        text = _DAYS[days] = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"
    return text


# Formatting ~1M timestamps per big company: cached days and tables beat strftime 3x.
def v2_time(ms: int, precise: bool = False) -> str:
    """RFC 3339 UTC: ``2025-01-15T10:30:00Z`` or, if precise, ``2025-01-15T10:30:00.123Z``."""
    sec, frac = divmod(ms, 1000)
    days, rest = divmod(sec, 86400)
    minute, second = divmod(rest, 60)
    base = f"{_day(days)}T{_HM[minute]}{_SS[second]}"
    return base + _MS[frac] if precise else base + "Z"


def v1_time(ms: int) -> str:
    """v1 style UTC: ``2025-01-15 10:30:00``."""
    days, rest = divmod(ms // 1000, 86400)
    minute, second = divmod(rest, 60)
    return f"{_day(days)} {_HM[minute]}{_SS[second]}"


def day(ms: int) -> str:
    """``YYYY-MM-DD`` (UTC)."""
    return _day(ms // 86_400_000)


def trunc(ms: int, precise: bool) -> int:
    """The instant a record shows: seconds unless it carries milliseconds."""
    return ms if precise else ms - ms % 1000


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339_us(text: str) -> int | None:
    """Microseconds since the epoch, or None if ``text`` is not RFC 3339 with a zone."""
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, mday, hour, minute, second = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= mday <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    frac = m.group(7) or ""
    micros = int((frac + "000000")[:6]) + (1 if frac[6:].strip("0") else 0)
    zone = m.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    try:
        secs = calendar.timegm((year, month, mday, hour, minute, second, 0, 0, 0))
        time.gmtime(secs)  # range check
    except (OverflowError, ValueError):
        return None
    return (secs - offset) * 1_000_000 + micros
