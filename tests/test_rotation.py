"""The hourly lists share what an incremental run may cost: spread over runs within 16
requests and 250 tokens each, most overdue first, and every one of them comes round. Field
definitions that arrive after the records using them fill their readable columns in."""

from __future__ import annotations

import sqlite_utils
from helpers import age_last_success, differences, gone_but_not_flagged

from pdsync import plan
from pdsync.entities import builtin_entities

EVERY_RUN = {s.name for s in builtin_entities() if s.refresh is None}
ROTATED = {s.name for s in builtin_entities() if s.refresh is not None}


def test_every_hourly_list_comes_round_within_the_budget(run_sync, db_path):
    assert run_sync().ok
    age_last_success(db_path, ROTATED)
    refreshed, runs = set(), 0
    while refreshed != ROTATED:
        runs += 1
        assert runs <= 6, f"still waiting: {sorted(ROTATED - refreshed)}"
        result = run_sync()
        assert result.ok
        assert result.requests <= plan.RUN_REQUESTS and result.tokens <= plan.RUN_TOKENS, (
            result.requests,
            result.tokens,
            sorted(result.entities),
        )
        assert EVERY_RUN - {"deal_products"} <= set(result.entities)
        assert not refreshed & set(result.entities), "a list came round twice"
        refreshed |= set(result.entities) & ROTATED
    assert runs >= 2  # they did not all fit in one run: spread, not dropped
    # Once round, none is due again within the hour.
    assert not set(run_sync().entities) & ROTATED


def test_the_most_overdue_goes_first(run_sync, db_path):
    assert run_sync().ok
    age_last_success(db_path, ROTATED, hours=2)
    age_last_success(db_path, ["tasks"], hours=5)
    assert "tasks" in run_sync().entities


def test_a_failed_list_is_due_again(fake, run_sync, db_path):
    assert run_sync().ok
    age_last_success(db_path, ["currencies"])
    fake.inject("/v1/currencies", "401")
    assert run_sync().entities["currencies"].status == "failed"
    fake.clear_faults()
    assert run_sync().entities["currencies"].status == "success"


def test_definitions_arriving_late_fill_their_columns(fake, run_sync, db_path):
    """A person field defined after its values were synced: its column is filled in when the
    definitions come round, from the raw custom_fields the rows keep."""
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    field = db.execute(
        "select field_code, column_name from person_fields where column_name is not null"
        " and field_type = 'enum'"
    ).fetchone()
    assert field, "the fake defines an enum person field"
    code, column = field
    before = dict(db.execute(f"select id, [{column}] from persons").fetchall())
    assert any(v is not None for v in before.values())
    # As if the definition had not been fetched yet when these persons were written.
    db.execute("delete from person_fields where field_code = ?", [code])
    db.execute(f"update persons set [{column}] = null")
    db.conn.commit()
    age_last_success(db_path, ["person_fields"], hours=3)
    result = run_sync()
    assert "person_fields" in result.entities
    # Its column is named anew (the old name is taken, as a field's dropped column would be).
    (column,) = db.execute(
        "select column_name from person_fields where field_code = ?", [code]
    ).fetchone()
    after = dict(db.execute(f"select id, [{column}] from persons").fetchall())
    assert after == before
    assert differences(db, fake, ["persons"]) == []


def test_a_list_too_big_for_one_run_is_read_over_several(fake, run_sync, db_path):
    """Tasks of a large account: more pages than a run has room for. Each run reads what
    fits, from where the last one stopped; only the pass that reached the end flags a task
    no longer listed."""
    project = fake.records("projects")[0]["id"]
    for i in range(2600):  # six pages of 500
        fake.add_task(project, f"Step {i}")
    assert run_sync().ok  # a first sync reads it whole
    doomed = fake.records("tasks")[5]["id"]
    fake.delete_task(doomed)
    late = fake.add_task(project, "Late addition")
    age_last_success(db_path, ["tasks"])
    db = sqlite_utils.Database(db_path)
    runs = []
    while differences(db, fake, ["tasks"]) or gone_but_not_flagged(db, fake, "tasks"):
        assert len(runs) < 5, "the pass never finished"
        result = run_sync()
        assert result.ok
        assert result.requests <= plan.RUN_REQUESTS and result.tokens <= plan.RUN_TOKENS
        runs.append(result.entities["tasks"].requests)
        if len(runs) == 1:
            # Not at the end yet: nothing may be taken for gone.
            assert db["tasks"].get(doomed)["is_deleted"] == 0
    assert len(runs) >= 2 and sum(runs) >= 6, runs
    assert db["tasks"].get(doomed)["is_deleted"] == 1
    assert db["tasks"].get(late["id"])["title"] == "Late addition"
    assert not set(run_sync().entities) & {"tasks"}  # done: not due for an hour


def test_a_pass_in_progress_leaves_room_for_the_lists_due(fake, run_sync, db_path):
    """A long paced pass (tasks of a large account) goes on every run, but after the other
    hourly lists due: users overdue are refreshed in the next run, not when the pass ends."""
    project = fake.records("projects")[0]["id"]
    for i in range(2600):  # six pages of 500: more than a run has room for
        fake.add_task(project, f"Step {i}")
    assert run_sync().ok
    age_last_success(db_path, ["tasks"])
    first = run_sync()  # the pass begins; not at its end yet
    assert "tasks" in first.entities
    db = sqlite_utils.Database(db_path)
    assert db.execute("select count(*) from sync_streams where stream like '%#cursor'").fetchone()[
        0
    ], "the pass should still be in progress"
    age_last_success(db_path, ["users"], hours=3)
    result = run_sync()
    assert result.ok
    assert {"users", "tasks"} <= set(result.entities), sorted(result.entities)
    users = result.entities["users"]
    assert users.status == "success" and users.requests == 1  # /v1/users was read
    assert result.entities["tasks"].requests >= 1  # the pass went on too
    assert result.requests <= plan.RUN_REQUESTS and result.tokens <= plan.RUN_TOKENS
