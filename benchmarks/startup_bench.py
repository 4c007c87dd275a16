"""Start-up benchmark: `pdsync --help` and a no-change incremental sync, many runs each.

    python benchmarks/startup_bench.py                 # this checkout, 30 runs each
    python benchmarks/startup_bench.py --trees /tmp/before .   # interleaved, before vs after

The fake Pipedrive (the demo company, 2,000 deals) is built once in another process; the
database is synced once, then each round runs, in a fresh process per run, `pdsync --help`
and `pdsync sync DB -q` (which finds nothing new: 12 to 16 requests, plan.RUN_REQUESTS) with
each tree, so that drift on this shared machine hits every figure alike. Also printed: the floor
any Python command pays here (`python -c pass`, and `import click`), with each tree's own
interpreter: a tree with a `.venv` (installed `pip install -e .`, as the README says) runs with
that venv's Python, whose `site` reads that install's `.pth` for every command; a tree without
one runs with this interpreter. CPU is the median of each run's user + system time: what a busy
machine inflates least.
Targets (issue #18): `pdsync --help` <= 60 ms, a no-change incremental sync <= 150 ms
(medians).

Each tree's modules are byte-compiled first, as pip does when it installs a wheel: with
PYTHONDONTWRITEBYTECODE set (this machine's environment does) a checkout never gets its
.pyc files, and every run would compile pdsync's modules again (docs/benchmarks.md
section 12 has what that costs). `--no-bytecode` measures that case instead: it deletes
them and runs so.
"""

from __future__ import annotations

import argparse
import compileall
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_bench  # noqa: E402  (its fake server)

CLI = "import sys; from pdsync.cli import cli; sys.exit(cli(prog_name='pdsync'))"


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # From an empty directory: `python -c` puts the working directory first on sys.path,
    # which would pick a checkout there over PYTHONPATH's.
    done = subprocess.run(
        args, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.decode()[-500:]}")
    return seconds, cpu


def python_of(tree: Path) -> str:
    """The tree's own venv's Python, else this one (see the module's docstring)."""
    python = tree / ".venv" / "bin" / "python"
    return str(python) if python.exists() else sys.executable


def summary(label: str, figures: list[tuple[float, float]], target: float | None = None) -> str:
    runs = sorted(wall for wall, _ in figures)
    p90 = runs[max(0, int(len(runs) * 0.9) - 1)]
    median = statistics.median(runs)
    line = f"{label:<34} median {median * 1000:6.1f} ms  p90 {p90 * 1000:6.1f} ms"
    line += f"  CPU {statistics.median(cpu for _, cpu in figures) * 1000:6.1f} ms"
    if target is not None:
        line += f"  target <= {target * 1000:.0f} ms: {'met' if median <= target else 'MISSED'}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--deals", type=int, default=2000, help="the demo company's size")
    parser.add_argument(
        "--trees", type=Path, nargs="+", default=[Path(__file__).resolve().parent.parent]
    )
    parser.add_argument(
        "--no-bytecode", action="store_true", help="run pdsync from source, as compiled each run"
    )
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    for tree in trees:
        if args.no_bytecode:
            for cache in (tree / "pdsync").rglob("__pycache__"):
                shutil.rmtree(cache)
        else:
            compileall.compile_dir(tree / "pdsync", quiet=1)
    parent, child = multiprocessing.Pipe()
    fake = multiprocessing.Process(
        target=sync_bench.serve_fake, args=(child, args.deals, 1), daemon=True
    )
    fake.start()
    info = parent.recv()
    base = {**os.environ, "PIPEDRIVE_API_TOKEN": info["token"], "PIPEDRIVE_BASE_URL": info["url"]}
    if args.no_bytecode:
        base["PYTHONDONTWRITEBYTECODE"] = "1"
    runs: dict[str, list[tuple[float, float]]] = {}
    pythons = {tree: python_of(tree) for tree in trees}
    with tempfile.TemporaryDirectory() as tmp:
        envs = {tree: {**base, "PYTHONPATH": str(tree)} for tree in trees}
        dbs = {tree: os.path.join(tmp, f"{i}.db") for i, tree in enumerate(trees)}
        for tree in trees:  # the first sync, not timed
            timed([pythons[tree], "-c", CLI, "sync", dbs[tree], "-q"], envs[tree])
        for _ in range(args.runs):
            for i, tree in enumerate(trees):
                python = pythons[tree]
                runs.setdefault(f"[{i}] python -c pass", []).append(
                    timed([python, "-c", "pass"], base)
                )
                runs.setdefault(f"[{i}] python -c 'import click'", []).append(
                    timed([python, "-c", "import click"], base)
                )
                runs.setdefault(f"[{i}] pdsync --help", []).append(
                    timed([python, "-c", CLI, "--help"], envs[tree])
                )
                runs.setdefault(f"[{i}] pdsync sync (no change)", []).append(
                    timed([python, "-c", CLI, "sync", dbs[tree], "-q"], envs[tree])
                )
    parent.send(("stop", None))
    fake.join(timeout=30)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.runs} runs each, interleaved; load average {load} (a shared machine)")
    print("pdsync run from source, compiled every run" if args.no_bytecode else "byte-compiled")
    for i, tree in enumerate(trees):
        print(f"[{i}] {tree} (python: {pythons[tree]})")
    targets = {"--help": 0.060, "no change": 0.150}
    for label, times in runs.items():
        target = next((t for key, t in targets.items() if key in label), None)
        print(summary(label, times, target))


if __name__ == "__main__":
    main()
