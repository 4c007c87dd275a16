"""How much of pdsync's whole-account first sync a second process could take: the thread CPU
spent decoding pages (orjson, in the fetcher threads) and in ``to_row`` (the writer), two
syncs in fresh processes on one fake of 100,000 deals, deal history off.

    python benchmarks/decode_share.py --deals 100000 --runs 2
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_split import start_fake  # noqa: E402


def child(url: str, token: str) -> None:
    import orjson

    import pdsync
    import pdsync.client as client
    import pdsync.engine as engine

    spent: dict[str, float] = defaultdict(float)
    lock = threading.Lock()
    loads, to_row = orjson.loads, engine.to_row

    class Timed:
        def __getattr__(self, name: str):
            return getattr(orjson, name)

        @staticmethod
        def loads(body):
            started = time.thread_time()
            data = loads(body)
            with lock:
                spent["decode"] += time.thread_time() - started
            return data

    def timed_to_row(*args, **kwargs):
        started = time.thread_time()
        try:
            return to_row(*args, **kwargs)
        finally:
            spent["to_row"] += time.thread_time() - started

    client.orjson = Timed()
    engine.to_row = timed_to_row
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        result = pdsync.sync(
            os.path.join(tmp, "p.db"), token=token, base_url=url, auth_path=None, history_budget=0
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"whole account: ok {result.ok}, {result.records:,} records, {wall:.2f} s, "
        f"{result.records / wall:,.0f}/s, CPU {cpu:.2f} s; decode {spent['decode']:.2f} "
        f"thread-CPU s, to_row {spent['to_row']:.2f} (the wrappers' cost included); RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deals", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    server, here, info = start_fake(args.deals)
    try:
        for _ in range(args.runs):
            command = [sys.executable, __file__, "--child", info["url"], info["token"]]
            subprocess.run(command, timeout=900, check=False)
    finally:
        here.send(("stop", None))
        server.join(10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main()
