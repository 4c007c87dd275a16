"""Prototype (research, issue #18): a first load of deals alone with the JSON decoding and
``to_row`` in a second process, the writer thread only binding values and running SQLite.
Interleaved with pdsync's own first sync of deals alone on one fake, each run a fresh process:
"main" (pdsync.sync), "split" (fetcher threads hand raw pages to a one-process pool) and
"fetch" (one process per stream fetches, decodes and makes rows).

    python benchmarks/process_split.py --deals 100000 --rounds 2

Not pdsync's sync: no history observer, no digests, no pacer, no token tally; a page and its
resume point commit together, refused records are kept out, pages keep their order, every
wait has a deadline, and a killed worker fails the run (``--kill-worker``). It measures what
the split itself can reach, against the engine as it is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_bench  # noqa: E402  (its fake server)

WAIT = 60.0  # seconds: no page, fetch or worker answer takes longer on this machine
_CURSOR = re.compile(rb'"next_cursor"\s*:\s*(null|"([^"]*)")')

_spec = None
_custom = None


def _init(custom) -> None:
    global _spec, _custom
    from pdsync.entities import builtin_entities

    _spec = next(s for s in builtin_entities() if s.name == "deals")
    _custom = custom


def page_rows(body: bytes, latest: str):
    """In the worker: a page's bytes -> (columns, row tuples, refused keys, problems)."""
    from operator import itemgetter

    import orjson

    from pdsync.records import BadRecord, to_row

    data = orjson.loads(body)["data"]
    groups: dict[tuple, list] = {}
    refused, problems = [], []
    for record in data:
        try:
            row = to_row(_spec, record, _custom, latest)
        except BadRecord as exc:
            refused.append(exc.key)
            problems.append(str(exc)[:200])
            continue
        cols = tuple(row)
        groups.setdefault(cols, []).append(tuple(map(row.__getitem__, cols)))
    del itemgetter
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (
        list(groups.items()),
        refused,
        problems,
        (usage.ru_utime + usage.ru_stime, usage.ru_maxrss),
    )


def next_cursor(body: bytes) -> str | None:
    """The page's cursor without decoding it (additional_data comes after data)."""
    found = None
    for match in _CURSOR.finditer(body, max(0, len(body) - 400)):
        found = match
    if found is None or found.group(1) == b"null":
        return None
    return found.group(2).decode()


def _begin(path: str):
    """A prepared database's writer, the latest plausible update_time, the workers' context."""
    import sqlite_utils

    from pdsync import schema, timestamps
    from pdsync.entities import builtin_entities

    spec = next(s for s in builtin_entities() if s.name == "deals")
    db = sqlite_utils.Database(path)
    schema.prepare(db, builtin_entities())
    return (
        Writer(db, spec),
        timestamps.latest_plausible(),
        multiprocessing.get_context("forkserver"),
    )


def split_sync(url: str, token: str, path: str, kill_worker: bool = False) -> dict:
    import concurrent.futures as cf

    import httpx

    writer, latest, ctx = _begin(path)
    spec = writer.spec
    pool = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_init, initargs=(None,))
    futures: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    started, cpu = time.perf_counter(), time.process_time()

    def fetch(stream) -> None:
        try:
            params = dict(stream.params) | {"limit": 500, "sort_by": "id", "sort_direction": "asc"}
            with httpx.Client(base_url=url, headers={"x-api-token": token}, timeout=WAIT) as http:
                cursor = None
                while not stop.is_set():
                    response = http.get(
                        stream.path, params=params | ({"cursor": cursor} if cursor else {})
                    )
                    response.raise_for_status()
                    body = response.content
                    cursor = next_cursor(body)
                    item = ("page", stream.key, pool.submit(page_rows, body, latest), cursor)
                    while not stop.is_set():
                        try:
                            futures.put(item, timeout=1)
                            break
                        except queue.Full:
                            continue
                    if cursor is None:
                        break
            futures.put(("done", stream.key, None, None), timeout=WAIT)
        except BaseException as exc:  # noqa: BLE001  (handed to the writer)
            futures.put(("error", stream.key, exc, None), timeout=WAIT)

    threads = [threading.Thread(target=fetch, args=(s,), daemon=True) for s in spec.streams]
    for t in threads:
        t.start()
    open_streams, error = len(threads), None
    killed, worker = False, (0.0, 0)
    try:
        while open_streams:
            kind, key, payload, cursor = futures.get(timeout=WAIT)
            if kind == "done":
                open_streams -= 1
                continue
            if kind == "error":
                raise payload
            if kill_worker and not killed and writer.records > 20000:
                for p in pool._processes.values():
                    os.kill(p.pid, 9)
                killed = True
            groups, bad, _, worker = payload.result(timeout=WAIT)
            writer.page(groups, bad, key, cursor)
        load_done = writer.finish(started)
    except Exception as exc:  # noqa: BLE001  (the run fails, one line)
        error = f"{type(exc).__name__}: {exc}"
        stop.set()
        load_done = None
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for t in threads:
            t.join(timeout=5)
    return writer.figures(error, started, cpu, load_done, worker)


class Writer:
    """The writer's part: a page's row tuples and its resume point, in one commit."""

    def __init__(self, db, spec) -> None:
        from pdsync.store import Store

        self.db, self.spec, self.store = db, spec, Store(db)
        self.statements: dict[tuple, str] = {}
        self.records = self.refused = 0

    def page(self, groups: list, refused: list, key: str, cursor: str | None) -> None:
        from pdsync.store import _upsert_sql

        spec, store = self.spec, self.store
        with self.db.conn:
            for cols, rows in groups:
                store.ensure_columns(spec.name, {c: str for c in cols})
                sql = self.statements.get(cols)
                if sql is None:
                    sql = self.statements[cols] = _upsert_sql(spec, cols)
                self.db.conn.executemany(sql, rows)
                self.records += len(rows)
            store.set_watermark(spec.name, f"{key}#first", cursor or "done")
        self.refused += len(refused)

    def finish(self, started: float) -> float:
        """The read paths, built after the load; returns how long the load took."""
        from pdsync import schema

        loaded = time.perf_counter() - started
        with self.db.conn:
            schema.ensure_indexes(self.db, self.spec)
        return loaded

    def figures(self, error, started: float, cpu: float, load_done, worker) -> dict:
        seconds = time.perf_counter() - started
        return {
            "ok": error is None,
            "error": error,
            "records": self.records,
            "committed": self.db.execute("select count(*) from deals").fetchone()[0],
            "refused": self.refused,
            "seconds": seconds,
            "load_s": load_done,
            "cpu_s": time.process_time() - cpu,
            "worker_cpu_s": worker[0],
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mb": worker[1] / 1024,
            "digest": digest(self.db),
        }


def stream_worker(
    url: str, token: str, path: str, params: dict, key: str, latest: str, out
) -> None:
    """Variant "fetch": a whole stream in its own process (HTTP, decoding, to_row), its
    pages' row tuples put on ``out`` in order; the writer only binds and runs SQLite."""
    import httpx

    _init(None)
    try:
        params = params | {"limit": 500, "sort_by": "id", "sort_direction": "asc"}
        with httpx.Client(base_url=url, headers={"x-api-token": token}, timeout=WAIT) as http:
            cursor = None
            while True:
                asked = params | ({"cursor": cursor} if cursor else {})
                response = http.get(path, params=asked)
                response.raise_for_status()
                body = response.content
                cursor = next_cursor(body)
                groups, refused, problems, usage = page_rows(body, latest)
                out.put(("page", key, (groups, refused, problems, usage), cursor), timeout=WAIT)
                if cursor is None:
                    break
        out.put(("done", key, None, None), timeout=WAIT)
    except Exception as exc:  # noqa: BLE001  (handed to the writer, one line)
        out.put(("error", key, f"{type(exc).__name__}: {exc}", None), timeout=WAIT)


def fetch_sync(url: str, token: str, path: str, kill_worker: bool = False) -> dict:
    """Variant "fetch": one process per stream fetches and makes rows (see stream_worker)."""

    writer, latest, ctx = _begin(path)
    spec = writer.spec
    out = ctx.Queue(maxsize=4)
    started, cpu = time.perf_counter(), time.process_time()
    workers = {
        s.key: ctx.Process(
            target=stream_worker,
            args=(url, token, s.path, dict(s.params), s.key, latest, out),
            daemon=True,
        )
        for s in spec.streams
    }
    for w in workers.values():
        w.start()
    open_streams, error = set(workers), None
    killed, worker, usage = False, (0.0, 0), {}
    try:
        waited = time.monotonic()
        while open_streams:
            try:
                kind, key, payload, cursor = out.get(timeout=1)
            except queue.Empty:
                dead = [k for k in open_streams if workers[k].exitcode is not None]
                if dead:
                    raise RuntimeError(
                        f"the worker of {dead[0]} ended (exit code "
                        f"{workers[dead[0]].exitcode}) before its stream"
                    ) from None
                if time.monotonic() - waited > WAIT:
                    raise TimeoutError(f"no page for {WAIT:.0f} s") from None
                continue
            waited = time.monotonic()
            if kind == "done":
                open_streams.discard(key)
                continue
            if kind == "error":
                raise RuntimeError(payload)
            if kill_worker and not killed and writer.records > 20000:
                os.kill(next(iter(workers.values())).pid, 9)
                killed = True
            groups, bad, _, usage[key] = payload
            writer.page(groups, bad, key, cursor)
        load_done = writer.finish(started)
    except Exception as exc:  # noqa: BLE001  (the run fails, one line)
        error = f"{type(exc).__name__}: {exc}"
        load_done = None
    finally:
        for w in workers.values():
            if w.is_alive():
                w.terminate()
            w.join(timeout=5)
    worker = (sum(u[0] for u in usage.values()), sum(u[1] for u in usage.values()))
    return writer.figures(error, started, cpu, load_done, worker)


def main_sync(url: str, token: str, path: str) -> dict:
    import pdsync

    started, cpu = time.perf_counter(), time.process_time()
    result = pdsync.sync(
        path, token=token, base_url=url, auth_path=None, only=["deals"], history_budget=0
    )
    return {
        "ok": result.ok,
        "records": result.records,
        "seconds": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "digest": digest(pdsync.open_database(path)),
    }


def digest(db) -> str:
    """What the deals table holds, to check both ways wrote the same rows."""
    import hashlib

    h = hashlib.sha256()
    cols = sorted(r[1] for r in db.execute("pragma table_info(deals)"))
    for row in db.execute(f"select {', '.join(f'[{c}]' for c in cols)} from deals order by id"):
        h.update(repr(row).encode())
    return f"{len(cols)} columns {h.hexdigest()[:12]}"


def child() -> None:
    import json

    which, url, token, path, kill = sys.argv[2:7]
    if which == "split":
        figures = split_sync(url, token, path, kill == "1")
    elif which == "fetch":
        figures = fetch_sync(url, token, path, kill == "1")
    else:
        figures = main_sync(url, token, path)
    print(json.dumps(figures))


def start_fake(deals: int):
    """The fake in its own process: (process, its pipe, its url and token)."""
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    server = ctx.Process(target=sync_bench.serve_fake, args=(there, deals, 1), daemon=True)
    server.start()
    if not here.poll(600):
        raise SystemExit("the fake did not start within 600 s")
    return server, here, here.recv()


def main() -> None:
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--deals", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kill-worker", action="store_true")
    args = parser.parse_args()
    server, here, info = start_fake(args.deals)
    try:
        for rnd in range(args.rounds):
            for which in ("main", "split", "fetch"):
                with tempfile.TemporaryDirectory() as tmp:
                    before = sync_bench.cpu_seconds(server.pid)
                    load = os.getloadavg()[0]
                    out = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            which,
                            info["url"],
                            info["token"],
                            os.path.join(tmp, "p.db"),
                            "1" if args.kill_worker else "0",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    fake = sync_bench.cpu_seconds(server.pid) - before
                    if out.returncode:
                        print(which, "failed:", out.stderr[-2000:])
                        continue
                    f = json.loads(out.stdout.strip().splitlines()[-1])
                    rate = f["records"] / f["seconds"]
                    extra = ""
                    if which != "main":
                        extra = (
                            f" worker {f['worker_cpu_s']:.1f} CPU s {f['worker_rss_mb']:.0f} MB;"
                            f" load phase {f['load_s'] or 0:.2f} s; committed {f['committed']:,};"
                            f" error {f['error']}"
                        )
                    extra += f" [{f['digest']}]"
                    print(
                        f"round {rnd + 1} {which:5} {f['records']:,} deals {f['seconds']:.2f} s "
                        f"{rate:,.0f}/s CPU {f['cpu_s']:.1f} s RSS {f['rss_mb']:.0f} MB fake CPU "
                        f"{fake:.1f} s load {load:.2f}{extra}",
                        flush=True,
                    )
    finally:
        here.send(("stop", None))
        server.join(10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child()
    else:
        main()
