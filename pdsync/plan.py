"""What a run does for each entity, decided before anything is fetched: whether it is due,
whether it is a full pass, and where each stream starts."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import sqlite_utils

from . import timestamps
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
    no_watermark = all(mark is None for mark in marks)
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
