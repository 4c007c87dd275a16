"""The command line: what people type, what they see, and exit codes."""

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
import sqlite_utils
from click.testing import CliRunner

from pdsync.cli import cli
from pdsync.lock import SyncLock


@pytest.fixture
def env(fake, server, monkeypatch, tmp_path):
    monkeypatch.setenv("PIPEDRIVE_API_TOKEN", fake.token)
    monkeypatch.setenv("PIPEDRIVE_BASE_URL", server.url)
    monkeypatch.chdir(tmp_path)


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kwargs)


def test_sync_then_status(env, db_path):
    result = invoke("sync", db_path)
    assert result.exit_code == 0, result.output
    assert "Synced" in result.output
    status = invoke("status", db_path)
    assert status.exit_code == 0
    lines = status.output.splitlines()
    assert lines[0].split()[:3] == ["entity", "last", "sync"]
    assert any(line.startswith("deals") and "success" in line for line in lines)
    as_json = json.loads(invoke("status", db_path, "--json").output)
    deals = next(r for r in as_json if r["entity_type"] == "deals")
    assert deals["status"] == "success" and deals["records_total"] > 0


def test_quiet_prints_nothing_on_success(env, db_path):
    result = invoke("sync", db_path, "--quiet")
    assert result.exit_code == 0
    assert result.output == ""


def test_verbose_logs_requests_without_the_token(env, fake, db_path):
    result = invoke("sync", db_path, "-v")
    assert result.exit_code == 0
    assert "GET /api/v2/deals" in result.output and " 200 " in result.output
    assert fake.token not in result.output


def test_only_accepts_repeats_and_commas(env, db_path):
    result = invoke("sync", db_path, "--only", "pipelines,stages", "--only", "users")
    assert result.exit_code == 0, result.output
    db = sqlite_utils.Database(db_path)
    assert {r["entity_type"] for r in db["sync_metadata"].rows} == {"pipelines", "stages", "users"}


def test_unknown_entity_is_a_usage_error_and_touches_nothing(env, db_path):
    result = invoke("sync", db_path, "--only", "dealz")
    assert result.exit_code == 2
    assert "unknown entity 'dealz'" in result.output and "choose from" in result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(db_path)


def test_not_a_database_is_refused_and_left_alone(env, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    result = invoke("sync", str(path))
    assert result.exit_code == 1
    assert "is not a SQLite database" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_missing_token_is_one_line_and_creates_nothing(monkeypatch, tmp_path, db_path):
    monkeypatch.delenv("PIPEDRIVE_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    result = invoke("sync", db_path)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no Pipedrive API token: set PIPEDRIVE_API_TOKEN or run `pdsync auth` "
        "(looked in auth.json)"
    )
    assert not os.path.exists(db_path)


def test_unreachable_base_url(env, db_path):
    result = invoke("sync", db_path, "--base-url", "http://127.0.0.1:9", "--retries", "0")
    assert result.exit_code == 1
    assert "could not connect" in result.output
    assert "Traceback" not in result.output


def test_bad_base_url(env, db_path):
    result = invoke("sync", db_path, "--base-url", "api.pipedrive.com")
    assert result.exit_code == 1
    assert "must start with http:// or https://" in result.output


def test_wrong_token_exit_code_and_hint(env, monkeypatch, db_path):
    monkeypatch.setenv("PIPEDRIVE_API_TOKEN", "not-the-token")
    result = invoke("sync", db_path)
    assert result.exit_code == 1
    assert "Pipedrive rejected the API token" in result.output
    assert "pdsync auth" in result.output


def test_failed_entity_means_nonzero_exit(env, fake, db_path):
    fake.inject("/v1/notes", "500", times=100)
    result = invoke("sync", db_path, "--retries", "1")
    assert result.exit_code == 1
    assert "notes failed" in result.output and "HTTP 500" in result.output


def test_second_sync_is_refused_while_one_runs(env, db_path):
    lock = SyncLock(db_path)
    lock.acquire()
    try:
        result = invoke("sync", db_path)
        assert result.exit_code == 1
        assert f"another pdsync sync (pid {os.getpid()}) is already running" in result.output
    finally:
        lock.release()


def test_wait_waits_for_the_running_sync(env, db_path):
    lock = SyncLock(db_path)
    lock.acquire()
    timer = threading.Timer(0.5, lock.release)
    timer.start()
    started = time.monotonic()
    result = invoke("sync", db_path, "--wait")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 0.4


def test_status_of_missing_or_foreign_database(tmp_path):
    result = invoke("status", str(tmp_path / "nope.db"))
    assert result.exit_code == 1 and "does not exist" in result.output
    other = tmp_path / "other.db"
    sqlite_utils.Database(str(other))["t"].insert({"a": 1})
    result = invoke("status", str(other))
    assert result.exit_code == 1 and "has not been synced by pdsync" in result.output


def test_auth_writes_a_private_file_and_merges(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"github_personal_token": "keep-me"}))
    os.chmod(path, 0o644)
    result = invoke("auth", "-a", str(path), input="secret-token\nacme\n")
    assert result.exit_code == 0
    assert "secret-token" not in result.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "github_personal_token": "keep-me",
        "pipedrive_api_token": "secret-token",
        "pipedrive_company_domain": "acme",
    }


def test_base_url_from_company_domain(tmp_path, monkeypatch):
    from pdsync.auth import resolve_base_url, save_auth

    monkeypatch.delenv("PIPEDRIVE_BASE_URL", raising=False)
    path = tmp_path / "auth.json"
    save_auth(path, "t", "acme")
    assert resolve_base_url(None, path) == "https://acme.pipedrive.com"
    monkeypatch.setenv("PIPEDRIVE_BASE_URL", "http://127.0.0.1:1234/")
    assert resolve_base_url(None, path) == "http://127.0.0.1:1234"
    assert resolve_base_url("https://other.pipedrive.com", path) == "https://other.pipedrive.com"


def test_demo_without_serving(tmp_path):
    db_path = tmp_path / "demo.db"
    result = invoke("demo", str(db_path), "--deals", "200", "--no-serve")
    assert result.exit_code == 0, result.output
    db = sqlite_utils.Database(str(db_path))
    assert db["deals"].count >= 200
    assert {p["name"] for p in db["pipelines"].rows} >= {"Aramco Projects", "Bidding Projects"}


def test_python_dash_m_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "pdsync", "sync", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "--every" in out.stdout and "--full" in out.stdout
