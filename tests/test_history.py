"""Deal history: observed changes, changelogs read within a daily budget, kill -9 safe, and
the result equal to the fake's changelog for every deal."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import sqlite_utils
from crashes import read_only

import pdsync
from pdsync.backfill import progress
from pdsync.fake import FakePipedrive, FakeServer


def as_stored(v1_time: str) -> str:
    """``2025-01-15 10:30:00`` (the changelog's UTC) as pdsync stores times."""
    return v1_time.replace(" ", "T") + "Z"


def expected_rows(fake: FakePipedrive, deal_id: int, names: dict[str, str]) -> list[tuple]:
    """The deal's changelog as deal_changes should hold it, oldest first."""
    return [
        (
            names.get(e["field_key"], e["field_key"]),
            e["old_value"],
            e["new_value"],
            as_stored(e["time"]),
            e["actor_user_id"],
        )
        for e in fake.changelog(deal_id)
    ]


def stored_rows(db: sqlite_utils.Database, deal_id: int) -> list[tuple]:
    return db.execute(
        "select field_key, old_value, new_value, time, user_id from deal_changes"
        " where deal_id = ? order by time, id",
        [deal_id],
    ).fetchall()


def field_names(db: sqlite_utils.Database) -> dict[str, str]:
    return dict(
        db.execute(
            "select field_code, column_name from deal_fields where column_name is not null"
        ).fetchall()
    )


def read_count(path: str) -> int:
    rows = read_only(path, "select count(*) from _pdsync_history")
    return rows[0][0] if rows else 0


def next_day(db: sqlite_utils.Database) -> None:
    """As if the UTC day had turned: today's tokens become yesterday's."""
    with db.atomic():
        db.execute("update sync_tokens set day = date(day, '-1 day')")


def stage_after(fake: FakePipedrive, deal: dict, step: int) -> int | None:
    """The stage ``step`` places after the deal's own in its pipeline, if there is one."""
    stages = [s["id"] for s in fake.records("stages") if s["pipeline_id"] == deal["pipeline_id"]]
    i = stages.index(deal["stage_id"]) + step
    return stages[i] if 0 <= i < len(stages) else None


def mutate(fake: FakePipedrive, round_: int) -> dict[str, list[int]]:
    """Changes of distinct open deals, some the observation sees whole, some it cannot."""
    deals = [d for d in fake.records("deals") if d["status"] == "open" and not d["is_archived"]]
    deals = deals[round_ * 12 : round_ * 12 + 12]
    done: dict[str, list[int]] = {"whole": [], "partial": []}
    for i, deal in enumerate(deals):
        fake.advance(30)
        one, two = stage_after(fake, deal, 1), stage_after(fake, deal, 2)
        kind = i % 6
        if kind == 0 and one:
            fake.move_deal(deal["id"], one)  # to the next stage: whole
        elif kind == 1 and two:
            fake.move_deal(deal["id"], one)
            fake.advance(30)
            fake.move_deal(deal["id"], two)  # seen as a skip: re-read
        elif kind == 2:
            fake.update_deal(deal["id"], value=1000 + i)  # whole
        elif kind == 3:
            fake.update_deal(deal["id"], value=2000 + i)
            fake.advance(30)
            fake.update_deal(deal["id"], title=f"Renamed {i}")  # two edits: re-read
        elif kind == 4:
            fake.set_deal_status(deal["id"], "won")  # whole
        else:
            code = next(
                f["field_code"]
                for f in fake.records("deal_fields")
                if f.get("is_custom_field") and f["field_type"] == "varchar"
            )
            fake.update_deal(deal["id"], custom_fields={code: f"note {i}"})  # whole
            continue
        done["whole" if kind in (0, 2, 4) else "partial"].append(deal["id"])
    fake.advance(30)
    return done


@pytest.fixture
def company():
    fake = FakePipedrive(deals=160, seed=5)
    with FakeServer(fake) as server:
        yield fake, server
    fake.close()


def sync(path: str, fake: FakePipedrive, server: FakeServer, budget: int, **options):
    result = pdsync.sync(
        path,
        token=fake.token,
        base_url=server.url,
        auth_path=None,
        history_budget=budget,
        **options,
    )
    assert result.ok, result.errors
    return result


def test_history_over_several_days_and_a_kill_equals_the_changelog(company, tmp_path):
    fake, server = company
    path = str(tmp_path / "p.db")
    budget = 60 * 20  # 60 deals a day: 160 deals need three days

    # Day 1, killed while reading history (the latency keeps it reading for a while).
    fake.latency = 0.02
    env = {**os.environ, "PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsync", "sync", path, "--quiet", "--history-budget", str(budget)],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while read_count(path) < 5 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    fake.latency = 0
    db = sqlite_utils.Database(path)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    read = db.execute("select count(*) from _pdsync_history").fetchone()[0]
    assert 0 < read < 60
    spent = db.execute("select tokens from sync_tokens where purpose = 'history'").fetchone()[0]
    assert spent >= 20 * read  # a deal with more than one page costs more
    # Every deal said read has its whole changelog: committed together.
    names = field_names(db)
    for (deal_id,) in db.execute("select deal_id from _pdsync_history").fetchall():
        assert stored_rows(db, deal_id) == expected_rows(fake, deal_id, names)

    # The rest of day 1: the budget left, no more.
    result = sync(path, fake, server, budget)
    assert result.history.status == "budget"
    spent_day1 = db.execute("select tokens from sync_tokens where purpose = 'history'").fetchone()
    assert budget - 20 < spent_day1[0] <= budget + 20 * 3  # a deal in flight may run over
    assert sync(path, fake, server, budget).history.deals == 0  # spent: nothing more today
    first = progress(db)
    assert 0 < first["share"] < 1 and first["days_left"] >= 1

    # Days 2..n: changes between the runs; each day reads what its budget allows.
    days = 1
    watched: dict[str, list[int]] = {"whole": [], "partial": []}
    while progress(db)["pending"]:
        next_day(db)
        days += 1
        assert days < 8
        changed = mutate(fake, days)
        for key in watched:
            watched[key] += changed[key]
        before = {d: stored_rows(db, d) for d in changed["whole"] + changed["partial"]}
        sync(path, fake, server, budget)
        # Observed rows of changed deals agree with the changelog (a row it has, as it has it).
        for deal_id in changed["whole"]:
            truth = expected_rows(fake, deal_id, names)
            new = [r for r in stored_rows(db, deal_id) if r not in before[deal_id]]
            assert new and all(r[:4] in [t[:4] for t in truth] for r in new), (deal_id, new)
    assert days == 3 or days == 4
    assert progress(db)["share"] == 1

    # One more round of changes: observed whole, or re-read where the observation cannot be.
    next_day(db)
    changed = mutate(fake, 6)
    result = sync(path, fake, server, budget)
    assert result.history.deals == len(changed["partial"])  # exactly the re-reads
    observed = 0
    for deal in fake.records("deals"):
        got, want = stored_rows(db, deal["id"]), expected_rows(fake, deal["id"], names)
        sources = [
            r[0]
            for r in db.execute(
                "select source from deal_changes where deal_id = ? order by time, id", [deal["id"]]
            )
        ]
        assert [r[:4] for r in got] == [r[:4] for r in want], deal["id"]
        for row, truth, source in zip(got, want, sources, strict=True):
            # Who made a change only the changelog says; an observed row leaves it empty.
            assert row[4] == (truth[4] if source == "changelog" else None)
            observed += source == "observed"
    assert observed >= len(watched["whole"])  # observed rows stand: no request was spent on them


def test_a_429_that_means_the_day_is_spent_pauses_history_not_the_sync(company, tmp_path):
    fake, server = company
    path = str(tmp_path / "p.db")
    result = sync(path, fake, server, 0)  # history off: no changelog asked
    assert result.history is None
    assert not [r for r in fake.requests if r["path"].endswith("/changelog")]
    before = fake.tokens_spent
    sync(path, fake, server, 0)
    per_run = fake.tokens_spent - before  # what an incremental run of the core entities costs
    fake.daily_budget = fake.tokens_spent + per_run + 20 * 10  # the day ends after 10 deals
    result = sync(path, fake, server, 100_000)
    assert result.ok and result.history.status == "paused"
    assert result.history.deals == 10
    db = sqlite_utils.Database(path)
    until = db.execute("select paused_until from sync_history").fetchone()[0]
    tomorrow = datetime.now(timezone.utc).date().toordinal() + 1
    assert datetime.fromisoformat(until[:-1]).date().toordinal() == tomorrow
    fake.daily_budget = None
    fake.reset_log()
    again = pdsync.sync(
        path, token=fake.token, base_url=server.url, auth_path=None, history_budget=100_000
    )
    assert again.ok and again.history.status == "paused"  # until tomorrow, without asking
    assert not [r for r in fake.requests if r["path"].endswith("/changelog")]


def test_status_and_the_history_charts_agree_with_the_queries(company, tmp_path):
    import re

    import yaml
    from click.testing import CliRunner

    from pdsync.cli import cli
    from pdsync.serve import metadata_path

    fake, server = company
    path = str(tmp_path / "p.db")
    env = {"PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}
    ran = CliRunner().invoke(cli, ["sync", path, "--history-budget", "800"], env=env)
    assert ran.exit_code == 0, ran.output
    assert "History: 40 deals' changelogs read (800 tokens); today's history budget is spent" in (
        ran.output
    )
    out = CliRunner().invoke(cli, ["status", path])
    assert out.exit_code == 0, out.output
    deals = fake.count("deals")
    line = next(x for x in out.output.splitlines() if x.startswith("History: "))
    days = -(-(deals - 40) * 20 // 800)  # the deals left, 40 a day
    assert line.startswith(f"History: 25% of deals (40 of {deals:,} changelogs read), ~{days} days")
    assert "left at this budget (800 tokens a day; 800 spent today)" in line

    sync(path, fake, server, 1_000_000)  # the rest
    charts = yaml.safe_load(metadata_path().read_text())["plugins"]["datasette-dashboards"]
    charts = charts["history"]["charts"]
    db = sqlite_utils.Database(path)
    funnel = list(db.query(re.sub(r"\[\[.*?\]\]", "", charts["conversion-funnel"]["query"])))
    durations = list(db.query(re.sub(r"\[\[.*?\]\]", "", charts["days-in-stage"]["query"])))
    by_name = {p["id"]: p["name"] for p in fake.records("pipelines")}
    for pipeline_id, name in by_name.items():
        rows = pdsync.query(path, "stage_conversion", pipeline=pipeline_id)
        if not rows or not rows[0]["reached"]:
            continue
        shares = [r["share"] for r in funnel if r["pipeline"] == name]
        # SQLite rounds halves away from zero: floor(x * 1000 + 0.5) / 1000
        want = [math.floor(r["reached"] / rows[0]["reached"] * 1000 + 0.5) / 1000 for r in rows]
        assert shares == want
        spent = pdsync.query(path, "stage_durations", pipeline=pipeline_id)
        assert [(r["stage"], r["mean_days"]) for r in durations if r["pipeline"] == name] == [
            (r["stage"], r["mean_days"]) for r in spent if r["deals_left"]
        ]
    assert any(r["share"] and r["share"] < 1 for r in funnel) and durations


def changelog_asks(fake: FakePipedrive, deal_id: int | None = None) -> int:
    """Changelog requests the fake served (of one deal, or of all)."""
    end = f"/v1/deals/{deal_id}/changelog" if deal_id is not None else "/changelog"
    return sum(1 for r in fake.requests if r["path"].endswith(end))


def test_a_deal_whose_changelog_keeps_failing_is_passed_over_then_given_up(
    company, tmp_path, capsys
):
    from helpers import FAST_CLIENT

    from pdsync.backfill import MAX_FAILURES
    from pdsync.cli_text import report

    fake, server = company
    path = str(tmp_path / "p.db")
    first_open = next(d["id"] for d in fake.records("deals") if d["status"] == "open")
    fake.inject(f"/v1/deals/{first_open}/changelog", "500", times=100_000)
    for run in range(1, MAX_FAILURES + 2):
        fake.reset_log()
        result = sync(path, fake, server, 100_000, client_options=FAST_CLIENT)  # the core is whole
        db = sqlite_utils.Database(path)
        read_at, failures, error = db.execute(
            "select read_at, failures, last_error from _pdsync_history where deal_id = ?",
            [first_open],
        ).fetchone()
        assert read_at is None  # never said read
        if run == 1:
            # One deal failing does not hold up the others: every other deal is read.
            assert result.history.status == "done"
            unread = db.execute(
                "select d.id from deals d left join _pdsync_history h on h.deal_id = d.id"
                " where h.read_at is null"
            ).fetchall()
            assert unread == [(first_open,)]
            assert db.execute("select count(*) from deals").fetchone()[0] == fake.count("deals")
        if run == MAX_FAILURES:  # what the CLI says of it (a sync that did not fail)
            capsys.readouterr()
            report(result, quiet=False, tty=False)
            said = (
                f"deal history: 1 deals' changelogs failed (the last: deal {first_open} (given up)"
            )
            assert said in capsys.readouterr().err
        if run <= MAX_FAILURES:
            assert changelog_asks(fake, first_open) > 0  # tried again, after the others
            assert result.history.failed == 1 and "500" in result.history.error
            assert failures == run and "500" in error
        else:  # given up: asked no more, and said so
            assert changelog_asks(fake, first_open) == 0
            assert result.history.failed == 0 and result.history.status == "done"
            assert failures == MAX_FAILURES
            assert error.startswith(f"given up after {MAX_FAILURES} failures") and "500" in error
        db.close()
    db = sqlite_utils.Database(path)
    assert progress(db)["pending"] == 0
    names = field_names(db)
    for deal in fake.records("deals")[:20]:
        if deal["id"] != first_open:
            assert stored_rows(db, deal["id"]) == expected_rows(fake, deal["id"], names)


def test_deals_given_up_for_their_long_changelogs_are_tried_again(company, tmp_path):
    """A database where the old repeated-page guard gave up on long changelogs: the upgrade
    reads them again, and leaves deals given up for another reason alone."""
    from pdsync.backfill import MAX_FAILURES
    from pdsync.schema import m017_history_long_changelogs

    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    long_one, broken_one = [d["id"] for d in fake.records("deals")[:2]]
    db = sqlite_utils.Database(path)
    for deal_id, why in (
        (long_one, "GET /v1/deals/1/changelog: the same page came back 3 times in a row"),
        (broken_one, "Pipedrive answered 500"),
    ):
        db["_pdsync_history"].upsert(
            {
                "deal_id": deal_id,
                "failures": MAX_FAILURES,
                "failed_at": "2026-12-01T10:00:00Z",
                "last_error": f"given up after {MAX_FAILURES} failures: {why}",
            },
            pk="deal_id",
        )
    m017_history_long_changelogs(db)
    rows = {
        r[0]: r[1:] for r in db.execute("select deal_id, failures, last_error from _pdsync_history")
    }
    assert rows[long_one] == (0, None)
    assert rows[broken_one][0] == MAX_FAILURES
    result = sync(path, fake, server, 100_000)
    assert result.history.status == "done"
    read = db.execute("select read_at from _pdsync_history where deal_id = ?", [long_one])
    assert read.fetchone()[0] is not None
    assert stored_rows(db, long_one) == expected_rows(fake, long_one, field_names(db))


def test_deal_history_names_the_options_of_enum_and_set_fields(company, tmp_path):
    """Pipedrive logs an enum or set custom field's change as option ids: deal_history names
    them as the deal's own column does."""
    import pdsync

    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    db = sqlite_utils.Database(path)
    fields = {
        kind: (code, column, {o["id"]: o["label"] for o in json.loads(options)})
        for code, column, kind, options in db.execute(
            "select field_code, column_name, field_type, options from deal_fields"
            " where field_type in ('enum', 'set') and is_custom_field"
        )
    }
    (enum_code, enum_column, enum_labels), (set_code, set_column, set_labels) = (
        fields["enum"],
        fields["set"],
    )
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    was = deal["custom_fields"].get(enum_code)
    now_enum = next(i for i in enum_labels if i != was)
    now_set = sorted(set_labels)[:2][::-1]  # in the order given, not the options' order
    fake.advance(60)
    fake.update_deal(deal["id"], custom_fields={enum_code: now_enum, set_code: now_set})
    fake.advance(60)
    sync(path, fake, server, 100_000)
    rows = {r["field_key"]: r for r in pdsync.query(path, "deal_history", deal_id=str(deal["id"]))}
    stored = db["deals"].get(deal["id"])
    assert rows[enum_column]["new_value"] == str(now_enum)
    assert rows[enum_column]["new_label"] == enum_labels[now_enum] == stored[enum_column]
    assert rows[enum_column]["old_label"] == enum_labels.get(was)
    assert rows[set_column]["new_value"] == ",".join(map(str, now_set))
    assert json.loads(rows[set_column]["new_label"]) == [set_labels[i] for i in now_set]
    assert rows[set_column]["new_label"] == stored[set_column]
    assert all(r["old_label"] is None for r in rows.values() if r["field_key"] == "title")


def test_pipedrive_failing_every_changelog_stops_history_not_the_sync(company, tmp_path):
    from helpers import FAST_CLIENT

    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    for deal in fake.records("deals"):
        fake.inject(f"/v1/deals/{deal['id']}/changelog", "500", times=100_000)
    fake.reset_log()
    result = sync(path, fake, server, 100_000, client_options=FAST_CLIENT)
    assert result.history.status == "failed" and "500" in result.history.error
    db = sqlite_utils.Database(path)
    failed = db.execute("select count(*) from _pdsync_history where failures > 0").fetchone()[0]
    assert failed == result.history.failed < 12  # a few deals in a row, not the whole account
    fake.clear_faults()
    again = sync(path, fake, server, 100_000)
    assert again.history.status == "done" and progress(db)["pending"] == 0


def test_a_database_error_in_history_fails_history_not_the_sync(company, tmp_path):
    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    db = sqlite_utils.Database(path)
    # What a write of history meets when the file is locked: an error from SQLite itself.
    with db.conn:
        db.conn.execute(
            "create trigger refuse before insert on deal_changes when new.source = 'changelog'"
            " begin select raise(abort, 'database is locked'); end"
        )
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    fake.advance(30)
    fake.update_deal(deal["id"], title="Changed before the run")
    fake.advance(30)
    result = sync(path, fake, server, 100_000)  # does not raise
    assert result.ok
    assert result.history.status == "failed" and "database is locked" in result.history.error
    title = db.execute("select title from deals where id = ?", [deal["id"]]).fetchone()[0]
    assert title == "Changed before the run"  # the core entities are committed
    assert db.execute("select last_error from sync_history").fetchone()[0] == result.history.error
    assert not db.execute("select 1 from deal_changes where source = 'changelog'").fetchall()
    with db.conn:
        db.conn.execute("drop trigger refuse")
    again = sync(path, fake, server, 100_000)
    assert again.history.status == "done" and progress(db)["pending"] == 0


def one_entry_a_page(monkeypatch) -> None:
    """Changelogs of one entry a page (for Backfill alone: the core asks with the real limit).
    Changelog entries have no id: twelve pages of them must not look like one page repeated."""
    monkeypatch.setattr("pdsync.client.PAGE_LIMIT", 1)


def long_changelogs(fake: FakePipedrive) -> None:
    """The first open deals (read first) changed 12 times each: at one entry a page, their
    changelogs are many pages long."""
    open_deals = [d["id"] for d in fake.records("deals") if d["status"] == "open"]
    for deal_id in sorted(open_deals)[:12]:
        for n in range(12):
            fake.advance(1)
            fake.update_deal(deal_id, value=100 + n)
    fake.advance(1)
    assert all(len(fake.changelog(d)) >= 12 for d in sorted(open_deals)[:12])


@pytest.fixture
def long_history(company, tmp_path, monkeypatch):
    """A synced database whose first open deals have changelogs many pages long."""
    fake, server = company
    path = str(tmp_path / "p.db")
    long_changelogs(fake)
    sync(path, fake, server, 0)
    one_entry_a_page(monkeypatch)
    fake.reset_log()
    return fake, server, path


def test_a_stop_ends_history_at_the_next_page(long_history):
    import threading

    from pdsync.backfill import Backfill
    from pdsync.client import PipedriveClient

    fake, server, path = long_history
    fake.latency = 0.02
    stop = threading.Event()
    at_stop: list[int] = []

    def stopper() -> None:
        deadline = time.monotonic() + 30
        while changelog_asks(fake) < 10 and time.monotonic() < deadline:
            time.sleep(0.002)
        at_stop.append(changelog_asks(fake))
        stop.set()

    db = sqlite_utils.Database(path)
    with PipedriveClient(fake.token, server.url) as client:
        thread = threading.Thread(target=stopper)
        thread.start()
        result = Backfill(db, client, 100_000, stop=stop).run()
        thread.join()
        time.sleep(0.3)  # a worker still asking would show here
    assert result.status == "stopped"
    assert changelog_asks(fake) - at_stop[0] <= 4  # at most the page each worker had asked
    names = field_names(db)
    for (deal_id,) in db.execute("select deal_id from _pdsync_history where read_at is not null"):
        assert stored_rows(db, deal_id) == expected_rows(fake, deal_id, names)


def test_history_spends_no_more_than_its_budget_on_long_changelogs(long_history):
    from pdsync.backfill import Backfill
    from pdsync.client import PipedriveClient

    fake, server, path = long_history
    budget = 20 * 10  # less than one of the long changelogs: none of them can be read
    db = sqlite_utils.Database(path)
    with PipedriveClient(fake.token, server.url) as client:
        result = Backfill(db, client, budget).run()
    assert result.status == "budget"
    assert spent_tokens(db) == changelog_asks(fake) * 20 <= budget
    assert result.deals == 0  # a deal the budget cut short is not said read
    assert not db.execute(
        "select 1 from _pdsync_history where read_at is not null and deal_id"
        " not in (select id from deals where update_time = add_time)"
    ).fetchall()


def spent_tokens(db: sqlite_utils.Database) -> int:
    row = db.execute("select sum(tokens) from sync_tokens where purpose = 'history'").fetchone()
    return row[0] or 0


def test_a_change_observed_while_its_changelog_is_read_is_kept(company, tmp_path):
    from pdsync import timestamps
    from pdsync.backfill import Backfill
    from pdsync.client import PipedriveClient
    from pdsync.history import COMPARED, Observer
    from pdsync.transaction import write_transaction

    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    deal_id = min(d["id"] for d in fake.records("deals") if d["status"] == "open")

    def webhook() -> None:
        """A change of the deal, applied as the webhook applier does, on its own connection."""
        fake.advance(30)
        fake.update_deal(deal_id, value=4321)
        upstream = next(d for d in fake.records("deals") if d["id"] == deal_id)
        applier = sqlite_utils.Database(path)
        found = applier.execute(f"select {', '.join(COMPARED)} from deals where id = ?", [deal_id])
        stored = dict(zip(COMPARED, found.fetchone(), strict=True))
        row = {
            **stored,
            "value": 4321,
            "update_time": timestamps.normalize(upstream["update_time"]),
        }
        with write_transaction(applier):
            Observer(applier).observe([row])
            applier["deals"].update(deal_id, {"value": 4321, "update_time": row["update_time"]})
        applier.close()

    class WebhookMidRead(PipedriveClient):
        def iter_v2(self, path, *args, **kwargs):
            for page in super().iter_v2(path, *args, **kwargs):
                if path == f"/v1/deals/{deal_id}/changelog" and not page.next_cursor:
                    webhook()  # the changelog is read; it is not saved yet
                yield page

    db = sqlite_utils.Database(path)
    with WebhookMidRead(fake.token, server.url) as client:
        result = Backfill(db, client, 100_000).run()
    assert result.status == "done"
    names = field_names(db)
    # The change the changelog could not have is there, once: the deal's whole story.
    got = stored_rows(db, deal_id)
    assert [r[:4] for r in got] == [r[:4] for r in expected_rows(fake, deal_id, names)]
    assert got[-1][:3] == ("value", got[-1][1], "4321")
    sources = db.execute(
        "select source from deal_changes where deal_id = ? order by time, id", [deal_id]
    ).fetchall()
    assert sources[-1] == ("observed",) and sources.count(("observed",)) == 1


def test_a_long_lived_observer_sees_custom_fields_and_stages_a_sync_added(company, tmp_path):
    from pdsync.history import COMPARED, Observer
    from pdsync.transaction import write_transaction

    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    db = sqlite_utils.Database(path)
    now = [1000.0]
    observer = Observer(db, clock=lambda: now[0])  # as the webhook applier keeps one
    deal_id = min(d["id"] for d in fake.records("deals") if d["status"] == "open")

    def observe(update_time: str, **changes) -> None:
        found = db.execute(f"select {', '.join(COMPARED)} from deals where id = ?", [deal_id])
        row = {**dict(zip(COMPARED, found.fetchone(), strict=True)), **changes}
        row["update_time"] = update_time
        with write_transaction(db):
            observer.observe([row])
            db["deals"].update(deal_id, {**changes, "update_time": update_time})

    observe("2030-01-01T00:00:00Z", title="First")  # the names are read now
    code = "ab" * 20  # a custom field a later sync brings, and its column
    with write_transaction(db):
        db["deal_fields"].insert(
            {"id": 999_999, "field_code": code, "column_name": "signed_by"}, alter=True
        )
    now[0] += Observer.CACHE_SECONDS + 1
    observe("2030-01-01T00:01:00Z", custom_fields=f'{{"{code}": "Ann"}}')
    keys = db.execute(
        "select field_key from deal_changes where deal_id = ? and new_value = 'Ann'", [deal_id]
    ).fetchall()
    assert keys == [("signed_by",)]  # named, not the hash of a field it never heard of


def test_a_spent_day_pauses_history_until_pipedrives_reset(company, tmp_path):
    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    before = fake.tokens_spent
    sync(path, fake, server, 0)
    per_run = fake.tokens_spent - before  # an incremental run of the core entities
    fake.daily_budget = fake.tokens_spent + per_run + 20 * 10  # then 10 changelogs
    fake.budget_reset = 3 * 3600  # Pipedrive's budget resets in 3 hours (not at midnight)
    asked = time.time()
    result = sync(path, fake, server, 100_000)
    assert result.history.status == "paused" and result.history.deals == 10
    db = sqlite_utils.Database(path)
    until = db.execute("select paused_until from sync_history").fetchone()[0]
    until_s = datetime.fromisoformat(until[:-1]).replace(tzinfo=timezone.utc).timestamp()
    assert asked + 3 * 3600 - 5 <= until_s <= time.time() + 3 * 3600 + 5


def test_a_scheduled_run_reads_history_for_at_most_half_its_interval(company, tmp_path):
    fake, server = company
    path = str(tmp_path / "p.db")
    sync(path, fake, server, 0)
    fake.latency = 0.05  # 160 changelogs, 4 at a time: about 2 seconds
    result = sync(path, fake, server, 100_000, every=1.0)
    # stopped by its time limit, part way: how long it ran is the benchmark's business
    assert result.history.status == "stopped" and "ran 0.5s" in result.history.error
    assert 0 < result.history.deals < fake.count("deals")
