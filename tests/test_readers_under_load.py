"""Readers under load (issue #6, item 6), CI-sized: 4 clients call every canned query through
a real Datasette subprocess while a real `pdsync sync` subprocess writes, during a first sync
and during a --full sync. The machinery is benchmarks/readers_under_load.py's; the fake runs
here, in this process, so that the database can be compared with it afterwards.
"""

import random
import sys
from pathlib import Path

import pytest
import sqlite_utils
from helpers import differences

from pdsync.fake import FakePipedrive, FakeServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import readers_under_load as bench  # noqa: E402

CLIENTS = 4
DEALS = 3000
# The fake waits this long before each answer. A 3000-deal sync makes ~7 requests one after
# the other (the deals pages), so each sync lasts ~8 s, and the readers run ~5 s of the first
# (Datasette takes ~2 s to start) and all of the --full one.
LATENCY = 1.0
MIN_RESPONSES = 20  # per client and phase: ~100 seen on a busy 2-core machine


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    logs = tmp_path_factory.mktemp("readers")
    db = logs / bench.DB_NAME
    fake = FakePipedrive(deals=DEALS, seed=5, latency=LATENCY)
    datasette = None
    try:
        with FakeServer(fake) as server:
            first, datasette = bench.first_sync_phase(db, server.url, fake.token, CLIENTS, logs)
            first_differences = compare(db, fake)
            fake.random_mutations(DEALS // 4, random.Random(5))
            full = bench.full_sync_phase(db, server.url, fake.token, CLIENTS, logs, datasette)
            full_differences = compare(db, fake)
    finally:
        if datasette is not None:
            datasette.stop()
        fake.close()
    return {
        "first": (first, first_differences),
        "full": (full, full_differences),
        "logs": logs,
    }


def compare(db, fake):
    database = sqlite_utils.Database(db)
    try:
        return differences(database, fake)
    finally:
        database.close()


def errors(phase):
    return [(s.label, s.error) for s in phase.samples if s.error]


@pytest.mark.parametrize("name", ["first", "full"])
def test_the_sync_succeeds_and_the_database_equals_the_fake(phases, name):
    phase, problems = phases[name]
    assert phase.sync_status == 0, (phases["logs"] / "sync.log").read_text()[-2000:]
    assert problems == []  # compared with the fake just after this sync


@pytest.mark.parametrize("name", ["first", "full"])
def test_every_client_is_served_throughout_the_sync(phases, name):
    phase, _ = phases[name]
    counts = phase.per_client()
    assert sorted(counts) == list(range(CLIENTS))
    assert min(counts.values()) >= MIN_RESPONSES, (counts, phase.read_s)
    called = {label.split(" ")[0] for label, _ in phase.requests}
    assert bench.canned_query_names() <= called


def test_readers_get_no_errors_during_a_full_sync(phases):
    assert errors(phases["full"][0]) == []


def test_readers_get_no_errors_during_a_first_sync(phases):
    # search_deals included: its full-text tables exist (empty) from the start of the sync.
    # Index builds used to commit milliseconds apart, and a reader prepared across two such
    # schema changes failed to reconnect an FTS5 table ("vtable constructor failed"); the
    # sync now spaces them (pacing.GAP, tests/test_schema.py).
    assert errors(phases["first"][0]) == []


def test_datasette_logged_no_server_errors(phases):
    assert bench.log_problems(phases["logs"] / "datasette.log").startswith(
        "0 tracebacks, 0 'database is locked', 0 5xx"
    )
