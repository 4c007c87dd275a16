"""The GET endpoints, derived from the declarations: parameters checked like Pipedrive, pages
built from stored JSON.

v2 lists use keyset pagination on (sort key, id), so a record updated between two pages
moves behind the cursor instead of shifting the pages. v1 offset lists (``/v1/notes``) use a
plain OFFSET over the current sorted result, because that is how the real offset pagination
behaves. Knows nothing of HTTP: an endpoint returns the body or raises BadRequest/NotFound.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Protocol

from . import params as p
from .entities import BY_PATH, Entity, Route, record_route
from .history import History, deal_id_of
from .params import BadRequest, NotFound, Params
from .store import Store
from .wire import DAY_MS, dumps, parse_rfc3339_us


class Source(Protocol):
    """What the endpoints read: the store, the clock and the embedded user objects."""

    store: Store
    history: History

    def now_ms(self) -> int: ...

    def deal_alive(self, deal_id: int) -> bool: ...

    def user_embeds(self) -> dict[int, bytes]: ...

    def me(self) -> dict[str, Any]: ...


Endpoint = Callable[[Source, Params], bytes]


# -- how a stored row becomes the API record --------------------------------------------------


def strip_namespaces(
    entity: Entity, raw: bytes, include: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A field definition without the namespaces that were not asked for."""
    rec = json.loads(raw)
    for name in entity.namespaces:
        if name not in include:
            rec.pop(name, None)
    return rec


def rows_sql(entity: Entity, where: str, order: str, paged: bool) -> str:
    """Rows of ``entity`` with what the API embeds (for notes: deal title, org and person)."""
    table = entity.table.name
    inner = f"SELECT id FROM {table} WHERE {where} ORDER BY {order}"
    if paged:
        inner += " LIMIT ? OFFSET ?"
    outer_order = ", ".join(f"t.{term}" for term in order.split(", "))
    columns = ["t.json", *(f"e{i}.{e.column}" for i, e in enumerate(entity.embeds))]
    if entity.embeds_user:
        columns.append(f"t.{entity.embeds_user}")
    joins = "".join(
        f" LEFT JOIN {e.table} e{i} ON e{i}.id = t.{e.via}" for i, e in enumerate(entity.embeds)
    )
    return (
        f"SELECT {', '.join(columns)} FROM ({inner}) AS page "
        f"JOIN {table} t ON t.id = page.id{joins} ORDER BY {outer_order}"
    )


def embed(entity: Entity, row: tuple, users: dict[int, bytes]) -> bytes:
    """The stored JSON with the embedded objects spliced in before its closing brace."""
    parts = [row[0][:-1]]
    for e, value in zip(entity.embeds, row[1:], strict=False):
        if value is not None:
            parts.append(b',"' + e.key.encode() + b'":' + dumps({e.column: value}))
    if entity.embeds_user and row[-1] in users:
        parts.append(b',"user":' + users[row[-1]])
    parts.append(b"}")
    return b"".join(parts)


def iter_records(source: Source, entity: Entity, where: str, args: list[Any]) -> Iterator[dict]:
    """Every matching record, API-shaped, in id order, read 1,000 rows at a time."""
    embedded = bool(entity.embeds or entity.embeds_user)
    users = source.user_embeds() if embedded else {}
    table = entity.table.name
    last = -1
    while True:
        if embedded:
            sql = rows_sql(entity, f"{where} AND id > ?", "id ASC", True)
            rows = source.store.query(sql, [*args, last, 1000, 0])
            raws = [embed(entity, row, users) for row in rows]
        else:
            sql = f"SELECT json, id FROM {table} WHERE {where} AND id > ? ORDER BY id LIMIT 1000"
            rows = source.store.query(sql, [*args, last])
            raws = [row[0] for row in rows]
        for raw in raws:
            yield strip_namespaces(entity, raw) if entity.namespaces else json.loads(raw)
        if len(rows) < 1000:
            return
        last = json.loads(raws[-1])["id"] if embedded else rows[-1][1]


# -- v2: cursor pages -------------------------------------------------------------------------


def _page(rows: list[bytes], next_cursor: str | None) -> bytes:
    nc = b"null" if next_cursor is None else b'"' + next_cursor.encode() + b'"'
    return (
        b'{"success":true,"data":['
        + b",".join(rows)
        + b'],"additional_data":{"next_cursor":'
        + nc
        + b"}}"
    )


def _scope(entity: Entity, route: Route) -> tuple[list[str], list[Any]]:
    where = [route.scope if route.scope is not None else entity.live]
    args: list[Any] = []
    if entity.kind is not None:
        where.insert(0, "kind = ?")
        args.append(entity.kind)
    return where, args


def _include(entity: Entity, params: Params) -> frozenset[str]:
    if not entity.namespaces and not entity.counts:
        return frozenset()
    include = frozenset(x.strip() for x in params.get("include_fields", "").split(",") if x)
    unknown = include - set(entity.namespaces) - set(entity.counts)
    if unknown:
        raise p.bad("include_fields", f"Invalid value '{sorted(unknown)[0]}'")
    return include


def _narrowing(
    entity: Entity, params: Params, where: list[str], args: list[Any], now_ms: int
) -> None:
    """The declared filters, ids and updated_since/until, appended to where/args."""
    for name, column in entity.filters.items():
        value = p.integer(params, name)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    chosen = p.ids(params) if entity.ids else None
    if chosen is not None:
        where.append(f"id IN ({','.join('?' * len(chosen))})" if chosen else "0")
        args.extend(chosen)
    if entity.incremental:
        for name, op in (("updated_since", ">="), ("updated_until", "<")):
            moment = p.time_ms(params, name)
            if moment is not None:
                where.append(f"ut {op} ?")
                args.append(moment)


def cursor_page(source: Source, params: Params, entity: Entity, route: Route) -> bytes:
    where, args = _scope(entity, route)
    for narrow in entity.narrow:
        more, more_args = narrow(params, source.now_ms())
        where.extend(more)
        args.extend(more_args)
    include = _include(entity, params)
    limit = p.limit(params)
    sort_by, direction = "id", "asc"
    if entity.sorts:
        sort_by = p.enum(params, "sort_by", tuple(entity.sorts), "id")
        direction = p.enum(params, "sort_direction", ("asc", "desc"), "asc")
    _narrowing(entity, params, where, args, source.now_ms())
    col = entity.sorts.get(sort_by, "id")
    op, order = (">", "ASC") if direction == "asc" else ("<", "DESC")
    cursor = params.get("cursor")
    if cursor:
        value, last_id = p.decode_cursor(cursor, sort_by, direction)
        if col == "id":
            where.append(f"id {op} ?")
            args.append(last_id)
        else:
            where.append(f"({col}, id) {op} (?, ?)")
            args.extend((value, last_id))
    order_by = f"id {order}" if col == "id" else f"{col} {order}, id {order}"
    counts = [name for name in entity.counts if name in include]
    extra = "".join(f", ({entity.counts[name]})" for name in counts)
    sql = (
        f"SELECT json, {col}, id{extra} FROM {entity.table.name} WHERE {' AND '.join(where)} "
        f"ORDER BY {order_by} LIMIT {limit + 1}"
    )
    rows = source.store.query(sql, args)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = p.encode_cursor(sort_by, direction, last[1], last[2])
    if entity.namespaces:
        return _page([dumps(strip_namespaces(entity, r[0], include)) for r in rows], next_cursor)
    if counts:
        return _page([_with_counts(r[0], counts, r[3:]) for r in rows], next_cursor)
    return _page([r[0] for r in rows], next_cursor)


def _with_counts(raw: bytes, names: list[str], values: tuple) -> bytes:
    """The stored JSON with the asked-for counts spliced in before its closing brace."""
    added = b"".join(
        b',"' + n.encode() + b'":' + str(v).encode() for n, v in zip(names, values, strict=True)
    )
    return raw[:-1] + added + b"}"


# -- v1: offset pages and unpaged lists -------------------------------------------------------


def _v1_order(entity: Entity, raw: str | None) -> str:
    """``"update_time ASC, id DESC"`` as SQL; id breaks ties so the order is total."""
    terms = []
    seen_id = False
    for part in (raw or "id ASC").split(","):
        bits = part.split()
        if not bits:
            continue
        if len(bits) > 2 or bits[0] not in entity.sorts:
            raise BadRequest(f"Invalid sort field: {part.strip()!r}")
        direction = bits[1].upper() if len(bits) == 2 else "ASC"
        if direction not in ("ASC", "DESC"):
            raise BadRequest(f"Invalid sort direction: {bits[1]!r}")
        seen_id = seen_id or bits[0] == "id"
        terms.append(f"{entity.sorts[bits[0]]} {direction}")
    if not seen_id:
        terms.append("id ASC")
    return ", ".join(terms)


def _v1_window(params: Params, where: list[str], args: list[Any]) -> None:
    """updated_since, and start_date/end_date on the add time (whole UTC days)."""
    since = p.time_ms(params, "updated_since")
    if since is not None:
        where.append("ut >= ?")
        args.append(since)
    for name, op, shift in (("start_date", ">=", 0), ("end_date", "<", DAY_MS)):
        raw = params.get(name)
        if raw is not None:
            micros = parse_rfc3339_us(f"{raw}T00:00:00Z")
            if micros is None:
                raise p.bad(name, "Invalid date, expected YYYY-MM-DD")
            where.append(f"at {op} ?")
            args.append(micros // 1000 + shift)


def offset_page(source: Source, params: Params, entity: Entity, route: Route) -> bytes:
    start = p.integer(params, "start", 0)
    assert start is not None
    if start < 0:
        raise p.bad("start", "Number must be greater than or equal to 0")
    limit = p.limit(params)
    order = _v1_order(entity, params.get("sort") or entity.default_sort)
    where, args = _scope(entity, route)
    for name, column in entity.filters.items():
        value = p.integer(params, name)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if route.since:
        _v1_window(params, where, args)
    sql = rows_sql(entity, " AND ".join(where), order, paged=True)
    rows = source.store.query(sql, [*args, limit + 1, start])
    more = len(rows) > limit
    users = source.user_embeds()
    data = b",".join(embed(entity, r, users) for r in rows[:limit])
    pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
    if entity.pagination_key is None:
        flat = dumps(pagination)
        return b'{"success":true,"data":[' + data + b'],"additional_data":' + flat + b"}"
    if more:
        pagination["next_start"] = start + limit
    key = entity.pagination_key.encode()
    return (
        b'{"success":true,"data":['
        + data
        + b'],"additional_data":{"'
        + key
        + b'":'
        + dumps(pagination)
        + b"}}"
    )


def all_page(source: Source, params: Params, entity: Entity, route: Route) -> bytes:
    where, args = _scope(entity, route)
    sql = f"SELECT json FROM {entity.table.name} WHERE {' AND '.join(where)} ORDER BY id"
    rows = source.store.query(sql, args)
    return b'{"success":true,"data":[' + b",".join(r[0] for r in rows) + b"]}"


def users_me(source: Source, params: Params) -> bytes:
    return dumps({"success": True, "data": source.me()})


def one_record(source: Source, entity: Entity, route: Route, id_: int) -> bytes:
    """``GET /api/v2/projects/{id}``: the record in ``data``, or NotFound (404)."""
    where, args = _scope(entity, route)
    sql = f"SELECT json FROM {entity.table.name} WHERE id = ? AND {' AND '.join(where)}"
    rows = source.store.query(sql, [id_, *args])
    if not rows:
        raise NotFound(f"{entity.singular} {id_} not found")
    return b'{"success":true,"data":' + rows[0][0] + b"}"


# -- routing ----------------------------------------------------------------------------------

PAGING = {"cursor": cursor_page, "offset": offset_page, "all": all_page}
ROUTES: dict[str, Endpoint] = {
    path: partial(PAGING[entity.paging], entity=entity, route=route)
    for path, (entity, route) in BY_PATH.items()
}
ROUTES["/v1/users/me"] = users_me  # the token's own user and company, not a list


def answer(source: Source, method: str, path: str, params: Params) -> bytes:
    """The body of a successful GET; raises BadRequest (400) or NotFound (404)."""
    endpoint = ROUTES.get(path.rstrip("/") if path != "/" else path)
    deal_id = deal_id_of(path)
    if method == "GET" and deal_id is not None:  # /v1/deals/{id}/changelog
        return _page(*source.history.page(deal_id, params, source.deal_alive(deal_id)))
    if method == "GET" and endpoint is None and (found := record_route(path)) is not None:
        return one_record(source, *found)
    if method != "GET" or endpoint is None:
        raise NotFound(path)
    return endpoint(source, params)
