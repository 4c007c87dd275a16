"""Webhooks: how fast deliveries are applied, how soon a change shows, what they cost, and
whether a kill loses any (issue #16).

    python benchmarks/webhook_bench.py                  # 20,000 deals
    python benchmarks/webhook_bench.py --deals 50000 --events 3000

The fake Pipedrive runs in this process and delivers webhooks v2 (its worker threads, like
Pipedrive's senders) to a real `pdsync serve` subprocess on 127.0.0.1, registered with
`pdsync webhooks install`'s own code. Phases, all in one run so ratios compare like with like:

  1. sustained: --events changes made upstream as fast as the fake makes them; events/s from
     the first change to the last one applied (every delivery stored, then applied by the
     server's thread), and the applier alone draining the same number from its inbox;
  2. latency: --rate changes a second for --seconds; for each, seconds from the fake's change
     to the new title read back through Datasette's JSON API (polled every 10 ms): p50, p95;
  3. the same while `pdsync sync --full` of the served database runs;
  4. the same while a first sync fills a new database that is already served (its first,
     long transaction and index builds hold the database);
  5. requests the served instance sent to Pipedrive per 1,000 events (the fake's request log);
  6. kill -9 under load: deliveries POSTed as fast as the server takes them, SIGKILL midway,
     restart: every delivery answered 2xx must be applied (0 lost).

The machine is shared: absolute figures are noisy; compare phases within one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

import pdsync
from pdsync import access, webhook_setup
from pdsync.fake import FakePipedrive, FakeServer
from pdsync.webhook_apply import Applier
from pdsync.webhook_inbox import Inbox, inbox_path


def change(deal: int, title: str, stamp: str) -> dict:
    """A webhooks v2 delivery of a deal's new title, as Pipedrive shapes it."""
    meta = {"action": "change", "entity": "deal", "entity_id": str(deal), "timestamp": stamp}
    return {
        "meta": {**meta, "version": "2.0"},
        "data": {"id": deal, "title": title, "update_time": stamp},
        "previous": {"title": None},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, db: Path, env: dict):
        self.db, self.env, self.port = db, env, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pdsync", "serve", str(self.db), "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.base + "/-/versions.json", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit("pdsync serve did not start")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def install(fake: FakePipedrive, server: FakeServer, served: Served) -> None:
    api = webhook_setup.Api(fake.token, server.url)
    try:
        webhook_setup.install(
            api, access.secrets_path(served.db), webhook_setup.subscription_url(served.base)
        )
    finally:
        api.close()


def pending(db: Path) -> int:
    return Inbox(inbox_path(db)).summary()["pending"]


def wait_applied(db: Path, deal_titles: dict[int, str], timeout: float = 300) -> float:
    """Until every deal shows its title (read from the file, not through Datasette)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    ids = list(deal_titles)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(conn.execute(f"select id, title from deals where id in ({marks})", chunk))
        if all(found.get(i) == t for i, t in deal_titles.items()):
            conn.close()
            return time.monotonic()
        time.sleep(0.05)
    conn.close()
    raise SystemExit("not every change was applied in time")


# -- phases -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc): what a delivery costs the server,
    whatever else the machine is doing."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sustained(fake, served, deal_ids, events: int) -> dict:
    rng = random.Random(1)
    cpu_before = cpu_seconds(served.proc.pid)
    titles: dict[int, str] = {}
    delivered_before = fake.webhooks().delivered
    started = time.monotonic()
    for i in range(events):
        deal = rng.choice(deal_ids)
        titles[deal] = f"sustained {i}"
        fake.update_deal(deal, title=titles[deal])
    made = time.monotonic()
    hub = fake.webhooks()
    while hub.delivered - delivered_before < events and time.monotonic() - made < 300:
        time.sleep(0.01)
    delivered = time.monotonic()
    done = wait_applied(served.db, titles)
    return {
        "server_cpu_ms": (cpu_seconds(served.proc.pid) - cpu_before) * 1000 / events,
        "events": events,
        "made_per_s": events / (made - started),
        "delivered_per_s": events / (delivered - started),
        "per_s": events / (done - started),
    }


def applier_alone(db: Path, work: Path, deal_ids: list[int], events: int) -> float:
    """The applier draining ``events`` stored deliveries, on a copy of the database."""
    copy = work / "applier-copy.db"
    source = sqlite3.connect(db)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    inbox = Inbox(work / "applier-copy.inbox")
    rng = random.Random(2)
    for i in range(events):
        deal = rng.choice(deal_ids)
        stamp = f"2030-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
        body = change(deal, f"alone {i}", stamp)
        inbox.add(json.dumps(body).encode(), body["meta"])
    applier = Applier(str(copy), inbox)
    started = time.monotonic()
    while applier.apply_pending():
        pass
    elapsed = time.monotonic() - started
    applier.close()
    return events / elapsed


def latency(
    fake, served, deal_ids, rate: float, seconds: float, stop: threading.Event | None = None
) -> list[float]:
    """Changes at ``rate``/s; seconds until each shows through Datasette's JSON API."""
    rng = random.Random(3)
    samples: list[float] = []
    lock = threading.Lock()
    client = httpx.Client(base_url=served.base, timeout=10)

    def watch(deal: int, title: str, made: float) -> None:
        deadline = made + 30
        while time.monotonic() < deadline:
            try:
                rows = client.get(f"/{served.db.stem}/deals/{deal}.json?_shape=array").json()
            except (httpx.HTTPError, ValueError):
                rows = []
            if rows and rows[0].get("title") == title:
                with lock:
                    samples.append(time.monotonic() - made)
                return
            time.sleep(0.01)
        with lock:
            samples.append(float("inf"))

    pool = ThreadPoolExecutor(16)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds and not (stop and stop.is_set()):
        deal = rng.choice(deal_ids)
        title = f"latency {time.monotonic():.6f} {i}"
        fake.update_deal(deal, title=title)
        pool.submit(watch, deal, title, time.monotonic())
        i += 1
        time.sleep(max(0.0, started + i / rate - time.monotonic()))
    pool.shutdown(wait=True)
    client.close()
    return samples


def describe(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    lost = sum(1 for s in samples if s == float("inf"))
    return (
        f"p50 {statistics.median(ordered):.3f} s, p95 {p95:.3f} s, max {ordered[-1]:.3f} s"
        f" ({len(samples)} changes{f', {lost} never seen' if lost else ''})"
    )


def sync_process(db: Path, env: dict, full: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "pdsync", "sync", str(db), "-q", "-a", "/nonexistent"]
    return subprocess.Popen(
        args + (["--full"] if full else []),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def during(
    proc: subprocess.Popen, fake, served, deal_ids, rate: float, seconds: float
) -> tuple[list[float], float]:
    stop = threading.Event()
    threading.Thread(target=lambda: (proc.wait(), stop.set()), daemon=True).start()
    started = time.monotonic()
    samples = latency(fake, served, deal_ids, rate, seconds, stop)
    overlap = time.monotonic() - started
    proc.wait()
    return samples, overlap


def kill_under_load(served: Served, deal_ids: list[int], after: float) -> dict:
    user, password = webhook_setup.new_credentials(access.secrets_path(served.db))
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    acked: dict[int, str] = {}
    lock = threading.Lock()
    ids = iter(deal_ids)
    ids_lock = threading.Lock()
    killed = threading.Event()

    def sender(n: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not killed.is_set():
                with ids_lock:
                    deal = next(ids, None)
                if deal is None:
                    return
                title = f"kill {n} {deal}"
                body = change(deal, title, "2031-01-01T00:00:00.000Z")
                try:
                    response = client.post(
                        served.base + "/-/pdsync/webhook",
                        content=json.dumps(body),
                        headers={"authorization": auth, "content-type": "application/json"},
                    )
                except httpx.HTTPError:
                    continue
                if 200 <= response.status_code < 300:
                    with lock:
                        acked[deal] = title

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(after)
    served.kill9()
    killed.set()
    for t in threads:
        t.join()
    at_kill = pending(served.db)
    served.start()
    conn = sqlite3.connect(f"file:{served.db}?mode=ro", uri=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and pending(served.db):
        time.sleep(0.1)
    lost = 0
    for deal, title in acked.items():
        row = conn.execute("select title from deals where id = ?", [deal]).fetchone()
        lost += not row or row[0] != title
    conn.close()
    return {"acked": len(acked), "pending_at_kill": at_kill, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=20000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument(
        "--rate", type=float, default=20.0, help="changes a second in latency phases"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a latency phase")
    parser.add_argument("--workers", type=int, default=8, help="the fake's delivering threads")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pdsync-webhook-bench-"))
    db = work / "acme.db"
    print(f"building a fake company of {args.deals:,} deals...", flush=True)
    fake = FakePipedrive(deals=args.deals, seed=4)
    with FakeServer(fake) as server:
        assert pdsync.sync(str(db), token=fake.token, base_url=server.url, auth_path=None).ok
        env = {**os.environ, "PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}
        served = Served(db, env)
        served.start()
        fake.webhooks(workers=args.workers)
        install(fake, server, served)
        deal_ids = [d["id"] for d in fake.iter_records("deals") if not d.get("is_deleted")]
        try:
            requests_before = len(fake.requests)
            result = sustained(fake, served, deal_ids, args.events)
            requests = len(fake.requests) - requests_before
            alone = applier_alone(db, work, deal_ids, args.events)
            print(
                f"1. sustained: {result['per_s']:.0f} events/s applied end to end"
                f" ({result['events']:,} changes, made at {result['made_per_s']:.0f}/s,"
                f" answered 2xx at {result['delivered_per_s']:.0f}/s);"
                f" the applier alone: {alone:.0f} events/s",
                flush=True,
            )
            cpu = result["server_cpu_ms"]
            print(
                f"   pdsync serve's CPU per delivery, received and applied: {cpu:.2f} ms"
                f" (a core's worth: {1000 / cpu:.0f} deliveries/s)",
                flush=True,
            )
            per_thousand = requests * 1000 / result["events"]
            print(f"5. requests to Pipedrive per 1,000 events: {per_thousand:.1f}")
            idle = latency(fake, served, deal_ids, args.rate, args.seconds)
            print(f"2. latency, idle: {describe(idle)}", flush=True)
            full = sync_process(db, env, full=True)
            samples, overlap = during(full, fake, served, deal_ids, args.rate, args.seconds * 3)
            print(
                f"3. latency during sync --full ({overlap:.1f} s of overlap): {describe(samples)}",
                flush=True,
            )
            served.stop()
            fresh = work / "first.db"
            first = sync_process(fresh, env, full=False)
            while not (fresh.exists() and _has_deals(fresh)):
                time.sleep(0.05)
            served_first = Served(fresh, env)
            served_first.start()
            install(fake, server, served_first)
            samples, overlap = during(
                first, fake, served_first, deal_ids, args.rate, args.seconds * 3
            )
            print(
                f"4. latency during a first sync ({overlap:.1f} s of overlap): {describe(samples)}",
                flush=True,
            )
            kill = kill_under_load(served_first, deal_ids, after=2.0)
            print(
                f"6. kill -9 under load: {kill['acked']:,} deliveries answered 2xx,"
                f" {kill['pending_at_kill']:,} not yet applied at the kill, {kill['lost']} lost",
                flush=True,
            )
            served_first.stop()
        finally:
            served.stop()
            fake.close()


def _has_deals(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return bool(
                conn.execute("select 1 from sqlite_master where name = 'deal_details'").fetchone()
            )
        finally:
            conn.close()
    except sqlite3.Error:
        return False


if __name__ == "__main__":
    main()
