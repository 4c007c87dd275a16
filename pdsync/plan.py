"""What a run does for each entity, decided before anything is fetched: whether it is due,
whether it is a full pass, and where each stream starts."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import sqlite_utils

from . import first_load, paced, timestamps
from .client import token_cost
from .entities import EntitySpec
from .store import Store
from .transaction import write_transaction

log = logging.getLogger("pdsync")

# Ask again for a little before the watermark: a write Pipedrive commits late with an
# earlier update_time would otherwise be skipped for good. Re-reading it is harmless.
LOOKBACK = timedelta(seconds=60)
# Pipedrive keeps deleted deals listable for 30 days; a deals sync older than that may have
# missed deletions, so it reconciles with a full pass (a day early, to be safe).
DELETED_DEALS_KEPT = timedelta(days=29)


# What an incremental run with no changes may cost (issue #14): every run pays one page per
# stream of the lists that change by the minute; the hourly lists share what is left.
RUN_REQUESTS = 16
RUN_TOKENS = 250


def due_now(
    store: Store, specs: list[EntitySpec], full: bool, only: set[str] | list[str]
) -> tuple[list[EntitySpec], dict[str, int]]:
    """The specs this run fetches, in their order, and the pages a paced pass of each may
    read (paced.py). Lists on a refresh interval (reference lists, the field definitions of
    all but deals, users, projects and tasks) are spread over runs: those due go most overdue
    first while the run stays within RUN_REQUESTS and RUN_TOKENS; the rest wait for the next
    run, first in line. The most overdue list always goes. A whole v2 list bigger than the
    room left is read a part at a time. A paced pass in progress goes on every run with at
    least a page per stream, but after the others due: it has the room they leave (a pass of
    50,000 tasks takes a day of runs, and users or field definitions must not wait for it)."""
    fields_tables = {s.fields_table for s in specs if s.fields_table}
    chosen: list[EntitySpec] = []
    waiting: list[tuple[str, int, EntitySpec]] = []
    passes: list[EntitySpec] = []  # paced passes in progress
    for i, spec in enumerate(specs):
        meta = store.metadata(spec.name)
        if spec.refresh is None or full or spec.name in only or not meta.get("last_success_time"):
            chosen.append(spec)
        elif paced.capable(spec, fields_tables) and paced.in_progress(store, spec):
            passes.append(spec)
        elif due(store, spec, full, only):
            waiting.append((meta.get("last_success_time") or "", i, spec))
    requests = sum(len(s.streams) for s in chosen if not s.dependent)
    tokens = sum(token_cost(st.path) for s in chosen if not s.dependent for st in s.streams)
    # What the passes in progress read at least (a page per stream), kept for them.
    reserved = sum(len(s.streams) for s in passes)
    reserved_tokens = sum(token_cost(st.path) for s in passes for st in s.streams)
    pages: dict[str, int] = {}
    for n, (_, _, spec) in enumerate(sorted(waiting, key=lambda w: (w[0], w[1]))):
        more_requests, more_tokens = expected_cost(store, spec)
        if paced.capable(spec, fields_tables):
            more_requests, more_tokens = _paced_share(
                store, spec, pages, requests + reserved, tokens + reserved_tokens
            )
        fits = (
            requests + reserved + more_requests <= RUN_REQUESTS
            and tokens + reserved_tokens + more_tokens <= RUN_TOKENS
        )
        if n == 0 or fits:
            chosen.append(spec)
            requests, tokens = requests + more_requests, tokens + more_tokens
        else:
            pages.pop(spec.name, None)
    for spec in passes:
        reserved -= len(spec.streams)
        reserved_tokens -= sum(token_cost(st.path) for st in spec.streams)
        more_requests, more_tokens = _paced_share(
            store, spec, pages, requests + reserved, tokens + reserved_tokens
        )
        chosen.append(spec)
        requests, tokens = requests + more_requests, tokens + more_tokens
    return [spec for spec in specs if spec in chosen], pages


def _paced_share(
    store: Store, spec: EntitySpec, pages: dict[str, int], requests: int, tokens: int
) -> tuple[int, int]:
    """A paced pass of ``spec`` given as many pages as the run has room for beside
    ``requests`` and ``tokens`` (a page per stream at least): its pages per stream go in
    ``pages``; returns the requests and tokens it may spend."""
    more_requests, more_tokens = expected_cost(store, spec)
    streams = len(spec.streams)
    room = max(streams, RUN_REQUESTS - requests)
    per_page = more_tokens / max(more_requests, 1)
    room = min(room, max(streams, int((RUN_TOKENS - tokens) // max(per_page, 1))))
    pages[spec.name] = max(1, room // streams)
    return min(more_requests, room), min(more_tokens, int(room * per_page))


def expected_cost(store: Store, spec: EntitySpec) -> tuple[int, int]:
    """Requests and tokens a whole list cost last time (a page per stream, if never)."""
    meta = store.metadata(spec.name)
    floor = len(spec.streams), sum(token_cost(stream.path) for stream in spec.streams)
    return max(meta.get("requests") or 0, floor[0]), max(meta.get("tokens") or 0, floor[1])


def due(store: Store, spec: EntitySpec, full: bool, only: set[str] | list[str]) -> bool:
    """Whether this run fetches ``spec``: reference data waits for its refresh interval
    unless the run is full or names it."""
    if spec.refresh is None or full or spec.name in only:
        return True
    meta = store.metadata(spec.name)
    return meta.get("status") != "success" or older_than(
        meta.get("last_success_time"), spec.refresh
    )


def begin_entity(db: sqlite_utils.Database, store: Store, spec: EntitySpec, full: bool) -> bool:
    """Mark ``spec`` in progress and say whether this run is a full pass of it: asked for, one
    that did not finish, no usable watermark, or deals older than Pipedrive keeps deletions."""
    meta = store.metadata(spec.name)
    has_rows = store.count(spec) > 0
    marks = [store.watermark(spec.name, s.key) for s in spec.streams]
    # A first load in progress has no watermark yet, only its resume point (first_load.py).
    no_watermark = all(mark is None for mark in marks) and not first_load.in_progress(store, spec)
    # A watermark from a bad record (year 9999, not a timestamp) hides every later change:
    # forget it and reconcile with a full pass.
    bad_watermark = any(mark is not None and not timestamps.plausible(mark) for mark in marks)
    if bad_watermark:
        log.warning("%s: a watermark is not a sane timestamp; syncing it in full", spec.name)
    stale_deals = spec.name == "deals" and older_than(
        meta.get("last_success_time"), DELETED_DEALS_KEPT
    )
    full_pass = spec.incremental and (
        full
        or bool(meta.get("full_pending"))
        or bad_watermark
        or (has_rows and no_watermark)
        or (has_rows and stale_deals)
    )
    with write_transaction(db):
        if full_pass and (full or bad_watermark or not meta.get("full_pending")):
            # A new full pass refetches from the beginning; a pending one resumes.
            store.clear_watermarks(spec.name)
            store.clear_seen(spec)
            store.start_pass(spec.name)  # what changed since is not taken for gone
        store.update_metadata(
            spec.name, status="in_progress", error_message=None, full_pending=int(full_pass)
        )
    return full_pass


def older_than(value: str | None, age: timedelta) -> bool:
    if not value:
        return False
    try:
        return timestamps.parse(value) < datetime.now(timezone.utc) - age
    except ValueError:
        return True


def minus(value: str | None, delta: timedelta) -> str | None:
    if not value:
        return None
    try:
        return timestamps.format(timestamps.parse(value) - delta)
    except ValueError:
        return None  # never sent to Pipedrive (a 400 on every run); begin_entity reconciles
