"""`pdsync sync --every`: repeated runs, one line each, surviving failures, clean stop."""

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlite_utils


def test_every_runs_again_survives_a_failed_run_and_stops_on_sigterm(fake, server, db_path):
    env = {**os.environ, "PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}
    fake.inject("/v1/notes", "503", times=1, after=1)  # the second run's notes fail once
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsync", "sync", db_path, "--every", "1s", "--retries", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    db = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if os.path.exists(db_path):
            db = sqlite_utils.Database(db_path)
            if (
                "sync_runs" in db.table_names()
                # Run 3 succeeded and run 4 began: run 3's line is printed (a SIGTERM
                # between run 3's commit and its line would lose the line).
                and db.execute(
                    "select count(*) from sync_runs where status = 'success' and id = 3"
                ).fetchone()[0]
                and db.execute("select count(*) from sync_runs where id > 3").fetchone()[0]
            ):
                break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if " sync #" in line]
    assert len(lines) >= 3, err
    assert "success" in lines[0] and "partial" in lines[1] and "notes: " in lines[1]
    assert "success" in lines[2]
    assert "interrupted" in err.splitlines()[-1]
    assert "Traceback" not in err
    statuses = [r[0] for r in db.execute("select status from sync_runs order by id")]
    assert statuses[:3] == ["success", "partial", "success"]
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize(
    "every, says",
    [
        ("soon", "is not an interval like 90s, 30m, 1h or 1d"),
        # Once an OverflowError traceback from time.sleep().
        ("99999999999999d", "is not an interval longer than 0s and at most 366d"),
        ("0s", "is not an interval longer than 0s and at most 366d"),
    ],
)
def test_every_rejects_a_bad_interval(db_path, every, says):
    out = subprocess.run(
        [sys.executable, "-m", "pdsync", "sync", db_path, "--every", every],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert says in out.stderr
    assert "Traceback" not in out.stderr
