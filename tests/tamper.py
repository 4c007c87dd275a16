"""A tampering proxy: sits between pdsync and the fake Pipedrive on 127.0.0.1 and breaks its
answers the way a hostile or broken upstream (a gateway, a proxy, a changed API) would.

``proxy.rules[path] = kind`` tampers with every answer to ``path`` (``"*"``: every path)
until the rule is removed; ``proxy.rules.clear()`` is the upstream fixed. Each kind is a
method ``_kind``; ``proxy.hits[kind]`` counts the answers it tampered with.
"""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

# The time a trickling answer takes per byte: each read waits less than any read timeout.
TRICKLE_PAUSE = 0.3
REPEATED_CURSOR = "c2VlbiBpdCBiZWZvcmU"


class Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.rules: dict[str, str] = {}
        self.hits: collections.Counter = collections.Counter()
        self.requests: list[tuple[str, dict]] = []  # (path, headers) as pdsync sent them
        self.queries: list[str] = []  # the query strings, decoded
        self.stopping = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                proxy._handle(self)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    # -- forwarding -----------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        self.requests.append((url.path, dict(handler.headers)))
        self.queries.append(unquote(url.query))
        kind = self.rules.get(url.path) or self.rules.get("*")
        query = dict(parse_qsl(url.query))
        if kind == "repeated_cursor" and query.get("cursor") == REPEATED_CURSOR:
            query.pop("cursor")  # the fake does not know our cursor: ask for page one again
        if kind == "ignored_offset":
            query.pop("start", None)  # a server that ignores where pdsync asked to start
            query.pop("updated_since", None)
        status, headers, body = self._forward(url.path, query, handler.headers)
        try:
            if kind is None:
                self._send(handler, status, headers, body)
            else:
                self.hits[kind] += 1
                getattr(self, f"_{kind}")(handler, status, headers, body)
        except OSError:  # pdsync gave up on this answer (its deadline): fine
            handler.close_connection = True

    def _forward(self, path: str, query: dict, headers) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=10)
        try:
            target = path + ("?" + urlencode(query) if query else "")
            conn.request("GET", target, headers={"x-api-token": headers.get("x-api-token", "")})
            response = conn.getresponse()
            body = response.read()
            kept = {
                k: v
                for k, v in response.getheaders()
                if k.lower().startswith("x-ratelimit") or k.lower() == "content-type"
            }
            return response.status, kept, body
        finally:
            conn.close()

    @staticmethod
    def _send(handler, status: int, headers: dict, body: bytes) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _json(self, handler, status: int, headers: dict, data) -> None:
        body = json.dumps(data).encode()
        self._send(handler, status, {**headers, "content-type": "application/json"}, body)

    def _echo(self, handler) -> str:
        """The request as a gateway that echoes it would show it, token and all."""
        lines = [f"{handler.command} {handler.path}"]
        lines += [f"{name}: {value}" for name, value in handler.headers.items()]
        return "\n".join(lines)

    # -- the kinds of tampering -----------------------------------------------------------

    def _echo_400(self, handler, status, headers, body):
        """A gateway's error page that quotes the request headers, in Pipedrive's envelope."""
        echo = self._echo(handler)
        self._json(handler, 400, headers, {"success": False, "error": echo, "data": None})

    def _echo_text(self, handler, status, headers, body):
        """A plain-text 403 from a proxy that quotes the request, URL-encoded as in a query."""
        from urllib.parse import quote

        echo = self._echo(handler)
        text = f"Forbidden\n{echo}\nretry=/login?t={quote(handler.headers['x-api-token'])}"
        self._send(handler, 403, {"content-type": "text/plain"}, text.encode())

    def _repeated_cursor(self, handler, status, headers, data):
        page = json.loads(data)
        page.setdefault("additional_data", {})["next_cursor"] = REPEATED_CURSOR
        self._json(handler, status, headers, page)

    def _stuck_offset(self, handler, status, headers, data):
        """A v1 page that says there is more, and that the next page starts where this did."""
        page = json.loads(data)
        page.setdefault("additional_data", {})["pagination"] = {
            "start": 0,
            "limit": 500,
            "more_items_in_collection": True,
            "next_start": 0,
        }
        self._json(handler, status, headers, page)

    def _ignored_offset(self, handler, status, headers, data):
        """A v1 server that ignores start (see _handle): the same page, always with more."""
        page = json.loads(data)
        pagination = page.setdefault("additional_data", {}).setdefault("pagination", {})
        pagination.update(more_items_in_collection=True, next_start=len(page["data"]))
        self._json(handler, status, headers, page)

    def _trickle(self, handler, status, headers, body):
        """Headers at once, then the body a byte at a time: no read ever times out."""
        handler.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.flush()
        for i in range(len(body)):
            if self.stopping.is_set():
                return
            handler.wfile.write(body[i : i + 1])
            handler.wfile.flush()
            time.sleep(TRICKLE_PAUSE)

    def _trickle_headers(self, handler, status, headers, body):
        """Even the status line and headers arrive a byte at a time."""
        head = f"HTTP/1.1 {status} OK\r\ncontent-length: {len(body)}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        for byte in (head + "\r\n").encode() + body:
            if self.stopping.is_set():
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(TRICKLE_PAUSE)

    def _stall(self, handler, status, headers, body):
        """Headers and half the body, then nothing (the connection stays open)."""
        handler.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        self.stopping.wait(60)
        handler.close_connection = True

    def _bad_gzip(self, handler, status, headers, body):
        """Says gzip, is not: the decoder fails (once an exception the client did not expect)."""
        handler.send_response(status)
        junk = b"\x1f\x8b\x08\x00this is not gzip at all" * 10
        for name, value in {**headers, "content-encoding": "gzip"}.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(junk)))
        handler.end_headers()
        handler.wfile.write(junk)

    def _budget_spent(self, handler, status, headers, body):
        """A normal answer that says the budget is gone until tomorrow (27 hours)."""
        headers = {**headers, "x-ratelimit-remaining": "0", "x-ratelimit-reset": "100000"}
        self._send(handler, status, headers, body)

    def _budget_429(self, handler, status, headers, body):
        headers = {**headers, "x-ratelimit-remaining": "0", "x-ratelimit-reset": "100000"}
        self._json(handler, 429, headers, {"success": False, "error": "Too many requests"})

    def _bad_records(self, handler, status, headers, data):
        """The first records of the page made unusable, one kind each (see BAD_RECORDS)."""
        page = json.loads(data)
        records = page.get("data") or []
        for record, (field, value) in zip(records, BAD_RECORDS, strict=False):
            if value is _MISSING:
                record.pop(field, None)
            else:
                record[field] = value
        self._json(handler, status, headers, page)

    def _odd_values(self, handler, status, headers, data):
        """Values a parser accepts and a database or a field map may not: a number past 64
        bits, and custom fields whose values are lists of lists (no option has that id)."""
        page = json.loads(data)
        records = page.get("data") or []
        records[0]["value"] = 2**64 - 1
        odd = next(r for r in records[1:] if r.get("custom_fields"))
        odd["custom_fields"] = {code: [[1]] for code in odd["custom_fields"]}
        self.odd_ids = records[0]["id"], odd["id"]
        self._json(handler, status, headers, page)

    def _absurd_headers(self, handler, status, headers, body):
        """Rate-limit headers no number fits (float("inf") has no int)."""
        headers = {
            **headers,
            "x-ratelimit-limit": "inf",
            "x-ratelimit-remaining": "1e400",
            "x-ratelimit-reset": "-inf",
        }
        self._send(handler, status, headers, body)


_MISSING = object()
# What a broken upstream did to a record, in the order _bad_records applies them.
BAD_RECORDS = [
    ("update_time", "9999-12-31T23:59:59Z"),  # would move the watermark past every change
    ("update_time", "not a time"),  # would be sent back as updated_since: 400 for ever
    ("id", "abc"),  # an integer key as text: the whole page failed on every run
    ("id", _MISSING),
    ("id", "17x"),
]
