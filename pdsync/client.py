"""A small Pipedrive HTTP client: auth header, pagination, retries, pacing and accounting.

It only reads. It is thread-safe (one ``httpx.Client`` shared by the entity fetchers) and never
puts the API token anywhere but the ``x-api-token`` header.
"""

from __future__ import annotations

import csv
import itertools
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
    """Paces requests so that a normal sync never sees a 429, and serves the longest stream.

    Pipedrive's burst limit is ``x-ratelimit-limit`` requests per token in a rolling 2-second
    window. The fetchers share one token, so the limiter keeps its own record of when requests
    went out and never lets more than the limit into any window; when Pipedrive says
    ``x-ratelimit-remaining: 0`` it also waits for ``x-ratelimit-reset``. Until the first answer
    tells the limit, one request goes out at a time.

    Past the first quarter of a window, requests go out evenly spaced, not as fast as
    possible: a window filled in one burst empties in one burst 2 seconds later, and fetchers
    that each wait for their previous page cannot use a burst of slots.

    A sync lasts as long as its longest stream, whose pages follow one another (each brings
    the next cursor). So the stream deepest into its pages (``priority``: the client passes
    the page number) leads: it goes as soon as its next page is ready and the window has room,
    without waiting for the spacing. Every other request is served first come, first served
    in the slots the leader leaves, so no stream starves.
    """

    WINDOW = 2.0
    # Pipedrive counts arrivals, we count departures: keep a slot and a little time spare
    # for requests that travel at different speeds.
    MARGIN = 0.05
    POLL = 0.1

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._probing = False
        self._sent: deque[tuple[float, float]] = deque()  # (when, priority) in the window
        self._waiting: list[tuple[float, int]] = []  # (priority, ticket) of who waits
        self._tickets = itertools.count()
        self._next_spaced = 0.0  # when the next request that is not the leader may go
        self.limit: int | None = None
        self.known = False
        self.blocked_until = 0.0

    def acquire(self, priority: float = 0.0) -> None:
        with self._cond:
            me = (priority, next(self._tickets))
            self._waiting.append(me)
            try:
                while True:
                    now = self._clock()
                    wait = self._wait(now, me)
                    if wait is not None and wait <= 0:
                        self._take(now, me)
                        return
                    # None: others go first. Whoever goes wakes the rest; the poll is for
                    # a line that changed as requests left the window.
                    self._cond.wait(self.POLL if wait is None else min(wait, self.POLL))
            except BaseException:
                if me in self._waiting:
                    self._waiting.remove(me)
                    self._cond.notify_all()
                raise

    def _take(self, now: float, me: tuple[float, int]) -> None:
        self._waiting.remove(me)
        self._probing = not self.known
        if self.limit is not None:
            self._next_spaced = max(self._next_spaced, now) + self._gap()
        self._sent.append((now, me[0]))
        self._cond.notify_all()  # the next in line may go too

    def _gap(self) -> float:
        return (self.WINDOW + self.MARGIN) / self._allowed()

    def _allowed(self) -> int:
        return max((self.limit or 1) - 1, 1)

    def _wait(self, now: float, me: tuple[float, int]) -> float | None:
        """Seconds until ``me`` may go (0 or less: now); None while others go first."""
        window = self.WINDOW + self.MARGIN
        while self._sent and self._sent[0][0] <= now - window:
            self._sent.popleft()
        # The leader: a request at least as deep as any in the window (its stream's next page).
        deepest = max((p for _, p in self._sent), default=float("-inf"))
        leaders = [w for w in self._waiting if w[0] >= deepest]
        if leaders:
            first = max(leaders, key=lambda w: (w[0], -w[1]))
        else:
            first = min(self._waiting, key=lambda w: w[1])
        if me != first:
            return None
        if now < self.blocked_until:
            return self.blocked_until - now
        if not self.known:
            return 1.0 if self._probing else 0.0  # woken early when the probe's answer arrives
        if self.limit is None:
            return 0.0
        if len(self._sent) >= self._allowed():
            return self._sent[0][0] + window - now
        if me in leaders or len(self._sent) < self._allowed() // 4:
            return 0.0
        return self._next_spaced - now

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
        self,
        path: str,
        params: dict[str, Any] | None = None,
        tally: Tally | None = None,
        priority: float = 0.0,
    ) -> dict:
        """GET ``path`` and return the decoded JSON body, retrying what is worth retrying.

        ``priority`` orders requests that wait for the rate limiter: higher goes first.
        """
        tally = tally if tally is not None else Tally()
        attempt = 0
        connect_failures = 0
        while True:
            try:
                return self._attempt(path, params or {}, tally, priority)
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

    def _attempt(
        self, path: str, params: dict[str, Any], tally: Tally, priority: float = 0.0
    ) -> dict:
        self.limiter.acquire(priority)
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
        self,
        path: str,
        params: dict[str, Any] | None = None,
        tally: Tally | None = None,
        priority: float = 0.0,
    ) -> Iterator[list[dict]]:
        """Yield the pages of a v2 list endpoint, following ``additional_data.next_cursor``.

        Each page asks the rate limiter with ``priority`` plus the pages already fetched:
        the deeper a stream, the likelier it is the longest, which the whole sync waits for.
        """
        params = {**(params or {}), "limit": PAGE_LIMIT}
        for page in itertools.count():
            body = self.get(path, params, tally, priority + page)
            yield body.get("data") or []
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return
            params = {**params, "cursor": cursor}

    def iter_v1(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        tally: Tally | None = None,
        priority: float = 0.0,
    ) -> Iterator[list[dict]]:
        """Yield the pages of a v1 list endpoint with ``start``/``limit`` pagination."""
        params = {**(params or {}), "limit": PAGE_LIMIT}
        start = 0
        for page in itertools.count():
            body = self.get(path, {**params, "start": start}, tally, priority + page)
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
