"""Readers' full-text queries during first syncs, two checkouts of pdsync in turn.

    git worktree add /tmp/before 464f841
    python benchmarks/schema_race.py /tmp/before . --rounds 6 --deals 3000

SQLite readers fail to reconnect an FTS5 table ("vtable constructor failed: persons_fts")
when a statement is prepared across schema changes that land milliseconds apart, as a
first sync's index builds used to (docs/benchmarks.md, section 7). Each round makes a new
database with `pdsync sync` from each tree while three reader threads, on their own
connections, run full-text queries against it as fast as they can; the errors are counted
per tree. The fake (no latency) runs in this process; each sync in its own.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

QUERIES = (
    "select count(*) from persons where id in"
    " (select rowid from persons_fts where persons_fts match 'a*')",
    "select count(*) from organizations_fts where organizations_fts match 'a*'",
)


def read_until(path: str, stop: threading.Event, counts: dict[str, int]) -> None:
    while not os.path.exists(path) and not stop.is_set():
        time.sleep(0.001)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        while not stop.is_set():
            try:
                for sql in QUERIES:
                    conn.execute(sql).fetchall()
                counts["ok"] = counts.get("ok", 0) + 1
            except sqlite3.Error as exc:
                if "no such table" not in str(exc):  # before the sync made its tables
                    counts[str(exc)] = counts.get(str(exc), 0) + 1
    finally:
        conn.close()


def first_sync(tree: Path, env: dict, readers: int) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pipedrive.db")
        stop = threading.Event()
        counts: list[dict[str, int]] = [{} for _ in range(readers)]
        threads = [threading.Thread(target=read_until, args=(path, stop, c)) for c in counts]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "pdsync", "sync", path, "--quiet"],
            env={**env, "PYTHONPATH": str(tree)},
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join()
        if out.returncode != 0:
            raise SystemExit(f"sync with {tree} failed: {out.stderr.strip()[-500:]}")
    total: dict[str, int] = {}
    for c in counts:
        for key, n in c.items():
            total[key] = total.get(key, 0) + n
    return seconds, total


def main() -> None:
    from pdsync.fake import FakePipedrive, FakeServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkout A (a directory holding pdsync/)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--deals", type=int, default=3000)
    parser.add_argument("--readers", type=int, default=3)
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    fake = FakePipedrive(deals=args.deals, seed=3)
    summary = {label: {"syncs": 0, "with errors": 0, "queries": 0, "errors": 0} for label in trees}
    try:
        with FakeServer(fake) as server:
            env = {
                **os.environ,
                "PIPEDRIVE_API_TOKEN": fake.token,
                "PIPEDRIVE_BASE_URL": server.url,
            }
            for round_ in range(args.rounds):
                for label, tree in trees.items():
                    seconds, counts = first_sync(tree, env, args.readers)
                    ok = counts.pop("ok", 0)
                    failed = sum(counts.values())
                    s = summary[label]
                    s["syncs"] += 1
                    s["with errors"] += bool(failed)
                    s["queries"] += ok + failed
                    s["errors"] += failed
                    print(
                        f"round {round_ + 1} {label}: sync {seconds:.1f} s,"
                        f" {ok + failed:,} reader queries, errors {counts or 0}",
                        flush=True,
                    )
    finally:
        fake.close()
    print(f"\n{args.deals:,} deals, {args.readers} readers, {args.rounds} first syncs per tree:")
    for label, tree in trees.items():
        s = summary[label]
        print(
            f"{label} {tree}: {s['errors']} errors in {s['queries']:,} queries;"
            f" {s['with errors']} of {s['syncs']} syncs had errors"
        )


if __name__ == "__main__":
    main()
