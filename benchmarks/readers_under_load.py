"""Readers under load: concurrent clients calling every canned query through a live Datasette
while `pdsync sync` writes to the same database (issue #6, item 6).

    python benchmarks/readers_under_load.py                   # 100k deals, 4 clients
    python benchmarks/readers_under_load.py --deals 10000 --latency 0.05

The fake Pipedrive runs in its own process; every sync is a real `python -m pdsync sync`
subprocess and Datasette a real subprocess on 127.0.0.1 with `pdsync serve`'s arguments
(metadata.yml, plugins, settings). The database is named acme.db, not pipedrive.db, so its
canned queries come from the metadata plugin that recognises pdsync databases rather than
from metadata.yml's own "pipedrive" section. Two phases, each with --clients threads looping
over query_bench's requests (every canned query with and without parameters, two deals table
pages) on keep-alive connections until the sync ends:

  (a) first sync into a new database: Datasette starts as soon as pdsync has created its
      tables and views, and the clients start once it lists the canned queries;
  (b) `pdsync sync --full` of that database after --mutate-share x deals random changes in
      the fake (updates, moves, status changes, adds, deletes across all entities).

Between the phases the same clients run for --baseline-seconds with no sync running: that is
the baseline each phase is compared with. An error is a non-200 status, a connection error or
timeout, or a JSON body with "ok": false or an "error". Exit status 1 if any request failed or
any sync failed, 2 if there were no errors but a sync ended before any reader ran (a first
sync of a few thousand deals can end before Datasette is up: add --latency).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_bench import (  # noqa: E402
    datasette_command,
    free_port,
    pick_parameters,
    requests_to_time,
    wait_until_up,
)

# What `pdsync sync` has created once its preparation is done: the tables the canned queries
# read and the views, which come after every table.
READY_TABLES = {"sync_metadata", "deals", "pipelines", "stages", "deal_details"}
DB_NAME = "acme.db"

# -- the fake, in its own process -----------------------------------------------------------


def serve_fake(conn, deals: int, seed: int, latency: float) -> None:
    """Run the fake Pipedrive in this (child) process; obey ("mutate", n) and ("stop", None)."""
    from pdsync.fake import FakePipedrive, FakeServer

    started = time.perf_counter()
    fake = FakePipedrive(deals=deals, seed=seed, latency=latency)
    built = time.perf_counter() - started
    with FakeServer(fake) as server:
        conn.send({"url": server.url, "token": fake.token, "build_s": built})
        while True:
            command, arg = conn.recv()
            if command == "stop":
                break
            if command == "mutate":
                done = fake.random_mutations(arg, random.Random(seed))
                conn.send(Counter(op for op, _ in done))
    fake.close()


# -- syncing and serving --------------------------------------------------------------------


def start_sync(
    db: Path, url: str, token: str, full: bool, log: Path, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`python -m pdsync sync DB` in a subprocess, its output going to ``log``."""
    command = [sys.executable, "-m", "pdsync", "sync", str(db), "--base-url", url]
    command += ["--auth", str(db.parent / "no-auth.json"), *(["--full"] if full else []), *extra]
    # The core sync's writes are what readers are measured against; deal history, read after
    # them one deal at a time, would stretch each sync by its changelogs (history_bench.py).
    command += ["--history-budget", "0"]
    env = {**os.environ, "PIPEDRIVE_API_TOKEN": token}
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for_tables(db: Path, sync: subprocess.Popen, timeout: float = 120) -> None:
    """Until pdsync has created its tables and views in ``db`` (or its sync has ended)."""
    from pdsync.schema import table_names

    deadline = time.monotonic() + timeout
    while not READY_TABLES <= table_names(str(db)):
        if sync.poll() is not None:
            raise RuntimeError(f"the sync exited ({sync.returncode}) before creating its tables")
        if time.monotonic() > deadline:
            raise RuntimeError("pdsync did not create its tables in time")
        time.sleep(0.02)


def canned_query_names() -> set[str]:
    import yaml

    from pdsync.serve import metadata_path

    metadata = yaml.safe_load(metadata_path().read_text())
    return set(metadata["databases"]["pipedrive"]["queries"])


def wait_for_queries(base: str, route: str, names: set[str], timeout: float = 30) -> None:
    """Until Datasette lists every canned query for ``route``: the metadata plugin's doing."""
    deadline = time.monotonic() + timeout
    listed: set[str] = set()
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{base}/{route}.json", timeout=10).json()
            listed = {q["name"] for q in body.get("queries") or []}
        except (httpx.HTTPError, ValueError):
            pass
        if names <= listed:
            return
        time.sleep(0.2)
    raise RuntimeError(f"Datasette does not list the canned queries {sorted(names - listed)}")


class Datasette:
    """A `datasette serve` subprocess with `pdsync serve`'s arguments, on a free port."""

    def __init__(self, db: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        self.process = subprocess.Popen(
            datasette_command(db, self.port, []), stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            with httpx.Client(base_url=self.url, timeout=10) as client:
                wait_until_up(client, self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# -- the readers ----------------------------------------------------------------------------


def request_list(route: str, params: dict[str, str]) -> list[tuple[str, str]]:
    """query_bench's requests, labelled by query and parameter names (values change between
    phases), plus any canned query it does not call."""
    requests = []
    for label, path in requests_to_time(route, params):
        if not label.startswith("table:"):
            parts = urlsplit(path)
            names = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k != "_shape"]
            label = Path(parts.path).stem + (f" ({', '.join(names)})" if names else "")
        requests.append((label, path))
    called = {Path(urlsplit(path).path).stem for _, path in requests}
    for name in sorted(canned_query_names() - called):
        requests.append((name, f"/{route}/{name}.json?_shape=array"))
    return requests


@dataclass
class Sample:
    client: int
    label: str
    at: float  # seconds since the readers started
    ms: float
    error: str | None


def response_error(response: httpx.Response) -> str | None:
    """Why a response counts as an error, or None."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("error") or body.get("title") or "")
    if response.status_code != 200:
        return f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
    if body is None:
        return "HTTP 200 without a JSON body"
    if isinstance(body, dict) and (body.get("ok") is False or body.get("error")):
        return f"HTTP 200 with an error: {detail or body.get('ok')}"
    return None


def _client(
    base: str,
    requests: list[tuple[str, str]],
    index: int,
    clients: int,
    started: float,
    stop: threading.Event,
    out: list[Sample],
) -> None:
    position = index * len(requests) // clients  # the clients start at different queries
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            label, path = requests[position % len(requests)]
            position += 1
            before = time.perf_counter()
            try:
                error = response_error(client.get(path))
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            after = time.perf_counter()
            out.append(Sample(index, label, before - started, (after - before) * 1000, error))


def read_while(
    base: str, requests: list[tuple[str, str]], clients: int, busy
) -> tuple[list[Sample], float]:
    """Run ``clients`` reader threads while ``busy()`` is true; their samples and seconds."""
    stop = threading.Event()
    samples: list[list[Sample]] = [[] for _ in range(clients)]
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=_client,
            args=(base, requests, i, clients, started, stop, samples[i]),
            name=f"reader-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        while busy():
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return [s for per_client in samples for s in per_client], time.perf_counter() - started


def read_for(base: str, requests: list[tuple[str, str]], clients: int, seconds: float):
    deadline = time.monotonic() + seconds
    return read_while(base, requests, clients, lambda: time.monotonic() < deadline)


def read_during_sync(base: str, requests: list[tuple[str, str]], clients: int, sync):
    """Readers until the sync subprocess exits."""
    return read_while(base, requests, clients, lambda: sync.poll() is None)


# -- figures --------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Nearest rank, as query_bench computes its p95."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


@dataclass
class Figures:
    requests: int = 0
    errors: int = 0
    median: float = float("nan")
    p95: float = float("nan")
    max: float = float("nan")

    @classmethod
    def of(cls, samples: list[Sample]) -> Figures:
        times = [s.ms for s in samples]
        return cls(
            requests=len(samples),
            errors=sum(1 for s in samples if s.error),
            median=percentile(times, 0.5),
            p95=percentile(times, 0.95),
            max=max(times, default=float("nan")),
        )


@dataclass
class Phase:
    name: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    read_s: float = 0.0  # how long the readers ran
    sync_s: float | None = None
    sync_status: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.error)

    def per_client(self) -> Counter:
        return Counter(s.client for s in self.samples)

    def error_summary(self) -> list[str]:
        """One line per distinct (request, error): how often, and from when to when."""
        groups: dict[tuple[str, str], list[Sample]] = {}
        for s in sorted(self.samples, key=lambda s: s.at):
            if s.error:
                groups.setdefault((s.label, _shorten(s.error)), []).append(s)
        return [
            f"{len(group):>6} x {label}: {error} (from {group[0].at:.1f}s to {group[-1].at:.1f}s)"
            for (label, error), group in sorted(groups.items(), key=lambda kv: kv[1][0].at)
        ]


def _shorten(error: str) -> str:
    return re.sub(r"\s+", " ", error)[:160]


def print_phase(phase: Phase, baseline: Phase) -> None:
    labels = list(dict.fromkeys(label for label, _ in [*phase.requests, *baseline.requests]))
    width = max(len(label) for label in [*labels, "all requests"])
    print(f"\n== {phase.name}")
    if phase.sync_s is not None:
        counts = phase.per_client()
        print(
            f"sync: {phase.sync_s:.1f}s, exit status {phase.sync_status}; readers ran "
            f"{phase.read_s:.1f}s of it; {len(phase.samples):,} requests served, "
            f"{phase.errors:,} errors; per client {min(counts.values(), default=0):,}"
            f"-{max(counts.values(), default=0):,} responses"
        )
    for note in phase.notes:
        print(note)
    head = f"{'n':>6} {'err':>5} {'median':>8} {'p95':>8} {'max':>8}"
    print(f"{'':<{width}}  {'during the sync':^38}  {'no sync (baseline)':^38}")
    print(f"{'request':<{width}}  {head}  {head}")

    def cells(f: Figures) -> str:
        if not f.requests:
            return f"{0:>6} {0:>5} {'-':>8} {'-':>8} {'-':>8}"
        return f"{f.requests:>6} {f.errors:>5} {f.median:>6.1f}ms {f.p95:>6.1f}ms {f.max:>6.0f}ms"

    rows = [("all requests", phase.samples, baseline.samples)]
    rows += [
        (
            label,
            [s for s in phase.samples if s.label == label],
            [s for s in baseline.samples if s.label == label],
        )
        for label in labels
    ]
    for label, during, before in rows:
        print(f"{label:<{width}}  {cells(Figures.of(during))}  {cells(Figures.of(before))}")
    summary = phase.error_summary()
    if summary:
        print("errors (count x request: error, seconds after the readers started):")
        for line in summary:
            print(line)


# -- the phases -----------------------------------------------------------------------------


def first_sync_phase(
    db: Path, url: str, token: str, clients: int, logs: Path
) -> tuple[Phase, Datasette]:
    """(a) A first sync into a new database ``db``: Datasette starts once pdsync has created its
    tables, the readers once Datasette lists the canned queries, and they stop when the sync
    ends. Returns the phase and the Datasette, still running."""
    phase = Phase("(a) first sync into a new database")
    started = time.perf_counter()
    sync = start_sync(db, url, token, False, logs / "sync.log")
    datasette = None
    try:
        wait_for_tables(db, sync)
        tables_at = time.perf_counter() - started
        datasette = Datasette(db, logs / "datasette.log")
        wait_for_queries(datasette.url, db.stem, canned_query_names())
        ready_at = time.perf_counter() - started
        phase.requests = request_list(db.stem, pick_parameters(db))
        phase.notes.append(
            f"tables created {tables_at:.1f}s into the sync; Datasette up and listing the "
            f"canned queries at {ready_at:.1f}s; parameters picked from the partial database"
        )
        if sync.poll() is not None:
            phase.notes.append("the sync ended before the readers could start: use more deals")
        phase.samples, phase.read_s = read_during_sync(datasette.url, phase.requests, clients, sync)
    except BaseException:
        if datasette is not None:
            datasette.stop()
        sync.kill()
        sync.wait()
        raise
    phase.sync_s, phase.sync_status = time.perf_counter() - started, sync.returncode
    return phase, datasette


def full_sync_phase(
    db: Path, url: str, token: str, clients: int, logs: Path, datasette: Datasette
) -> Phase:
    """(b) `pdsync sync --full` of the existing ``db``, the readers running until it ends."""
    phase = Phase("(b) sync --full of the existing database after the changes")
    phase.requests = request_list(db.stem, pick_parameters(db))
    started = time.perf_counter()
    sync = start_sync(db, url, token, True, logs / "sync.log")
    try:
        phase.samples, phase.read_s = read_during_sync(datasette.url, phase.requests, clients, sync)
    except BaseException:
        sync.kill()
        sync.wait()
        raise
    phase.sync_s, phase.sync_status = time.perf_counter() - started, sync.returncode
    return phase


def baseline_phase(db: Path, clients: int, seconds: float, datasette: Datasette) -> Phase:
    """The same readers for ``seconds`` with no sync running."""
    phase = Phase("baseline")
    phase.requests = request_list(db.stem, pick_parameters(db))
    phase.samples, phase.read_s = read_for(datasette.url, phase.requests, clients, seconds)
    return phase


def log_problems(log: Path) -> str:
    """What Datasette's log says went wrong on the server side."""
    text = log.read_text(errors="replace")
    server_errors = len(re.findall(r'HTTP/1.1" 5\d\d', text))
    return (
        f"{text.count('Traceback'):,} tracebacks, "
        f"{text.count('database is locked'):,} 'database is locked', "
        f"{server_errors:,} 5xx responses"
    )


# -- the benchmark --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000, help="deals in the fake (100000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent readers (4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds the fake adds per request (0)"
    )
    parser.add_argument(
        "--mutate-share",
        type=float,
        default=0.25,
        help="random changes before the --full sync, as a share of --deals (0.25)",
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=15.0, help="readers with no sync running (15)"
    )
    args = parser.parse_args()

    def done(phase: Phase) -> None:
        print(
            f"  sync {phase.sync_s:.1f}s (exit {phase.sync_status}), readers ran "
            f"{phase.read_s:.1f}s: {len(phase.samples):,} requests, {phase.errors:,} errors",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="pdsync-readers-") as tmp:
        logs = Path(tmp)
        db = logs / DB_NAME
        print(f"Building a fake Pipedrive with {args.deals:,} deals...", flush=True)
        parent, child = multiprocessing.Pipe()
        fake = multiprocessing.Process(
            target=serve_fake, args=(child, args.deals, args.seed, args.latency), daemon=True
        )
        fake.start()
        datasette: Datasette | None = None
        try:
            info = parent.recv()
            url, token = info["url"], info["token"]
            print(f"  built in {info['build_s']:.1f}s, serving at {url}", flush=True)

            print("\n(a) first sync into a new database...", flush=True)
            first, datasette = first_sync_phase(db, url, token, args.clients, logs)
            done(first)

            print(f"\nBaseline: {args.baseline_seconds:.0f}s with no sync running...", flush=True)
            baseline = baseline_phase(db, args.clients, args.baseline_seconds, datasette)
            print(f"  {len(baseline.samples):,} requests, {baseline.errors:,} errors", flush=True)

            changes = max(1, int(args.deals * args.mutate_share))
            started = time.perf_counter()
            parent.send(("mutate", changes))
            ops = parent.recv()
            print(
                f"\nMade {changes:,} random changes in the fake in "
                f"{time.perf_counter() - started:.1f}s: "
                + ", ".join(f"{op} {n:,}" for op, n in ops.most_common()),
                flush=True,
            )
            print("(b) sync --full of the existing database...", flush=True)
            full = full_sync_phase(db, url, token, args.clients, logs, datasette)
            done(full)
        finally:
            if datasette is not None:
                datasette.stop()
            parent.send(("stop", None))
            fake.join(timeout=60)

        print(
            f"\n{args.deals:,} deals, {args.clients} clients, fake latency {args.latency}s. "
            "Times are client-side wall time per request (keep-alive connections). Baseline: "
            f"the same readers for {args.baseline_seconds:.0f}s between the phases, no sync."
        )
        phases = [first, full]
        for phase in phases:
            print_phase(phase, baseline)
        print(f"\nDatasette's log: {log_problems(logs / 'datasette.log')}")
        failed_syncs = [p for p in phases if p.sync_status != 0]
        if failed_syncs:
            print("\nsync output:\n" + (logs / "sync.log").read_text()[-3000:])
        failed_requests = sum(p.errors for p in [*phases, baseline])
        if failed_requests or failed_syncs:
            print(
                f"\nRESULT: {failed_requests:,} failed requests, {len(failed_syncs)} failed syncs"
            )
            return 1
        unmeasured = [p.name for p in phases if not p.samples]
        if unmeasured:
            print(
                f"\nRESULT: zero errors, but no reader ran during {'; '.join(unmeasured)}: "
                "the sync ended before Datasette was up. Use more --deals or some --latency."
            )
            return 2
        print("\nRESULT: zero errors")
        return 0


if __name__ == "__main__":
    sys.exit(main())
