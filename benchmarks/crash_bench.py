"""Crash benchmark: `pdsync sync` killed with SIGKILL at random moments, 20 times; after every
kill PRAGMA integrity_check must say ok and a rerun must converge on the fake (issue #6).

    python benchmarks/crash_bench.py                          # 20 runs over 20,000 deals
    python benchmarks/crash_bench.py --runs 5 --deals 5000    # a quick look

One fake Pipedrive serves every run (in a thread of this process). First one unkilled sync of
each kind is timed; then each run kills a `pdsync sync` process at a moment drawn uniformly
from its phase's window, cycling through the phases:

    first/early, first/middle   first sync of an empty database, while it loads
    first/indexes               the same once its deals are all in: indexes and FTS
    incremental                 after upstream changes
    full                        `--full` after upstream changes (reconciles deletions)

Windows leave out interpreter start-up (a kill before the database is opened tests nothing);
a sync that finishes before its kill becomes the new expected duration. After each kill:
PRAGMA integrity_check, then a plain `pdsync sync`, then the database must equal the fake
(tests/crashes.py: every record, full-text indexes complete, no run left "running", and
deletions flagged: deals always, other entities where a full pass reached them).
--seed fixes the fake, the upstream changes and the draws; the moments also scale with the
measured durations. Exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from crashes import crash_runs, measure  # noqa: E402  (shared with tests/test_crash.py)

from pdsync.fake import FakePipedrive, FakeServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--changes", type=int, help="upstream changes before each later run (default deals/20)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="fake seconds per request")
    args = parser.parse_args()
    changes = args.changes if args.changes is not None else max(50, args.deals // 20)
    rng = random.Random(args.seed)

    started = time.perf_counter()
    fake = FakePipedrive(deals=args.deals, seed=args.seed, latency=args.latency)
    print(f"fake with {args.deals:,} deals built in {time.perf_counter() - started:.1f}s")
    failed = 0
    try:
        with FakeServer(fake) as server, tempfile.TemporaryDirectory() as tmp:
            db_path = os.path.join(tmp, "crash.db")
            t = measure(db_path, fake, server.url, changes, rng)
            print(
                f"unkilled: first sync {t.first:.2f}s (deals all in at {t.loaded:.2f}s), "
                f"incremental after {changes} changes {t.incremental:.2f}s, "
                f"full {t.full:.2f}s; kills skip the {t.startup:.2f}s before the database "
                "is opened\n"
            )
            print(
                f"{'run':>3}  {'phase':<13} {'kill at':>12}  {'deals committed':>15}  "
                f"{'indexes+FTS':>11}  "
                f"{'integrity':<9}  {'rerun':>6}  converged"
            )
            killed = 0
            for run in crash_runs(args.runs, db_path, fake, server.url, t, changes, rng):
                killed += run.killed
                failed += not run.ok
                moment = f"{run.kill_at:.2f}s" if run.killed else f"ended {run.kill_at:.2f}s"
                rerun = f"{run.rerun_seconds:5.2f}s" if run.rerun_seconds is not None else "-"
                converged = "yes" if run.ok else "NO"
                print(
                    f"{run.number:>3}  {run.phase:<13} {moment:>12}  {run.deals:>15}  "
                    f"{run.read_paths:>11}  "
                    f"{run.integrity[:40]:<9}  {rerun:>6}  {converged}",
                    flush=True,
                )
                for problem in run.problems[:5]:
                    print(f"       {problem}")
                if len(run.problems) > 5:
                    print(f"       ... and {len(run.problems) - 5} more")
    finally:
        fake.close()
    print(
        f"\n{args.runs} runs, {killed} killed mid-sync ({args.runs - killed} finished first): "
        f"{args.runs - failed} intact and converged, {failed} failed "
        f"({time.perf_counter() - started:.0f}s in all)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
