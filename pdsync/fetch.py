"""Fetcher threads: each pages through one stream of an entity and hands its pages to the
writer (the engine) through a bounded queue. Fetchers never touch the database."""

from __future__ import annotations

import queue
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .client import PipedriveClient, Tally
from .entities import EntitySpec, Row, Stream
from .results import SyncResult
from .timestamps import format as format_ts
from .timestamps import is_stored_shape
from .timestamps import normalize as normalize_ts
from .timestamps import parse as parse_ts


class SyncCancelled(Exception):
    """Raised inside fetchers to stop them; never escapes the engine."""


def stream_pages(
    client: PipedriveClient,
    spec: EntitySpec,
    stream: Stream,
    updated_since: str | None,
    tally: Tally,
    rank: float,
    resume: str | None = None,
    max_pages: int | None = None,
) -> Iterator[list]:
    """The pages of one stream: all of it for a whole entity, else what changed since. A
    paced pass (``max_pages``, see paced.py) reads at most that many, from ``resume``."""
    params: dict[str, Any] = dict(stream.params)
    if not spec.incremental:
        if max_pages is not None:
            if resume == "":
                return  # this stream is done in the current pass
            if resume:
                params["cursor"] = resume
            for count, page in enumerate(client.iter_v2(stream.path, params, tally, rank), 1):
                yield page
                if count >= max_pages:
                    return
            return
        pages = client.iter_v1 if stream.is_v1 else client.iter_v2
        yield from pages(stream.path, params, tally, rank)
        return
    if stream.newest_first:
        yield from _newest_first(client, stream, params, updated_since, tally, rank)
        return
    if stream.is_v1:
        yield from client.iter_v1_since(stream.path, params, updated_since, tally, rank)
        return
    params.update(sort_by="update_time", sort_direction="asc")
    if updated_since:
        params["updated_since"] = updated_since
    yield from client.iter_v2(stream.path, params, tally, rank)


def _newest_first(
    client: PipedriveClient,
    stream: Stream,
    params: dict[str, Any],
    updated_since: str | None,
    tally: Tally,
    rank: float,
) -> Iterator[list]:
    """A list sorted by update_time descending, down to the first page with a record older
    than ``updated_since``: the records after it are older still (all of it on a full pass)."""
    for page in client.iter_v1(stream.path, params, tally, rank):
        yield page
        if updated_since is None:
            continue
        times = (normalize_ts(r.get("update_time")) for r in page if isinstance(r, dict))
        if any(t and t < updated_since for t in times):
            return


class ChildPage(list):
    """The children of one batch of parents (all pages of its answer), with the parents'
    (id, update_time) it covers: the writer replaces what they had with it."""

    def __init__(self, records: list, parents: list[tuple[Any, str | None]]) -> None:
        super().__init__(records)
        self.parents = parents


class Parents:
    """(parent id, version) pairs to ask about, held compactly: a Python tuple of an int and
    a timestamp string costs ~160 bytes, which at 400k deals (~140k with line items) was the
    largest thing a first sync held (~23 MB, and as much again while it was rebuilt). Ids
    that are 64-bit integers and versions in the stored timestamp shape (or None) go into
    arrays of 8-byte integers; anything else is kept as given. Slicing gives the pairs back."""

    def __init__(self, pairs: Iterable[tuple[Any, str | None]]) -> None:
        self._pairs: list[tuple[Any, str | None]] | None = None
        self._ids, self._versions = array("q"), array("q")
        pairs = iter(pairs)  # read once (a cursor): never a whole list of tuples in memory
        for parent, version in pairs:
            try:
                seconds = _seconds(version)
                self._ids.append(parent)  # TypeError or OverflowError: not a 64-bit int
            except (TypeError, ValueError, OverflowError):
                self._pairs = [*self[:], (parent, version), *pairs]
                return
            self._versions.append(seconds)

    def __len__(self) -> int:
        return len(self._pairs if self._pairs is not None else self._ids)

    def __getitem__(self, part: slice) -> list[tuple[Any, str | None]]:
        if self._pairs is not None:
            return self._pairs[part]
        return [
            (p, _timestamp(v)) for p, v in zip(self._ids[part], self._versions[part], strict=True)
        ]


_NO_VERSION = -(2**63)


def _seconds(version: str | None) -> int:
    """A stored timestamp as seconds since 1970 (ValueError for any other text)."""
    if version is None:
        return _NO_VERSION
    if not is_stored_shape(version):
        raise ValueError(version)
    return int(parse_ts(version).timestamp())


def _timestamp(seconds: int) -> str | None:
    if seconds == _NO_VERSION:
        return None
    return format_ts(datetime.fromtimestamp(seconds, timezone.utc))


def child_pages(
    client: PipedriveClient,
    stream: Stream,
    parents: Parents | list[tuple[Any, str | None]],
    tally: Tally,
    rank: float,
) -> Iterator[ChildPage]:
    """One ChildPage per batch of at most ``per_request`` parents (see entities.Children)."""
    children = stream.children
    assert children is not None
    size = children.per_request
    for start in range(0, len(parents), size):
        batch = parents[start : start + size]
        params = {**dict(stream.params), children.param: ",".join(str(p) for p, _ in batch)}
        records: list = []
        for page in client.iter_v2(stream.path, params, tally, rank):
            records.extend(page)
        yield ChildPage(records, batch)


def fetch(
    pages: queue.Queue, stop: threading.Event, entity: str, stream: Stream, source: Iterator
) -> None:
    """Put ``source``'s pages on ``pages``; always end with a done, cancelled or error item."""
    end: tuple = ("done", entity, stream, None)
    try:
        for records in source:
            if stop.is_set():
                raise SyncCancelled()
            _put(pages, stop, ("page", entity, stream, records))
    except SyncCancelled:
        end = ("cancelled", entity, stream, None)
    except Exception as exc:  # reported to the writer, which marks the entity failed
        end = ("error", entity, stream, exc)
    try:
        # After an interrupt nobody may be reading any more: do not hang on a full queue.
        pages.put(end, timeout=5 if stop.is_set() else None)
    except queue.Full:
        pass


def _put(pages: queue.Queue, stop: threading.Event, item: tuple) -> None:
    while True:
        if stop.is_set():
            raise SyncCancelled()
        try:
            pages.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


@dataclass
class Batch:
    """Entities fetched together: their fetcher threads and what the writer keeps for them."""

    pages: queue.Queue  # ("page" | "done" | "error" | "cancelled", entity, stream, payload)
    result: SyncResult
    specs: dict[str, EntitySpec] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    fetching: int = 0  # streams that have not ended
    open_streams: dict[str, int] = field(default_factory=dict)  # per entity
    started: dict[str, float] = field(default_factory=dict)
    whole_rows: dict[str, list[Row]] = field(default_factory=dict)  # written in one go
    whole_refused: dict[str, list[Any]] = field(default_factory=dict)  # ids of refused records
    failed: set[tuple[str, str]] = field(default_factory=set)  # (entity, stream) a page lost
    # Entities whose streams are done, each with the rest of its writer work (indexes first).
    # That work goes a step at a time between pages: done in one go it would stop the writer
    # for seconds (a 100k-deal table's indexes), the queue would fill and the fetchers would
    # sit idle while the rate limit lets requests through.
    finishing: deque[Iterator[None]] = field(default_factory=deque)

    def add(self, spec: EntitySpec, fetch: Callable) -> None:
        self.specs[spec.name] = spec
        self.open_streams[spec.name] = len(spec.streams)
        self.whole_rows[spec.name] = []
        self.whole_refused[spec.name] = []
        self.started[spec.name] = time.perf_counter()
        self.result.entities[spec.name].status = "running"
        for stream in spec.streams:
            self.threads.append(
                threading.Thread(
                    target=fetch,
                    args=(spec, stream, self.pages),
                    name=f"pdsync-{stream.key}",
                    daemon=True,
                )
            )
            self.fetching += 1
