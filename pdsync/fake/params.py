"""Query parameters checked like Pipedrive checks them, and the v2 cursor.

Knows no entity: the declarations in ``entities.py`` say which parameters a list takes, and
``endpoints.py`` reads them with these.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from .wire import parse_rfc3339_us

MAX_LIMIT = 500
DEFAULT_LIMIT = 100

Params = dict[str, str]
# A parameter a list narrows by: SQL conditions and their arguments (none when absent).
Narrow = Callable[[Params, int], tuple[list[str], list[Any]]]


class BadRequest(Exception):
    """A parameter Pipedrive would refuse with 400."""


class NotFound(Exception):
    """No such endpoint (or not for this method): 404."""


def bad(name: str, message: str) -> BadRequest:
    return BadRequest(f"Validation failed: {name}: {message}")


def integer(params: Params, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad(name, "Expected integer, received string") from None


def limit(params: Params) -> int:
    value = integer(params, "limit", DEFAULT_LIMIT)
    assert value is not None
    if value > MAX_LIMIT:
        raise bad("limit", f"Number must be less than or equal to {MAX_LIMIT}")
    if value < 1:
        raise bad("limit", "Number must be greater than or equal to 1")
    return value


def enum(params: Params, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in allowed:
        options = " | ".join(f"'{a}'" for a in allowed)
        raise bad(name, f"Invalid enum value. Expected {options}, received '{value}'")
    return value


def time_ms(params: Params, name: str) -> int | None:
    """An RFC 3339 parameter as the first whole millisecond at or after it."""
    raw = params.get(name)
    if raw is None:
        return None
    micros = parse_rfc3339_us(raw)
    if micros is None:
        raise bad(name, "Invalid datetime, expected RFC 3339 (e.g. 2025-01-01T10:20:00Z)")
    return -(-micros // 1000)


def ids(params: Params, name: str = "ids") -> list[int] | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        found = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise bad(name, "Expected comma separated integers") from None
    if len(found) > 100:
        raise bad(name, "Array must contain at most 100 element(s)")
    return found


def encode_cursor(sort_by: str, direction: str, value: Any, id_: int) -> str:
    raw = json.dumps(
        {"field": sort_by, "fieldValue": value, "sortDirection": direction, "id": id_},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str, sort_by: str, direction: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        value, id_ = data["fieldValue"], data["id"]
        ok = (
            isinstance(data, dict)
            and data["field"] == sort_by
            and data["sortDirection"] == direction
            and isinstance(id_, int)
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        ok = False
    if not ok:
        raise bad("cursor", "Invalid cursor")
    return value, id_


# -- narrowing parameters a declaration can name ----------------------------------------------


def match(name: str, condition: str) -> Narrow:
    """An integer parameter bound to ``condition`` (SQL with one ``?``)."""

    def narrow(params: Params, now_ms: int) -> tuple[list[str], list[Any]]:
        value = integer(params, name)
        return ([], []) if value is None else ([condition], [value])

    return narrow


def flag(name: str, column: str) -> Narrow:
    """A boolean parameter (true/false/1/0) matched against an integer column."""

    def narrow(params: Params, now_ms: int) -> tuple[list[str], list[Any]]:
        raw = params.get(name)
        if raw is None:
            return [], []
        if raw.lower() not in ("true", "false", "1", "0"):
            raise bad(name, "Expected boolean")
        return [f"{column} = {int(raw.lower() in ('true', '1'))}"], []

    return narrow


def id_list(name: str, column: str) -> Narrow:
    """A required list of at most 100 integer ids (``deal_ids=1,2,3``) matched on ``column``."""

    def narrow(params: Params, now_ms: int) -> tuple[list[str], list[Any]]:
        found = ids(params, name)
        if not found:
            raise bad(name, "Required")
        return [f"{column} IN ({','.join('?' * len(found))})"], found

    return narrow
