"""Physical-limit benchmark: a full first sync against a rate-limited, slow fake Pipedrive,
compared with the lowest wall time any client could reach under the same limits.

    python benchmarks/physical_limit.py                           # 100k deals, 0 and 50 ms
    python benchmarks/physical_limit.py --deals 20000 --latency 0.05 --burst 40

For each latency, the fake (with that per-request latency and burst limit) runs in its own
process and one full first sync of the whole account, into a new database, runs in a child
process. The fake timestamps every request it receives, so the report shows requests as the
server saw them, 429s, pages per stream and the busiest rolling 2-second window.

The lower bound is the largest of three terms:

  rate      all requests / (burst / 2 s): the most Pipedrive lets through over time;
  chain     the longest stream's pages x latency: a stream's pages are sequential (the next
            cursor comes with the previous page), so its chain cannot be shortened;
  spread    all pages x latency / parallel streams: the streams' chains, evenly shared.

The rate term is a steady rate. A rolling window also lets the first `burst` requests through
at once, so a strict minimum, floor((requests - 1) / burst) x 2 s + latency (or the chain term
if longer), is printed too: it is well below the rate term for a hundred requests and about
equal to it for 481 (100k deals). So is the rate pdsync allows itself (one request and 50 ms
of each window spare), which accounts for about 5 % of the wall time by design.

Target (issue #6): wall time <= 1.2 x the bound.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter

TARGET = 1.2
WINDOW_S = 2.0


def serve_fake(conn, deals: int, seed: int, latency: float, burst: int) -> None:
    """The fake Pipedrive's process: serve until told to stop, then report what it saw."""
    from pdsync.fake import FakePipedrive, FakeServer

    started = time.perf_counter()
    fake = FakePipedrive(deals=deals, seed=seed, latency=latency, burst_limit=burst)
    built = time.perf_counter() - started
    counts = {
        e: fake.count(e) for e in ("deals", "persons", "organizations", "activities", "notes")
    }
    # When each request reached the fake's rate limiter (after the latency), what for, and
    # when its answer was ready: the limiter counts arrivals.
    timeline: list[tuple[float, float, str]] = []
    handle = fake.handle

    def timed_handle(method: str, target: str, headers, body: bytes = b""):
        arrived = time.monotonic()
        reply = handle(method, target, headers, body)
        timeline.append((arrived, time.monotonic(), target.partition("?")[0]))
        return reply

    fake.handle = timed_handle
    with FakeServer(fake) as server:
        conn.send({"url": server.url, "token": fake.token, "build_s": built, "counts": counts})
        while True:
            command = conn.recv()
            if command == "stats":
                log = fake.requests
                conn.send(
                    {
                        "requests": len(log),
                        # Pages: the answers that carried data (a 429 or a fault is no page).
                        "pages": dict(Counter(r["path"] for r in log if r["status"] == 200)),
                        "rate_limited": fake.rate_limited,
                        "timeline": sorted(timeline),
                    }
                )
            elif command == "stop":
                break
    fake.close()


def child(db: str, url: str, token: str) -> dict:
    """One full first sync in this process; the figures go to stdout as JSON."""
    import pdsync

    by_path: Counter = Counter()
    statuses: Counter = Counter()

    class Count(logging.Handler):
        # The client logs every answer as "GET path query status ms".
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("GET %s %s %d"):
                path, _query, status = record.args[:3]
                by_path[path] += 1
                statuses[status] += 1

    http_log = logging.getLogger("pdsync.http")
    http_log.addHandler(Count())
    http_log.setLevel(logging.INFO)
    http_log.propagate = False

    started = time.monotonic()
    # The core sync against its bound: deal history reads after it, paced by its own daily
    # budget and time limit (section 10), and would make the bound one of changelog requests.
    result = pdsync.sync(db, token=token, base_url=url, auth_path=None, history_budget=0)
    ended = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ok": result.ok,
        "errors": result.errors,
        "started": started,
        "ended": ended,
        "seconds": ended - started,
        "records": result.records,
        "requests": result.requests,
        "tokens": result.tokens,
        "retries": sum(e.retries for e in result.entities.values()),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "by_path": dict(by_path),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def run_child(db: str, url: str, token: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", db, url, token],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def busiest_window(arrivals: list[float]) -> int:
    """The most requests that arrived within any rolling 2-second window."""
    most = 0
    for i, t in enumerate(arrivals):
        most = max(most, bisect.bisect_left(arrivals, t + WINDOW_S) - i)
    return most


def bench(deals: int, latency: float, burst: int, seed: int) -> dict:
    parent, conn = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=serve_fake, args=(conn, deals, seed, latency, burst), daemon=True
    )
    process.start()
    info = parent.recv()
    try:
        load = [os.getloadavg()[0]]
        with tempfile.TemporaryDirectory() as tmp:
            sync = run_child(os.path.join(tmp, "first.db"), info["url"], info["token"])
        load.append(os.getloadavg()[0])
        parent.send("stats")
        fake = parent.recv()
    finally:
        parent.send("stop")
        process.join(timeout=60)
    return {"deals": deals, "latency": latency, "burst": burst, "fake": info, "load": load} | {
        "sync": sync,
        "server": fake,
    }


def lower_bound(requests: int, pages: dict[str, int], latency: float, burst: int) -> dict:
    terms = {
        "rate": requests / (burst / WINDOW_S),
        "chain": max(pages.values()) * latency,
        "spread": sum(pages.values()) * latency / len(pages),
    }
    dominant = max(terms, key=terms.get)
    return {"terms": terms, "dominant": dominant, "bound": terms[dominant]}


def report(r: dict) -> bool:
    from pdsync.client import RateLimiter, token_cost

    sync, server, latency, burst = r["sync"], r["server"], r["latency"], r["burst"]
    # Pages per stream, as the server saw them (each path is one stream).
    pages = dict(sorted(server["pages"].items(), key=lambda kv: -kv[1]))
    total = sum(pages.values())
    server_tokens = sum(token_cost(p) * n for p, n in pages.items())
    arrivals = [t[0] for t in server["timeline"]]
    bound = lower_bound(total, pages, latency, burst)
    wall = sync["seconds"]
    ratio = wall / bound["bound"]
    ok = ratio <= TARGET and sync["ok"]
    got_429 = int(sync["statuses"].get("429", 0))
    # What pdsync allows itself: one slot and 50 ms of every window spare (see RateLimiter).
    own_rate = (burst - 1) / (RateLimiter.WINDOW + RateLimiter.MARGIN)

    print(
        f"\n== {r['deals']:,} deals, latency {latency * 1000:.0f} ms, "
        f"burst {burst} requests / {WINDOW_S:.0f} s =="
    )
    print(f"fake built in {r['fake']['build_s']:.1f}s: {r['fake']['counts']}")
    status = "ok" if sync["ok"] else f"FAILED {sync['errors']}"
    print(
        f"sync: {status}, {sync['records']:,} records, {sync['cpu_s']:.1f} CPU s; "
        f"load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after"
    )
    print(f"wall time        {wall:8.2f} s")
    print(
        f"requests         {sync['requests']:8,} by the client, "
        f"{server['requests']:,} in the fake's request log"
    )
    print(
        f"tokens           {sync['tokens']:8,} by the client, {server_tokens:,} by the fake's log"
    )
    print(
        f"429s             {got_429:8,} received by the client "
        f"({server['rate_limited']:,} refused by the fake), {sync['retries']} retries"
    )
    if arrivals:
        print(
            f"requests arrived {arrivals[-1] - arrivals[0]:8.2f} s from first to last "
            f"(first {arrivals[0] - sync['started']:.2f} s after the start, last "
            f"{sync['ended'] - arrivals[-1]:.2f} s before the end)\n"
            f"busiest 2 s      {busiest_window(arrivals):8} requests in any 2 s at the fake"
        )
    print("pages per stream (fake's log; client's count):")
    for path, n in pages.items():
        print(
            f"  {path:<28} {n:5,} ({sync['by_path'].get(path, 0):,})  "
            f"x {latency * 1000:.0f} ms = {n * latency:5.2f} s"
        )
    t = bound["terms"]
    terms = [
        ("rate", f"{total:,} requests / {burst / WINDOW_S:g} per s", t["rate"]),
        ("chain", f"longest stream: {max(pages.values())} pages x latency", t["chain"]),
        ("spread", f"{total:,} pages x latency / {len(pages)} streams", t["spread"]),
    ]
    print("lower bound terms:")
    for name, how, seconds in terms:
        print(f"  {name:<7} {how:<40} = {seconds:6.2f} s")
    print(f"lower bound      {bound['bound']:8.2f} s (dominant term: {bound['dominant']})")
    if bound["dominant"] == "rate":
        crossover = t["rate"] / max(pages.values()) * 1000
        print(
            f"                 (the longest stream's chain would dominate above {crossover:.0f} ms)"
        )
    # The rate term is the steady rate; a rolling window also lets the first `burst` requests
    # through at once, so strictly the last request cannot arrive before this.
    window_min = max((total - 1) // burst * WINDOW_S + latency, t["chain"])
    print(
        f"strict minimum   {window_min:8.2f} s (the first {burst} at once, {burst} more every "
        f"{WINDOW_S:g} s, or the chain if longer); wall / that = {wall / window_min:.3f}"
    )
    print(
        f"pdsync's pacing  {total / own_rate:8.2f} s ({total:,} / {own_rate:.2f} per s: "
        f"{burst - 1} per {RateLimiter.WINDOW + RateLimiter.MARGIN:g} s, its safety margin)"
    )
    print(f"wall / bound     {ratio:8.3f}   {'MET' if ok else 'MISS'} (target <= {TARGET})")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--burst", type=int, default=40, help="requests per 2 s per token")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=3, metavar=("DB", "URL", "TOKEN"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    results = [report(bench(args.deals, lat, args.burst, args.seed)) for lat in args.latency]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
