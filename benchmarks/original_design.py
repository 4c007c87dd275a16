"""pdsync against the original design's sync strategy, on the same fake Pipedrive.

The original design, reimplemented faithfully here: every run fetches all *open* deals of
each pipeline, keeps those whose update_time is newer than the last sync (filtered locally),
and merges them one row at a time (a SELECT, then an INSERT or UPDATE, per deal). It never
asks for won, lost, archived or deleted deals, so a deal closed upstream stays "open" in its
cache.

    python benchmarks/original_design.py                  # 100k deals; 0, 10 and 1,000 changes
    python benchmarks/original_design.py --deals 20000 --changes 10

Prints requests, tokens, seconds per incremental run for both, and how many deals each
leaves stale (open locally, won/lost/deleted/archived upstream). Target (issue #6): >= 20x
fewer requests for 10 changes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sync_bench import serve_fake  # noqa: E402  (the same fake process)


class OriginalDesign:
    """The original strategy: open deals per pipeline, filtered locally, merged row by row."""

    def __init__(self, path: str, client) -> None:
        self.client = client
        self.conn = sqlite3.connect(path)
        self.conn.execute(
            "create table if not exists deals (id integer primary key, title text, "
            "status text, stage_id integer, pipeline_id integer, value real, currency text, "
            "update_time text)"
        )
        self.conn.execute("create table if not exists sync_metadata (last_sync_time text)")
        self.conn.commit()

    def sync(self) -> None:
        from pdsync.client import Tally

        self.tally = Tally()
        row = self.conn.execute("select last_sync_time from sync_metadata").fetchone()
        since = row[0] if row else ""
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pipelines = self.client.get("/api/v2/pipelines", {"limit": 500}, self.tally)["data"]
        for pipeline in pipelines:
            params = {"pipeline_id": pipeline["id"], "status": "open"}
            for page in self.client.iter_v2("/api/v2/deals", params, self.tally):
                for deal in page:
                    if (deal.get("update_time") or "")[:19] + "Z" < since:
                        continue  # the local filter: the API was asked for everything
                    self.merge(deal)
        self.conn.execute("delete from sync_metadata")
        self.conn.execute("insert into sync_metadata values (?)", [started])
        self.conn.commit()

    def merge(self, deal: dict) -> None:
        values = [
            deal.get(k) for k in ("title", "status", "stage_id", "pipeline_id", "value", "currency")
        ] + [(deal.get("update_time") or "")[:19] + "Z", deal["id"]]
        exists = self.conn.execute("select 1 from deals where id = ?", [deal["id"]]).fetchone()
        if exists:
            self.conn.execute(
                "update deals set title=?, status=?, stage_id=?, pipeline_id=?, value=?, "
                "currency=?, update_time=? where id=?",
                values,
            )
        else:
            self.conn.execute(
                "insert into deals (title, status, stage_id, pipeline_id, value, currency, "
                "update_time, id) values (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def open_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("select id from deals where status = 'open'")}


def pdsync_open_ids(path: str) -> set[int]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "select id from deals where status = 'open' and is_archived = 0 and is_deleted = 0"
    )
    return {r[0] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--changes", type=int, nargs="+", default=[0, 10, 1000])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import pdsync
    from pdsync.client import PipedriveClient

    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=serve_fake, args=(child, args.deals, args.seed), daemon=True
    )
    process.start()
    info = parent.recv()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        PipedriveClient(info["token"], info["url"]) as client,
    ):
        ours, theirs = os.path.join(tmp, "pdsync.db"), os.path.join(tmp, "original.db")
        original = OriginalDesign(theirs, client)
        # First runs, not measured: both start from a full copy.
        pdsync.sync(ours, token=info["token"], base_url=info["url"], auth_path=None)
        original.sync()
        for k in args.changes:
            parent.send(("mutate", k))
            parent.recv()
            started = time.perf_counter()
            result = pdsync.sync(ours, token=info["token"], base_url=info["url"], auth_path=None)
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            original.sync()
            theirs_s = time.perf_counter() - started
            parent.send(("deal_states", None))
            truth = parent.recv()
            closed = {i for i, s in truth.items() if s == "closed"}
            rows.append(
                (
                    k,
                    result.entities["deals"].requests,
                    result.requests,
                    result.tokens,
                    ours_s,
                    len(pdsync_open_ids(ours) & closed),
                    original.tally.requests,
                    original.tally.tokens,
                    theirs_s,
                    len(original.open_ids() & closed),
                )
            )
    parent.send(("stop", None))
    process.join(timeout=30)

    print(f"Incremental sync at {args.deals:,} deals, k changes spread over every entity.")
    print("pdsync requests: for deals alone, and for the whole account (all 11 entities);")
    print("the original design syncs deals only. stale: open locally, closed upstream.")
    print(
        f"{'changes':>8} | {'pdsync deals':>12} {'all':>4} {'tokens':>7} {'s':>6} {'stale':>6} | "
        f"{'original':>8} {'tokens':>7} {'s':>6} {'stale':>6} | fewer requests (deals, all)"
    )
    for k, rd, r, t, s, st, r2, t2, s2, st2 in rows:
        print(
            f"{k:>8} | {rd:>12} {r:>4} {t:>7} {s:>6.2f} {st:>6} | "
            f"{r2:>8} {t2:>7} {s2:>6.2f} {st2:>6} | {r2 / rd:.0f}x, {r2 / r:.1f}x"
        )


if __name__ == "__main__":
    main()
