"""Faster reads for Datasette: memory-mapped I/O, and JSON encoded by orjson.

Memory map: a canned query over 100k deals looks up a thousand rows at random places in a
200 MB file. With SQLite's default 2 MB page cache each lookup is a read() system call;
mapped, it is a memory access, and the pages are the operating system's cache, shared by
Datasette's threads instead of copied into each connection's cache. In an interleaved A/B at
100k deals (two Datasettes, same file) the lists of 1,000 deals took 10-40 % less time with
it. SQLite's warning about mmap concerns a file truncated under a reader (a VACUUM
elsewhere); pdsync never vacuums or truncates the database file.

JSON: a list answers with 1,000 rows, and Datasette 0.65's own renderer spends most of a
call on them in pure Python (a scan of every value for infinities, then json.dumps). This
renderer takes over the ``.json`` extension (Datasette lets a plugin's renderer replace its
own) and answers the same JSON through orjson, which also writes infinities as null. Anything
it does not do the same way (``_nl``, ``_json``, ``_json_infinity``, ``_shape=object`` or
``arrayfirst``, errors, a value orjson cannot encode) goes to Datasette's renderer.
"""

from __future__ import annotations

import base64
import sqlite3

import orjson
from datasette.renderer import json_renderer
from datasette.utils.asgi import Response

MMAP_SIZE = 4 << 30  # address space, not memory: only pages read are ever loaded
FAST_SHAPES = {"arrays", "objects", "array"}
DATASETTE_ONLY = ("_nl", "_json", "_json_infinity")


def memory_map(conn: sqlite3.Connection) -> None:
    conn.execute(f"pragma mmap_size = {MMAP_SIZE}")


def _default(value):
    # What Datasette's CustomJSONEncoder does for the types orjson leaves to us.
    if isinstance(value, sqlite3.Row):
        return tuple(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf8")
        except UnicodeDecodeError:
            return {"$base64": True, "encoded": base64.b64encode(value).decode("latin1")}
    raise TypeError


def render_json(args, data, view_name):
    shape = args.get("_shape", "arrays")
    if (
        shape not in FAST_SHAPES
        or not isinstance(data, dict)
        or data.get("error")
        or any(name in args for name in DATASETTE_ONLY)
    ):
        return json_renderer(args, data, view_name)
    rows, columns = data.get("rows"), data.get("columns")
    if rows and columns and shape != "arrays":
        rows = [dict(zip(columns, row, strict=False)) for row in rows]
    elif rows:
        rows = [tuple(row) for row in rows]
    try:
        body = orjson.dumps(rows if shape == "array" else {**data, "rows": rows}, default=_default)
    except TypeError:
        return json_renderer(args, data, view_name)
    next_url = data.get("next_url")
    return Response(
        body,
        headers={"link": f'<{next_url}>; rel="next"'} if next_url else {},
        content_type="application/json; charset=utf-8",
    )
