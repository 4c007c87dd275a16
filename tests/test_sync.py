"""End to end: the fake Pipedrive over real HTTP on 127.0.0.1 into a SQLite file."""

from datetime import timedelta

import httpx
import sqlite_utils
from helpers import (
    FAST_CLIENT,
    UTC,
    custom_field_problems,
    differences,
    gone_but_not_flagged,
)

import pdsync
from pdsync.client import PipedriveClient
from pdsync.engine import Sync


def test_first_sync_copies_everything(fake, run_sync, db_path):
    result = run_sync()
    assert result.ok, result.errors
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake) == []
    assert custom_field_problems(db, fake) == []
    # Archived deals and recently deleted deals are both there, flagged.
    assert db.execute("select count(*) from deals where is_archived = 1").fetchone()[0] > 0
    assert db.execute("select count(*) from deals where status = 'deleted'").fetchone()[0] > 0
    assert result.entities["deals"].records >= fake.count("deals")


def test_every_timestamp_has_one_format(fake, run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    for table in ("deals", "notes", "users", "persons", "activities", "stages"):
        for column in db[table].columns_dict:
            if column == "due_time" or not (
                column.endswith("_time") or column in ("created", "modified", "last_login")
            ):
                continue
            for (value,) in db.execute(
                f"select [{column}] from [{table}] where [{column}] is not null"
            ):
                assert UTC.match(value), (table, column, value)


def test_schema_declares_foreign_keys_indexes_and_wal(run_sync, db_path):
    run_sync()
    db = sqlite_utils.Database(db_path)
    fks = {(fk.column, fk.other_table) for fk in db["deals"].foreign_keys}
    assert {
        ("stage_id", "stages"),
        ("pipeline_id", "pipelines"),
        ("owner_id", "users"),
        ("org_id", "organizations"),
        ("person_id", "persons"),
    } <= fks
    assert ("deal_id", "deals") in {(fk.column, fk.other_table) for fk in db["notes"].foreign_keys}
    leading = {index.columns[0] for index in db["deals"].indexes}
    for column in ("pipeline_id", "stage_id", "status", "owner_id", "update_time"):
        assert column in leading  # each read path can start from an index
    assert db.journal_mode == "wal"
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_no_changes_costs_twelve_requests(fake, run_sync):
    run_sync()
    fake.reset_log()
    result = run_sync()
    assert result.ok
    # 3 whole fetches (pipelines, stages, deal fields) + 9 incremental streams; users, the
    # other field lists, reference lists, projects and tasks wait for the hourly rotation
    # (tests/test_rotation.py), and no deal changed, so no line items are asked.
    # Leads add 2: /v1/leads (20 tokens) and one newest-first page of the archive (40).
    assert result.requests == 12 and result.tokens == 170
    assert len(fake.requests) == 12
    assert result.entities["leads"].requests == 2 and result.entities["leads"].tokens == 60


def test_incremental_sync_lands_every_kind_of_change(fake, run_sync, db_path):
    run_sync()
    deals = [d for d in fake.records("deals") if d["status"] == "open" and not d["is_archived"]]
    stages = fake.records("stages")
    other_pipeline_stage = next(s for s in stages if s["pipeline_id"] != deals[2]["pipeline_id"])
    fake.advance(5)
    fake.update_deal(deals[0]["id"], title="Renamed <i>deal</i>", value=1234.5)
    fake.set_deal_status(deals[1]["id"], "won")
    fake.move_deal(deals[2]["id"], other_pipeline_stage["id"])
    fake.set_deal_status(deals[3]["id"], "lost", lost_reason="Price")
    fake.archive_deal(deals[4]["id"])
    fake.delete_deal(deals[5]["id"])
    new = fake.add_deal(title="Brand new", stage_id=stages[0]["id"], value=10, currency="SAR")
    note = fake.records("notes")[0]
    fake.edit_note(note["id"], "<p>edited</p>")
    fake.rename_stage(stages[1]["id"], "Renamed stage")
    person = fake.records("persons")[0]
    fake.update_person(person["id"], name="Ünïcode Person 🚀")

    result = run_sync()
    assert result.ok, result.errors
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake) == []
    assert db["deals"].get(new["id"])["title"] == "Brand new"
    assert db["deals"].get(deals[1]["id"])["status"] == "won"
    assert db["deals"].get(deals[2]["id"])["pipeline_id"] == other_pipeline_stage["pipeline_id"]
    assert db["deals"].get(deals[4]["id"])["is_archived"] == 1
    assert db["deals"].get(deals[5]["id"])["status"] == "deleted"
    assert db["stages"].get(stages[1]["id"])["name"] == "Renamed stage"
    # Incremental: a handful of records, not the whole account again.
    assert result.entities["deals"].records < 30


def test_unarchived_deal_is_live_again(fake, run_sync, db_path):
    run_sync()
    deal = next(d for d in fake.records("deals") if d["is_archived"])
    fake.advance(2)
    fake.unarchive_deal(deal["id"])
    assert run_sync().ok
    assert sqlite_utils.Database(db_path)["deals"].get(deal["id"])["is_archived"] == 0


def test_full_sync_flags_what_is_gone_and_never_drops_rows(fake, run_sync, db_path):
    run_sync()
    person = fake.records("persons")[0]
    note = fake.records("notes")[0]
    fake.advance(2)
    fake.delete_person(person["id"])
    fake.delete_note(note["id"])
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    before = db["persons"].count
    result = run_sync(full=True)
    assert result.ok, result.errors
    assert result.entities["persons"].full_pass
    assert db["persons"].count == before  # flagged, never dropped
    assert db["persons"].get(person["id"])["is_deleted"] == 1
    assert db["notes"].get(note["id"])["is_deleted"] == 1
    for entity in ("persons", "organizations", "activities", "notes", "deals"):
        assert gone_but_not_flagged(db, fake, entity) == [], entity
    assert differences(db, fake) == []
    assert db.execute("select count(*) from _pdsync_seen").fetchone()[0] == 0


def test_stale_deals_watermark_reconciles_purged_deals(fake, run_sync, db_path):
    run_sync()
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    # Deleted, then purged by Pipedrive 30 days later, while no sync ran.
    fake.delete_deal(deal["id"])
    fake.advance(timedelta(days=31).total_seconds())
    assert deal["id"] not in {d["id"] for d in fake.records("deals")}
    db = sqlite_utils.Database(db_path)
    db["sync_metadata"].update("deals", {"last_success_time": "2000-01-01T00:00:00Z"})
    result = run_sync()
    assert result.entities["deals"].full_pass
    assert not result.entities["persons"].full_pass
    row = db["deals"].get(deal["id"])
    assert (row["status"], row["is_deleted"]) == ("deleted", 1)


def test_full_pass_interrupted_resumes_and_still_reconciles(fake, server, db_path):
    db = sqlite_utils.Database(db_path)
    client = PipedriveClient(fake.token, server.url, **FAST_CLIENT)
    Sync(db, client).run()
    gone = fake.records("persons")[0]["id"]
    fake.advance(2)
    fake.delete_person(gone)
    # The full pass fails on persons after every retry; the other entities finish.
    fake.inject("/api/v2/persons", "500", times=99)
    first = Sync(db, client, full=True).run()
    assert first.entities["persons"].status == "failed"
    assert db["sync_metadata"].get("persons")["full_pending"] == 1
    fake.clear_faults()
    second = Sync(db, client).run()  # a plain run resumes the pending full pass
    assert second.entities["persons"].full_pass
    assert db["persons"].get(gone)["is_deleted"] == 1
    assert db["sync_metadata"].get("persons")["full_pending"] == 0


def test_custom_field_option_added_upstream(fake, run_sync, db_path):
    run_sync()
    field = next(f for f in fake.records("deal_fields") if f["field_type"] == "enum")
    fake.add_deal_field_option(field["field_code"], "Brand-new option")
    option = next(o for o in fake.records("deal_fields") if o["field_code"] == field["field_code"])
    new_id = option["options"][-1]["id"]
    deal = fake.records("deals")[0]
    fake.advance(2)
    fake.update_deal(
        deal["id"], custom_fields={**(deal["custom_fields"] or {}), field["field_code"]: new_id}
    )
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    column = db["deal_fields"].get(field["field_code"])["column_name"]
    assert db["deals"].get(deal["id"])[column] == "Brand-new option"


def test_v1_notes_paging_does_not_skip_a_note_updated_mid_walk(tmp_path):
    """Offset pagination shifts when a record moves to the end between two pages."""
    fake = pdsync_fake(deals=1800)  # over 500 notes: more than one v1 page
    try:
        assert fake.count("notes") > 500
        from pdsync.fake import FakeServer

        with FakeServer(fake) as server:
            edited = {}

            class EditAfterFirstNotesPage(httpx.HTTPTransport):
                def handle_request(self, request):
                    response = super().handle_request(request)
                    if request.url.path == "/v1/notes" and not edited:
                        first = sorted(
                            fake.records("notes"), key=lambda n: (n["update_time"], n["id"])
                        )[0]
                        fake.advance(1)
                        edited.update(fake.edit_note(first["id"], "moved to the end"))
                    return response

            db = sqlite_utils.Database(str(tmp_path / "p.db"))
            client = PipedriveClient(fake.token, server.url, transport=EditAfterFirstNotesPage())
            result = Sync(db, client, only=["notes"]).run()
            assert result.ok
            assert edited
            assert differences(db, fake, entities=["notes"]) == []
    finally:
        fake.close()


def pdsync_fake(**kwargs):
    from pdsync.fake import FakePipedrive

    return FakePipedrive(seed=3, **kwargs)


def test_token_never_reaches_urls_logs_or_database(fake, run_sync, db_path, caplog):
    caplog.set_level("DEBUG")
    run_sync()
    fake.inject("/api/v2/deals", "500")
    fake.advance(2)
    fake.update_deal(fake.records("deals")[0]["id"], title="x")
    run_sync()
    assert not fake.token_in_url_seen
    assert all(fake.token not in r["query"] and fake.token not in r["path"] for r in fake.requests)
    assert fake.token not in caplog.text
    for suffix in ("", "-wal"):
        try:
            with open(db_path + suffix, "rb") as f:
                assert fake.token.encode() not in f.read()
        except FileNotFoundError:
            assert suffix
    assert all(r["headers"].get("x-api-token") == fake.token for r in fake.requests)


def test_sync_accepts_a_sqlite_utils_database(fake, server):
    db = sqlite_utils.Database(memory=True)
    result = pdsync.sync(db, token=fake.token, base_url=server.url, auth_path=None)
    assert result.ok
    assert db["deals"].count > 0


def test_an_unchanged_record_is_not_written_again(fake, run_sync, db_path):
    """A --full pass over an unchanged account rewrites no row: no trigger, index or
    full-text work. A changed record still is written, once."""
    run_sync()
    db = sqlite_utils.Database(db_path)
    tables = ["deals", "persons", "organizations", "activities", "notes", "stages", "users"]
    db["_writes"].create({"entity": str}, if_not_exists=True)
    for table in tables:
        db.execute(
            f"create trigger _count_{table} after update on [{table}]"
            f" begin insert into _writes values ('{table}'); end"
        )
    db.conn.commit()
    result = run_sync(full=True)
    assert result.ok, result.errors
    assert result.entities["deals"].records == fake.count("deals")  # everything was fetched
    assert db.execute("select count(*) from _writes").fetchone()[0] == 0
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    fake.advance(5)
    fake.update_deal(deal["id"], title="Changed once")
    assert run_sync(full=True).ok
    assert db.execute("select entity, count(*) from _writes group by entity").fetchall() == [
        ("deals", 1)
    ]
    assert differences(db, fake) == []
