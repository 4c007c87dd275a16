"""The day's tokens (issue 18, part 4): counted per UTC day and purpose with the pages that
spent them, projected from the schedule, compared with the smallest budget."""

import sqlite_utils

from pdsync.budget import TOKENS_PER_SEAT, token_usage


def spent(db):
    return dict(db.execute("select purpose, tokens from sync_tokens").fetchall())


def test_every_token_spent_is_counted_against_today(fake, run_sync, db_path):
    first = run_sync()
    second = run_sync(full=True)
    third = run_sync(every=1800)
    db = sqlite_utils.Database(db_path)
    # The first run read every deal's changelog (the default history budget fits them all).
    history = first.history
    assert history.tokens == 20 * fake.count("deals") and history.status == "done"
    assert second.history.tokens == third.history.tokens == 0
    assert spent(db) == {
        "sync": first.tokens + third.tokens,
        "full sync": second.tokens,
        "history": history.tokens,
    }
    requests = db.execute("select sum(requests) from sync_tokens").fetchone()[0]
    assert requests == first.requests + second.requests + third.requests + history.requests
    usage = token_usage(db)
    assert usage["spent_today"] == first.tokens + second.tokens + third.tokens + history.tokens
    active = sum(
        1 for u in fake.records("users") if u.get("active_flag", True) and not u.get("is_deleted")
    )
    assert usage["active_users"] == active
    assert usage["budget"] == TOKENS_PER_SEAT * active
    # The newest run was scheduled every 30 minutes: 48 runs a day of its median cost.
    assert usage["every_s"] == 1800
    assert usage["projected_per_day"] == round(usage["tokens_per_run"] * 48)
    assert usage["tokens_per_run"] == (first.tokens + third.tokens) / 2  # median of two runs
    assert usage["share_projected"] == usage["projected_per_day"] / usage["budget"]


def test_a_configured_budget_wins_and_cron_runs_are_spaced_by_their_starts(run_sync, db_path):
    run_sync()
    run_sync()
    db = sqlite_utils.Database(db_path)
    starts = ["2026-12-01T10:00:00Z", "2026-12-01T10:30:00Z"]
    for run_id, started in zip((1, 2), starts, strict=True):
        db["sync_runs"].update(run_id, {"started_at": started})
    usage = token_usage(db, budget=50_000)
    assert usage["budget"] == 50_000 and usage["budget_is_configured"]
    assert usage["every_s"] == 1800  # no --every: the gap between the runs
    assert usage["projected_per_day"] == round(usage["tokens_per_run"] * 48)


def test_tokens_of_a_failed_entity_are_counted_too(fake, run_sync, db_path):
    fake.inject("/api/v2/deals", "500", times=100)
    result = run_sync()
    assert not result.ok
    db = sqlite_utils.Database(db_path)
    assert sum(spent(db).values()) == result.tokens
    requests = db.execute("select sum(requests) from sync_tokens").fetchone()[0]
    assert requests == result.requests


def test_status_shows_the_days_tokens(fake, run_sync, db_path):
    from click.testing import CliRunner

    from pdsync.cli import cli

    first = run_sync(every=1800)
    second = run_sync(every=1800)
    out = CliRunner().invoke(cli, ["status", db_path])
    assert out.exit_code == 0, out.output
    usage = token_usage(sqlite_utils.Database(db_path))
    total = first.tokens + second.tokens
    read = first.history.tokens  # every deal's changelog, read by the first run
    lines = out.output.splitlines()
    today = next(line for line in lines if line.startswith("Tokens today"))
    share = (total + read) / usage["budget"]
    assert (
        f": {total + read:,} (history {read:,}, sync {total:,}), {share:.1%} of"
        f" {usage['budget']:,}, the least" in today
    )
    deals = fake.count("deals")
    assert f"History: 100% of deals ({deals:,} of {deals:,} changelogs read), complete" in lines
    assert f"(30,000 x {usage['active_users']} active users)" in today
    day = next(line for line in lines if line.startswith("A day of this schedule"))
    assert "a sync every 30m" in day
    assert f"~{usage['projected_per_day']:,} tokens, " in day
    configured = CliRunner().invoke(cli, ["status", db_path, "--budget", "1000000"])
    assert f"{(total + read) / 1_000_000:.1%} of the daily budget of 1,000,000" in configured.output
