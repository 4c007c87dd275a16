"""Canned-query benchmark: every canned query, the deals table page and a faceted deals page,
through a real ``datasette serve`` over HTTP, against a pdsync database of N deals.

    python benchmarks/query_bench.py                          # 100k deals, built in a temp dir
    python benchmarks/query_bench.py --deals 1000000 --db /tmp/bench-1m/pipedrive.db
    python benchmarks/query_bench.py --db pipedrive.db        # reuse an existing database

The database is built by syncing the fake Pipedrive (run in its own process, as in
sync_bench.py) and kept when --db names a file that does not exist yet. Datasette runs as a
subprocess on 127.0.0.1 with the arguments `pdsync serve` uses (metadata.yml, plugins and
settings), so the figures are what a dashboard gets. Each URL is requested --warmup times,
then --runs times; the table shows median and p95 wall time per request (client side,
keep-alive connection). Parameters are picked from the database (its busiest pipeline, that
pipeline's last stage, the owner with most deals, ...), so any pdsync database works.
Target at 100k deals: median <= 20 ms and p95 <= 50 ms per request.

Every call uses the queries' defaults: complete answers, so a list of more than 1,000 deals
comes back as Datasette's 1,000-row page with "truncated": true. The floor is measured in
the same run: `bench_floor`, a canned query added to a copy of metadata.yml that reads no
table and returns 1,001 rows as wide as a list of deals (so also a truncated 1,000-row page),
through the same Datasette JSON path. "above floor" is a call's median less the floor's.
Two `after=` calls fetch the last page of long lists, to show that page N costs what page 1
does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
TARGET_MEDIAN_MS = 20.0
TARGET_P95_MS = 50.0
FLOOR = "bench_floor"
# 1,001 rows (Datasette keeps 1,000 and says truncated) shaped like a list of deals, with
# values as long as the busiest ones, computed from nothing: Datasette's cost alone.
FLOOR_SQL = """with recursive n(i) as (select 1 union all select i + 1 from n where i < 1001)
select
  100000 + i as id, 'Riyadh Substation Upgrade Phase ' || i as title,
  'Aramco Projects' as pipeline, 'Commercial Evaluation' as stage, 'Sara Al-Harbi' as owner,
  'Faisal Trading & Contracting Co.' as org_name, 1250000.5 + i as value, 'SAR' as currency,
  '2025-01-15T10:30:' || printf('%02d', i % 60) || 'Z' as update_time, i % 400 as overdue_days
from n"""

# -- building the database ------------------------------------------------------------------


def serve_fake(conn, deals: int, seed: int) -> None:
    """Run the fake Pipedrive in this (child) process until told to stop."""
    from pdsync.fake import FakePipedrive, FakeServer

    started = time.perf_counter()
    fake = FakePipedrive(deals=deals, seed=seed)
    built = time.perf_counter() - started
    with FakeServer(fake) as server:
        conn.send({"url": server.url, "token": fake.token, "build_s": built})
        conn.recv()  # "stop"
    fake.close()


def build_database(path: Path, deals: int, seed: int) -> None:
    import pdsync

    print(f"Building a fake Pipedrive with {deals:,} deals...", flush=True)
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=serve_fake, args=(child, deals, seed), daemon=True)
    process.start()
    try:
        info = parent.recv()
        print(f"  fake built in {info['build_s']:.1f}s; syncing into {path}...", flush=True)
        started = time.perf_counter()
        result = pdsync.sync(str(path), token=info["token"], base_url=info["url"], auth_path=None)
        if not result.ok:
            raise SystemExit(f"sync failed: {result.errors}")
        print(f"  synced {result.records:,} records in {time.perf_counter() - started:.1f}s")
    finally:
        parent.send("stop")
        process.join(timeout=60)


# -- parameters from the database -----------------------------------------------------------


def last_page_key(path: Path, name: str, sort_key: str, **params: str) -> str:
    """`after` for the last page of a list: the key of the row before its last 1,000."""
    import pdsync

    rows = pdsync.query(str(path), name, **params)
    if len(rows) <= 1000:
        return ""
    row = rows[-1001]
    return f"{row[sort_key] or ''},{row['id']}"


def pick_parameters(path: Path) -> dict[str, str]:
    """Representative values: the busiest pipeline, its last stage, the busiest owner..."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:

        def one(sql: str) -> object:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

        pipeline_id = one(
            "select pipeline_id from deals where status = 'open' "
            "group by pipeline_id order by count(*) desc limit 1"
        )
        pipeline_name = one(f"select name from pipelines where id = {pipeline_id or 0}")
        last_stage = one(
            f"select name from stages where pipeline_id = {pipeline_id or 0} "
            "and coalesce(is_deleted, 0) = 0 order by order_nr desc limit 1"
        )
        owner = one(
            "select users.name from deals join users on users.id = deals.owner_id "
            "where deals.status = 'open' group by deals.owner_id order by count(*) desc limit 1"
        )
        deal_id = one(
            "select deal_id from notes where deal_id is not null "
            "group by deal_id order by count(*) desc limit 1"
        )
        org_name = one(
            "select name from organizations where id = (select org_id from deals "
            "where org_id is not null group by org_id order by count(*) desc limit 1)"
        )
    finally:
        conn.close()
    return {
        "pipeline_id": str(pipeline_id or ""),
        "pipeline_name": pipeline_name or "",
        "last_stage": last_stage or "",
        "owner": owner or "",
        "deal_id": str(deal_id or ""),
        # the longest word of the busiest organization's name, as a 5-letter prefix
        "org_word": max(str(org_name or "a").split(), key=len)[:5],
        "overdue_last_page": last_page_key(path, "overdue_deals", "update_time"),
        "by_owner_last_page": last_page_key(
            path, "deals_by_owner", "update_time", owner=owner or "", status="all"
        ),
    }


def requests_to_time(route: str, p: dict[str, str]) -> list[tuple[str, str]]:
    """(label, path) pairs: representative calls of every canned query, and table pages."""

    def q(name: str, **params: str) -> tuple[str, str]:
        label = name + (" " + " ".join(f"{k}={v}" for k, v in params.items()) if params else "")
        return label, f"/{route}/{name}.json?" + urlencode({**params, "_shape": "array"})

    pid, pname = p["pipeline_id"], p["pipeline_name"]
    return [
        q("overdue_deals"),
        q("overdue_deals", pipeline=pid, min_days="7"),
        q("stuck_deals"),
        q("stuck_deals", pipeline=pname, min_days="30"),
        q("rotten_deals"),
        q("rotten_deals", pipeline=pid),
        q("near_invoicing"),
        q("near_invoicing", pipeline=pid),
        q("deals_in_stage", pipeline=pid, stage=p["last_stage"], min_days="14"),
        q("deals_by_owner", owner=p["owner"]),
        q("deals_by_owner", owner=p["owner"], status="won", pipeline=pid),
        q("cashflow_forecast"),
        q("cashflow_forecast", pipeline=pid, months="6"),
        q("owner_kpis"),
        q("owner_kpis", pipeline=pid, status="won"),
        q("pipeline_summary"),
        q("pipeline_summary", pipeline=pname),
        q("search_deals", q=p["org_word"]),
        q("search_deals", q=f"{p['org_word']} {p['last_stage'][:3]}", owner=p["owner"]),
        q("deal_notes", deal_id=p["deal_id"]),
        q("sync_status"),
        # The last page of two long lists: a keyset costs the same on every page.
        q("overdue_deals", after=p["overdue_last_page"]),
        q("deals_by_owner", owner=p["owner"], status="all", after=p["by_owner_last_page"]),
        # For reference, not the target: Datasette's own table pages.
        ("table: deals.json (metadata facets)", f"/{route}/deals.json"),
        (
            "table: deals.json open + pipeline, facet stage_id",
            f"/{route}/deals.json?"
            + urlencode({"status": "open", "pipeline_id": pid, "_facet": "stage_id"}),
        ),
    ]


# -- serving and timing ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metadata_with_floor(directory: Path, route: str) -> Path:
    """A copy of metadata.yml with the floor query added to the served database."""
    metadata = yaml.safe_load((REPO / "metadata.yml").read_text())
    databases = metadata.setdefault("databases", {})
    section = databases.pop("pipedrive", {})
    section.setdefault("queries", {})[FLOOR] = {"sql": FLOOR_SQL}
    databases[route] = section
    path = directory / "metadata-with-floor.yml"
    path.write_text(yaml.safe_dump(metadata, sort_keys=False))
    return path


def datasette_command(
    db: Path, port: int, settings: list[tuple[str, str]], metadata: Path | None = None
) -> list[str]:
    try:
        from pdsync.serve import datasette_args

        args = datasette_args(db, "127.0.0.1", port)
        if metadata is not None:
            args[args.index("--metadata") + 1] = str(metadata)
    except ImportError:  # an older pdsync: the same thing by hand
        args = ["serve", str(db), "--metadata", str(metadata or REPO / "metadata.yml")]
        args += ["--host", "127.0.0.1", "--port", str(port)]
    for name, value in settings:
        args += ["--setting", name, value]
    # datasette with pdsync's plugin registered, as `pdsync serve` runs it; an older pdsync
    # passed --plugins-dir in its arguments instead.
    try:
        from pdsync import datasette_plugin  # noqa: F401

        return [sys.executable, "-m", "pdsync.datasette_plugin", *args]
    except ImportError:
        return [sys.executable, "-m", "datasette", *args]


def wait_until_up(client: httpx.Client, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"datasette exited with status {process.returncode}")
        try:
            if client.get("/-/versions.json").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("datasette did not start in time")


def time_request(client: httpx.Client, label: str, path: str, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        client.get(path)
    times = []
    response = None
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
    assert response is not None
    rows, error = None, ""
    body = response.json()
    if response.status_code == 200:
        rows = len(body) if isinstance(body, list) else len(body.get("rows", []))
    elif isinstance(body, dict):
        error = str(body.get("error") or body.get("title") or "")[:60]
    truncated = None
    if response.status_code == 200 and "_shape=array" in path:
        # _shape=array drops "truncated": ask once more for the default shape
        full = client.get(path.replace("_shape=array", "_shape=objects")).json()
        truncated = full.get("truncated")
    times.sort()
    return {
        "label": label,
        "status": response.status_code,
        "rows": rows,
        "bytes": len(response.content),
        "truncated": truncated,
        "median": statistics.median(times),
        "p95": times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))],
        "error": error,
    }


def is_reference(label: str) -> bool:
    return label.startswith("table:") or label == FLOOR


def within_target(result: dict) -> bool:
    return (
        result["status"] == 200
        and result["median"] <= TARGET_MEDIAN_MS
        and result["p95"] <= TARGET_P95_MS
    )


def run_and_print(
    client: httpx.Client, requests: list[tuple[str, str]], deals: int, warmup: int, runs: int
) -> list[dict]:
    """Time every request, printing each line of the table as soon as it is measured."""
    width = max(len(label) for label, _ in requests)
    print(
        f"\n{deals:,} deals, {runs} timed requests each; target median <= "
        f"{TARGET_MEDIAN_MS:.0f} ms, p95 <= {TARGET_P95_MS:.0f} ms"
    )
    print(
        f"{'request':<{width}} {'status':>6} {'rows':>5} {'trunc':>5} {'KB':>6} "
        f"{'median':>8} {'p95':>8} {'above floor':>11}"
    )
    results = []
    floor = None
    for label, path in requests:
        r = time_request(client, label, path, warmup, runs)
        if label == FLOOR:
            floor = r["median"]
        rows = "-" if r["rows"] is None else str(r["rows"])
        cut = {True: "yes", False: "no", None: "-"}[r["truncated"]]
        above = "" if floor is None or label == FLOOR else f"{r['median'] - floor:>+9.1f}ms"
        print(
            f"{label:<{width}} {r['status']:>6} {rows:>5} {cut:>5} {r['bytes'] / 1024:>6.0f} "
            f"{r['median']:>6.1f}ms {r['p95']:>6.1f}ms {above:>11}"
            + ("" if within_target(r) or is_reference(label) else "  MISS")
            + (f" ({r['error']})" if r["error"] else ""),
            flush=True,
        )
        results.append(r)
    calls = [r for r in results if not is_reference(r["label"])]
    good = sum(1 for r in calls if within_target(r))
    print(f"\n{good} of {len(calls)} canned-query calls within target", end="")
    print(f" (the floor, {FLOOR}, and the table pages are for reference).")
    return results


def count_deals(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("select count(*) from deals").fetchone()[0]
    finally:
        conn.close()


def serve_and_time(
    db: Path,
    log_path: Path,
    deals: int,
    warmup: int,
    runs: int,
    settings: list[tuple[str, str]] = (),
) -> list[dict]:
    """Serve ``db`` with a real Datasette (pdsync serve's arguments) and time every request."""
    params = pick_parameters(db)
    port = free_port()
    metadata = metadata_with_floor(log_path.parent, db.stem)
    command = datasette_command(db, port, list(settings), metadata)
    print("Serving:", " ".join(command[1:]), flush=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                wait_until_up(client, process)
                # the floor first: only this Datasette has it (readers_under_load.py does not)
                floor = (FLOOR, f"/{db.stem}/{FLOOR}.json?_shape=array")
                requests = [floor, *requests_to_time(db.stem, params)]
                return run_and_print(client, requests, deals, warmup, runs)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000, help="deals to build (100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", type=Path, help="reuse this database, or build it here and keep it")
    parser.add_argument("--runs", type=int, default=50, help="timed requests per URL (50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per URL (5)")
    parser.add_argument(
        "--setting",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="extra Datasette setting, e.g. --setting cache_size_kb 100000",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pdsync-query-bench-") as tmp:
        db = args.db or Path(tmp) / "pipedrive.db"
        if db.exists():
            print(f"Reusing {db}")
        else:
            build_database(db, args.deals, args.seed)
        deals = count_deals(db)
        settings = [tuple(s) for s in args.setting]
        serve_and_time(db, Path(tmp) / "datasette.log", deals, args.warmup, args.runs, settings)


if __name__ == "__main__":
    main()
