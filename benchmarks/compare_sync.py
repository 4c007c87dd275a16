"""Two checkouts of pdsync, interleaved on one fake: first sync, then incremental syncs.

    git worktree add /tmp/before HEAD~1
    python benchmarks/compare_sync.py /tmp/before . --deals 400000 --rounds 2
    python benchmarks/compare_sync.py /tmp/before . --deals 100000 --only deals --changes 500
    python benchmarks/compare_sync.py /tmp/before . --deals 100000 --rounds 1 --full 3

This machine is shared and its speed drifts by tens of percent over minutes, so comparing
runs made at different times says little. Here each round syncs with A then B while the
fake stays the same; each tree has its own database. With --changes K, each round also
applies K upstream changes and lets both trees sync them incrementally, which is where the
cost of work done per written row (triggers, indexes) shows. With --full N, each tree then
runs N `--full` syncs of the unchanged account, each beside the same sync writing no rows
(on a copy of the database: sync_bench.py's --dry), and the ratio of the two is printed:
what establishing "unchanged" costs (issue #18: <= 1.2). Every sync runs in a fresh
process importing pdsync from its tree (PYTHONPATH), via sync_bench.py's child mode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_bench  # noqa: E402  (its fake server and one-sync child mode)


def sync_with(
    tree: Path, db: str, info: dict, only: list[str] | None, full: bool = False, dry: bool = False
) -> dict:
    args = [sys.executable, sync_bench.__file__, "--child", db, info["url"], info["token"]]
    args += [f"--only={name}" for name in only or []]
    args += (["--full"] if full else []) + (["--dry"] if dry else [])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"sync with {tree} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkout A (a directory holding pdsync/)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="first syncs per tree (2)")
    parser.add_argument("--changes", type=int, default=0, help="upstream changes per round")
    parser.add_argument("--only", action="append", help="entities to sync (all)")
    parser.add_argument(
        "--full", type=int, default=0, metavar="N", help="--full syncs per tree, after the rounds"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for label, tree in trees.items():
        if not (tree / "pdsync" / "__init__.py").exists():
            raise SystemExit(f"{tree} is not a pdsync checkout")
        print(f"{label}: {tree}")

    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=sync_bench.serve_fake, args=(child, args.deals, args.seed), daemon=True
    )
    process.start()
    info = parent.recv()
    first: dict[str, list[dict]] = {"A": [], "B": []}
    later: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:

        def each_tree(round_: int, results: dict[str, list[dict]], describe) -> None:
            for label, tree in trees.items():
                figures = sync_with(tree, os.path.join(tmp, f"{label}{round_}.db"), info, args.only)
                results[label].append(figures)
                print(f"round {round_ + 1} {label}: {describe(figures)}", flush=True)

        for round_ in range(args.rounds):
            each_tree(
                round_,
                first,
                lambda f: (
                    f"first sync {f['seconds']:.1f} s (CPU {f['cpu_seconds']:.1f} s),"
                    f" peak RSS {f['peak_rss_mb']:.0f} MB; load {os.getloadavg()[0]:.1f}"
                ),
            )
            if args.changes:
                parent.send(("mutate", args.changes))
                parent.recv()
                each_tree(
                    round_,
                    later,
                    lambda f: (
                        f"{args.changes} changes synced in {f['seconds'] * 1000:.0f} ms"
                        f" (CPU {f['cpu_seconds'] * 1000:.0f} ms, {f['records']} records)"
                    ),
                )
        refetch = full_passes(trees, tmp, args, info)
    parent.send(("stop", None))
    process.join(timeout=30)

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"\n{args.deals:,} deals, {args.rounds} rounds, medians:")
    a, b = median(first["A"], "seconds"), median(first["B"], "seconds")
    print(f"first sync         A {a:8.1f} s   B {b:8.1f} s   B/A {b / a:.3f}")
    a, b = median(first["A"], "cpu_seconds"), median(first["B"], "cpu_seconds")
    print(f"first sync (CPU)   A {a:8.1f} s   B {b:8.1f} s   B/A {b / a:.3f}")
    a, b = median(first["A"], "peak_rss_mb"), median(first["B"], "peak_rss_mb")
    print(f"peak RSS           A {a:8.0f} MB  B {b:8.0f} MB  B/A {b / a:.3f}")
    if args.changes:
        a, b = median(later["A"], "seconds"), median(later["B"], "seconds")
        print(
            f"{args.changes} changes  A {a * 1000:8.0f} ms  B {b * 1000:8.0f} ms  B/A {b / a:.3f}"
        )
    if args.full:
        for i, unit in enumerate(("wall", "CPU")):
            a, b = (statistics.median(r[i] for r in refetch[label]) for label in trees)
            print(f"--full / no writes ({unit:>4}) A {a:5.2f}  B {b:5.2f}  B/A {b / a:.3f}")


def full_passes(
    trees: dict[str, Path], tmp: str, args, info: dict
) -> dict[str, list[tuple[float, float]]]:
    """--full of the unchanged account over each tree's last database, and the same sync
    writing no rows on a copy of it, alternating which goes first; per tree, the ratios of
    their wall and CPU times (CPU: what a machine shared with other work inflates least)."""
    ratios: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    for n in range(args.full):
        for label, tree in trees.items():
            db = os.path.join(tmp, f"{label}{args.rounds - 1}.db")
            dry_db = os.path.join(tmp, f"{label}-dry.db")
            shutil.copyfile(db, dry_db)
            order = [False, True] if n % 2 == 0 else [True, False]
            seconds = {}
            for dry in order:
                f = sync_with(tree, dry_db if dry else db, info, args.only, full=True, dry=dry)
                seconds[dry] = f["seconds"], f["cpu_seconds"], f["rows_changed"]
            os.remove(dry_db)
            (wall, cpu, changed), (dry_wall, dry_cpu, _) = seconds[False], seconds[True]
            ratios[label].append((wall / dry_wall, cpu / dry_cpu))
            load = os.getloadavg()[0]
            print(
                f"--full {n + 1} {label}: {wall:.1f} s (CPU {cpu:.1f} s, {changed:,} rows changed)"
                f", no writes {dry_wall:.1f} s (CPU {dry_cpu:.1f} s): {wall / dry_wall:.2f} x"
                f" wall, {cpu / dry_cpu:.2f} x CPU; load {load:.1f}",
                flush=True,
            )
    return ratios


if __name__ == "__main__":
    main()
