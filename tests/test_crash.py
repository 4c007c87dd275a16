"""A sync killed with SIGKILL loses nothing: the database is intact and a rerun converges."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import sqlite_utils
from crashes import FTS, PHASES, crash_runs, fts_problems, measure
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


def test_twenty_kills_at_random_moments_leave_an_intact_database_and_the_rerun_converges(
    tmp_path,
):
    # Issue #6, CI-sized (benchmarks/crash_bench.py is the full size): kills all through a
    # sync's life, drawn from a seeded generator. First syncs of an empty database while they
    # load and while they build indexes and FTS; incremental and --full syncs after upstream
    # changes (deletions of every entity among them). A little latency stretches the small
    # first sync so that kills land inside it rather than after it.
    fake = FakePipedrive(deals=1500, seed=6, latency=0.05)
    rng = random.Random(6)
    db_path = str(tmp_path / "p.db")
    try:
        with FakeServer(fake) as server:
            timings = measure(db_path, fake, server.url, 100, rng)
            runs = crash_runs(20, db_path, fake, server.url, timings, 100, rng, in_process=True)
            runs = list(runs)
    finally:
        fake.close()
    for run in runs:
        where = (run.number, run.phase, f"{run.kill_at:.2f}s", run.deals)
        assert run.integrity == "ok", (*where, run.integrity)
        assert run.problems == [], (*where, run.problems[:10])
    assert [run.phase for run in runs] == list(PHASES) * 4
    # Most moments fall inside the sync (one that finished first shortens the next moments).
    killed = [run for run in runs if run.killed]
    assert len(killed) >= 10, [(r.phase, f"{r.kill_at:.2f}s") for r in runs if not r.killed]


@pytest.mark.parametrize("left", ["empty index, no triggers", "filled index, no triggers"])
def test_a_full_text_index_a_kill_left_half_built_is_rebuilt(run_sync, db_path, left):
    # enable_fts commits its steps one by one; SIGKILL between them (seen in the crash runs
    # above) used to leave deals_fts empty and without triggers for good.
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    db["deals"].disable_fts()
    db["deals"].enable_fts(FTS["deals"], tokenize="unicode61")  # no triggers yet
    if left.startswith("empty"):
        db.execute("insert into deals_fts (deals_fts) values ('delete-all')")
        db.conn.commit()
    assert fts_problems(db) != []  # the state a kill leaves is what the check catches
    db.close()

    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert fts_problems(db) == []
    title = db.execute("select title from deals order by id limit 1").fetchone()[0]
    word = '"' + title.split()[0] + '"'
    found = db.execute("select rowid from deals_fts where deals_fts match ?", [word]).fetchall()
    assert (1,) in found
