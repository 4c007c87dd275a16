"""The fake's HTTP front: auth, the rate-limit window, injected faults and the request log.

Knows nothing of entities: a subclass answers the requests that get through (``answer``).
Every fault kind is declared once, in ``FAULTS``, with the reply it makes and whether a client
should get through it by retrying; ``inject`` and the fault matrix test read that table.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .params import BadRequest, NotFound
from .wire import dumps

BURST_WINDOW_S = 2.0
LOG_LIMIT = 100_000  # bounded so `python -m pdsync.fake` can serve for days
ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."


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
INTERNAL_ERROR = error_body("Internal server error", errorCode=500)
NOT_FOUND = error_body("Unknown method .")

_HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>cloudflare</center></body></html>"
)
_HTML_503 = (
    b"<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
    b"<h1>503 Service Temporarily Unavailable</h1></center></body></html>"
)
_NOT_JSON = b"<!DOCTYPE html><html><body>Pipedrive is under maintenance</body></html>"

# -- fault kinds ------------------------------------------------------------------------------

# A fault's reply from (the front, the real answer made on demand, the rate-limit headers).
MakeReply = Callable[["Front", Callable[[], Reply], list[tuple[str, str]]], Reply]


@dataclass(frozen=True)
class FaultKind:
    reply: MakeReply
    transient: bool = True  # a client that retries gets through; False: it must give up


def _reset_hint(front: Front, real: Callable[[], Reply], rate: list[tuple[str, str]]) -> Reply:
    limit = str(front.burst_limit or 40)
    headers = [
        ("x-ratelimit-limit", limit),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1"),
    ]
    return Reply(429, OVER_LIMIT, headers)


def _broken(action: str) -> MakeReply:
    """The real answer, sent badly: held past the client's timeout, or cut in half."""

    def reply(front: Front, real: Callable[[], Reply], rate: list[tuple[str, str]]) -> Reply:
        answer = real()
        answer.action = action
        return answer

    return reply


FAULTS: dict[str, FaultKind] = {
    "429": FaultKind(lambda front, real, rate: Reply(429, OVER_LIMIT)),
    "429-reset": FaultKind(_reset_hint),
    "500": FaultKind(lambda front, real, rate: Reply(500, INTERNAL_ERROR)),
    "502": FaultKind(lambda front, real, rate: Reply(502, _HTML_502, content_type="text/html")),
    "503": FaultKind(lambda front, real, rate: Reply(503, _HTML_503, content_type="text/html")),
    "timeout": FaultKind(_broken("hold")),
    "reset": FaultKind(lambda front, real, rate: Reply(0, b"", action="reset")),
    "truncated": FaultKind(_broken("truncated")),
    "invalid_json": FaultKind(lambda front, real, rate: Reply(200, _NOT_JSON, rate)),
    "401": FaultKind(lambda front, real, rate: Reply(401, UNAUTHORIZED), transient=False),
}
FAULT_KINDS = frozenset(FAULTS)


@dataclass
class _Injected:
    path: str
    kind: str
    times: int
    skip: int


# -- the front --------------------------------------------------------------------------------


class Front:
    """Checks the token, counts the burst window, injects faults and logs every request."""

    def __init__(self, token: str, burst_limit: int | None, latency: float) -> None:
        self.token = token
        self.burst_limit = burst_limit
        self.latency = latency  # added by FakeServer before each answer
        self.timeout_hold = 5.0  # how long a "timeout" fault holds the answer back
        self.token_in_url_seen = False
        self.rate_limited = 0
        # Pipedrive's daily token budget (None: unlimited); every answered GET spends its cost.
        self.daily_budget: int | None = None
        self.budget_reset: int | None = None  # seconds to its reset; None: UTC midnight
        self.tokens_spent = 0
        self._lock = threading.Lock()  # faults, burst windows, log
        self._faults: list[_Injected] = []
        self._windows: dict[str, deque[float]] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)

    def answer(
        self, method: str, path: str, params: dict[str, str], body: bytes = b""
    ) -> bytes | tuple[int, bytes]:
        """The body of a request that got through (or its status and body); raises
        BadRequest or NotFound."""
        raise NotImplementedError

    def cost(self, path: str) -> int:
        """Tokens a GET of ``path`` costs."""
        return 0

    def _spend(self, path: str) -> Reply | None:
        """Count the request's tokens; past the daily budget, the 429 Pipedrive then sends
        until midnight UTC (its reset hours away)."""
        cost = self.cost(path)
        with self._lock:
            if self.daily_budget is not None and self.tokens_spent + cost > self.daily_budget:
                until_midnight = self.budget_reset or 86400 - int(time.time()) % 86400
                headers = [
                    ("x-ratelimit-limit", str(self.daily_budget)),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", str(until_midnight)),
                ]
                return Reply(429, OVER_LIMIT, headers)
            self.tokens_spent += cost
        return None

    # -- faults and the log -------------------------------------------------------------------

    def inject(self, path: str, kind: str, times: int = 1, after: int = 0) -> None:
        """Make the next ``times`` requests to ``path`` fail, after ``after`` good ones."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULTS)}")
        with self._lock:
            self._faults.append(_Injected(path, kind, times, after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request served (the last 100,000): method, path, query, status, headers."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            chosen = None
            for fault in self._faults:
                if fault.path != path:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                elif chosen is None and fault.times > 0:
                    chosen = fault
                    fault.times -= 1
            self._faults = [f for f in self._faults if f.times > 0]
        return chosen.kind if chosen else None

    def _take_slot(self, token: str) -> tuple[bool, list[tuple[str, str]]]:
        """Count a request in the token's rolling window; False when over the burst limit."""
        limit = self.burst_limit
        if limit is None:
            return True, []
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(token, deque())
            while window and window[0] <= now - BURST_WINDOW_S:
                window.popleft()
            allowed = len(window) < limit
            if allowed:
                window.append(now)
            else:
                self.rate_limited += 1
            remaining = max(0, limit - len(window))
            reset = math.ceil(window[0] + BURST_WINDOW_S - now) if window else 1
        headers = [
            ("x-ratelimit-limit", str(limit)),
            ("x-ratelimit-remaining", str(remaining)),
            ("x-ratelimit-reset", str(max(1, reset))),
        ]
        return allowed, headers

    # -- requests -----------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        """Answer one HTTP request (no I/O): what FakeServer sends back."""
        path, _, query = target.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        params = {k: v for k, v in pairs if v != ""}
        lower = {k.lower(): v for k, v in headers.items()}
        in_url = any(k == "api_token" for k, _ in pairs)
        reply = self._dispatch(method, path, params, lower, in_url, body)
        entry = {
            "method": method,
            "path": path,
            "query": query,
            "status": None if reply.action == "reset" else reply.status,
            "headers": lower,
        }
        with self._lock:
            self._log.append(entry)
        return reply

    def _token(self, params: dict[str, str], headers: dict[str, str]) -> str | None:
        token = headers.get("x-api-token")
        auth = headers.get("authorization", "")
        if token is None and auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        if token is None:
            token = params.get("api_token")
        return token

    def _dispatch(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        in_url: bool,
        body: bytes = b"",
    ) -> Reply:
        if in_url:
            self.token_in_url_seen = True
        token = self._token(params, headers)
        if token != self.token:
            return Reply(401, UNAUTHORIZED)
        allowed, rate_headers = self._take_slot(token)
        if not allowed:
            return Reply(429, OVER_LIMIT, rate_headers)
        over_budget = self._spend(path)
        if over_budget is not None:
            return over_budget

        def real() -> Reply:
            reply = self._route(method, path, params, body)
            reply.headers.extend(rate_headers)
            return reply

        fault = self._take_fault(path)
        if fault is not None:
            return FAULTS[fault].reply(self, real, rate_headers)
        return real()

    def _route(self, method: str, path: str, params: dict[str, str], body: bytes = b"") -> Reply:
        try:
            answer = self.answer(method, path, params, body)
            if isinstance(answer, tuple):
                return Reply(*answer)
            return Reply(200, answer)
        except NotFound:
            return Reply(404, NOT_FOUND)
        except BadRequest as exc:
            code = "ERR_SCHEMA_VALIDATION_FAILED" if path.startswith("/api/v2/") else None
            return Reply(400, error_body(str(exc), code))
