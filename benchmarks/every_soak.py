"""Soak test for `pdsync sync --every`: memory stays flat and runs never overlap.

    python benchmarks/every_soak.py --minutes 3 --interval 1s      # a quick look
    python benchmarks/every_soak.py --minutes 240 --interval 30s   # "for hours"

Runs `pdsync sync DB --every INTERVAL` against the fake Pipedrive (its own process, with a
few upstream changes before every sampling), samples the sync process's RSS, then prints the
RSS at the start, the end and the peak, how many runs there were, their statuses, and whether
any two runs overlapped (from sync_runs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sync_bench import serve_fake  # noqa: E402  (the fake in its own process)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--deals", type=int, default=5000)
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    fake = multiprocessing.Process(target=serve_fake, args=(child, args.deals, 1), daemon=True)
    fake.start()
    info = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "soak.db")
        env = {
            **os.environ,
            "PIPEDRIVE_API_TOKEN": info["token"],
            "PIPEDRIVE_BASE_URL": info["url"],
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pdsync", "sync", db, "--every", args.interval],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        samples = []
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(10)
            parent.send(("mutate", 20))
            parent.recv()
            samples.append(rss_mb(proc.pid))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        conn = sqlite3.connect(db)
        runs = conn.execute(
            "select started_at, finished_at, status from sync_runs order by id"
        ).fetchall()
    parent.send(("stop", None))
    fake.join(timeout=30)

    statuses: dict[str, int] = {}
    for _, _, status in runs:
        statuses[status] = statuses.get(status, 0) + 1
    overlaps = sum(
        1
        for (_, end, _), (start, _, _) in zip(runs, runs[1:], strict=False)
        if end and start and start < end
    )
    first = samples[: max(len(samples) // 10, 1)]
    last = samples[-max(len(samples) // 10, 1) :]
    print(f"{len(runs)} runs in {args.minutes:g} min at --every {args.interval}: {statuses}")
    print(f"overlapping runs: {overlaps}")
    print(
        f"sync process RSS: first samples {min(first):.1f}-{max(first):.1f} MB, "
        f"last samples {min(last):.1f}-{max(last):.1f} MB, peak {max(samples):.1f} MB "
        f"({len(samples)} samples, every 10 s)"
    )


if __name__ == "__main__":
    main()
