"""The sync engine: fetch every entity's streams concurrently, write them with one writer.

Fetcher threads page through Pipedrive and turn records into rows; the calling thread is the
only writer and commits each page together with the watermark it reaches (a first load in id
order: with its cursor, see first_load.py). A crash or a failed request therefore loses
nothing: the next run resumes from the last committed page.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from . import first_load, paced, pacing, plan, plugins, refill, timestamps, unchanged
from .backfill import RUN_SECONDS, Backfill, HistoryResult
from .client import PipedriveClient, Tally
from .entities import EntitySpec, Row, Stream
from .errors import AuthError, BudgetSpent, ConnectionFailed, PipedriveError
from .fetch import Batch, ChildPage, Parents, child_pages, fetch, stream_pages
from .history import Observer
from .pacing import SchemaPacer
from .plugins import selected_entities
from .records import BadRecord, CustomFieldMap, stored_time, to_row
from .results import EntityResult, ProgressCallback, ProgressEvent, SyncResult
from .schema import index_steps, prepare
from .store import Store
from .transaction import write_transaction

log = logging.getLogger("pdsync")

_REJECTIONS_KEPT = 5  # rejected records named in sync_metadata.warning_message
_QUEUE_PAGES = 8  # pages in flight between fetchers and the writer: bounds memory


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
        every: float | None = None,
        history_budget: int | None = None,
    ) -> None:
        self.db = db
        self.client = client
        self.full = full
        self.all_entities = entities if entities is not None else plugins.entities()
        self.specs = selected_entities(only, self.all_entities)
        self.only = set(only or ())
        self.progress = progress
        if transform_record is None and plugins.has_record_transforms():
            transform_record = _plugin_transform
        self.transform_record = transform_record
        self.version = version
        self.every = every  # the schedule's interval, when this run belongs to one
        self.history_budget = history_budget  # tokens a UTC day; None: the default, 0: off
        self.pacer = SchemaPacer(db)  # schema changes spaced for Datasette's readers
        self.store = Store(db)
        self.history = Observer(db)
        self.stop = threading.Event()
        self._fatal: str | None = None
        self._full_pass: dict[str, bool] = {}
        self._tallies: dict[str, Tally] = {}
        self._custom: dict[str, CustomFieldMap] = {}
        self._digest_keys: dict[str, bytes] = {}  # see unchanged.py
        self._errors: dict[str, str] = {}
        # Per (entity, stream): what its fetcher asks for (the watermark less LOOKBACK), and
        # the watermark committed so far, which each written page may move forward.
        self._updated_since: dict[tuple[str, str], str | None] = {}
        self._watermark: dict[tuple[str, str], str | None] = {}
        self._held: set[tuple[str, str]] = set()  # streams whose watermark a refusal holds
        # Newest-first streams: the watermark their pages reached, committed when they end.
        self._pending: dict[tuple[str, str], str | None] = {}
        self._newest_before: dict[str, str | None] = {}  # a whole list's newest update_time
        self._unkeyed: set[str] = set()  # entities a record without a usable id was refused of
        self._spend_counted: dict[str, tuple[int, int]] = {}  # (requests, tokens) in sync_tokens
        # Per (entity, stream) of a dependent entity: the parents to ask (entities.Children).
        self._parents: dict[tuple[str, str], Parents] = {}
        self._started_at = ""
        # Paced passes (paced.py): pages a run may read per stream, and where each resumes.
        self._paced: dict[str, int] = {}
        self._resume: dict[tuple[str, str], str | None] = {}
        # Streams read whole in id order, and where each stands (first_load.py).
        self._first: dict[tuple[str, str], first_load.State] = {}
        # A stream's requests rank by its page number (see RateLimiter: the deepest stream
        # leads); this fraction of a page breaks ties in declared order, deals first.
        keys = [(spec.name, stream.key) for spec in self.specs for stream in spec.streams]
        self._rank = {key: -i / len(keys) for i, key in enumerate(keys)}

    # -- the run --------------------------------------------------------------------------

    def run(self) -> SyncResult:
        version = self.pacer.version()
        prepare(self.db, self.all_entities)  # one commit
        if self.pacer.version() != version:
            self.pacer.changed()
        # The lock is ours, so a run still marked running was killed: say so.
        self.store.close_interrupted_runs()
        self.store.redact_messages(self.client.redact.text)
        self.specs, self._paced = plan.due_now(self.store, self.specs, self.full, self.only)
        started = time.perf_counter()
        started_at = self._started_at = timestamps.now()
        mode = "full" if self.full else "incremental"
        run_id = self.store.start_run(mode, [s.name for s in self.specs], self.version, self.every)
        result = SyncResult(run_id=run_id, mode=mode, started_at=started_at)
        for spec in self.specs:
            result.entities[spec.name] = EntityResult(spec.name)
            self._tallies[spec.name] = Tally()
            self._begin_entity(spec)
        try:
            whole = [s for s in self.specs if not s.incremental and not s.dependent]
            # A whole list with custom fields (projects) waits, like the incremental ones,
            # for its field definitions.
            incremental = [s for s in self.specs if s.incremental or s in whole and s.fields_table]
            whole = [s for s in whole if s not in incremental]
            dependent = [s for s in self.specs if s.dependent]
            # Field definitions first: deals need them to name their custom-field columns.
            self._run_streams(whole, result)
            self._prepare_incremental()
            self._run_streams(incremental, result)
            # Then what is asked per parent record, from the parents just written.
            self._prepare_dependent(dependent)
            self._run_streams(dependent, result)
            # Deal history last: the core entities are committed and cannot wait for it.
            self._read_history(result)
        except KeyboardInterrupt:
            self.stop.set()
            self._fatal = self._fatal or "interrupted"
            self._close_run(result, started, cancelled=True)
            raise
        except BaseException as exc:
            # Nothing may leave fetchers waiting or the run marked running: stop, record, raise.
            self.stop.set()
            self._fatal = self._fatal or self.client.redact.text(f"{type(exc).__name__}: {exc}")
            self._close_run(result, started)
            raise
        self._close_run(result, started)
        return result

    def _read_history(self, result: SyncResult) -> None:
        deals = result.entities.get("deals")
        if deals is None or deals.status != "success" or self._fatal or self.stop.is_set():
            return
        if self.history_budget == 0:
            return
        # A scheduled run leaves half its interval free: the next run must not find it busy.
        seconds = min(RUN_SECONDS, self.every / 2) if self.every else RUN_SECONDS
        backfill = None
        try:
            backfill = Backfill(self.db, self.client, self.history_budget, self.stop, seconds)
            result.history = backfill.run()
        except sqlite3.Error as exc:
            # The core entities are committed: a locked or broken database costs history only.
            history = backfill.result if backfill is not None else HistoryResult()
            history.status = "failed"
            history.error = f"database error: {exc}"[:500]
            result.history = history
            log.warning("history: %s", history.error)

    def _begin_entity(self, spec: EntitySpec) -> None:
        full_pass = plan.begin_entity(self.db, self.store, spec, self.full)
        self._full_pass[spec.name] = full_pass or (spec.dependent and self.full)
        with write_transaction(self.db):
            if spec.name in self._paced:
                for key, point in paced.resume_points(self.store, spec).items():
                    self._resume[(spec.name, key)] = point
            elif spec.refresh is not None and paced.in_progress(self.store, spec):
                paced.forget(self.store, spec)  # read whole this time: that pass is moot
            for key, state in first_load.begin(self.store, spec).items():
                self._first[(spec.name, key)] = state
        if not spec.incremental and not spec.dependent and spec.name not in self._paced:
            # Read whole: what a webhook writes while it is fetched is newer than this.
            self._newest_before[spec.name] = self.store.newest_update(spec.name)

    def _close_run(self, result: SyncResult, started: float, cancelled: bool = False) -> None:
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
        # The schema as this run leaves it: a change before the next is not pdsync's.
        with write_transaction(self.db):
            unchanged.note_schema(self.db)

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
        with write_transaction(self.db):
            counted = self._count_spend(spec)
            self.store.update_metadata(spec.name, **values)
        self._spend_counted[spec.name] = counted

    def _count_spend(self, spec: EntitySpec) -> tuple[int, int]:
        """Add what ``spec``'s requests cost since the last count to today's tokens, in the
        caller's transaction; returns the new totals, counted once that transaction commits."""
        tally = self._tallies[spec.name]
        requests, tokens = tally.requests, tally.tokens
        before_requests, before_tokens = self._spend_counted.get(spec.name, (0, 0))
        if requests > before_requests or tokens > before_tokens:
            purpose = "full sync" if self.full or self._full_pass.get(spec.name) else "sync"
            self.store.add_spend(purpose, requests - before_requests, tokens - before_tokens)
        return requests, tokens

    # -- fetchers and the writer ----------------------------------------------------------

    def _run_streams(self, specs: list[EntitySpec], result: SyncResult) -> None:
        """Fetch ``specs``' streams concurrently; this thread writes what they bring."""
        batch = Batch(pages=queue.Queue(maxsize=_QUEUE_PAGES), result=result)
        for spec in specs:
            if self._fatal:
                break
            batch.add(spec, self._fetch)
        for thread in batch.threads:
            thread.start()
        while batch.fetching or batch.finishing:
            item = self._next_item(batch)
            if item is None:
                continue
            kind, name, stream, payload = item
            if kind == "page":
                self._take_page(batch, batch.specs[name], stream, payload)
            else:
                if kind == "done" and stream.newest_first:
                    self._commit_pending(batch, batch.specs[name], stream)
                self._end_stream(batch, batch.specs[name], kind, payload)
        for thread in batch.threads:
            thread.join(timeout=1)

    def _next_item(self, batch: Batch) -> tuple | None:
        """The next page or end of a stream; None after a step of an entity's finishing work,
        which goes between pages (see ``Batch.finishing``)."""
        if not batch.finishing:
            return batch.pages.get()
        try:
            return batch.pages.get_nowait()
        except queue.Empty:
            if next(batch.finishing[0], StopIteration) is StopIteration:
                batch.finishing.popleft()
            return None

    def _take_page(self, batch: Batch, spec: EntitySpec, stream: Stream, records: list) -> None:
        key = (spec.name, stream.key)
        # After a stream's page failed, its later pages must not move its watermark past the
        # gap; other streams (and entities) carry on.
        if self.stop.is_set() or key in batch.failed:
            return
        if not spec.incremental and spec.name in self._errors:
            return
        entity = batch.result.entities[spec.name]
        try:
            # Records become rows here, in the writer: Python work on a fetcher thread would
            # hold the GIL that executemany gives up and takes back for every row (measured:
            # 80,000 rows/s alone, a few hundred beside a busy thread).
            # Digests are a full pass's business (unchanged.py): an incremental run reads few
            # records twice, and on a first load they cost 15 % of its CPU for nothing.
            digests = self._full_pass[spec.name] and key not in self._first
            page = self._rows(spec, records, entity, digests)
            rows, refused = page.rows, page.refused
            if isinstance(records, ChildPage):
                with self.pacer.transaction():
                    entity.flagged_gone += self.store.replace_children(
                        spec, stream.children, records.parents, rows, page.same
                    )
                    self.store.save_digests(spec, rows, page.digests)
                    counted = self._count_spend(spec)
                self._spend_counted[spec.name] = counted
            elif spec.name in self._paced:
                self._write_paced(spec, stream, page, records)
            elif key in self._first:
                self._write_first(spec, stream, page, records)
            elif not spec.incremental:
                batch.whole_rows[spec.name].extend(rows)
                batch.whole_refused[spec.name].extend(refused)
            else:
                mark = self._page_watermark(key, page)
                if stream.newest_first:
                    pending = (self._pending.get(key), mark)
                    self._pending[key] = max((m for m in pending if m), default=None)
                    mark = None
                self._write_page(spec, stream, page, mark)
        except Exception as exc:  # sqlite3.Error, or a value nothing expected: this stream stops
            batch.failed.add(key)
            problem = exc if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"
            message = self.client.redact.text(f"could not save {spec.name}: {problem}")
            self._errors.setdefault(spec.name, message[:500])
            return
        if not (isinstance(records, first_load.NewestPage) and records.next_cursor):
            entity.records += len(rows) + len(page.same)  # a newest page: see the id pass
        self._report(entity, spec)

    def _page_watermark(self, key: tuple[str, str], page: _Page) -> str | None:
        """The newest update_time a page's rows reach. A refused record holds its stream's
        watermark where it was for the rest of the run: once it comes right upstream, the
        next run fetches it again."""
        held = key in self._held
        if page.refused_at is not None:
            self._held.add(key)
        if held:
            return None
        times = [r["update_time"] for r in page.rows[: page.refused_at] if r.get("update_time")]
        if page.refused_at is None:  # unchanged records: their order is not kept, so only
            times += [t for r in page.same if (t := stored_time(r.get("update_time")))]
        return max(times, default=None)

    def _commit_pending(self, batch: Batch, spec: EntitySpec, stream: Stream) -> None:
        """A newest-first stream read down to its watermark: only now may it move."""
        key = (spec.name, stream.key)
        mark = self._pending.pop(key, None)
        if mark is None or key in batch.failed or key in self._held or self.stop.is_set():
            return
        try:
            self._write_page(spec, stream, _Page(), mark)
        except sqlite3.Error as exc:
            batch.failed.add(key)
            self._errors.setdefault(spec.name, f"could not save {spec.name}: {exc}"[:500])

    def _end_stream(self, batch: Batch, spec: EntitySpec, kind: str, payload: Any) -> None:
        batch.fetching -= 1
        if kind == "error":
            self._fail(spec, payload)
        elif kind == "cancelled":
            self._errors.setdefault(spec.name, self._fatal or "interrupted")
        batch.open_streams[spec.name] -= 1
        if batch.open_streams[spec.name] == 0:
            entity = batch.result.entities[spec.name]
            entity.duration_ms = int((time.perf_counter() - batch.started[spec.name]) * 1000)
            rows, refused = batch.whole_rows.pop(spec.name), batch.whole_refused.pop(spec.name)
            batch.finishing.append(self._finish_entity(spec, entity, rows, refused))

    def _fetch(self, spec: EntitySpec, stream: Stream, pages: queue.Queue) -> None:
        """Fetcher thread of one stream (it never touches the database connection)."""
        key = (spec.name, stream.key)
        if stream.children:
            tally, rank = self._tallies[spec.name], self._rank[key]
            source = child_pages(self.client, stream, self._parents[key], tally, rank)
            fetch(pages, self.stop, spec.name, stream, source)
            return
        if key in self._first:
            tally, rank = self._tallies[spec.name], self._rank[key]
            source = first_load.pages(self.client, stream, self._first[key], tally, rank)
            fetch(pages, self.stop, spec.name, stream, source)
            return
        source = stream_pages(
            self.client,
            spec,
            stream,
            self._updated_since.get((spec.name, stream.key)),
            self._tallies[spec.name],
            self._rank[(spec.name, stream.key)],
            resume=self._resume.get((spec.name, stream.key)),
            max_pages=self._paced.get(spec.name),
        )
        fetch(pages, self.stop, spec.name, stream, source)

    def _rows(self, spec: EntitySpec, records: list, entity: EntityResult, digests: bool) -> _Page:
        """The page's rows; with ``digests``, their records' digests and the records stored
        as they are (no row: see unchanged.py)."""
        custom = self._custom.get(spec.name)
        latest = timestamps.latest_plausible() if spec.incremental else None
        if self.transform_record is not None:
            kept = []
            for record in records:
                if isinstance(record, dict):
                    record = self.transform_record(spec, record)
                    if record is None:
                        continue  # left out by the transform
                kept.append(record)
            records = kept
        page = _Page()
        run_key = None
        if digests and unchanged.applies(spec):
            if spec.name not in self._digest_keys:
                table, schema = self.store.columns(spec.name), self.db[spec.name].schema
                self._digest_keys[spec.name] = unchanged.key(spec, custom, table, schema)
            run_key = self._digest_keys[spec.name]
        if run_key is not None:
            records, known, page.same = unchanged.sort(self.store, spec, run_key, records)
        rows, refused = page.rows, page.refused
        for i, record in enumerate(records):
            try:
                rows.append(to_row(spec, record, custom, latest))
                if run_key is not None:
                    page.digests.append(known[i])
            except BadRecord as exc:
                message = self.client.redact.text(exc)
                if page.refused_at is None:
                    page.refused_at = len(rows)
                if exc.key is not None:
                    refused.append(exc.key)
                else:
                    self._unkeyed.add(spec.name)
                entity.rejected += 1
                if len(entity.rejections) < _REJECTIONS_KEPT:
                    entity.rejections.append(message[:200])
                log.warning("skipped a record: %s", message)
        return page

    def _store_rows(self, spec: EntitySpec, page: _Page, full_pass: bool) -> None:
        """Write a page's rows and the digests of their records (unchanged.py); in a full
        pass, mark its ids seen, the unchanged and refused ones too (they are not gone)."""
        if spec.name == "deals":
            self.history.observe(page.rows)  # what changed, against the rows stored
        self.store.upsert(spec, page.rows)
        self.store.save_digests(spec, page.rows, page.digests)
        if full_pass:
            ids = [row[spec.pk] for row in page.rows] + [r[spec.pk] for r in page.same]
            self.store.mark_seen(spec, ids + page.refused)

    def _write_page(self, spec: EntitySpec, stream: Stream, page: _Page, mark: str | None) -> None:
        old = self._watermark.get((spec.name, stream.key))
        watermark = max(w for w in (old, mark) if w) if (old or mark) else None
        with self.pacer.transaction():
            self._store_rows(spec, page, self._full_pass[spec.name])
            self.store.set_watermark(spec.name, stream.key, watermark)
            counted = self._count_spend(spec)  # a kill loses no count of tokens spent
        self._watermark[(spec.name, stream.key)] = watermark
        self._spend_counted[spec.name] = counted

    def _write_first(self, spec: EntitySpec, stream: Stream, page: _Page, records: Any) -> None:
        """A page of a first load in id order, with its resume point (or, the last page, the
        stream's watermark) in one commit."""
        key = (spec.name, stream.key)
        state = first_load.after(self._first[key], spec, records, page.rows, page.refused)
        if spec.name in self._unkeyed:
            state.held = True  # a record without an id: which was it?
        with self.pacer.transaction():
            self._store_rows(spec, page, self._full_pass[spec.name])
            first_load.save(self.store, spec, stream, state, records)
            counted = self._count_spend(spec)
        self._first[key] = state
        self._spend_counted[spec.name] = counted

    def _write_paced(self, spec: EntitySpec, stream: Stream, page: _Page, records: Any) -> None:
        """A page of a paced pass, its ids seen and the cursor after it, in one commit."""
        with self.pacer.transaction():
            self._store_rows(spec, page, full_pass=True)
            after = getattr(records, "next_cursor", None)
            self.store.set_watermark(spec.name, paced.cursor_key(stream.key), after or paced.DONE)
            counted = self._count_spend(spec)
        self._spend_counted[spec.name] = counted

    def _finish_entity(
        self, spec: EntitySpec, entity: EntityResult, rows: list[Row], refused: list[Any]
    ) -> Iterator[None]:
        """The writer's work once an entity's streams are done (its indexes, a whole
        entity's rows, a full pass's reconciliation, its outcome), yielding between steps."""
        try:
            steps = deque(index_steps(self.db, spec))
            while steps:
                with self.pacer.transaction():  # one schema change for the builds a batch fits
                    started = time.monotonic()
                    while steps and time.monotonic() - started < pacing.BATCH:
                        steps.popleft()()
                yield
            if spec.name in self._paced and spec.name not in self._errors:
                if paced.complete(self.store, spec):
                    self._confirm_unseen(spec, entity)  # requests: outside a transaction
                    yield
            if spec.name not in self._errors:
                with self.pacer.transaction():
                    if spec.dependent:
                        pass  # written batch by batch (_take_page)
                    elif spec.name in self._paced:
                        if paced.complete(self.store, spec):
                            self._reconcile(spec, entity)
                            paced.forget(self.store, spec)
                    elif not spec.incremental:
                        self._write_whole(spec, rows, entity, refused)
                    elif self._full_pass[spec.name]:
                        self._reconcile(spec, entity)
        except sqlite3.Error as exc:
            self._errors.setdefault(spec.name, f"could not save {spec.name}: {exc}")
        if spec.name in self._paced and spec.name in self._errors:
            with self.db.atomic():
                paced.forget(self.store, spec)  # a cursor may be what failed: start over
        entity.status = "failed" if spec.name in self._errors else "success"
        entity.error = self._errors.get(spec.name)
        self._record(spec, entity)
        self._report(entity, spec, done=True)

    def _confirm_unseen(self, spec: EntitySpec, entity: EntityResult) -> None:
        """A complete paced pass of several streams: ask Pipedrive about each id it did not
        see (paced.to_confirm). One still there (archived mid-pass, or brought back) is
        written and counts as seen; one not found (404) is left to be flagged as gone."""
        records: list[dict] = []
        try:
            for id_ in paced.to_confirm(self.store, spec):
                if self.stop.is_set():
                    raise PipedriveError(self._fatal or "interrupted")
                path = str(spec.record_path).format(id=id_)
                try:
                    body = self.client.get(path, tally=self._tallies[spec.name])
                except PipedriveError as exc:
                    if type(exc) is PipedriveError and "HTTP 404" in str(exc):
                        continue  # not there: gone
                    raise
                record = body.get("data")
                if isinstance(record, dict) and record.get(spec.pk) == id_:
                    records.append(record)
        except PipedriveError as exc:
            self._fail(spec, exc)
            return
        page = self._rows(spec, records, entity, digests=False)
        rows, refused = page.rows, page.refused
        with self.pacer.transaction():
            self.store.upsert(spec, rows)
            self.store.mark_seen(spec, [row[spec.pk] for row in rows] + refused)
            counted = self._count_spend(spec)
        self._spend_counted[spec.name] = counted
        entity.records += len(rows)

    def _reconcile(self, spec: EntitySpec, entity: EntityResult) -> None:
        """End of a full pass: flag what it did not see, then forget what it saw."""
        if spec.name in self._unkeyed:
            entity.unreconciled = True
            log.warning("%s: refused records without ids; nothing flagged as gone", spec.name)
        elif self.store.seen_count(spec) or self.store.count(spec) == 0:
            # A pass resumed from an interrupted run started with that run.
            since = self.store.pass_started(spec.name)
            entity.flagged_gone = self.store.mark_gone(spec, since=since)
        else:
            log.warning("%s: full pass saw no records; nothing flagged as gone", spec.name)
        self.store.clear_seen(spec)
        self.store.update_metadata(spec.name, full_pending=0)

    def _write_whole(
        self, spec: EntitySpec, rows: list[Row], entity: EntityResult, refused: list[Any]
    ) -> None:
        for row in rows:
            row.setdefault("is_deleted", 0)
        targets = [s for s in self.all_entities if s.fields_table == spec.name]
        if targets:
            refill.write_definitions(self.db, self.store, spec, rows, targets)
        else:
            self.store.upsert(spec, rows)
        if spec.name in self._unkeyed:
            entity.unreconciled = True
            log.warning("%s: refused records without ids; nothing flagged as gone", spec.name)
        elif rows:
            seen = [row[spec.pk] for row in rows] + refused  # refused is not gone
            since = self._newest_before.get(spec.name)
            entity.flagged_gone = self.store.mark_gone(spec, seen, since=since)
        else:
            log.warning("%s: Pipedrive listed none; nothing flagged as gone", spec.name)

    def _prepare_incremental(self) -> None:
        """Read what fetcher threads need (they never touch the database connection)."""
        with self.pacer.transaction():  # custom fields' new columns: one schema change
            self._prepare_streams()

    def _prepare_streams(self) -> None:
        for spec in self.specs:
            for stream in spec.streams:
                committed = self.store.watermark(spec.name, stream.key)
                self._watermark[(spec.name, stream.key)] = committed
                self._updated_since[(spec.name, stream.key)] = plan.minus(committed, plan.LOOKBACK)
            if spec.fields_table and spec.fields_table in self.db.table_names():
                definitions = list(self.db[spec.fields_table].rows)
                self._custom[spec.name] = CustomFieldMap.from_definitions(definitions)
                self.store.ensure_columns(spec.name, self._custom[spec.name].columns())

    def _prepare_dependent(self, specs: list[EntitySpec]) -> None:
        """Which parents each dependent stream asks about, read before its fetcher starts."""
        for spec in specs:
            for stream in spec.streams:
                if stream.children is None:
                    continue
                parent = stream.children.parent
                asked: Iterable[tuple[Any, str | None]] = ()
                if parent in self._errors:
                    # Its parents may be half-written: ask next run, when they are whole.
                    self._errors.setdefault(
                        spec.name, f"not fetched because {parent} failed: {self._errors[parent]}"
                    )
                else:
                    asked = self.store.parents_to_ask(
                        spec, stream.children, self._full_pass[spec.name]
                    )
                    # A parent changed in the last moments may change again within the same
                    # second, keeping its update_time: remember no version for it, so the next
                    # run asks once more (one request per 100 such parents).
                    recent = plan.minus(self._started_at, plan.LOOKBACK) or ""
                    asked = ((p, v if v and v < recent else None) for p, v in asked)
                self._parents[(spec.name, stream.key)] = Parents(asked)

    def _fail(self, spec: EntitySpec, exc: BaseException) -> None:
        message = self.client.redact.text(str(exc) or type(exc).__name__)
        if isinstance(exc, (AuthError, ConnectionFailed, BudgetSpent)):
            # Every other entity would fail the same way: stop them now.
            self._fatal = message
            self.stop.set()
        elif not isinstance(exc, PipedriveError):
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


@dataclass
class _Page:
    """A page of records as the writer takes it (``Sync._rows``)."""

    rows: list[Row] = field(default_factory=list)
    digests: list[bytes | None] = field(default_factory=list)  # per row; empty: no full pass
    same: list[dict] = field(default_factory=list)  # records stored as they are: no row
    refused: list[Any] = field(default_factory=list)  # ids of refused records (not gone)
    refused_at: int | None = None  # rows before the first refused record (None: none)


def _plugin_transform(spec: EntitySpec, record: dict) -> dict | None:
    return plugins.transform_record(spec.name, record)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
