"""Where a first sync's writer spends its time, per checkout, interleaved on one fake.

    git worktree add --detach /tmp/before main
    python benchmarks/writer_phases.py /tmp/before . --deals 100000 --only deals

Each sync runs in a fresh process importing pdsync from its tree (PYTHONPATH), with the
writer's steps wrapped per call (a page, an index build: never a row, so the wrappers cost
nothing measurable): records to rows, the upsert, the history observer, a page's whole
handling (commit included), and the writer waiting for a page or building indexes between
pages. Seconds are wall time on the writer thread; the machine is shared, so compare the
trees within a run. Deal history is off (history_budget=0): it is not a first sync's load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_bench  # noqa: E402  (its fake server)

PHASES = {
    "rows": ("engine", "Sync", "_rows"),
    "upsert": ("store", "Store", "upsert"),
    "history": ("history", "Observer", "observe"),
    "page": ("engine", "Sync", "_take_page"),
    "wait+finish": ("engine", "Sync", "_next_item"),
    "indexes": ("schema", None, "ensure_indexes"),
}


def child(url: str, token: str, only: list[str]) -> None:
    """One sync with the phases timed; prints them as JSON."""
    import importlib
    import resource
    from collections import defaultdict

    import pdsync

    spent: dict[str, float] = defaultdict(float)

    def timed(label: str, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started

        return wrapper

    for label, (module, owner, name) in PHASES.items():
        target = importlib.import_module(f"pdsync.{module}")
        target = getattr(target, owner) if owner else target
        setattr(target, name, timed(label, getattr(target, name)))
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        result = pdsync.sync(
            os.path.join(tmp, "p.db"),
            token=token,
            base_url=url,
            auth_path=None,
            only=only or None,
            history_budget=0,
        )
        figures = {
            "ok": result.ok,
            "records": result.records,
            "wall": time.perf_counter() - started,
            "cpu": time.process_time() - cpu,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **spent,
        }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", type=Path, nargs="*", help="checkouts holding pdsync/")
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.only)
        return
    if not args.trees:
        parser.error("name at least one checkout")
    parent, end = multiprocessing.Pipe()
    fake = multiprocessing.Process(
        target=sync_bench.serve_fake, args=(end, args.deals, args.seed), daemon=True
    )
    fake.start()
    info = parent.recv()
    print(f"{args.deals:,} deals, only {args.only or 'everything'}; seconds on the writer")
    for round_ in range(1, args.rounds + 1):
        for tree in args.trees:
            command = [sys.executable, __file__, "--child", info["url"], info["token"]]
            command += [f"--only={name}" for name in args.only]
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            out = subprocess.run(command, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{tree}: {out.stderr.strip()[-500:]}")
            f = json.loads(out.stdout)
            load = os.getloadavg()[0]
            phases = "  ".join(f"{k} {f.get(k, 0):5.2f}" for k in PHASES)
            print(
                f"round {round_} {tree} (load {load:.1f}): wall {f['wall']:.2f}"
                f"  cpu {f['cpu']:.2f}  rss {f['rss_mb']:.0f}MB  {f['records']:,} records"
                f"\n    {phases}",
                flush=True,
            )
    parent.send(("stop", None))
    fake.join(timeout=30)


if __name__ == "__main__":
    main()
