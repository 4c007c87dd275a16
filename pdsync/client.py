"""A small Pipedrive HTTP client: auth header, pagination, retries, pacing and accounting.

It only reads. It is thread-safe (one ``httpx.Client`` shared by the entity fetchers) and never
puts the API token anywhere but the ``x-api-token`` header.
"""

from __future__ import annotations

import csv
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import httpx
import orjson

DEFAULT_BASE_URL = "https://api.pipedrive.com"
PAGE_LIMIT = 500  # the most Pipedrive allows per page

log = logging.getLogger("pdsync.http")


class PipedriveError(Exception):
    """A request to Pipedrive failed in a way retrying will not fix."""


class AuthError(PipedriveError):
    """401: the token is wrong or revoked. Fatal for the whole sync."""


class ConnectionFailed(PipedriveError):
    """The base URL could not be reached at all. Fatal for the whole sync."""


@dataclass
class Tally:
    """Requests and tokens spent, counted per entity by whoever passes it in."""

    requests: int = 0
    tokens: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int = 0, tokens: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.tokens += tokens
            self.retries += retries


@lru_cache(maxsize=1)
def _token_costs() -> dict[tuple[str, str], int]:
    # Copied from Pipedrive's endpoints_token_costs.csv (GET operations only).
    text = resources.files("pdsync").joinpath("data/token_costs.csv").read_text()
    return {
        (row["api"], row["path"]): int(row["tokens"]) for row in csv.DictReader(text.splitlines())
    }


def token_cost(path: str) -> int:
    """Token cost of one GET of ``path`` (``/api/v2/deals`` or ``/v1/notes``)."""
    if path.startswith("/api/v2/"):
        key = ("v2", path[len("/api/v2") :])
    elif path.startswith("/v1/"):
        key = ("v1", path[len("/v1") :])
    else:
        return 0
    return _token_costs().get(key, 0)


class RateLimiter:
    """Paces requests so that a normal sync never sees a 429.

    Pipedrive's burst limit is ``x-ratelimit-limit`` requests per token in a rolling 2-second
    window. The fetchers share one token, so the limiter keeps its own record of when requests
    went out and never lets more than the limit into any window; when Pipedrive says
    ``x-ratelimit-remaining: 0`` it also waits for ``x-ratelimit-reset``. Until the first answer
    tells the limit, one request goes out at a time.
    """

    WINDOW = 2.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._probing = False
        self._sent: deque[float] = deque()
        self.limit: int | None = None
        self.known = False
        self.blocked_until = 0.0

    def acquire(self) -> None:
        with self._cond:
            while True:
                now = self._clock()
                wait = self._wait(now)
                if wait <= 0:
                    self._sent.append(now)
                    return
                self._cond.wait(wait)

    def _wait(self, now: float) -> float:
        if now < self.blocked_until:
            return self.blocked_until - now
        if not self.known:
            if self._probing:
                return 1.0  # woken early when the probe's answer arrives
            self._probing = True
            return 0.0
        if self.limit is None:
            return 0.0
        # Pipedrive counts arrivals, we count departures: keep a slot and a little time spare
        # for requests that travel at different speeds.
        window = self.WINDOW + 0.05
        while self._sent and self._sent[0] <= now - window:
            self._sent.popleft()
        if len(self._sent) < max(self.limit - 1, 1):
            return 0.0
        return self._sent[0] + window - now

    def update(self, headers: httpx.Headers) -> None:
        limit = _int_header(headers, "x-ratelimit-limit")
        remaining = _int_header(headers, "x-ratelimit-remaining")
        reset = _int_header(headers, "x-ratelimit-reset")
        with self._cond:
            self._probing = False
            self.known = True
            self.limit = limit
            if remaining == 0:
                self.blocked_until = max(self.blocked_until, self._clock() + (reset or 1))
            self._cond.notify_all()

    def failed(self) -> None:
        """A request got no answer: let the next one probe."""
        with self._cond:
            self._probing = False
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """After a 429: nobody sends until the window has reset."""
        with self._cond:
            self._probing = False
            self.blocked_until = max(self.blocked_until, self._clock() + seconds)
            self._cond.notify_all()


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError):
        return None


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class PipedriveClient:
    """Reads Pipedrive's v1 and v2 APIs.

    ``base_url`` is ``https://COMPANY.pipedrive.com`` or ``https://api.pipedrive.com``; paths are
    given in full (``/api/v2/deals``, ``/v1/notes``).
    """

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        connect_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise AuthError("no Pipedrive API token given")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.connect_retries = connect_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.limiter = RateLimiter()
        self._rejected: str | None = None  # after one 401, no request is sent again
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"x-api-token": token, "accept": "application/json", "user-agent": "pdsync"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PipedriveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ----------------------------------------------------------------------

    def get(
        self, path: str, params: dict[str, Any] | None = None, tally: Tally | None = None
    ) -> dict:
        """GET ``path`` and return the decoded JSON body, retrying what is worth retrying."""
        tally = tally if tally is not None else Tally()
        attempt = 0
        connect_failures = 0
        while True:
            try:
                return self._attempt(path, params or {}, tally)
            except _Retry as retry:
                attempt += 1
                connect_refused = retry.reason.startswith("could not connect")
                connect_failures += connect_refused
                limit = self.connect_retries if connect_refused else self.max_retries
                if (connect_refused and connect_failures > limit) or attempt > self.max_retries:
                    if connect_refused:
                        raise ConnectionFailed(f"{retry.reason} ({self.base_url})") from None
                    raise PipedriveError(
                        f"GET {path} failed after {attempt} attempts: {retry.reason}"
                    ) from None
                delay = retry.delay
                if delay is None:
                    delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                    delay *= random.uniform(0.5, 1.5)  # jitter: fetchers must not retry in step
                tally.add(retries=1)
                log.warning("GET %s: %s; retry %d in %.1fs", path, retry.reason, attempt, delay)
                time.sleep(delay)

    def _attempt(self, path: str, params: dict[str, Any], tally: Tally) -> dict:
        self.limiter.acquire()
        if self._rejected:
            self.limiter.failed()
            raise AuthError(self._rejected)
        started = time.perf_counter()
        tally.add(requests=1)
        try:
            response = self._http.get(path, params=params)
            body = response.content  # read fully here so a truncated body is a retry
        except httpx.ConnectError as exc:
            self.limiter.failed()
            raise _Retry(f"could not connect: {_reason(exc)}") from None
        except httpx.TimeoutException:
            self.limiter.failed()
            raise _Retry("timed out") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            self.limiter.failed()
            raise _Retry(f"connection dropped: {_reason(exc)}") from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        log.info("GET %s %s %d %.0fms", path, _query(params), status, elapsed_ms)
        self.limiter.update(response.headers)

        if status == 429:
            delay = _retry_delay(response.headers)
            self.limiter.pause(delay if delay is not None else self.backoff)
            raise _Retry("429 rate limited", delay)
        if status >= 500:
            raise _Retry(f"HTTP {status}", _retry_delay(response.headers))
        if status == 401:
            self._rejected = f"Pipedrive rejected the API token (HTTP 401 on GET {path})"
            raise AuthError(self._rejected)
        try:
            data = orjson.loads(body)  # 2x the stdlib's speed on 500-deal pages
        except ValueError:
            if status < 400:
                raise _Retry("response was not valid JSON") from None
            data = {}
        if status >= 400:
            detail = data.get("error") if isinstance(data, dict) else None
            raise PipedriveError(
                f"Pipedrive answered HTTP {status} to GET {path}: {detail or body[:200]!r}"
            )
        if not isinstance(data, dict) or data.get("success") is False:
            raise _Retry("response was not a success envelope")
        tally.add(tokens=token_cost(path))
        return data

    # -- pagination -----------------------------------------------------------------------

    def iter_v2(
        self, path: str, params: dict[str, Any] | None = None, tally: Tally | None = None
    ) -> Iterator[list[dict]]:
        """Yield the pages of a v2 list endpoint, following ``additional_data.next_cursor``."""
        params = {**(params or {}), "limit": PAGE_LIMIT}
        while True:
            body = self.get(path, params, tally)
            yield body.get("data") or []
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return
            params = {**params, "cursor": cursor}

    def iter_v1(
        self, path: str, params: dict[str, Any] | None = None, tally: Tally | None = None
    ) -> Iterator[list[dict]]:
        """Yield the pages of a v1 list endpoint with ``start``/``limit`` pagination."""
        params = {**(params or {}), "limit": PAGE_LIMIT}
        start = 0
        while True:
            body = self.get(path, {**params, "start": start}, tally)
            data = body.get("data") or []
            yield data if isinstance(data, list) else [data]
            pagination = (body.get("additional_data") or {}).get("pagination") or {}
            if not pagination.get("more_items_in_collection"):
                return
            start = pagination.get("next_start") or start + len(data)


def _retry_delay(headers: httpx.Headers) -> float | None:
    """Pipedrive says when to come back in ``x-ratelimit-reset``; others use ``Retry-After``."""
    for name in ("retry-after", "x-ratelimit-reset"):
        value = _int_header(headers, name)
        if value is not None and value >= 0:
            return min(float(value), 120.0) + random.uniform(0, 0.25)
    return None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _query(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items() if k != "cursor") or "-"
