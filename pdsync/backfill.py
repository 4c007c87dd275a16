"""Reading deals' changelogs within a daily token budget, after a run's core entities.

Every deal's changelog costs at least one request of 20 tokens, so a whole account's history
(100,000 deals: 2M tokens) takes days of a budget that must also leave room for everything
else. Each run spends what is left of today's history budget (``sync_tokens``, purpose
``history``), on the deals that need it, in this order: deals whose observed change needs a
re-read (see history.py), open deals, deals closed in the last 12 months, the rest. A deal's
changelog, the state saying it was read and the tokens it cost commit together: a kill loses at
most the deals in flight, and the next run carries on. A 429 whose reset is hours away (the
account's daily budget is spent) pauses history until that reset (``x-ratelimit-reset``); the
core entities are already committed by then, so it never costs them anything.

A deal whose changelog fails (a 5xx after retries, a 400/403, more than ``_MAX_PAGES``) is
noted on the deal and passed over: it is tried again after every deal that never failed, and
given up on after ``MAX_FAILURES`` runs (``_pdsync_history.last_error`` says why). Only a
rejected token, an unreachable Pipedrive, a spent budget, or many deals failing in a row stop
the run. Workers check the stop, the run's deadline and the budget between pages: tokens are
reserved page by page. A database error ends history as failed, never the sync.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlite_utils

from .budget import TOKENS_PER_SEAT, active_users
from .client import PipedriveClient, Tally, token_cost
from .errors import AuthError, BudgetSpent, ConnectionFailed, PipedriveError
from .history import changelog_rows, custom_field_names, replace_history
from .store import Store
from .timestamps import format as format_ts
from .timestamps import now as utc_now
from .transaction import write_transaction

log = logging.getLogger("pdsync.history")

PURPOSE = "history"
SHARE_OF_SMALLEST_BUDGET = 5  # the default: a fifth of 30,000 x active users
CHANGELOG = "/v1/deals/{}/changelog"
PAGE_TOKENS = token_cost(CHANGELOG.format(1))  # 20
RUN_SECONDS = 300.0  # at most this long per run (or half --every): the next run carries on
_WORKERS = 4  # changelogs in flight; the rate limiter paces them
_BATCH = 500  # deals picked per query
_MAX_PAGES = 200  # 100,000 changes of one deal: more is an upstream gone wrong, not history
MAX_FAILURES = 3  # runs a deal's changelog may fail in before it is given up on
_FAILING_IN_A_ROW = 2 * _WORKERS  # deals failed in a row: Pipedrive, not the deals; stop


@dataclass
class HistoryResult:
    status: str = "skipped"  # skipped, paused, done, budget, stopped, failed
    deals: int = 0  # changelogs read this run
    failed: int = 0  # deals whose changelog failed this run (tried again, up to MAX_FAILURES)
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None

    def __str__(self) -> str:
        text = f"history: {self.status}, {self.deals} deals read, {self.tokens} tokens"
        if self.failed:
            text += f", {self.failed} failed"
        return text + (f" ({self.error})" if self.error else "")


def default_budget(db: sqlite_utils.Database) -> int:
    """A fifth of the smallest daily budget the account can have: 30,000 x active users."""
    return TOKENS_PER_SEAT * (active_users(db) or 1) // SHARE_OF_SMALLEST_BUDGET


def spent_today(db: sqlite_utils.Database) -> int:
    row = db.execute(
        "select tokens from sync_tokens where day = ? and purpose = ?", [utc_now()[:10], PURPOSE]
    ).fetchone()
    return row[0] if row else 0


def _pending_sql(limit: bool, failures: bool = True) -> str:
    year_ago = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-365 days')"
    return (
        "select d.id from deals d left join _pdsync_history h on h.deal_id = d.id"
        " where (h.read_at is null or h.reread = 1)"
        + (" and coalesce(h.failures, 0) < ?" if failures else "")
        + (
            # A deal whose changelog failed goes after every deal that did not.
            " order by coalesce(h.failures, 0) > 0, h.failed_at, case when h.reread = 1 then 0"
            " when d.status = 'open' and coalesce(d.is_deleted, 0) = 0 then 1"
            f" when d.close_time >= {year_ago} then 2 else 3 end, d.id limit ?"
            if limit
            else ""
        )
    )


def progress(db: sqlite_utils.Database, budget: int | None = None) -> dict[str, Any]:
    """How far the history is: deals read, deals left, and days left at this budget."""
    names = set(db.table_names())
    if "_pdsync_history" not in names or "deals" not in names:
        return {"deals": 0, "read": 0, "pending": 0, "share": None, "days_left": None}
    total = db.execute("select count(*) from deals").fetchone()[0]
    failures = "failures" in db["_pdsync_history"].columns_dict  # not yet migrated: no column
    args = [MAX_FAILURES] if failures else []
    pending = db.execute(f"select count(*) from ({_pending_sql(False, failures)})", args)
    pending = pending.fetchone()[0]
    state = db.execute("select paused_until, budget from sync_history where id = 1").fetchone()
    if budget is None:  # the one the last run had, else the default
        budget = state[1] if state and state[1] is not None else default_budget(db)
    days = None
    if pending and budget:
        days = math.ceil(pending * PAGE_TOKENS / budget)
    return {
        "deals": total,
        "read": total - pending,
        "pending": pending,
        "share": (total - pending) / total if total else None,
        "budget": budget,
        "spent_today": spent_today(db),
        "days_left": 0 if not pending else days,
        "paused_until": state[0] if state else None,
    }


class Backfill:
    """One run's history reading. ``Backfill(db, client, budget).run()``."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        client: PipedriveClient,
        budget: int | None = None,
        stop: threading.Event | None = None,
        seconds: float = RUN_SECONDS,
    ) -> None:
        self.db = db
        self.client = client
        self.budget = default_budget(db) if budget is None else budget
        self.stop = stop or threading.Event()
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.store = Store(db)
        self.result = HistoryResult()
        self._names = custom_field_names(db)
        self._halt = threading.Event()  # this run's own stop: workers quit at their next page
        self._lock = threading.Lock()
        self._left = 0  # tokens not yet reserved, page by page, by the workers
        self._failing = 0  # deals failed in a row: many means Pipedrive, not the deals

    def run(self) -> HistoryResult:
        if self.budget <= 0:
            return self.result
        paused = self.db.execute("select paused_until from sync_history where id = 1").fetchone()
        if paused and paused[0] and paused[0] > utc_now():
            self.result.status = "paused"
            return self.result
        self._left = self.budget - spent_today(self.db)
        self.result.status = "done"
        started = time.perf_counter()
        pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="pdsync-history")
        try:
            self._read(pool)
        except sqlite3.Error as exc:  # locked, full, ...: history waits, the sync stays ok
            self.result.status = "failed"
            self.result.error = f"database error: {exc}"[:500]
            log.warning("history: %s", self.result.error)
        finally:
            # Whatever ended the run, a worker still reading stops at its next page.
            self._halt.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.result.seconds = time.perf_counter() - started
            try:
                self._note()
            except sqlite3.Error as exc:
                log.warning("history: could not note the run: %s", exc)
        return self.result

    def _read(self, pool: ThreadPoolExecutor) -> None:
        """Read changelogs in order while tokens are left, ``_WORKERS`` at a time."""
        picked: deque[int] = deque()
        seen: set[int] = set()
        flying: deque[tuple[int, Future]] = deque()
        while True:
            if not picked and not self._should_stop():
                batch = self.db.execute(_pending_sql(True), [MAX_FAILURES, _BATCH]).fetchall()
                picked.extend(d for (d,) in batch if d not in seen)
            while picked and len(flying) < _WORKERS and not self._should_stop():
                deal_id = picked.popleft()
                seen.add(deal_id)
                flying.append((deal_id, pool.submit(self._fetch, deal_id)))
            if not flying:
                return
            deal_id, future = flying.popleft()
            entries, tally, reserved, fetched_at, problem = future.result()
            with self._lock:  # retries cost tokens no page reserved
                self._left -= tally.tokens - reserved
            if problem is None or isinstance(problem, _Gone):
                self._failing = 0
                self._save(deal_id, entries, tally, fetched_at, gone=problem is not None)
            elif isinstance(problem, _Stopped):
                self._count(tally)  # left unread: the next run reads it whole
            elif isinstance(problem, (AuthError, ConnectionFailed, BudgetSpent)):
                self._count(tally)
                self._stop_on(problem)
            else:
                self._fail(deal_id, tally, problem)

    def _should_stop(self) -> bool:
        if self.result.status in ("paused", "stopped", "failed", "budget"):
            return True
        if self.stop.is_set() or self._halt.is_set():
            self.result.status = "stopped"
            return True
        if time.monotonic() > self.deadline:
            self.result.status = "stopped"
            self.result.error = f"ran {self.seconds:g}s; the next run carries on"
            return True
        with self._lock:
            if self._left < PAGE_TOKENS:
                self.result.status = "budget"
                return True
        return False

    def _halted(self) -> bool:
        return self.stop.is_set() or self._halt.is_set() or time.monotonic() > self.deadline

    def _reserve(self) -> bool:
        """A page's tokens from what is left today, or False: the budget is spent."""
        with self._lock:
            if self._left < PAGE_TOKENS:
                return False
            self._left -= PAGE_TOKENS
            return True

    def _fetch(self, deal_id: int) -> tuple[list[dict], Tally, int, str, Exception | None]:
        """A deal's whole changelog, oldest first, and when it was asked (on a worker thread:
        no database)."""
        fetched_at = utc_now()
        tally = Tally()
        entries: list[dict] = []
        reserved = 0
        try:
            pages = iter(self.client.iter_v2(CHANGELOG.format(deal_id), tally=tally))
            number = 0
            while True:
                # Between pages: a stop, the run's deadline or the budget leaves the deal unread.
                if self._halted() or not self._reserve():
                    return [], tally, reserved, fetched_at, _Stopped()
                reserved += PAGE_TOKENS
                try:
                    page = next(pages)
                except StopIteration:
                    break
                number += 1
                entries.extend(page)
                if not getattr(page, "next_cursor", None):
                    break  # the last page: nothing more to reserve or ask
                if number >= _MAX_PAGES:
                    raise PipedriveError(
                        f"deal {deal_id}'s changelog goes on past {_MAX_PAGES} pages; stopped"
                    )
        except PipedriveError as exc:
            if "HTTP 404" in str(exc) or "HTTP 410" in str(exc):
                return [], tally, reserved, fetched_at, _Gone()
            return [], tally, reserved, fetched_at, exc
        except Exception as exc:  # a bug must not be silent, nor kill the run's result
            return [], tally, reserved, fetched_at, exc
        entries.reverse()  # the changelog lists newest first
        return entries, tally, reserved, fetched_at, None

    def _save(
        self, deal_id: int, entries: list[dict], tally: Tally, fetched_at: str, gone: bool
    ) -> None:
        with write_transaction(self.db):
            if gone:  # purged upstream: keep what is known, read no more
                self.db.execute(
                    "insert into _pdsync_history (deal_id, read_at, reread) values (?, ?, 0)"
                    " on conflict (deal_id) do update set read_at = excluded.read_at, reread = 0,"
                    " failures = 0, failed_at = null, last_error = null",
                    [deal_id, utc_now()],
                )
            else:
                rows = changelog_rows(deal_id, entries, self._names)
                replace_history(self.db, deal_id, rows, utc_now(), fetched_at)
            self.store.add_spend(PURPOSE, tally.requests, tally.tokens)
        self._tally(tally)
        self.result.deals += 1

    def _tally(self, tally: Tally) -> None:
        self.result.requests += tally.requests
        self.result.tokens += tally.tokens

    def _count(self, tally: Tally) -> None:
        if tally.requests:
            with write_transaction(self.db):
                self.store.add_spend(PURPOSE, tally.requests, tally.tokens)
            self._tally(tally)

    def _fail(self, deal_id: int, tally: Tally, problem: Exception) -> None:
        """One deal's changelog failed: note it on the deal and carry on with the others. It is
        tried again after the deals that never failed; after ``MAX_FAILURES``, never."""
        message = self._message(problem)
        with write_transaction(self.db):
            self.store.add_spend(PURPOSE, tally.requests, tally.tokens)
            self.db.execute(
                "insert into _pdsync_history (deal_id, reread, failures, failed_at, last_error)"
                " values (?, 0, 1, ?, ?) on conflict (deal_id) do update set"
                " failures = failures + 1, failed_at = excluded.failed_at,"
                " last_error = excluded.last_error",
                [deal_id, utc_now(), message],
            )
            failures = self.db.execute(
                "select failures from _pdsync_history where deal_id = ?", [deal_id]
            ).fetchone()[0]
            if failures >= MAX_FAILURES:
                self.db.execute(
                    "update _pdsync_history set last_error = ? where deal_id = ?",
                    [f"given up after {failures} failures: {message}"[:500], deal_id],
                )
        self._tally(tally)
        self.result.failed += 1
        given_up = " (given up)" if failures >= MAX_FAILURES else ""
        self.result.error = f"deal {deal_id}{given_up}: {message}"[:500]
        log.warning("history: %s", self.result.error)
        self._failing += 1
        if self._failing >= _FAILING_IN_A_ROW:  # not one deal: Pipedrive is unwell, wait
            self.result.status = "failed"

    def _message(self, problem: Exception) -> str:
        message = self.client.redact.text(str(problem) or type(problem).__name__)
        if not isinstance(problem, PipedriveError):
            message = f"{type(problem).__name__}: {message}"
        return message[:500]

    def _stop_on(self, problem: Exception) -> None:
        message = self._message(problem)
        if isinstance(problem, BudgetSpent):
            # Until Pipedrive's reset, as it said (a worker that met the closed limiter does
            # not know it: the first one's stands); unknown, the next UTC day.
            if problem.until is not None:
                self._pause(format_ts(datetime.fromtimestamp(problem.until, timezone.utc)))
            elif self.result.status != "paused":
                tomorrow = datetime.now(timezone.utc).date() + timedelta(days=1)
                self._pause(format_ts(datetime(tomorrow.year, tomorrow.month, tomorrow.day)))
            self.result.status = "paused"
        else:
            self.result.status = "failed"
        self.result.error = message
        log.warning("history: %s", self.result.error)

    def _pause(self, until: str) -> None:
        with write_transaction(self.db):
            self.db.execute(
                "insert into sync_history (id, paused_until) values (1, ?)"
                " on conflict (id) do update set paused_until = excluded.paused_until",
                [until],
            )

    def _note(self) -> None:
        with write_transaction(self.db):
            self.db.execute(
                "insert into sync_history (id, last_run_at, last_error, budget)"
                " values (1, ?, ?, ?) on conflict (id) do update set"
                " last_run_at = excluded.last_run_at, last_error = excluded.last_error,"
                " budget = excluded.budget",
                [utc_now(), self.result.error, self.budget],
            )


class _Stopped(Exception):
    """Stopped between pages (a stop, the deadline, the budget): the deal is left unread."""


class _Gone(Exception):
    """The deal's changelog is not there (404): purged upstream."""
