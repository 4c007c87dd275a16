"""The GET endpoints: parameters checked like Pipedrive, pages built from stored JSON.

v2 lists use keyset pagination on (sort key, id), so a record updated between two pages
moves behind the cursor instead of shifting the pages. ``/v1/notes`` uses a plain OFFSET over
the current sorted result, because that is how the real offset pagination behaves.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .store import DAY_MS, PURGE_AFTER_MS, dumps, parse_rfc3339_us

if TYPE_CHECKING:
    from .core import FakePipedrive

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
# Field-definition namespaces only sent when asked for with include_fields.
FIELD_NAMESPACES = ("ui_visibility", "important_fields", "required_fields")
FIELD_KINDS = {"deal_fields": "deal", "person_fields": "person", "organization_fields": "org"}


class BadRequest(Exception):
    """A parameter Pipedrive would refuse with 400."""


@dataclass
class Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    # None, or "reset" / "truncated" / "hold": how the server misbehaves (fault injection).
    action: str | None = None


def error_body(message: str, code: str | None = None, **extra: Any) -> bytes:
    """Pipedrive's error shape (success/error/error_info/data/additional_data)."""
    body: dict[str, Any] = {"success": False, "error": message}
    if code:
        body["code"] = code
    body.update(extra)
    body.update(error_info=ERROR_INFO, data=None, additional_data=None)
    return dumps(body)


UNAUTHORIZED = dumps({"success": False, "error": "unauthorized access", "errorCode": 401})
# Not in the specs; the generic error shape plus errorCode, like the documented 401.
OVER_LIMIT = error_body("Request over limit", errorCode=429)


# -- parameters -------------------------------------------------------------------------------


def _bad(name: str, message: str) -> BadRequest:
    return BadRequest(f"Validation failed: {name}: {message}")


def _int(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _bad(name, "Expected integer, received string") from None


def _limit(params: dict[str, str]) -> int:
    limit = _int(params, "limit", DEFAULT_LIMIT)
    assert limit is not None
    if limit > MAX_LIMIT:
        raise _bad("limit", f"Number must be less than or equal to {MAX_LIMIT}")
    if limit < 1:
        raise _bad("limit", "Number must be greater than or equal to 1")
    return limit


def _enum(params: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in allowed:
        options = " | ".join(f"'{a}'" for a in allowed)
        raise _bad(name, f"Invalid enum value. Expected {options}, received '{value}'")
    return value


def _time_ms(params: dict[str, str], name: str) -> int | None:
    """An RFC 3339 parameter as the first whole millisecond at or after it."""
    raw = params.get(name)
    if raw is None:
        return None
    micros = parse_rfc3339_us(raw)
    if micros is None:
        raise _bad(name, "Invalid datetime, expected RFC 3339 (e.g. 2025-01-01T10:20:00Z)")
    return -(-micros // 1000)


def _ids(params: dict[str, str]) -> list[int] | None:
    raw = params.get("ids")
    if raw is None:
        return None
    try:
        ids = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise _bad("ids", "Expected comma separated integers") from None
    if len(ids) > 100:
        raise _bad("ids", "Array must contain at most 100 element(s)")
    return ids


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
        raise _bad("cursor", "Invalid cursor")
    return value, id_


# -- v2 lists ---------------------------------------------------------------------------------


def _page(rows: list[bytes], next_cursor: str | None) -> bytes:
    nc = b"null" if next_cursor is None else b'"' + next_cursor.encode() + b'"'
    return (
        b'{"success":true,"data":['
        + b",".join(rows)
        + b'],"additional_data":{"next_cursor":'
        + nc
        + b"}}"
    )


def _keyset_page(
    fake: FakePipedrive,
    params: dict[str, str],
    table: str,
    where: list[str],
    args: list[Any],
    sorts: dict[str, str],
    filters: dict[str, str] = {},  # noqa: B006 - read only
    incremental: bool = True,
) -> bytes:
    limit = _limit(params)
    sort_by = _enum(params, "sort_by", tuple(sorts), "id")
    direction = _enum(params, "sort_direction", ("asc", "desc"), "asc")
    where, args = list(where), list(args)
    for name, column in filters.items():
        value = _int(params, name)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    ids = _ids(params)
    if ids is not None:
        where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        args.extend(ids)
    if incremental:
        since = _time_ms(params, "updated_since")
        until = _time_ms(params, "updated_until")
        if since is not None:
            where.append("ut >= ?")
            args.append(since)
        if until is not None:
            where.append("ut < ?")
            args.append(until)
    col = sorts[sort_by]
    op, order = (">", "ASC") if direction == "asc" else ("<", "DESC")
    cursor = params.get("cursor")
    if cursor:
        value, last_id = decode_cursor(cursor, sort_by, direction)
        if col == "id":
            where.append(f"id {op} ?")
            args.append(last_id)
        else:
            where.append(f"({col}, id) {op} (?, ?)")
            args.extend((value, last_id))
    order_by = f"id {order}" if col == "id" else f"{col} {order}, id {order}"
    sql = (
        f"SELECT json, {col}, id FROM {table} WHERE {' AND '.join(where) or '1'} "
        f"ORDER BY {order_by} LIMIT {limit + 1}"
    )
    rows = fake.store.query(sql, args)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(sort_by, direction, last[1], last[2])
    return _page([r[0] for r in rows], next_cursor)


TIME_SORTS = {"id": "id", "update_time": "ut", "add_time": "at"}
DEAL_FILTERS = {
    "owner_id": "owner_id",
    "person_id": "person_id",
    "org_id": "org_id",
    "pipeline_id": "pipeline_id",
    "stage_id": "stage_id",
}
DEAL_STATUSES = ("open", "won", "lost", "deleted")


def deal_status_clause(statuses: list[str], now_ms: int) -> tuple[str, list[Any]]:
    """SQL for a status list; deleted deals show for 30 days, then they are purged."""
    plain = [s for s in statuses if s != "deleted"]
    parts, args = [], []
    if plain:
        parts.append(f"status IN ({','.join('?' * len(plain))})")
        args.extend(plain)
    if "deleted" in statuses:
        parts.append("(status = 'deleted' AND deleted_at >= ?)")
        args.append(now_ms - PURGE_AFTER_MS)
    return "(" + " OR ".join(parts) + ")", args


def _deals(fake: FakePipedrive, params: dict[str, str], archived: bool) -> bytes:
    raw = params.get("status")
    statuses = ["open", "won", "lost"]
    if raw is not None:
        statuses = [s.strip() for s in raw.split(",") if s.strip()]
        for s in statuses:
            if s not in DEAL_STATUSES:
                options = " | ".join(f"'{a}'" for a in DEAL_STATUSES)
                raise _bad("status", f"Invalid enum value. Expected {options}, received '{s}'")
        if not statuses:
            statuses = ["open", "won", "lost"]
    clause, args = deal_status_clause(statuses, fake.now_ms())
    return _keyset_page(
        fake,
        params,
        "deals",
        [f"archived = {int(archived)}", clause],
        args,
        TIME_SORTS,
        DEAL_FILTERS,
    )


def deals(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    return _deals(fake, params, archived=False)


def archived_deals(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    return _deals(fake, params, archived=True)


def persons(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    where, args = ["gone = 0"], []
    deal_id = _int(params, "deal_id")
    if deal_id is not None:
        where.append("id = (SELECT person_id FROM deals WHERE id = ?)")
        args.append(deal_id)
    filters = {"owner_id": "owner_id", "org_id": "org_id"}
    return _keyset_page(fake, params, "persons", where, args, TIME_SORTS, filters)


def organizations(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    return _keyset_page(
        fake, params, "organizations", ["gone = 0"], [], TIME_SORTS, {"owner_id": "owner_id"}
    )


def activities(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    where = ["gone = 0"]
    done = params.get("done")
    if done is not None:
        if done.lower() not in ("true", "false", "1", "0"):
            raise _bad("done", "Expected boolean")
        where.append(f"done = {int(done.lower() in ('true', '1'))}")
    return _keyset_page(
        fake,
        params,
        "activities",
        where,
        [],
        {**TIME_SORTS, "due_date": "due"},
        {name: name for name in ("owner_id", "deal_id", "person_id", "org_id")},
    )


def pipelines(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    return _keyset_page(fake, params, "pipelines", [], [], TIME_SORTS, incremental=False)


def stages(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    return _keyset_page(
        fake,
        params,
        "stages",
        [],
        [],
        {**TIME_SORTS, "order_nr": "order_nr"},
        {"pipeline_id": "pipeline_id"},
        incremental=False,
    )


def strip_namespaces(raw: bytes, include: frozenset[str] = frozenset()) -> dict:
    rec = json.loads(raw)
    for name in FIELD_NAMESPACES:
        if name not in include:
            rec.pop(name, None)
    return rec


def _fields(kind: str) -> Callable[[FakePipedrive, dict[str, str]], bytes]:
    def endpoint(fake: FakePipedrive, params: dict[str, str]) -> bytes:
        include = frozenset(x.strip() for x in params.get("include_fields", "").split(",") if x)
        unknown = include - set(FIELD_NAMESPACES)
        if unknown:
            raise _bad("include_fields", f"Invalid value '{sorted(unknown)[0]}'")
        limit = _limit(params)
        where, args = ["kind = ?"], [kind]
        if params.get("cursor"):
            _, last_id = decode_cursor(params["cursor"], "id", "asc")
            where.append("id > ?")
            args.append(last_id)
        sql = f"SELECT json, id FROM fields WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        rows = fake.store.query(sql, [*args, limit + 1])
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor("id", "asc", rows[-1][1], rows[-1][1])
        return _page([dumps(strip_namespaces(r[0], include)) for r in rows], next_cursor)

    return endpoint


# -- v1 ---------------------------------------------------------------------------------------

NOTE_SORTS = {
    "id": "id",
    "user_id": "user_id",
    "deal_id": "deal_id",
    "person_id": "person_id",
    "org_id": "org_id",
    "content": "content",
    "add_time": "at",
    "update_time": "ut",
}


def _note_order(raw: str | None) -> str:
    """``"update_time ASC, id DESC"`` as SQL; id breaks ties so the order is total."""
    terms = []
    seen_id = False
    for part in (raw or "id ASC").split(","):
        bits = part.split()
        if not bits:
            continue
        if len(bits) > 2 or bits[0] not in NOTE_SORTS:
            raise BadRequest(f"Invalid sort field: {part.strip()!r}")
        direction = bits[1].upper() if len(bits) == 2 else "ASC"
        if direction not in ("ASC", "DESC"):
            raise BadRequest(f"Invalid sort direction: {bits[1]!r}")
        seen_id = seen_id or bits[0] == "id"
        terms.append(f"{NOTE_SORTS[bits[0]]} {direction}")
    if not seen_id:
        terms.append("id ASC")
    return ", ".join(terms)


def note_rows_sql(where: str, order: str, paged: bool) -> str:
    """Notes joined with what the API embeds (deal title, organization and person names)."""
    inner = f"SELECT id FROM notes WHERE {where} ORDER BY {order}"
    if paged:
        inner += " LIMIT ? OFFSET ?"
    outer_order = ", ".join(f"n.{t}" for t in order.split(", "))
    return (
        "SELECT n.json, d.title, o.name, p.name, n.user_id "
        f"FROM ({inner}) AS page JOIN notes n ON n.id = page.id "
        "LEFT JOIN deals d ON d.id = n.deal_id "
        "LEFT JOIN organizations o ON o.id = n.org_id "
        "LEFT JOIN persons p ON p.id = n.person_id "
        f"ORDER BY {outer_order}"
    )


def embed_note(row: tuple, users: dict[int, bytes]) -> bytes:
    raw, title, org_name, person_name, user_id = row
    parts = [raw[:-1]]
    if title is not None:
        parts.append(b',"deal":' + dumps({"title": title}))
    if org_name is not None:
        parts.append(b',"organization":' + dumps({"name": org_name}))
    if person_name is not None:
        parts.append(b',"person":' + dumps({"name": person_name}))
    if user_id in users:
        parts.append(b',"user":' + users[user_id])
    parts.append(b"}")
    return b"".join(parts)


def notes(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    start = _int(params, "start", 0)
    assert start is not None
    if start < 0:
        raise _bad("start", "Number must be greater than or equal to 0")
    limit = _limit(params)
    order = _note_order(params.get("sort"))
    where, args = ["gone = 0"], []
    for name in ("deal_id", "person_id", "org_id", "user_id"):
        value = _int(params, name)
        if value is not None:
            where.append(f"{name} = ?")
            args.append(value)
    since = _time_ms(params, "updated_since")
    if since is not None:
        where.append("ut >= ?")
        args.append(since)
    for name, op, shift in (("start_date", ">=", 0), ("end_date", "<", DAY_MS)):
        raw = params.get(name)
        if raw is not None:
            micros = parse_rfc3339_us(f"{raw}T00:00:00Z")
            if micros is None:
                raise _bad(name, "Invalid date, expected YYYY-MM-DD")
            where.append(f"at {op} ?")
            args.append(micros // 1000 + shift)
    sql = note_rows_sql(" AND ".join(where), order, paged=True)
    rows = fake.store.query(sql, [*args, limit + 1, start])
    more = len(rows) > limit
    embeds = fake.user_embeds()
    data = b",".join(embed_note(r, embeds) for r in rows[:limit])
    pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
    if more:
        pagination["next_start"] = start + limit
    return (
        b'{"success":true,"data":['
        + data
        + b'],"additional_data":{"pagination":'
        + dumps(pagination)
        + b"}}"
    )


def users(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    rows = fake.store.query("SELECT json FROM users ORDER BY id")
    return b'{"success":true,"data":[' + b",".join(r[0] for r in rows) + b"]}"


def users_me(fake: FakePipedrive, params: dict[str, str]) -> bytes:
    return dumps({"success": True, "data": fake.me()})


ROUTES: dict[str, Callable[[FakePipedrive, dict[str, str]], bytes]] = {
    "/api/v2/deals": deals,
    "/api/v2/deals/archived": archived_deals,
    "/api/v2/persons": persons,
    "/api/v2/organizations": organizations,
    "/api/v2/activities": activities,
    "/api/v2/pipelines": pipelines,
    "/api/v2/stages": stages,
    "/api/v2/dealFields": _fields("deal"),
    "/api/v2/personFields": _fields("person"),
    "/api/v2/organizationFields": _fields("org"),
    "/v1/notes": notes,
    "/v1/users": users,
    "/v1/users/me": users_me,
}

NOT_FOUND = error_body("Unknown method .")


def route(fake: FakePipedrive, method: str, path: str, params: dict[str, str]) -> Reply:
    endpoint = ROUTES.get(path.rstrip("/") if path != "/" else path)
    if method != "GET" or endpoint is None:
        return Reply(404, NOT_FOUND)
    try:
        return Reply(200, endpoint(fake, params))
    except BadRequest as exc:
        code = "ERR_SCHEMA_VALIDATION_FAILED" if path.startswith("/api/v2/") else None
        return Reply(400, error_body(str(exc), code))
