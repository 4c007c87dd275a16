"""First loads in id order: an incremental v2 list read whole, fast to write.

Read in update_time order (what lets each page's watermark commit with it), a list's ids come
in no order, and every row lands on a different leaf of the table's B-tree: SQLite then
writes and checkpoints a page of the file per row (docs/benchmarks.md section 12). In id
order the rows of a page share a few leaves, which costs a third as much.

So a stream whose entity has no rows and no watermark yet (a first sync; also ``--full`` on
an empty table) is read in two steps:

1. the newest page (``sort_by=update_time``, descending): its newest update_time is where
   Pipedrive stood when the pass began (``since``); a list that fits in one page is whole;
2. the whole list with ``sort_by=id``, from the beginning.

Every page commits with the stream's resume point (``sync_streams``, under the stream's key
plus ``#first``: ``since``, the v2 cursor after the page, and whether a record was refused).
A killed run resumes from the cursor; a cursor Pipedrive no longer takes (HTTP 400: cursors
may expire) starts step 2 again from the beginning, where the upsert skips what did not
change. The last page sets the stream's watermark to ``since`` and drops the resume point,
in its commit: the next run asks for everything changed since the pass began (less the
usual look-back), so a record changed while the pass read past it is read then. A refused
record brings that watermark down to its own update_time (``floor``), so the next run asks
for it again, as an incremental run holds its watermark before it; one without a usable
update_time leaves no watermark, and the next run reads the stream whole.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .client import CursorPage, PipedriveClient, Tally
from .entities import EntitySpec, Row, Stream
from .errors import PipedriveError
from .store import Store
from .timestamps import is_stored_shape
from .timestamps import normalize as normalize_ts

log = logging.getLogger("pdsync")


def key(stream_key: str) -> str:
    return f"{stream_key}#first"


def capable(spec: EntitySpec, stream: Stream) -> bool:
    """An incremental v2 list of records with integer ids: it takes ``sort_by=id``."""
    return (
        spec.incremental
        and not stream.is_v1
        and not stream.newest_first
        and stream.children is None
        and spec.columns.get(spec.pk) is int
    )


@dataclass
class State:
    """Where a stream's first load stands, as committed with its last page."""

    begun: bool = False  # the newest page is written: ``since`` is known
    since: str | None = None  # the newest update_time when the pass began
    cursor: str | None = None  # the id-order page to read next (None: from the beginning)
    floor: str | None = None  # the oldest update_time of a refused record
    held: bool = False  # a record without a usable update_time was refused: no watermark

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, text: str) -> State:
        """The stored state; one that cannot be read starts the pass over (never skips)."""
        try:
            data = json.loads(text)
            return cls(
                begun=data["begun"] is True,
                since=_text(data["since"]),
                cursor=_text(data["cursor"]),
                floor=_text(data["floor"]),
                held=data["held"] is True,
            )
        except (ValueError, KeyError, TypeError):
            return cls()


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(value)
    return value


def in_progress(store: Store, spec: EntitySpec) -> bool:
    return any(store.watermark(spec.name, key(s.key)) is not None for s in spec.streams)


def begin(store: Store, spec: EntitySpec) -> dict[str, State]:
    """Per stream key, the first load it carries on with or starts now (an entity with no
    rows and no watermark starts one on every capable stream). In the caller's transaction."""
    states: dict[str, State] = {}
    fresh = all(store.watermark(spec.name, s.key) is None for s in spec.streams)
    fresh = fresh and store.count(spec) == 0  # counted only then: 400k deals take a while
    for stream in spec.streams:
        if not capable(spec, stream):
            continue
        stored = store.watermark(spec.name, key(stream.key))
        if stored is not None:
            states[stream.key] = State.load(stored)
        elif fresh:
            states[stream.key] = State()
            store.set_watermark(spec.name, key(stream.key), states[stream.key].dump())
    return states


class NewestPage(CursorPage):
    """Step 1's page: the newest records of the list, newest first."""


def pages(
    client: PipedriveClient,
    stream: Stream,
    state: State,
    tally: Tally,
    rank: float,
) -> Iterator[CursorPage]:
    """The fetcher's pages of a first load from ``state`` (see the module's docstring)."""
    params: dict[str, Any] = dict(stream.params)
    cursor = state.cursor
    if not state.begun:
        newest_first = {**params, "sort_by": "update_time", "sort_direction": "desc"}
        listing = client.iter_v2(stream.path, newest_first, tally, rank)
        page = next(listing)  # one page only: the generator asks for no more
        listing.close()
        whole = page.next_cursor is None  # the whole list is on it
        page = NewestPage(page, page.next_cursor)
        yield page
        del page  # a page held here would stay in memory for the whole pass
        if whole:
            return
        cursor = None
    by_id = {**params, "sort_by": "id", "sort_direction": "asc"}
    listing = client.iter_v2(
        stream.path, {**by_id, "cursor": cursor} if cursor else by_id, tally, rank
    )
    try:
        page = next(listing)
    except PipedriveError as exc:
        if cursor is None or type(exc) is not PipedriveError or "HTTP 400" not in str(exc):
            raise
        log.warning("%s: the stored cursor was refused; reading again from the start", stream.key)
        listing = client.iter_v2(stream.path, by_id, tally, rank)
        page = next(listing)
    yield page
    del page
    yield from listing


def after(
    state: State, spec: EntitySpec, page: CursorPage, rows: list[Row], refused: list[Any]
) -> State:
    """The state once ``page`` is written: ``rows`` are its records that were kept, ``refused``
    the ids of those refused (a record refused without a usable id holds the stream)."""
    floor, held = state.floor, state.held
    if refused:  # asked for again next run
        ids = set(refused)
        found = 0
        for record in page:
            if not isinstance(record, dict) or record.get(spec.pk) not in ids:
                continue
            found += 1
            when = record.get("update_time")
            when = normalize_ts(when) if isinstance(when, str) else None
            if when is None or not is_stored_shape(when):
                held = True
            else:
                floor = min(floor or when, when)
        held = held or found < len(ids)  # an id sent as text ("42"): not found, so hold
    if isinstance(page, NewestPage):
        since = max((r["update_time"] for r in rows if r.get("update_time")), default=None)
        return State(begun=True, since=since, cursor=None, floor=floor, held=held)
    return State(True, state.since, page.next_cursor, floor, held)


def save(store: Store, spec: EntitySpec, stream: Stream, state: State, page: CursorPage) -> None:
    """Commit ``state`` with its page (in the caller's transaction); after the last page,
    the stream's watermark instead."""
    if page.next_cursor is not None:
        store.set_watermark(spec.name, key(stream.key), state.dump())
        return
    marks = [mark for mark in (state.since, state.floor) if mark]
    store.set_watermark(spec.name, stream.key, None if state.held else min(marks, default=None))
    store.forget_stream(spec.name, key(stream.key))
