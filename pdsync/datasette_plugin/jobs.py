"""Syncs started from Datasette: "Sync now" and the periodic scheduler.

The sync library is synchronous and page loads must never wait for it, so each sync runs in
its own thread. Jobs are kept per database file in this module: two Datasette instances in
one process see the same job, as they would see the same file lock. The scheduler starts
from the ASGI lifespan of the real server (``start_scheduler``): in Datasette 0.65 a task
started from the ``startup`` hook dies with ``datasette serve``'s temporary event loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pdsync
from pdsync import timestamps
from pdsync.auth import ConfigError
from pdsync.lock import LockHeld, SyncLock
from pdsync.redact import Redactor
from pdsync.schema import connect_read_only, is_pdsync_file

from .config import credentials, history_budget, plugin_config, sync_interval

log = logging.getLogger("pdsync.datasette")


class SyncRefused(Exception):
    """A sync could not start; the message says why (shown to the person who asked)."""

    status = 409  # Conflict: another sync runs


class SyncNotConfigured(SyncRefused):
    status = 503  # no token (or a bad base URL): the server's setup, not the request


def scrub(text: Any, secret: str | None) -> str:
    """``text`` without the token (or its URL-encoded forms, or URL credentials): an error
    message must never carry it to a page. The same redaction as everything pdsync stores."""
    return Redactor(secret).text(text)


class SyncJob:
    """One sync started from Datasette, run in its own thread; read by the status page."""

    def __init__(self, database: str, path: str, trigger: str) -> None:
        self.database = database
        self.path = path
        self.trigger = trigger
        self.started_at = timestamps.now()
        self.finished_at: str | None = None
        self.status = "running"  # then success, partial, failed, cancelled or refused
        self.entities: dict[str, dict] = {}
        self.records = 0
        self.requests = 0
        self.tokens = 0
        self.duration_ms: int | None = None
        self.run_id: int | None = None
        self.message = ""
        self.errors: dict[str, str] = {}
        self.done = threading.Event()

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def on_progress(self, event: pdsync.ProgressEvent) -> None:
        with _jobs_lock:
            self.entities[event.entity] = {
                "records": event.records,
                "requests": event.requests,
                "status": event.status,
                "done": event.done,
            }

    def run(
        self,
        token: str,
        base_url: str,
        every: float | None = None,
        history_budget: int | None = None,
    ) -> None:
        """Run the sync in the calling thread; never raises. ``every``: the schedule's
        interval, for the day's token projection (None for Sync now)."""
        try:
            result = pdsync.sync(
                self.path,
                token=token,
                base_url=base_url,
                auth_path=None,
                progress=self.on_progress,
                every=every,
                history_budget=history_budget,
            )
        except LockHeld as exc:
            self._end("refused", scrub(exc, token))
        except Exception as exc:  # a bad file, an unreachable URL: show it, keep serving
            log.warning("sync of %s failed: %s", self.database, scrub(exc, token))
            self._end("failed", scrub(f"{type(exc).__name__}: {exc}", token))
        else:
            with _jobs_lock:
                self.run_id = result.run_id
                self.records = result.records
                self.requests = result.requests
                self.tokens = result.tokens
                self.duration_ms = result.duration_ms
                self.errors = {k: scrub(v, token) for k, v in result.errors.items()}
            self._end(result.status, "")
            level = logging.INFO if result.ok else logging.WARNING
            log.log(level, "sync of %s: %s", self.database, scrub(result, token).splitlines()[0])

    def _end(self, status: str, message: str) -> None:
        with _jobs_lock:
            self.status = status
            self.message = message
            self.finished_at = timestamps.now()
            self.done.set()

    def as_dict(self) -> dict:
        """Raw values (the template formats them); status.py puts the entities in order."""
        with _jobs_lock:
            return {
                "database": self.database,
                "trigger": self.trigger,
                "status": self.status,
                "running": self.running,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "records": self.records,
                "requests": self.requests,
                "tokens": self.tokens,
                "duration_ms": self.duration_ms,
                "run_id": self.run_id,
                "message": self.message,
                "errors": dict(self.errors),
                "entities": [{"entity": name, **values} for name, values in self.entities.items()],
            }


_jobs: dict[str, SyncJob] = {}  # by resolved database file
_jobs_lock = threading.RLock()


def _file_key(path: str) -> str:
    return str(Path(path).resolve())


def latest_job(path: str | None) -> SyncJob | None:
    if not path:
        return None
    with _jobs_lock:
        return _jobs.get(_file_key(path))


def claim(database: str, path: str, trigger: str) -> SyncJob:
    """Register a new job for ``path``, or raise SyncRefused while another sync runs on it."""
    key = _file_key(path)
    with _jobs_lock:
        current = _jobs.get(key)
        if current is not None and current.running:
            raise SyncRefused(
                f"A sync of {database} is already running (started "
                f"{timestamps.ago(current.started_at)}, {current.trigger}); wait for it to finish."
            )
        # pdsync's own lock: a `pdsync sync` from cron or a terminal may hold it.
        probe = SyncLock(path)
        try:
            probe.acquire()
        except LockHeld as exc:
            raise SyncRefused(f"Not started: {exc}. Try again when it has finished.") from None
        probe.release()
        job = SyncJob(database=database, path=path, trigger=trigger)
        _jobs[key] = job
        return job


def start_sync(database: str, path: str, config: dict, trigger: str) -> SyncJob:
    """Start an incremental sync of ``path`` in a background thread and return its job."""
    try:
        token, base_url = credentials(config)
    except ConfigError as exc:
        raise SyncNotConfigured(f"Sync is not set up: {exc}") from None
    job = claim(database, path, trigger)
    thread = threading.Thread(
        target=job.run,
        args=(token, base_url, None, history_budget(config)),
        name=f"pdsync-sync-{database}",
        daemon=True,
    )
    thread.start()
    return job


# -- periodic sync -----------------------------------------------------------------------


def last_success_started(path: str) -> str | None:
    """When the last successful run started, from sync_runs; None if none (or unreadable)."""
    try:
        conn = connect_read_only(path)
        try:
            return conn.execute(
                "select max(started_at) from sync_runs where status = 'success'"
            ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


class Scheduler:
    """Syncs every pdsync database of a Datasette instance on its ``sync_interval``.

    One thread, one sync at a time; a sync started with "Sync now", from cron or from a
    terminal meanwhile is left alone (the job flag and pdsync's file lock say so).
    """

    def __init__(self, datasette) -> None:
        self.datasette = datasette
        self.stop = threading.Event()
        self.next_due: dict[str, float] = {}  # database name -> time.time()
        self.thread = threading.Thread(target=self._loop, name="pdsync-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self, timeout: float = 2.0) -> None:
        self.stop.set()
        # A sync in progress is not interrupted: every committed page is kept, and pdsync
        # closes a run left "running" on its next start.
        self.thread.join(timeout)

    def targets(self) -> list[tuple[str, str, dict, float]]:
        out = []
        for name, db in list(self.datasette.databases.items()):
            path = getattr(db, "path", None)
            if not path or not db.is_mutable or not is_pdsync_file(path):
                continue
            config = plugin_config(self.datasette, name)
            try:
                interval = sync_interval(config)
            except ValueError as exc:
                log.warning("pdsync plugin configuration for %s: %s", name, exc)
                continue
            if interval:
                out.append((name, path, config, interval))
        return out

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                wait = self._tick()
            except Exception:  # keep the schedule alive whatever one round ran into
                log.exception("periodic sync")
                wait = 60.0
            self.stop.wait(max(wait, 0.05))

    def _tick(self) -> float:
        """Sync what is due; return how long to wait before looking again."""
        wait = 60.0  # look again for newly attached databases now and then
        for name, path, config, interval in self.targets():
            if self.stop.is_set():
                return 0.0
            due = self.next_due.get(name)
            if due is None:
                # After a restart, sync at once only if the last good run is that old.
                age = timestamps.seconds_since(last_success_started(path))
                due = time.time() + (0 if age is None else max(0.0, interval - age))
                self.next_due[name] = due
            if time.time() >= due:
                self.next_due[name] = time.time() + interval
                self._sync(name, path, config, interval)
                due = self.next_due[name]
            wait = min(wait, max(0.0, due - time.time()))
        return wait

    def _sync(self, name: str, path: str, config: dict, interval: float) -> None:
        try:
            token, base_url = credentials(config)
        except ConfigError as exc:
            log.warning("periodic sync of %s skipped: %s", name, exc)
            return
        try:
            job = claim(name, path, f"every {timestamps.format_interval(interval)}")
        except SyncRefused as exc:
            log.info("periodic sync of %s skipped: %s", name, exc)
            return
        job.run(token, base_url, every=interval, history_budget=history_budget(config))


_schedulers: dict[int, Scheduler] = {}  # by id() of the Datasette instance


def scheduler_for(datasette) -> Scheduler | None:
    return _schedulers.get(id(datasette))


def start_scheduler(datasette) -> None:
    """On lifespan.startup: a scheduler for this instance, if any database has an interval."""
    if id(datasette) in _schedulers:
        return
    configured = plugin_config(datasette).get("sync_interval") or any(
        plugin_config(datasette, name).get("sync_interval") for name in datasette.databases
    )
    if not configured:
        return
    scheduler = Scheduler(datasette)
    _schedulers[id(datasette)] = scheduler
    scheduler.start()


def stop_scheduler(datasette) -> None:
    """On lifespan.shutdown."""
    scheduler = _schedulers.pop(id(datasette), None)
    if scheduler is not None:
        scheduler.shutdown()
