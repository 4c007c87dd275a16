"""A small Pipedrive HTTP client: auth header, pagination, retries, pacing and accounting.

It only reads. It is thread-safe (one ``httpx.Client`` shared by the entity fetchers) and never
puts the API token anywhere but the ``x-api-token`` header.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import httpx
import orjson

from . import deadlines
from .errors import AuthError, BudgetSpent, ConnectionFailed, LoopingStream, PipedriveError
from .ratelimit import MAX_RATE_WAIT, RateLimiter, int_header

__all__ = [
    "AuthError",
    "BudgetSpent",
    "ConnectionFailed",
    "LoopingStream",
    "PipedriveClient",
    "PipedriveError",
    "RateLimiter",
    "Tally",
]
from .redact import Redactor, bad_header_value, url_without_credentials
from .timestamps import latest_plausible, plausible
from .timestamps import normalize as normalize_ts

DEFAULT_BASE_URL = "https://api.pipedrive.com"
PAGE_LIMIT = 500  # the most Pipedrive allows per page

log = logging.getLogger("pdsync.http")


# A page of 500 records is a few MB even with wide custom fields; an answer past this is not
# one, and reading it on would only exhaust memory.
MAX_BODY = 64 * 1024 * 1024


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
    """Token cost of one GET of ``path`` (``/api/v2/deals``, ``/v1/deals/7/changelog``)."""
    if path.startswith("/api/v2/"):
        key = ("v2", path[len("/api/v2") :])
    elif path.startswith("/v1/"):
        key = ("v1", path[len("/v1") :])
    else:
        return 0
    # The table names a record's own paths by template: /deals/{id}/changelog.
    template = "/".join("{id}" if part.isdigit() else part for part in key[1].split("/"))
    return _token_costs().get(key, _token_costs().get((key[0], template), 0))


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
        deadline: float | None = None,
    ) -> None:
        if not token:
            raise AuthError("no Pipedrive API token given")
        problem = bad_header_value(token)
        if problem:
            # Said before any request: httpx would raise with the header in its message.
            raise AuthError(f"the Pipedrive API token cannot be sent: {problem}")
        if url_without_credentials(base_url) != base_url:
            raise PipedriveError(
                "the base URL must not hold a user name or password: "
                f"{url_without_credentials(base_url)}"
            )
        self.base_url = base_url.rstrip("/")
        self.redact = Redactor(token)
        self.max_retries = max_retries
        self.connect_retries = connect_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # The whole response, headers and body, not only each read (see deadlines.py).
        self.deadline = deadline if deadline is not None else timeout * 4
        self.limiter = RateLimiter()
        self._rejected: str | None = None  # after one 401, no request is sent again
        self._spent: str | None = None  # after the daily budget is spent, none either
        self._spent_until: float | None = None  # when Pipedrive said it resets (time.time())
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"x-api-token": token, "accept": "application/json", "user-agent": "pdsync"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            verify=_needs_certificates(self.base_url),
        )
        # httpx's own transports (and those for proxies from the environment, NO_PROXY kept),
        # their sockets bounded by each request's deadline.
        deadlines.bound(self._http)

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
                reason = self.redact.text(retry.reason)
                connect_refused = reason.startswith("could not connect")
                connect_failures += connect_refused
                limit = self.connect_retries if connect_refused else self.max_retries
                if (connect_refused and connect_failures > limit) or attempt > self.max_retries:
                    if connect_refused:
                        raise ConnectionFailed(f"{reason} ({self.base_url})") from None
                    raise PipedriveError(
                        f"GET {path} failed after {attempt} attempts: {reason}"
                    ) from None
                delay = retry.delay
                if delay is None:
                    delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                    delay *= random.uniform(0.5, 1.5)  # jitter: fetchers must not retry in step
                tally.add(retries=1)
                log.warning("GET %s: %s; retry %d in %.1fs", path, reason, attempt, delay)
                time.sleep(delay)

    def _attempt(
        self, path: str, params: dict[str, Any], tally: Tally, priority: float = 0.0
    ) -> dict:
        self.limiter.acquire(priority)
        answered = False
        try:
            if self._rejected:
                raise AuthError(self._rejected)
            if self._spent:
                raise BudgetSpent(self._spent, self._spent_until)
            started = time.perf_counter()
            tally.add(requests=1)
            response, body = self._send(path, params)
            # Before the limiter hears the answer: it would let the others send at once.
            self._check_budget(path, response)
            self.limiter.update(response.headers)
            answered = True
        finally:
            # Whatever went wrong (even an exception nobody expected), the next request may
            # probe the rate limit: a flag left set would make every other stream wait forever.
            if not answered:
                self.limiter.failed()
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        log.info("GET %s %s %d %.0fms", path, _query(params), status, elapsed_ms)

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
            if not (isinstance(detail, str) and detail):
                detail = body[:100_000].decode("utf-8", "replace")
            # Secrets out before the cut: a cut through the token would leave part of it.
            text = self.redact.text(detail)[:300]
            raise PipedriveError(f"Pipedrive answered HTTP {status} to GET {path}: {text}")
        if not isinstance(data, dict) or data.get("success") is False:
            raise _Retry("response was not a success envelope")
        tally.add(tokens=token_cost(path))
        return data

    def _send(self, path: str, params: dict[str, Any]) -> tuple[httpx.Response, bytes]:
        """One GET, read whole within the deadline. Every failure of the HTTP layer is a
        ``_Retry``: a truncated, stalled, trickling or undecodable answer is worth another try."""
        try:
            with deadlines.deadline(self.deadline):
                with self._http.stream("GET", path, params=params) as response:
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > MAX_BODY:
                            raise _Retry(f"the response is larger than {MAX_BODY >> 20} MB")
                        if deadlines.expired():  # a transport without the deadline's sockets
                            raise httpx.ReadTimeout("the response took longer than its deadline")
                    return response, b"".join(chunks)
        except httpx.ConnectError as exc:
            raise _Retry(f"could not connect: {self._reason(exc)}") from None
        except httpx.TimeoutException:
            raise _Retry(f"timed out (no whole answer within {self.deadline:.0f}s)") from None
        except httpx.DecodingError as exc:
            raise _Retry(f"the response could not be decoded: {self._reason(exc)}") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"connection dropped: {self._reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {self._reason(exc)}") from None

    def _reason(self, exc: Exception) -> str:
        text = self.redact.text(str(exc) or type(exc).__name__)
        return text.splitlines()[0][:200] if text else type(exc).__name__

    def _check_budget(self, path: str, response: httpx.Response) -> None:
        """Stop at once when Pipedrive says to come back hours from now."""
        headers = response.headers
        remaining = int_header(headers, "x-ratelimit-remaining")
        exhausted = response.status_code == 429 or remaining == 0
        reset = int_header(headers, "x-ratelimit-reset")
        if response.status_code == 429:
            reset = max(reset or 0, int_header(headers, "retry-after") or 0)
        if not exhausted or reset is None or reset <= MAX_RATE_WAIT:
            return
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + reset))
        hours, minutes = divmod(reset // 60, 60)
        self._spent = (
            f"Pipedrive's rate limit resets in {hours}h {minutes:02d}m (at {at}, on GET {path}):"
            " the daily token budget is spent; sync again after that"
        )
        self._spent_until = time.time() + reset
        self.limiter.close(self._spent)
        raise BudgetSpent(self._spent, self._spent_until)

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
        followed: set[str] = set()
        repeats = _Repeats(path)  # new cursors, the same records: a cursor the server ignores
        for page in itertools.count():
            body = self.get(path, params, tally, priority + page)
            data = _list(body)
            repeats.check(data)
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            yield CursorPage(data, cursor if isinstance(cursor, str) and cursor else None)
            if not cursor:
                return
            if not isinstance(cursor, str) or cursor in followed:
                raise LoopingStream(
                    f"GET {path}: Pipedrive sent page {page + 2}'s cursor again (or a cursor"
                    " that is not text); stopped so the stream cannot loop"
                )
            followed.add(cursor)
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
        repeats = _Repeats(path)
        for page in itertools.count():
            body = self.get(path, {**params, "start": start}, tally, priority + page)
            data = _list(body)
            repeats.check(data)
            yield data
            pagination = _pagination(body)
            if not pagination.get("more_items_in_collection"):
                return
            if not data:
                raise LoopingStream(f"GET {path}: an empty page says there is more; stopped")
            start = _next_start(path, pagination.get("next_start"), start, len(data))

    def iter_v1_since(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        since: str | None = None,
        tally: Tally | None = None,
        priority: float = 0.0,
    ) -> Iterator[list[dict]]:
        """Page a v1 list sorted by update_time by moving ``updated_since`` forward.

        With offset pagination, a record updated between two requests moves to the end of
        the sorted list and shifts the rest one place left, so plain ``start += limit``
        silently skips a record. Restarting from the newest update_time seen cannot skip;
        ``start`` only advances while a whole page shares one update_time.
        """
        since = since or "1970-01-01T00:00:00Z"
        start = 0
        asked: set[tuple[str, int]] = set()
        repeats = _Repeats(path)
        for page in itertools.count():
            asked.add((since, start))
            query = {**(params or {}), "updated_since": since, "start": start, "limit": PAGE_LIMIT}
            body = self.get(path, query, tally, priority + page)
            data = _list(body)
            repeats.check(data)
            yield data
            pagination = _pagination(body)
            if not pagination.get("more_items_in_collection") or not data:
                return
            # Only a believable time moves the next request's updated_since: "not a time"
            # sorts after every digit, and Pipedrive would answer 400 on every run.
            latest = latest_plausible()
            times = (normalize_ts(r.get("update_time")) for r in data if isinstance(r, dict))
            newest = max((t for t in times if plausible(t, latest)), default="")
            if newest > since:
                since, start = newest, 0
            else:
                start += len(data)
            if (since, start) in asked:
                raise LoopingStream(f"GET {path}: asked for the same page twice; stopped")


class CursorPage(list):
    """A v2 page's records, and the cursor of the page after it (None at the end)."""

    def __init__(self, records: list, next_cursor: str | None) -> None:
        super().__init__(records)
        self.next_cursor = next_cursor


class _Repeats:
    """Stops a stream whose server ignores where it asked to go on (``start``, ``cursor``):
    the same page, again and again.

    Moving a v1 ``updated_since`` to a page's newest update_time can bring that page back
    once, legitimately (when all of it shares that time); a third time in a row never is.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.last: list | None = None
        self.times = 0

    def check(self, data: list) -> None:
        # A record without an id (a changelog entry) is its own key: pages of id-less
        # entries all look alike by id, and a deal with 1,500 changes would stop at page 3.
        ids = [_key(r) for r in data]
        self.times = self.times + 1 if ids and ids == self.last else 1
        self.last = ids
        if self.times >= 3:
            raise LoopingStream(
                f"GET {self.path}: the same page came back {self.times} times in a row although"
                " pdsync asked for the next; stopped so the stream cannot loop"
            )


def _key(record: Any) -> Any:
    if isinstance(record, dict):
        key = record.get("id")
        return record if key is None else key
    return record


def _list(body: dict) -> list:
    data = body.get("data") or []
    return data if isinstance(data, list) else [data]


def _pagination(body: dict) -> dict:
    """v1's start/limit/more_items_in_collection: under additional_data.pagination, or (the
    leads lists) straight in additional_data."""
    additional = body.get("additional_data")
    if not isinstance(additional, dict):
        return {}
    if "pagination" in additional:
        return additional["pagination"] if isinstance(additional["pagination"], dict) else {}
    return additional


def _next_start(path: str, next_start: Any, start: int, got: int) -> int:
    """The next offset; one that does not move forward would loop for ever."""
    if next_start is None:
        next_start = start + got
    if type(next_start) is not int or next_start <= start:
        raise LoopingStream(
            f"GET {path}: Pipedrive's next_start {next_start!r} does not move past {start};"
            " stopped so the stream cannot loop"
        )
    return next_start


def _retry_delay(headers: httpx.Headers) -> float | None:
    """Pipedrive says when to come back in ``x-ratelimit-reset``; others use ``Retry-After``."""
    for name in ("retry-after", "x-ratelimit-reset"):
        value = int_header(headers, name)
        if value is not None and value >= 0:
            return min(float(value), 120.0) + random.uniform(0, 0.25)
    return None


def _needs_certificates(base_url: str) -> bool:
    """Whether TLS can happen: loading the CA certificates took a third of a no-change sync's
    time against a plain-HTTP Pipedrive (a local fake). A proxy from the environment may be
    HTTPS, so with one they load as before."""
    if not base_url.lower().startswith("http://"):
        return True
    return any(name.lower().endswith("_proxy") for name in os.environ)


def _query(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items() if k != "cursor") or "-"
