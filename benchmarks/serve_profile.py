"""Where a page of `pdsync serve --private` spends its time: SQL, or Python on the event loop.

    python benchmarks/serve_profile.py --db /work/sl100k/acme.db        # serve_load's database
    python benchmarks/serve_profile.py --db ... --repeat 10 --top 25

Datasette in this process, set up as `pdsync serve DB --private` sets it up (metadata.yml,
its settings, the sign-in gate, the secrets file beside the database, the plugins installed),
with the response cache off so that every request is made (``--cached``: on, and what a
hit costs). Each page is asked ``--repeat``
times as a signed-in user (cookie) and as many with an API token, after one warm-up. Per
page: wall ms per request; the event loop's own CPU (``time.thread_time`` of this thread:
Python, Jinja, hooks); SQL (every ``Database.execute``, wall, in Datasette's threads); and
cProfile's split of the loop's time into what the hooks and templates cost.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_bench import pick_parameters  # noqa: E402

# Where the loop's time goes, by the file (or function) cProfile names.
GROUPS = {
    "render_cell hooks": ("datasette_render_markdown",),
    "metadata()/plugin_config": ("def metadata", "plugin_config", "_metadata_recursive_update"),
    "Jinja (templates)": ("jinja2", "templates/"),
    "permissions": ("permission_allowed", "default_permissions"),
    "actor_from_request": ("actor_from_request", "actor_auth_cookie", "unsign"),
    "pdsync plugin": ("pdsync/",),
    "datasette table view": ("views/table.py",),
}


def pages(route: str, params: dict) -> list[tuple[str, str]]:
    pid = params["pipeline_id"]
    facet = urlencode({"status": "open", "pipeline_id": pid}) + "&_facet=stage_id"
    return [
        ("deals (html)", f"/{route}/deals"),
        ("deals faceted (html)", f"/{route}/deals?{facet}"),
        ("organizations (html)", f"/{route}/organizations"),
        ("canned overdue_deals (html)", f"/{route}/overdue_deals"),
        ("deals.json", f"/{route}/deals.json"),
        ("deals faceted .json", f"/{route}/deals.json?{facet}"),
        ("canned overdue_deals.json", f"/{route}/overdue_deals.json"),
    ]


def make_datasette(db: Path, cached: bool = False):
    """A Datasette as `pdsync serve DB --private` makes one, and a cookie and a token."""
    os.environ["PDSYNC_RESPONSE_CACHE"] = "on" if cached else "off"
    import yaml

    from pdsync import access, serve
    from pdsync.datasette_plugin import register
    from pdsync.datasette_plugin.access import MODE_ENV, SECRETS_ENV

    secrets = access.secrets_path(db)
    os.environ[MODE_ENV] = "private"
    os.environ[SECRETS_ENV] = str(secrets)
    register()
    from datasette.app import Datasette

    metadata = yaml.safe_load(serve.metadata_path().read_text())
    ds = Datasette(
        [str(db)],
        metadata=metadata,
        settings={"sql_time_limit_ms": 3000, "suggest_facets": False},
        secret=access.cookie_secret(secrets),
    )
    data = access.load(secrets)
    name = next(iter(data.get("users") or {}), None)
    if name is None:
        raise SystemExit("no user in the secrets file: run serve_load.py on this database first")
    user = data["users"][name]
    actor = {"id": name, "pdsync": "user", "session": user["session"], "since": int(time.time())}
    cookie = ds.sign({"a": actor}, "actor")
    token_name = f"profile{os.getpid()}"
    token = access.create_token(secrets, token_name)
    return ds, cookie, token, lambda: access.revoke_token(secrets, token_name)


def patch_sql(timings: dict) -> None:
    from datasette.database import Database

    execute = Database.execute

    async def timed(self, sql, *args, **kwargs):
        started = time.perf_counter()
        try:
            return await execute(self, sql, *args, **kwargs)
        finally:
            kind = "count" if "count(*)" in sql.lower() else "select"
            if "group by" in sql.lower():
                kind = "facet"
            timings[kind] += time.perf_counter() - started

    Database.execute = timed


def group_of(func: tuple) -> str | None:
    filename, _, name = func
    text = f"{filename}:def {name}"
    for group, needles in GROUPS.items():
        if any(n in text for n in needles):
            return group
    return None


def cumulative_by_group(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative time of the outermost call in each group (no double counting within one)."""
    found: dict[str, float] = defaultdict(float)
    for func, (_, _, _, cumulative, callers) in stats.stats.items():
        group = group_of(func)
        if group is None:
            continue
        # Only entries into the group from outside it.
        outside = sum(c[3] for caller, c in callers.items() if group_of(caller) != group)
        found[group] += outside if callers else cumulative
    return found


async def run(args) -> None:
    ds, cookie, token, cleanup = make_datasette(args.db, args.cached)
    try:
        await ds.invoke_startup()
        sql: dict = defaultdict(float)
        patch_sql(sql)
        route = args.db.stem
        params = pick_parameters(args.db)
        print(f"{'page':<26} {'wall ms':>8} {'loop CPU':>9} {'SQL ms':>7}  (count/facet/select)")
        for label, path in pages(route, params):
            if args.only and args.only not in label:
                continue
            auths = [
                {"cookies": {"ds_actor": cookie}},
                {"headers": {"authorization": f"Bearer {token}"}},
            ]
            for auth in auths:  # warm-up
                response = await ds.client.get(path, **auth)
                assert response.status_code == 200, (path, response.status_code)
            sql.clear()
            profile = cProfile.Profile()
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            if not args.plain:
                profile.enable()
            for _ in range(args.repeat):
                for auth in auths:
                    await ds.client.get(path, **auth)
            profile.disable()
            n = 2 * args.repeat
            wall = (time.perf_counter() - wall0) * 1000 / n
            cpu = (time.thread_time() - cpu0) * 1000 / n
            total_sql = sum(sql.values()) * 1000 / n
            split = "/".join(f"{sql[k] * 1000 / n:.0f}" for k in ("count", "facet", "select"))
            print(f"{label:<26} {wall:>8.0f} {cpu:>9.0f} {total_sql:>7.0f}  ({split})")
            if args.plain:
                continue
            stats = pstats.Stats(profile)
            groups = cumulative_by_group(stats)
            total = stats.total_tt or 1
            line = ", ".join(
                f"{g} {groups[g] * 1000 / n:.0f} ms ({groups[g] / total:.0%})"
                for g in GROUPS
                if groups.get(g)
            )
            print(f"{'':<4}{line}")
            if args.top:
                stats.sort_stats("cumulative").print_stats(args.top)
    finally:
        cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5, help="requests per page and kind (5)")
    parser.add_argument("--top", type=int, default=0, help="print cProfile's N top functions")
    parser.add_argument(
        "--cached", action="store_true", help="the response cache on: the cost of a hit"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no cProfile: its cost per call inflates code that makes many small calls",
    )
    parser.add_argument("--only", help="only the pages whose label holds this")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
