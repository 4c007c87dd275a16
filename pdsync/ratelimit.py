"""Pacing requests by Pipedrive's burst limit, read from its ``x-ratelimit-*`` headers."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

import httpx

from .errors import BudgetSpent

# A burst window resets within seconds. A reset further away than this means the daily token
# budget is spent (or a header is absurd): waiting would stall the sync for hours, so it stops.
MAX_RATE_WAIT = 120.0


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
        self.closed: str | None = None  # why nobody may send any more (the budget is spent)

    def acquire(self, priority: float = 0.0) -> None:
        with self._cond:
            me = (priority, next(self._tickets))
            self._waiting.append(me)
            try:
                while True:
                    if self.closed:
                        raise BudgetSpent(self.closed)
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
        limit = int_header(headers, "x-ratelimit-limit")
        remaining = int_header(headers, "x-ratelimit-remaining")
        reset = int_header(headers, "x-ratelimit-reset")
        with self._cond:
            self._probing = False
            self.known = True
            self.limit = limit
            if remaining == 0:
                wait = min(reset or 1, MAX_RATE_WAIT)  # longer: the client stops (BudgetSpent)
                self.blocked_until = max(self.blocked_until, self._clock() + wait)
            self._cond.notify_all()

    def close(self, reason: str) -> None:
        """Nobody sends again: whoever waits, and whoever comes, raises ``BudgetSpent``."""
        with self._cond:
            self.closed = reason
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
            seconds = min(seconds, MAX_RATE_WAIT)
            self.blocked_until = max(self.blocked_until, self._clock() + seconds)
            self._cond.notify_all()


def int_header(headers: httpx.Headers, name: str) -> int | None:
    """A header's whole number; None when it is missing or not a finite number ("inf" too)."""
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError, OverflowError):
        return None
