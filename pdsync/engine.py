"""The sync engine: fetch every entity's streams concurrently, write them with one writer.

Fetcher threads page through Pipedrive and turn records into rows; the calling thread is the
only writer and commits each page together with the watermark it reaches. A crash or a failed
request therefore loses nothing: the next run resumes from the last committed page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlite_utils

from . import plugins, timestamps
from .client import AuthError, BudgetSpent, ConnectionFailed, PipedriveClient, Tally
from .entities import EntitySpec, Row, Stream
from .records import BadRecord, CustomFieldMap, assign_column_names, to_row
from .schema import ensure_indexes, prepare
from .store import Store

log = logging.getLogger("pdsync")

# Ask again for a little before the watermark: a write Pipedrive commits late with an
# earlier update_time would otherwise be skipped for good. Re-reading it is harmless.
LOOKBACK = timedelta(seconds=60)
# Pipedrive keeps deleted deals listable for 30 days; a deals sync older than that may have
# missed deletions, so it reconciles with a full pass (a day early, to be safe).
DELETED_DEALS_KEPT = timedelta(days=29)
_REJECTIONS_KEPT = 5  # rejected records named in sync_metadata.warning_message
_QUEUE_PAGES = 8  # pages in flight between fetchers and the writer: bounds memory
# Index builds are schema changes. A reader (Datasette) whose statement is being prepared
# across two schema changes a few milliseconds apart can fail to reconnect a full-text table
# ("vtable constructor failed: persons_fts"); measured: 10 ms apart failed ~2 % of changes,
# 20 ms and more never. So cheap builds share one commit, and commits are spaced.
_SCHEMA_BATCH = 0.1  # a commit takes in further index builds for this many seconds
_SCHEMA_GAP = 0.05  # seconds between schema-changing commits


@dataclass
class EntityResult:
    entity: str
    status: str = "pending"  # success, failed, cancelled
    records: int = 0
    rejected: int = 0
    requests: int = 0
    tokens: int = 0
    retries: int = 0
    duration_ms: int = 0
    full_pass: bool = False
    flagged_gone: int = 0
    error: str | None = None
    rejections: list[str] = field(default_factory=list)  # the first few, with their ids

    @property
    def warning(self) -> str | None:
        """What a user should know about a run that succeeded: records refused."""
        if not self.rejected:
            return None
        shown = "; ".join(self.rejections)
        more = self.rejected - len(self.rejections)
        return f"{self.rejected} record(s) refused, fetched again by the next run: {shown}" + (
            f"; {more} more" if more else ""
        )


@dataclass
class SyncResult:
    run_id: int
    mode: str
    status: str = "running"  # success, partial, failed, cancelled
    started_at: str = ""
    duration_ms: int = 0
    entities: dict[str, EntityResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def records(self) -> int:
        return sum(e.records for e in self.entities.values())

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.entities.values())

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.entities.values())

    @property
    def errors(self) -> dict[str, str]:
        return {name: e.error for name, e in self.entities.items() if e.error}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per entity, ready for a table or ``pandas.DataFrame``."""
        return [
            {
                "entity": e.entity,
                "status": e.status,
                "records": e.records,
                "requests": e.requests,
                "tokens": e.tokens,
                "seconds": round(e.duration_ms / 1000, 2),
                "error": e.error or "",
            }
            for e in self.entities.values()
        ]

    def __str__(self) -> str:
        lines = [
            f"sync #{self.run_id} ({self.mode}): {self.status}, {self.records} records, "
            f"{self.requests} requests, {self.tokens} tokens, {self.duration_ms / 1000:.1f}s"
        ]
        for row in self.rows():
            error = f"  {row['error']}" if row["error"] else ""
            lines.append(
                f"  {row['entity']:<20} {row['status']:<9} {row['records']:>8} records "
                f"{row['requests']:>5} requests{error}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(k)}</th>" for k in self.rows()[0]) if self.entities else ""
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row.values()) + "</tr>"
            for row in self.rows()
        )
        summary = escape(str(self).splitlines()[0])
        return f"<p>{summary}</p><table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class ProgressEvent:
    entity: str
    records: int
    requests: int
    done: bool = False
    status: str = "running"
    error: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


class SyncCancelled(Exception):
    """Raised inside fetchers to stop them; never escapes the engine."""


def selected_entities(
    only: list[str] | tuple[str, ...] | None, entities: list[EntitySpec] | None = None
) -> list[EntitySpec]:
    """The specs to sync, in dependency order. Unknown names raise ``ValueError``."""
    entities = entities if entities is not None else plugins.entities()
    if not only:
        return list(entities)
    names = {spec.name for spec in entities}
    unknown = [name for name in only if name not in names]
    if unknown:
        raise ValueError(
            f"unknown entity {', '.join(repr(u) for u in unknown)}; "
            f"choose from {', '.join(sorted(names))}"
        )
    return [spec for spec in entities if spec.name in only]


class Sync:
    """One sync run. ``Sync(db, client).run()`` returns a ``SyncResult``."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        client: PipedriveClient,
        *,
        full: bool = False,
        only: list[str] | tuple[str, ...] | None = None,
        progress: ProgressCallback | None = None,
        entities: list[EntitySpec] | None = None,
        transform_record: Callable[[EntitySpec, dict], dict | None] | None = None,
        version: str = "",
    ) -> None:
        self.db = db
        self.client = client
        self.full = full
        self.all_entities = entities if entities is not None else plugins.entities()
        self.specs = selected_entities(only, self.all_entities)
        self.progress = progress
        if transform_record is None and plugins.has_record_transforms():
            transform_record = _plugin_transform
        self.transform_record = transform_record
        self.version = version
        self._schema_calm_at = 0.0  # monotonic time after which a schema change may commit
        self.store = Store(db)
        self.stop = threading.Event()
        self._fatal: str | None = None
        self._full_pass: dict[str, bool] = {}
        self._tallies: dict[str, Tally] = {}
        self._custom: dict[str, CustomFieldMap] = {}
        self._errors: dict[str, str] = {}
        self._since: dict[tuple[str, str], str | None] = {}  # what fetchers ask for
        self._since_committed: dict[tuple[str, str], str | None] = {}
        self._held: set[tuple[str, str]] = set()  # streams whose watermark a refusal holds
        self._started_at = ""
        # A stream's requests rank by its page number (see RateLimiter: the deepest stream
        # leads); this fraction of a page breaks ties in declared order, deals first.
        keys = [(spec.name, stream.key) for spec in self.specs for stream in spec.streams]
        self._rank = {key: -i / len(keys) for i, key in enumerate(keys)}

    # -- the run --------------------------------------------------------------------------

    def run(self) -> SyncResult:
        version = self._schema_version()
        prepare(self.db, self.all_entities)  # one commit
        if self._schema_version() != version:
            self._schema_calm_at = time.monotonic() + _SCHEMA_GAP
        # The lock is ours, so a run still marked running was killed: say so.
        self.store.close_interrupted_runs()
        self.store.redact_messages(self.client.redact.text)
        started = time.perf_counter()
        started_at = self._started_at = timestamps.now()
        mode = "full" if self.full else "incremental"
        run_id = self.store.start_run(mode, [s.name for s in self.specs], self.version)
        result = SyncResult(run_id=run_id, mode=mode, started_at=started_at)
        for spec in self.specs:
            result.entities[spec.name] = EntityResult(spec.name)
            self._tallies[spec.name] = Tally()
            self._begin_entity(spec)
        try:
            whole = [s for s in self.specs if not s.incremental]
            incremental = [s for s in self.specs if s.incremental]
            # Field definitions first: deals need them to name their custom-field columns.
            self._run_streams(whole, result)
            self._prepare_incremental()
            self._run_streams(incremental, result)
        except KeyboardInterrupt:
            self.stop.set()
            self._fatal = self._fatal or "interrupted"
            self._finish(result, started, cancelled=True)
            raise
        self._finish(result, started)
        return result

    def _begin_entity(self, spec: EntitySpec) -> None:
        meta = self.store.metadata(spec.name)
        has_rows = self.store.count(spec) > 0
        marks = [self.store.watermark(spec.name, s.key) for s in spec.streams]
        no_watermark = all(mark is None for mark in marks)
        # A watermark from a bad record (year 9999, not a timestamp) hides every later change:
        # forget it and reconcile with a full pass.
        bad_watermark = any(mark is not None and not timestamps.plausible(mark) for mark in marks)
        if bad_watermark:
            log.warning("%s: a watermark is not a sane timestamp; syncing it in full", spec.name)
        stale_deals = spec.name == "deals" and _older_than(
            meta.get("last_success_time"), DELETED_DEALS_KEPT
        )
        full_pass = spec.incremental and (
            self.full
            or bool(meta.get("full_pending"))
            or bad_watermark
            or (has_rows and no_watermark)
            or (has_rows and stale_deals)
        )
        self._full_pass[spec.name] = full_pass
        with self.db.atomic():
            if full_pass and (self.full or bad_watermark or not meta.get("full_pending")):
                # A new full pass refetches from the beginning; a pending one resumes.
                self.store.clear_watermarks(spec.name)
                self.store.clear_seen(spec)
            self.store.update_metadata(
                spec.name,
                status="in_progress",
                error_message=None,
                full_pending=int(full_pass),
            )

    def _finish(self, result: SyncResult, started: float, cancelled: bool = False) -> None:
        finished_at = timestamps.now()
        for spec in self.specs:
            entity = result.entities[spec.name]
            if entity.status in ("pending", "running"):
                entity.status = "cancelled" if cancelled else "failed"
                entity.error = self._errors.get(spec.name) or self._fatal or "did not finish"
                self._record(spec, entity)
        statuses = {e.status for e in result.entities.values()}
        if cancelled:
            result.status = "cancelled"
        elif statuses <= {"success"}:
            result.status = "success"
        elif "success" in statuses:
            result.status = "partial"
        else:
            result.status = "failed"
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        self.store.finish_run(
            result.run_id,
            finished_at=finished_at,
            duration_ms=result.duration_ms,
            status=result.status,
            records_synced=result.records,
            requests=result.requests,
            tokens=result.tokens,
            errors=_json(result.errors) if result.errors else None,
        )

    def _record(self, spec: EntitySpec, entity: EntityResult) -> None:
        """Write the entity's outcome to sync_metadata, as soon as the entity is done."""
        tally = self._tallies[spec.name]
        entity.requests, entity.tokens, entity.retries = tally.requests, tally.tokens, tally.retries
        entity.full_pass = self._full_pass.get(spec.name, False)
        watermarks = [self.store.watermark(spec.name, s.key) for s in spec.streams]
        values: dict[str, Any] = {
            "status": "success" if entity.status == "success" else "failed",
            "last_sync_time": timestamps.now(),
            "last_sync_duration_ms": entity.duration_ms,
            "records_synced": entity.records,
            "records_rejected": entity.rejected,
            "records_total": self.store.count(spec),
            "error_message": self.client.redact.text(entity.error) if entity.error else None,
            "warning_message": entity.warning,
            "requests": entity.requests,
            "tokens": entity.tokens,
            "watermark": min((w for w in watermarks if w), default=None),
        }
        if entity.status == "success":
            values["last_success_time"] = self._started_at
        self.store.update_metadata(spec.name, **values)

    # -- fetchers and the writer ----------------------------------------------------------

    def _run_streams(self, specs: list[EntitySpec], result: SyncResult) -> None:
        if not specs:
            return
        pages: queue.Queue = queue.Queue(maxsize=_QUEUE_PAGES)
        open_streams: dict[str, int] = {}
        buffers: dict[str, list[Row]] = {}  # whole entities are written in one go
        started: dict[str, float] = {}
        threads = []
        for spec in specs:
            if self._fatal:
                break
            open_streams[spec.name] = len(spec.streams)
            buffers[spec.name] = []
            started[spec.name] = time.perf_counter()
            result.entities[spec.name].status = "running"
            for stream in spec.streams:
                thread = threading.Thread(
                    target=self._fetch,
                    args=(spec, stream, pages),
                    name=f"pdsync-{stream.key}",
                    daemon=True,
                )
                threads.append(thread)
        for thread in threads:
            thread.start()

        pending = len(threads)
        by_name = {spec.name: spec for spec in specs}
        failed: set[tuple[str, str]] = set()
        # Entities whose streams are done, each with the rest of its writer work (indexes
        # first). That work goes a step at a time between pages: done in one go it would stop
        # the writer for seconds (a 100k-deal table's indexes), the queue would fill and the
        # fetchers would sit idle while the rate limit lets requests through.
        ending: deque[Iterator[None]] = deque()
        while pending or ending:
            if ending:
                try:
                    item = pages.get_nowait()
                except queue.Empty:
                    if next(ending[0], StopIteration) is StopIteration:
                        ending.popleft()
                    continue
            else:
                item = pages.get()
            kind, name, stream, payload = item
            spec = by_name[name]
            entity = result.entities[name]
            if kind == "page":
                # After a stream's page failed, its later pages must not move its watermark
                # past the gap; other streams (and entities) carry on.
                if self.stop.is_set() or (name, stream.key) in failed:
                    continue
                if not spec.incremental and name in self._errors:
                    continue
                # Records become rows here, in the writer: Python work on a fetcher thread
                # would hold the GIL that executemany gives up and takes back for every
                # row (measured: 80,000 rows/s alone, a few hundred beside a busy thread).
                rows, refused_at = self._rows(spec, payload, entity)
                if spec.incremental:
                    # A refused record holds its stream's watermark where it was for the rest
                    # of the run: once it comes right upstream, the next run fetches it again.
                    key = (name, stream.key)
                    watermark = None
                    if key not in self._held:
                        watermark = max(
                            (r["update_time"] for r in rows[:refused_at] if r.get("update_time")),
                            default=None,
                        )
                    if refused_at is not None:
                        self._held.add(key)
                    try:
                        self._write_page(spec, stream, rows, watermark)
                    except sqlite3.Error as exc:
                        failed.add((name, stream.key))
                        self._errors.setdefault(name, f"could not save {name}: {exc}")
                        continue
                else:
                    buffers[name].extend(rows)
                entity.records += len(rows)
                self._report(entity, spec)
                continue
            pending -= 1
            if kind == "error":
                self._fail(spec, payload)
            elif kind == "cancelled":
                self._errors.setdefault(name, self._fatal or "interrupted")
            open_streams[name] -= 1
            if open_streams[name] == 0:
                entity.duration_ms = int((time.perf_counter() - started[name]) * 1000)
                ending.append(self._end_entity(spec, entity, buffers.pop(name)))
        for thread in threads:
            thread.join(timeout=1)

    def _fetch(self, spec: EntitySpec, stream: Stream, pages: queue.Queue) -> None:
        """Fetcher thread: page through one stream; always ends with a done or error item."""
        end: tuple = ("done", spec.name, stream, None)
        try:
            for records in self._pages(spec, stream):
                if self.stop.is_set():
                    raise SyncCancelled()
                self._put(pages, ("page", spec.name, stream, records))
        except SyncCancelled:
            end = ("cancelled", spec.name, stream, None)
        except Exception as exc:  # reported to the writer, which marks the entity failed
            end = ("error", spec.name, stream, exc)
        try:
            # After an interrupt nobody may be reading any more: do not hang on a full queue.
            pages.put(end, timeout=5 if self.stop.is_set() else None)
        except queue.Full:
            pass

    def _put(self, pages: queue.Queue, item: tuple) -> None:
        while True:
            if self.stop.is_set():
                raise SyncCancelled()
            try:
                pages.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _pages(self, spec: EntitySpec, stream: Stream) -> Iterator[list]:
        tally = self._tallies[spec.name]
        rank = self._rank[(spec.name, stream.key)]
        params: dict[str, Any] = dict(stream.params)
        if not spec.incremental:
            pages = self.client.iter_v1 if stream.is_v1 else self.client.iter_v2
            yield from pages(stream.path, params, tally, rank)
            return
        since = self._since[(spec.name, stream.key)]
        if stream.is_v1:
            yield from self.client.iter_v1_since(stream.path, params, since, tally, rank)
            return
        params.update(sort_by="update_time", sort_direction="asc")
        if since:
            params["updated_since"] = since
        yield from self.client.iter_v2(stream.path, params, tally, rank)

    def _rows(
        self, spec: EntitySpec, records: list, entity: EntityResult
    ) -> tuple[list[Row], int | None]:
        """The page's rows, and how many came before the first refused record (None: none
        was refused)."""
        rows: list[Row] = []
        refused_at = None
        custom = self._custom.get(spec.name)
        latest = timestamps.latest_plausible() if spec.incremental else None
        for record in records:
            if self.transform_record is not None and isinstance(record, dict):
                record = self.transform_record(spec, record)
                if record is None:
                    continue
            try:
                rows.append(to_row(spec, record, custom, latest))
            except BadRecord as exc:
                message = self.client.redact.text(exc)
                refused_at = len(rows) if refused_at is None else refused_at
                entity.rejected += 1
                if len(entity.rejections) < _REJECTIONS_KEPT:
                    entity.rejections.append(message[:200])
                log.warning("skipped a record: %s", message)
        return rows, refused_at

    def _write_page(
        self, spec: EntitySpec, stream: Stream, rows: list[Row], mark: str | None
    ) -> None:
        old = self._since_committed.get((spec.name, stream.key))
        watermark = max(w for w in (old, mark) if w) if (old or mark) else None
        with self._transaction():
            self.store.upsert(spec, rows)
            if self._full_pass[spec.name]:
                self.store.mark_seen(spec, [row[spec.pk] for row in rows])
            self.store.set_watermark(spec.name, stream.key, watermark)
        self._since_committed[(spec.name, stream.key)] = watermark

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``db.atomic()``. If it changed the schema, it commits no sooner than _SCHEMA_GAP
        after the last schema change (see there): an index build that took that long waits
        for nothing."""
        before = self._schema_version()
        changed = False
        with self.db.atomic():
            yield
            if self._schema_version() != before:
                changed = True
                delay = self._schema_calm_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if changed:
            self._schema_calm_at = time.monotonic() + _SCHEMA_GAP

    def _schema_version(self) -> int:
        return self.db.execute("pragma schema_version").fetchone()[0]

    def _end_entity(
        self, spec: EntitySpec, entity: EntityResult, rows: list[Row]
    ) -> Iterator[None]:
        """The writer's work once an entity's streams are done, yielding between steps."""
        try:
            steps = deque(_index_steps(self.db, spec))
            while steps:
                with self._transaction():  # one schema change for the builds a batch fits
                    started = time.monotonic()
                    while steps and time.monotonic() - started < _SCHEMA_BATCH:
                        steps.popleft()()
                yield
            if spec.name not in self._errors:
                with self._transaction():
                    if not spec.incremental:
                        self._write_whole(spec, rows, entity)
                    elif self._full_pass[spec.name]:
                        self._reconcile(spec, entity)
        except sqlite3.Error as exc:
            self._errors.setdefault(spec.name, f"could not save {spec.name}: {exc}")
        entity.status = "failed" if spec.name in self._errors else "success"
        entity.error = self._errors.get(spec.name)
        self._record(spec, entity)
        self._report(entity, spec, done=True)

    def _reconcile(self, spec: EntitySpec, entity: EntityResult) -> None:
        """End of a full pass: flag what it did not see, then forget what it saw."""
        if self.store.seen_count(spec) or self.store.count(spec) == 0:
            entity.flagged_gone = self.store.mark_gone(spec)
        else:
            log.warning("%s: full pass saw no records; nothing flagged as gone", spec.name)
        self.store.clear_seen(spec)
        self.store.update_metadata(spec.name, full_pending=0)

    def _write_whole(self, spec: EntitySpec, rows: list[Row], entity: EntityResult) -> None:
        target = next((s for s in self.all_entities if s.fields_table == spec.name), None)
        if target is not None:
            # Columns the previous definitions gave custom fields are theirs to keep, not clashes.
            previous = CustomFieldMap.from_definitions(list(self.db[spec.name].rows)).columns()
            taken = set(target.columns) | (set(self.store.columns(target.name)) - set(previous))
            assign_column_names(rows, taken)
            self.store.ensure_columns(target.name, CustomFieldMap.from_definitions(rows).columns())
        for row in rows:
            row.setdefault("is_deleted", 0)
        self.store.upsert(spec, rows)
        if rows:
            entity.flagged_gone = self.store.mark_gone(spec, [row[spec.pk] for row in rows])
        else:
            log.warning("%s: Pipedrive listed none; nothing flagged as gone", spec.name)

    def _prepare_incremental(self) -> None:
        """Read what fetcher threads need (they never touch the database connection)."""
        with self._transaction():  # custom fields' new columns: one schema change
            self._prepare_streams()

    def _prepare_streams(self) -> None:
        for spec in self.specs:
            for stream in spec.streams:
                committed = self.store.watermark(spec.name, stream.key)
                self._since_committed[(spec.name, stream.key)] = committed
                self._since[(spec.name, stream.key)] = _minus(committed, LOOKBACK)
            if spec.fields_table and spec.fields_table in self.db.table_names():
                definitions = list(self.db[spec.fields_table].rows)
                self._custom[spec.name] = CustomFieldMap.from_definitions(definitions)
                self.store.ensure_columns(spec.name, self._custom[spec.name].columns())

    def _fail(self, spec: EntitySpec, exc: BaseException) -> None:
        message = self.client.redact.text(str(exc) or type(exc).__name__)
        if isinstance(exc, (AuthError, ConnectionFailed, BudgetSpent)):
            # Every other entity would fail the same way: stop them now.
            self._fatal = message
            self.stop.set()
        elif not isinstance(exc, Exception) or type(exc).__module__ != "pdsync.client":
            # Not the exception's own text with a traceback: it may quote what was sent.
            message = f"{type(exc).__name__}: {message}"
            log.error("%s failed: %s", spec.name, message)
            log.debug("%s failed", spec.name, exc_info=exc)
        self._errors.setdefault(spec.name, message)

    def _report(self, entity: EntityResult, spec: EntitySpec, done: bool = False) -> None:
        if self.progress is None:
            return
        self.progress(
            ProgressEvent(
                entity=spec.name,
                records=entity.records,
                requests=self._tallies[spec.name].requests,
                done=done,
                status=entity.status,
                error=entity.error,
            )
        )


def _index_steps(db: sqlite_utils.Database, spec: EntitySpec) -> list[Callable[[], None]]:
    """``ensure_indexes(db, spec)`` split into one step per index, then the rest (full-text)."""
    bare = dataclasses.replace(spec, indexes=(), expression_indexes={}, partial_indexes={})
    one = [dataclasses.replace(bare, indexes=(columns,)) for columns in spec.indexes]
    one += [
        dataclasses.replace(bare, expression_indexes={name: expression})
        for name, expression in spec.expression_indexes.items()
    ]
    one += [
        dataclasses.replace(bare, partial_indexes={name: index})
        for name, index in spec.partial_indexes.items()
    ]
    return [functools.partial(ensure_indexes, db, part) for part in [*one, spec]]


def _plugin_transform(spec: EntitySpec, record: dict) -> dict | None:
    return plugins.transform_record(spec.name, record)


def _older_than(value: str | None, age: timedelta) -> bool:
    if not value:
        return False
    try:
        return timestamps.parse(value) < datetime.now(timezone.utc) - age
    except ValueError:
        return True


def _minus(value: str | None, delta: timedelta) -> str | None:
    if not value:
        return None
    try:
        return timestamps.format(timestamps.parse(value) - delta)
    except ValueError:
        return None  # never sent to Pipedrive (a 400 on every run); _begin_entity reconciles


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
