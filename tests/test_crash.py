"""A sync killed with SIGKILL loses nothing: the database is intact and a rerun converges."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import sqlite_utils
from helpers import differences

import pdsync
from pdsync.fake import FakePipedrive, FakeServer


def deals_committed(path):
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("select count(*) from deals").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_kill_9_mid_sync_then_rerun_converges(tmp_path):
    fake = FakePipedrive(deals=2500, seed=4, latency=0.03)
    db_path = str(tmp_path / "p.db")
    try:
        with FakeServer(fake) as server:
            env = {
                **os.environ,
                "PIPEDRIVE_API_TOKEN": fake.token,
                "PIPEDRIVE_BASE_URL": server.url,
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "pdsync", "sync", db_path, "--quiet"],
                env=env,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 60
            while deals_committed(db_path) == 0 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            committed = deals_committed(db_path)
            assert 0 < committed < fake.count("deals")  # killed mid-sync, not after

            db = sqlite_utils.Database(db_path)
            assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
            # The lock died with the process: the rerun is not refused.
            fake.latency = 0
            result = pdsync.sync(db_path, token=fake.token, base_url=server.url, auth_path=None)
            assert result.ok, result.errors
            assert differences(db, fake) == []
            run = db.execute("select status from sync_runs order by id limit 1").fetchone()[0]
            assert run == "interrupted"  # the killed run's row says it never finished
    finally:
        fake.close()
