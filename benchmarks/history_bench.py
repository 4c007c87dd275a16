"""Deal history benchmark: what reading every deal's changelog costs, how long the default
budget takes to get there, what keeping it current costs, and what history adds to a sync's
wall time, against the fake Pipedrive.

    python benchmarks/history_bench.py                    # 100k deals, 500 changes a run
    python benchmarks/history_bench.py --deals 20000 --rounds 2

The fake runs in its own process; every sync runs in a fresh process. "Without history" is
the same sync with the observation switched off (Observer.observe a no-op) and no changelog
read: the core sync as it was before deal history. Targets (issue #15): history adds <= 5 %
to the core sync's wall time, first and incremental.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

RUNS_A_DAY = 48  # a sync every 30 minutes
PAGE_TOKENS = 20  # /v1/deals/{id}/changelog
FLOW_TOKENS = 40  # /v1/deals/{id}/flow, what the peers call


def deal_changes(fake, n: int, rng: random.Random) -> dict[str, int]:
    """``n`` changes of live deals, in a sales team's mix: mostly a move to the next stage or
    an edit, some wins and losses, some moves elsewhere, some deals edited twice."""
    stages = {}
    for s in fake.records("stages"):
        stages.setdefault(s["pipeline_id"], []).append(s["id"])
    live = [
        d["id"]
        for d in fake.iter_records("deals")
        if d["status"] == "open" and not d["is_archived"]
    ]
    kinds: dict[str, int] = {}
    for deal_id in rng.sample(live, min(n, len(live))):
        deal = fake.store.get("deals", deal_id)[0]
        own = stages[deal["pipeline_id"]]
        x = rng.random()
        fake.advance(1)
        if x < 0.4 and own.index(deal["stage_id"]) + 1 < len(own):
            kind = "next stage"
            fake.move_deal(deal_id, own[own.index(deal["stage_id"]) + 1])
        elif x < 0.5:
            kind = "other stage"
            fake.move_deal(deal_id, rng.choice(own))
        elif x < 0.8:
            kind = "edit"
            fake._random_deal_update(deal_id, rng)
        elif x < 0.95:
            kind = "won or lost"
            fake.set_deal_status(deal_id, rng.choice(("won", "lost")))
        else:
            kind = "two edits"
            fake.update_deal(deal_id, value=rng.randint(1000, 90000))
            fake.advance(1)
            fake.update_deal(deal_id, title=f"Revised #{rng.randint(1, 9999)}")
        kinds[kind] = kinds.get(kind, 0) + 1
    fake.advance(5)
    return kinds


def serve_fake(conn, deals: int, seed: int) -> None:
    from pdsync.fake import FakePipedrive, FakeServer

    fake = FakePipedrive(deals=deals, seed=seed)
    with FakeServer(fake) as server:
        conn.send({"url": server.url, "token": fake.token, "users": fake.count("users")})
        rng = random.Random(seed)
        while True:
            command, arg = conn.recv()
            if command == "stop":
                break
            if command == "mutate":
                conn.send(deal_changes(fake, arg, rng))
    fake.close()


def measure(db: str, url: str, token: str, mode: str) -> dict:
    """One sync in this (child) process. mode: "without" (no history at all), "with" (the
    default budget), "backfill" (no sync: read every changelog left, unbounded)."""
    import sqlite_utils

    import pdsync

    if mode == "backfill":
        from pdsync.backfill import Backfill
        from pdsync.client import PipedriveClient

        with PipedriveClient(token, url) as client:
            database = sqlite_utils.Database(db)
            result = Backfill(database, client, budget=10**12, seconds=86400).run()
            return {"history": vars(result)}
    from pdsync.history import Observer

    observing = [0.0]
    if mode == "without":
        Observer.observe = lambda self, rows: None  # the core sync as before deal history
    else:  # the time the comparison with stored rows takes, inside the run: a ratio of one run
        observe = Observer.observe

        def timed(self, rows):
            started = time.perf_counter()
            try:
                observe(self, rows)
            finally:
                observing[0] += time.perf_counter() - started

        Observer.observe = timed
    started = time.perf_counter()
    result = pdsync.sync(
        db,
        token=token,
        base_url=url,
        auth_path=None,
        history_budget=0 if mode == "without" else None,
    )
    seconds = time.perf_counter() - started
    history = vars(result.history) if result.history is not None else None
    return {
        "ok": result.ok,
        "errors": result.errors,
        "seconds": seconds,
        "core_seconds": seconds - (history["seconds"] if history else 0.0),
        "observe_seconds": observing[0],
        "requests": result.requests,
        "tokens": result.tokens,
        "history": history,
    }


def run_child(db: str, url: str, token: str, mode: str) -> dict:
    args = [sys.executable, __file__, "--child", db, url, token, mode]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def pair(db: str, url: str, token: str, tmp: str, first: bool) -> tuple[dict, dict]:
    """The same sync with and without history, on copies of one database (interleaved:
    the order flips with each call, so drift in the machine's speed hits both)."""
    base = os.path.join(tmp, "without.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(base + suffix):
            os.remove(base + suffix)
    if not first:
        shutil.copyfile(db, base)
    order = ["with", "without"] if random.random() < 0.5 else ["without", "with"]
    got = {}
    for mode in order:
        got[mode] = run_child(db if mode == "with" else base, url, token, mode)
    return got["with"], got["without"]


def next_day(db: str) -> None:
    """As if the UTC day had turned: today's tokens count for yesterday."""
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        conn.execute("update sync_tokens set day = date(day, '-1 day')")
    conn.close()


def bench(deals: int, rounds: int, changes: int, seed: int, firsts: int) -> dict:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=serve_fake, args=(child, deals, seed), daemon=True)
    process.start()
    info = parent.recv()
    url, token = info["url"], info["token"]
    out: dict = {"deals": deals, "users": info["users"], "changes": changes, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        out["firsts"] = []
        for _ in range(firsts):  # the last one's database goes on
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
            out["firsts"].append(pair(db, url, token, tmp, first=True))
        out["first"] = out["firsts"][-1]
        out["backfill"] = run_child(db, url, token, "backfill")["history"]
        run_child(db, url, token, "with")  # the first incremental: nothing changed
        for _ in range(rounds):
            next_day(db)  # a day's history budget for each round
            parent.send(("mutate", changes))
            kinds = parent.recv()
            with_, without = pair(db, url, token, tmp, first=False)
            out["rounds"].append({"kinds": kinds, "with": with_, "without": without})
        parent.send(("stop", None))
    process.join(timeout=30)
    return out


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report(r: dict) -> None:
    first_with, first_without = r["first"]
    read_first = first_with["history"]
    backfill = r["backfill"]
    deals_read = read_first["deals"] + backfill["deals"]
    tokens = read_first["tokens"] + backfill["tokens"]
    requests = read_first["requests"] + backfill["requests"]
    print(f"Deal history at {r['deals']:,} deals (fake: {r['users']} users)")
    print("\nFull backfill (every deal's changelog, the first run's share included):")
    print(f"  deals read {deals_read:,}, requests {requests:,}, tokens {tokens:,}")
    print(
        f"  {tokens / max(1, deals_read):.1f} tokens a deal; read at"
        f" {backfill['deals'] / max(backfill['seconds'], 1e-9):,.0f} deals/s from the fake"
    )
    print("\nDays to read it all at the default budget (a fifth of 30,000 x active users):")
    for users in (5, 20, 100):
        budget = 30_000 * users // 5
        days = math.ceil(tokens / budget)
        print(f"  {users:>3} users: {budget:>7,} tokens a day -> {days:>3} days")
    print(
        f"\nWall time of the first sync (core entities, then {read_first['deals']:,} changelogs"
        f" at the default budget, {read_first['tokens']:,} tokens):"
    )
    for with_, without in r["firsts"]:
        core, base = with_["core_seconds"], without["seconds"]
        print(
            f"  without history {base:.1f}s; with: core {core:.1f}s"
            f" ({(core / base - 1) * 100:+.1f} %, of which comparing deals with stored rows"
            f" {with_['observe_seconds']:.2f}s = {with_['observe_seconds'] / core * 100:.2f} %"
            f" of it), then history {with_['history']['seconds']:.1f}s after the core commit"
        )
    ratios = sorted(w["core_seconds"] / wo["seconds"] - 1 for w, wo in r["firsts"])
    shares = sorted(w["observe_seconds"] / w["core_seconds"] for w, _ in r["firsts"])
    print(
        f"  median core overhead between runs {ratios[len(ratios) // 2] * 100:+.1f} % (noise:"
        f" separate processes); within the run, history's share of the core sync"
        f" {shares[len(shares) // 2] * 100:.2f} % (target <= 5 %)"
    )
    print(f"\nKeeping current: {r['changes']} deal changes a run, {RUNS_A_DAY} runs a day")
    rereads, overheads, shares = [], [], []
    for i, rnd in enumerate(r["rounds"], 1):
        h = rnd["with"]["history"] or {"deals": 0, "requests": 0, "tokens": 0, "seconds": 0}
        core, base = rnd["with"]["core_seconds"], rnd["without"]["seconds"]
        rereads.append(h)
        overheads.append(core / base - 1)
        observed = rnd["with"]["observe_seconds"]
        shares.append(observed / core)
        print(
            f"  run {i}: {rnd['kinds']}: re-read {h['deals']} changelogs ({h['requests']}"
            f" requests, {h['tokens']} tokens, {h['seconds']:.2f}s);"
            f" core {core:.2f}s vs {base:.2f}s without history ({(core / base - 1) * 100:+.1f} %);"
            f" comparing with stored rows {observed * 1000:.0f} ms ({observed / core * 100:.2f} %"
            " of the core sync)"
        )
    per_run = sum(h["tokens"] for h in rereads) / max(1, len(rereads))
    requests_run = sum(h["requests"] for h in rereads) / max(1, len(rereads))
    print(
        f"  mean {requests_run:.0f} requests, {per_run:,.0f} tokens a run ->"
        f" {requests_run * RUNS_A_DAY:,.0f} requests, {per_run * RUNS_A_DAY:,.0f} tokens a day;"
        f" incremental overhead between runs, median {median(overheads) * 100:+.1f} %;"
        f" within the run, history's share of the core sync {median(shares) * 100:.2f} %"
        " (target <= 5 %)"
    )
    n, k = r["deals"], r["changes"]
    print("\nPeers (one history request per deal per run), a day of 48 runs:")
    print(
        f"  every deal each run (/flow, {FLOW_TOKENS} tokens): {n * RUNS_A_DAY:,} requests,"
        f" {n * RUNS_A_DAY * FLOW_TOKENS:,} tokens"
    )
    print(
        f"  each changed deal each run (/flow): {k * RUNS_A_DAY:,} requests,"
        f" {k * RUNS_A_DAY * FLOW_TOKENS:,} tokens;"
        f" (/changelog): {k * RUNS_A_DAY * PAGE_TOKENS:,} tokens"
    )
    print(
        f"  pdsync: {requests_run * RUNS_A_DAY:,.0f} requests, {per_run * RUNS_A_DAY:,.0f} tokens"
        " once the backfill is done"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--firsts", type=int, default=3, help="first syncs with and without")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=4, metavar=("DB", "URL", "TOKEN", "MODE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    random.seed(args.seed)
    report(bench(args.deals, args.rounds, args.changes, args.seed, args.firsts))


if __name__ == "__main__":
    main()
