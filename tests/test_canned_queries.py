"""The canned queries of metadata.yml, through Datasette, against a database synced from the
fake Pipedrive. Expected rows are computed here in Python from the fake's own records
(``fake.records(...)``), never by running the same SQL.

The queries measure ages from SQLite's real 'now'. The fake is created with its clock frozen
at real now (T0), the special deals below are placed at exact ages from T0, and every check
computes its expectation both just before and just after the request: the answer must equal
one of the two (they differ only if a deal crosses a day boundary during the request).
"""

import asyncio
import math
import re
import sqlite3
import unicodedata
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from datasette.app import Datasette
from helpers import FAST_CLIENT, unregister_pdsync_plugins, utc

import pdsync
from pdsync.entities import builtin_entities, open_deal
from pdsync.fake import FakePipedrive, FakeServer
from pdsync.queries import (
    AFTER_KEY,
    EVERY_OR_ID_OR_NAME,
    ID_OR_NAME,
    LIST_LIMIT,
    WHOLE_NUMBER,
)

METADATA_PATH = Path(__file__).resolve().parent.parent / "metadata.yml"

# DESIGN.md, "Contract: canned queries": name -> parameters; pdsync adds limit and after to
# the lists.
CONTRACT = {
    "overdue_deals": ["pipeline", "min_days", "limit", "after"],
    "stuck_deals": ["pipeline", "min_days", "limit", "after"],
    "rotten_deals": ["pipeline", "limit", "after"],
    "near_invoicing": ["pipeline", "stages", "limit", "after"],
    "deals_in_stage": ["pipeline", "stage", "min_days", "limit", "after"],
    "deals_by_owner": ["owner", "pipeline", "status", "limit", "after"],
    "cashflow_forecast": ["pipeline", "months"],
    "owner_kpis": ["pipeline", "status"],
    "pipeline_summary": ["pipeline"],
    "search_deals": ["q", "pipeline", "owner", "limit", "after"],
    "deal_notes": ["deal_id"],
    "sync_status": [],
    "deal_products": ["deal_id", "limit", "after"],
    "product_sales": ["product", "pipeline", "months", "limit", "after"],
    "open_leads": ["owner", "label", "source", "limit", "after"],
    "stage_durations": ["pipeline", "since"],
    "stage_conversion": ["pipeline", "since"],
    "deal_history": ["deal_id"],
}
DEAL_LISTS = [
    "overdue_deals",
    "stuck_deals",
    "rotten_deals",
    "near_invoicing",
    "deals_in_stage",
    "deals_by_owner",
    "search_deals",
]
# The column each list is sorted by: `after` is its value and the id, from the last row.
SORT_KEY = {
    "overdue_deals": "update_time",
    "stuck_deals": "in_stage_since",
    "rotten_deals": "update_time",
    "near_invoicing": "expected_close_date",
    "deals_in_stage": "in_stage_since",
    "deals_by_owner": "update_time",
    "search_deals": "update_time",
}
PAGE = 1000  # Datasette's max_returned_rows
DEAL_COLUMNS = ["id", "title", "pipeline", "stage", "owner", "org_name", "value", "currency"]
DEAL_COLUMNS += ["update_time"]
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# -- the world: a fake company with hand-placed deals, synced, served ----------------------


class World:
    """The synced database, the Datasette serving it, and the fake's records."""

    def __init__(self, path: Path, fake: FakePipedrive, special: dict[str, int]) -> None:
        self.path = path
        self.special = special
        self.deals = fake.records("deals")
        self.pipelines = {p["id"]: p for p in fake.records("pipelines")}
        self.stages = {s["id"]: s for s in fake.records("stages")}
        self.users = {u["id"]: u["name"] for u in fake.records("users")}
        self.orgs = {o["id"]: o["name"] for o in fake.records("organizations")}
        self.persons = {p["id"]: p["name"] for p in fake.records("persons")}
        self.notes = fake.records("notes")
        self.line_items = fake.records("deal_products")
        self.products = {p["id"]: p for p in fake.records("products")}
        self.changelogs = {d["id"]: fake.changelog(d["id"]) for d in self.deals}
        self.metadata = yaml.safe_load(METADATA_PATH.read_text())
        self.ds = Datasette([str(path)], metadata=self.metadata)
        self.loop = asyncio.new_event_loop()

    def get(self, path: str, **kwargs):
        return self.loop.run_until_complete(self.ds.client.get(path, **kwargs))

    def page(self, name: str, **params: str) -> tuple[list[dict], bool]:
        """One call's rows, and whether Datasette cut them at its page ("truncated")."""
        response = self.get(f"/pipedrive/{name}.json?" + urlencode({**params, "_shape": "objects"}))
        assert response.status_code == 200, (name, params, response.text)
        body = response.json()
        return body["rows"], body["truncated"]

    def rows(self, name: str, **params: str) -> list[dict]:
        """Every row, as a caller gets it without a limit: this world's lists fit one page."""
        rows, truncated = self.page(name, **params)
        assert not truncated, (name, params)
        return rows

    # -- ground truth from the fake's records ----------------------------------------------

    def pipeline_ids(self, value: str) -> set[int] | None:
        return by_id_or_name(value, {i: p["name"] for i, p in self.pipelines.items()})

    def stage_ids(self, value: str) -> set[int] | None:
        return by_id_or_name(value, {i: s["name"] for i, s in self.stages.items()})

    def owner_ids(self, value: str) -> set[int] | None:
        return by_id_or_name(value, self.users)

    def row(self, deal: dict) -> dict:
        return {
            "id": deal["id"],
            "title": deal["title"],
            "pipeline": self.pipelines[deal["pipeline_id"]]["name"],
            "stage": self.stages[deal["stage_id"]]["name"],
            "owner": self.users.get(deal["owner_id"]),
            "org_name": self.orgs.get(deal.get("org_id")),
            "value": float(deal["value"]),
            "currency": deal["currency"],
            "update_time": utc(deal["update_time"]),
        }

    def probability(self, deal: dict) -> float:
        if deal.get("probability") is not None:
            return deal["probability"]
        return self.stages[deal["stage_id"]].get("deal_probability") or 0


def by_id_or_name(value: str, names: dict[int, str]) -> set[int] | None:
    """None for every one; an id (digits) or else an exact name."""
    value = value.strip()
    if value == "":
        return None
    if value.isdigit():
        return {int(value)} & set(names)
    return {i for i, name in names.items() if name == value}


def status_of(deal: dict) -> str:
    return "deleted" if deal.get("is_deleted") else deal["status"]


def live(deal: dict) -> bool:
    return not deal.get("is_archived") and not deal.get("is_deleted")


def live_open(deal: dict) -> bool:
    return live(deal) and deal["status"] == "open"


def in_ids(value: int | None, ids: set[int] | None) -> bool:
    return ids is None or value in ids


def days(since: str, now: datetime) -> int:
    then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return math.floor((now - then).total_seconds() / 86400)


def in_stage_since(deal: dict) -> str:
    return utc(deal.get("stage_change_time")) or utc(deal["add_time"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakePipedrive(deals=600, seed=11, now=t0)
    try:
        special = place_special_records(fake, t0)
        path = tmp_path_factory.mktemp("canned") / "pipedrive.db"
        with FakeServer(fake) as server:

            def sync(**kwargs):
                result = pdsync.sync(
                    str(path),
                    token=fake.token,
                    base_url=server.url,
                    auth_path=None,
                    client_options=FAST_CLIENT,
                    **kwargs,
                )
                assert result.ok, result.errors

            sync()
            # A note deleted after it was synced: the next full sync flags it is_deleted.
            fake.delete_note(special["deleted_note"])
            sync(full=True)
        world = World(path, fake, special)
    finally:
        fake.close()
    yield world
    world.loop.close()


def place_special_records(fake: FakePipedrive, t0: datetime) -> dict[str, int]:
    """Deals at exact ages, HTML, archived and deleted candidates, renamed pipeline/stage."""
    special: dict[str, int] = {}
    stages = fake.records("stages")
    rotting = next(s for s in stages if s["is_deal_rot_enabled"] and s["days_to_rotten"])
    plain = next(s for s in stages if not s["is_deal_rot_enabled"])

    def deal_at(moment: datetime, key: str, **fields) -> int:
        fake.freeze(moment)
        fields.setdefault("stage_id", plain["id"])
        fields.setdefault("owner_id", 3)
        fields.setdefault("value", 1000)
        fields.setdefault("currency", "SAR")
        special[key] = fake.add_deal(title=key.replace("_", " "), **fields)["id"]
        return special[key]

    deal_at(t0 - 7 * DAY, "exactly_7_days_old")
    deal_at(t0 - 7 * DAY + HOUR, "almost_7_days_old")
    deal_at(t0 - 30 * DAY, "exactly_30_days_in_stage")
    deal_at(t0 - 30 * DAY + HOUR, "almost_30_days_in_stage")
    rot = timedelta(days=rotting["days_to_rotten"])
    deal_at(t0 - rot, "just_rotten", stage_id=rotting["id"])
    deal_at(t0 - rot + HOUR, "almost_rotten", stage_id=rotting["id"])
    # HTML in a title and in notes must reach pages escaped.
    html = deal_at(t0 - 20 * DAY, "html", value=250.5, currency="USD")
    fake.update_deal(html, title="<b>Bold</b> deal")
    fake.freeze(t0 - 20 * DAY + HOUR)
    special["first_note"] = fake.add_note("<p>First <b>note</b></p>", deal_id=html)["id"]
    fake.freeze(t0 - 10 * DAY)
    special["second_note"] = fake.add_note("<script>alert(1)</script> second", deal_id=html)["id"]
    special["deleted_note"] = fake.add_note("deleted later", deal_id=html)["id"]
    # Would be overdue, stuck and rotten if they were not archived / deleted.
    deal_at(t0 - 40 * DAY, "archived_candidate", stage_id=rotting["id"])
    fake.archive_deal(special["archived_candidate"])
    deal_at(t0 - 40 * DAY, "deleted_candidate", stage_id=rotting["id"])
    fake.freeze(t0 - 20 * DAY)  # listed as deleted for 30 days, then purged
    fake.delete_deal(special["deleted_candidate"])
    # Expected to close in the coming months, in two currencies, with and without probability.
    today = t0.date()
    soon = date(today.year + (today.month == 12), today.month % 12 + 1, 15)
    deal_at(t0 - 2 * DAY, "closes_next_month_eur", currency="EUR", expected_close_date=soon)
    fake.update_deal(special["closes_next_month_eur"], probability=50)
    deal_at(t0 - 2 * DAY, "closes_next_month_sar", expected_close_date=soon, value=3000)
    # A pipeline whose name starts with digits, and a stage name used in two pipelines.
    fake.rename_pipeline(6, "5 Stars")
    fake.rename_stage(6, "Qualified")  # stage 1 of pipeline 1 is "Qualified" too
    fake.freeze(t0)
    return special


def check(world: World, name: str, expect, params: dict[str, str] | None = None) -> list[dict]:
    """The query's rows must equal expect(now) for now just before or just after the call."""
    params = params or {}
    before = datetime.now(timezone.utc)
    got = world.rows(name, **params)
    after = datetime.now(timezone.utc)
    options = [expect(before), expect(after)]
    wanted = options[0] or options[1]
    keys = list(wanted[0]) if wanted else []
    projected = [{k: r[k] for k in keys} for r in got]
    assert projected in options, (name, params, len(projected), len(options[0]))
    return got


# -- contract ------------------------------------------------------------------------------


def test_every_contract_query_is_defined_with_title_description_and_params(world):
    queries = world.loop.run_until_complete(world.ds.get_canned_queries("pipedrive", None))
    assert set(queries) == set(CONTRACT)
    for name, params in CONTRACT.items():
        query = queries[name]
        assert query.get("title"), name
        assert len(query.get("description") or "") > 40, name
        assert query.get("params", []) == params, name
        assert not query.get("write"), name
        for param in params:
            assert param in query["description"], (name, param)


def test_every_query_answers_without_parameters(world):
    for name in CONTRACT:
        response = world.get(f"/pipedrive/{name}.json")
        assert response.status_code == 200, (name, response.text)
        assert response.json()["ok"] is True


def test_deal_lists_carry_the_contract_columns(world):
    for name in DEAL_LISTS:
        params = {"owner": "3"} if name == "deals_by_owner" else {}
        rows = world.rows(name, **params)
        assert rows, name
        assert set(DEAL_COLUMNS) <= set(rows[0]), (name, sorted(rows[0]))


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_odd_parameter_values_never_cause_a_server_error(world, name):
    odd = ["abc", "-1", "7.5", " ", '"', "'", "%", "*", "AND(", 'NEAR("a" b)', "ü", "<b>x</b>"]
    odd += ["99999999999999999999999", "1; delete from deals", "0", "1e3"]
    for param in CONTRACT[name]:
        for value in odd:
            response = world.get(f"/pipedrive/{name}.json?" + urlencode({param: value}))
            assert response.status_code == 200, (name, param, value, response.text)
    assert deal_count(world) == len(world.deals)


# -- overdue_deals --------------------------------------------------------------------------


def overdue(world: World, pipeline: str = "", min_days: int = 7):
    ids = world.pipeline_ids(pipeline)

    def expect(now):
        deals = [
            d
            for d in world.deals
            if live_open(d)
            and in_ids(d["pipeline_id"], ids)
            and days(utc(d["update_time"]), now) >= min_days
        ]
        deals.sort(key=lambda d: (utc(d["update_time"]), d["id"]))
        return [{**world.row(d), "overdue_days": days(utc(d["update_time"]), now)} for d in deals]

    return expect


def test_overdue_deals_default_is_seven_days(world):
    rows = check(world, "overdue_deals", overdue(world))
    by_id = {r["id"]: r for r in rows}
    assert by_id[world.special["exactly_7_days_old"]]["overdue_days"] == 7
    assert world.special["almost_7_days_old"] not in by_id
    assert all(r["overdue_days"] >= 7 for r in rows)


@pytest.mark.parametrize(
    "limit, count",
    [(None, None), ("", None), ("abc", None), ("-3", None), ("7.5", None), ("7", 7), ("0", 0)]
    + [(" 250 ", 250), ("all", None), ("ALL", None)],
)
@pytest.mark.parametrize("name", ["overdue_deals", "stuck_deals", "deals_by_owner"])
def test_lists_return_every_row_unless_asked_for_fewer(world, name, limit, count):
    every = world.rows(name)
    assert len(every) > 250, (name, len(every))  # the world is big enough to tell
    params = {} if limit is None else {"limit": limit}
    rows, truncated = world.page(name, **params)
    assert rows == every[:count] and not truncated, (name, limit)


def test_the_python_api_returns_every_row_unless_given_a_limit(world):
    every = world.rows("overdue_deals")
    assert len(pdsync.query(str(world.path), "overdue_deals")) == len(every) > 100
    assert pdsync.query(str(world.path), "overdue_deals", limit=5) == every[:5]


@pytest.mark.parametrize("value", ["", "abc", "-3", "7.5", " "])
def test_overdue_deals_min_days_not_a_whole_number_means_the_default(world, value):
    check(world, "overdue_deals", overdue(world), {"min_days": value})


@pytest.mark.parametrize("min_days", [0, 6, 8, 30, 400])
def test_overdue_deals_min_days(world, min_days):
    rows = check(
        world, "overdue_deals", overdue(world, min_days=min_days), {"min_days": str(min_days)}
    )
    ids = {r["id"] for r in rows}
    assert (world.special["exactly_7_days_old"] in ids) == (min_days <= 7)
    assert (world.special["almost_7_days_old"] in ids) == (min_days <= 6)


@pytest.mark.parametrize("pipeline", ["1", "4", "Aramco PO", "5", "5 Stars", " 4 "])
def test_overdue_deals_by_pipeline_id_or_name(world, pipeline):
    rows = check(world, "overdue_deals", overdue(world, pipeline=pipeline), {"pipeline": pipeline})
    assert rows
    assert len({r["pipeline"] for r in rows}) == 1


def test_pipeline_name_starting_with_digits_is_not_an_id(world):
    five = {r["pipeline"] for r in world.rows("overdue_deals", pipeline="5")}
    stars = {r["pipeline"] for r in world.rows("overdue_deals", pipeline="5 Stars")}
    assert five == {world.pipelines[5]["name"]}
    assert stars == {"5 Stars"} and world.pipelines[6]["name"] == "5 Stars"


@pytest.mark.parametrize(
    "name", ["overdue_deals", "stuck_deals", "rotten_deals", "near_invoicing", "deals_in_stage"]
)
@pytest.mark.parametrize("pipeline", ["No such pipeline", "999", "aramco po", "Aramco"])
def test_unknown_pipeline_gives_no_rows(world, name, pipeline):
    assert world.rows(name, pipeline=pipeline) == []


def test_unknown_pipeline_gives_no_rows_in_aggregates_and_owner_lists(world):
    for name in ["cashflow_forecast", "owner_kpis", "pipeline_summary", "deals_by_owner"]:
        assert world.rows(name, pipeline="No such pipeline") == [], name
    assert world.rows("search_deals", q="deal", pipeline="999") == []


def test_archived_and_deleted_deals_are_left_out(world):
    excluded = {d["id"] for d in world.deals if not live(d)}
    assert {world.special["archived_candidate"], world.special["deleted_candidate"]} <= excluded
    for name in DEAL_LISTS:
        params = {"min_days": "0"} if "min_days" in CONTRACT[name] else {}
        ids = {r["id"] for r in world.rows(name, **params)}
        assert ids and not ids & excluded, name


# -- stuck_deals, deals_in_stage -------------------------------------------------------------


def in_stage(world: World, pipeline="", min_days=30, stage=""):
    pipelines, stages = world.pipeline_ids(pipeline), world.stage_ids(stage)

    def expect(now):
        deals = [
            d
            for d in world.deals
            if live_open(d)
            and in_ids(d["pipeline_id"], pipelines)
            and in_ids(d["stage_id"], stages)
            and days(in_stage_since(d), now) >= min_days
        ]
        deals.sort(key=lambda d: (in_stage_since(d), d["id"]))
        return [{**world.row(d), "days_in_stage": days(in_stage_since(d), now)} for d in deals]

    return expect


def test_stuck_deals_default_is_thirty_days(world):
    rows = check(world, "stuck_deals", in_stage(world))
    by_id = {r["id"]: r for r in rows}
    assert by_id[world.special["exactly_30_days_in_stage"]]["days_in_stage"] == 30
    assert world.special["almost_30_days_in_stage"] not in by_id


@pytest.mark.parametrize(
    "params, kwargs",
    [
        ({"min_days": "abc"}, {}),
        ({"min_days": "0"}, {"min_days": 0}),
        ({"min_days": "90"}, {"min_days": 90}),
        ({"pipeline": "3"}, {"pipeline": "3"}),
        (
            {"pipeline": "Aramco Projects", "min_days": "10"},
            {"pipeline": "Aramco Projects", "min_days": 10},
        ),
    ],
)
def test_stuck_deals_parameters(world, params, kwargs):
    check(world, "stuck_deals", in_stage(world, **kwargs), params)


@pytest.mark.parametrize(
    "params, kwargs",
    [
        ({}, {"min_days": 0}),
        ({"stage": "Invoiced"}, {"stage": "Invoiced", "min_days": 0}),
        ({"stage": "21", "min_days": "30"}, {"stage": "21", "min_days": 30}),
        ({"stage": "Qualified"}, {"stage": "Qualified", "min_days": 0}),
        (
            {"stage": "Qualified", "pipeline": "1"},
            {"stage": "Qualified", "pipeline": "1", "min_days": 0},
        ),
        (
            {"stage": "Qualified", "pipeline": "Prospecting"},
            {"stage": "Qualified", "pipeline": "Prospecting", "min_days": 0},
        ),
        ({"stage": "No such stage"}, {"stage": "No such stage", "min_days": 0}),
        ({"stage": "999"}, {"stage": "999", "min_days": 0}),
        ({"min_days": "x"}, {"min_days": 0}),
    ],
)
def test_deals_in_stage_parameters(world, params, kwargs):
    check(world, "deals_in_stage", in_stage(world, **kwargs), params)


def test_a_stage_name_used_in_two_pipelines_matches_both_unless_pipeline_narrows_it(world):
    both = {r["pipeline"] for r in world.rows("deals_in_stage", stage="Qualified")}
    assert both == {world.pipelines[1]["name"], world.pipelines[2]["name"]}
    one = {r["pipeline"] for r in world.rows("deals_in_stage", stage="Qualified", pipeline="2")}
    assert one == {world.pipelines[2]["name"]}


# -- rotten_deals ---------------------------------------------------------------------------


def rotten(world: World, pipeline=""):
    ids = world.pipeline_ids(pipeline)

    def expect(now):
        rows = []
        for d in world.deals:
            stage = world.stages[d["stage_id"]]
            if not (live_open(d) and in_ids(d["pipeline_id"], ids)):
                continue
            if not stage["is_deal_rot_enabled"] or stage.get("days_to_rotten") is None:
                continue
            idle = days(utc(d["update_time"]), now)
            if idle >= stage["days_to_rotten"]:
                rows.append((d, idle, idle - stage["days_to_rotten"]))
        rows.sort(key=lambda r: (utc(r[0]["update_time"]), r[0]["id"]))
        return [
            {**world.row(d), "days_since_update": idle, "rotten_days": late}
            for d, idle, late in rows
        ]

    return expect


@pytest.mark.parametrize("pipeline", ["", "1", "Aramco PO", "5 Stars"])
def test_rotten_deals(world, pipeline):
    rows = check(world, "rotten_deals", rotten(world, pipeline), {"pipeline": pipeline})
    if pipeline == "":
        by_id = {r["id"]: r for r in rows}
        assert by_id[world.special["just_rotten"]]["rotten_days"] == 0
        assert world.special["almost_rotten"] not in by_id


# -- near_invoicing -------------------------------------------------------------------------


def near_invoicing(world: World, stages="", pipeline=""):
    pipelines = world.pipeline_ids(pipeline)
    if stages.strip() == "":
        chosen = set()
        for pid in world.pipelines:
            alive = [s for s in world.stages.values() if s["pipeline_id"] == pid]
            alive = [s for s in alive if not s.get("is_deleted")]
            if alive:
                last = max(s["order_nr"] for s in alive)
                chosen |= {s["id"] for s in alive if s["order_nr"] == last}
    else:
        chosen = set()
        for part in stages.split(","):
            if part.strip():
                chosen |= world.stage_ids(part) or set()

    def expect(now):
        deals = [
            d
            for d in world.deals
            if live_open(d) and d["stage_id"] in chosen and in_ids(d["pipeline_id"], pipelines)
        ]
        ecd = "expected_close_date"
        deals.sort(key=lambda d: (d.get(ecd) is None, d.get(ecd) or "", d["id"]))
        return [
            {
                **world.row(d),
                ecd: d.get(ecd),
                "days_in_stage": days(in_stage_since(d), now),
            }
            for d in deals
        ]

    return expect


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"pipeline": "4"},
        {"pipeline": "Aramco Projects"},
        {"stages": "Shipped, Invoiced"},
        {"stages": "Shipped,Invoiced,", "pipeline": "Aramco PO"},
        {"stages": "21, Closed Out"},
        {"stages": "Qualified"},
        {"stages": "No such stage"},
        {"stages": " , "},
    ],
)
def test_near_invoicing(world, params):
    rows = check(world, "near_invoicing", near_invoicing(world, **params), params)
    if not params or "pipeline" in params:
        assert rows


# -- deals_by_owner -------------------------------------------------------------------------


def by_owner(world: World, owner="", pipeline="", status=""):
    owners, pipelines = world.owner_ids(owner), world.pipeline_ids(pipeline)
    status = status.strip().lower()

    def wanted(d):
        if status in ("", "open", "won", "lost"):
            return live(d) and d["status"] == (status or "open")
        if status == "all":
            return live(d) and d["status"] in ("open", "won", "lost")
        if status == "archived":
            return bool(d.get("is_archived")) and not d.get("is_deleted")
        if status == "deleted":
            return status_of(d) == "deleted"
        return False

    def expect(now):
        deals = [
            d
            for d in world.deals
            if wanted(d) and in_ids(d["owner_id"], owners) and in_ids(d["pipeline_id"], pipelines)
        ]
        deals.sort(key=lambda d: (utc(d["update_time"]), d["id"]), reverse=True)
        return [{**world.row(d), "status": status_of(d)} for d in deals]

    return expect


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"owner": "3"},
        {"owner": "Omar Haddad"},
        {"owner": "3", "status": "won"},
        {"owner": "3", "status": "LOST"},
        {"owner": "3", "status": "all", "pipeline": "4"},
        {"owner": "3", "status": "archived"},
        {"owner": "3", "status": "deleted"},
        {"status": "deleted"},
        {"owner": "3", "status": "bogus"},
        {"owner": "Nobody"},
        {"owner": "99"},
    ],
)
def test_deals_by_owner(world, params):
    check(world, "deals_by_owner", by_owner(world, **params), params)


def test_archived_and_deleted_deals_show_only_when_asked_for(world):
    archived = {r["id"] for r in world.rows("deals_by_owner", owner="3", status="archived")}
    deleted = {r["id"] for r in world.rows("deals_by_owner", owner="3", status="deleted")}
    everything = {r["id"] for r in world.rows("deals_by_owner", owner="3", status="all")}
    assert world.special["archived_candidate"] in archived - everything
    assert world.special["deleted_candidate"] in deleted - everything


# -- aggregates: never across currencies -----------------------------------------------------


def assert_groups(got: list[dict], key: tuple, expected: dict) -> None:
    rows = {tuple(r[k] for k in key): r for r in got}
    assert len(rows) == len(got), "one row per group"
    assert set(rows) == set(expected)
    for group, (count, value, weighted) in expected.items():
        row = rows[group]
        assert row["deals"] == count, group
        assert row["value"] == pytest.approx(value, abs=0.011), group
        if weighted is not None:
            assert row["weighted_value"] == pytest.approx(weighted, abs=0.011), group


def cashflow(world: World, now: datetime, months=6, pipeline=""):
    pipelines = world.pipeline_ids(pipeline)
    today = now.date()
    end_month = today.month - 1 + months
    end = date(today.year + end_month // 12, end_month % 12 + 1, 1).isoformat()
    groups: dict[tuple, list] = {}
    for d in world.deals:
        ecd = d.get("expected_close_date")
        if not (live_open(d) and ecd and in_ids(d["pipeline_id"], pipelines)):
            continue
        if ecd >= end and ecd >= today.isoformat():
            continue  # past the horizon; whatever is overdue counts, even when months is 0
        month = "overdue" if ecd < today.isoformat() else ecd[:7]
        group = groups.setdefault((month, d["currency"]), [0, 0.0, 0.0])
        group[0] += 1
        group[1] += d["value"]
        group[2] += d["value"] * world.probability(d) / 100
    return groups


@pytest.mark.parametrize(
    "params, kwargs",
    [
        ({}, {}),
        ({"months": "1"}, {"months": 1}),
        ({"months": "0"}, {"months": 0}),
        ({"months": "24"}, {"months": 24}),
        ({"months": "soon"}, {}),
        ({"pipeline": "1"}, {"pipeline": "1"}),
        ({"pipeline": "5 Stars", "months": "3"}, {"pipeline": "5 Stars", "months": 3}),
    ],
)
def test_cashflow_forecast(world, params, kwargs):
    got = world.rows("cashflow_forecast", **params)
    now = datetime.now(timezone.utc)
    assert_groups(got, ("month", "currency"), cashflow(world, now, **kwargs))
    months = [r["month"] for r in got]
    overdue = [m for m in months if m == "overdue"]
    assert months[: len(overdue)] == overdue  # the overdue rows come first
    assert months[len(overdue) :] == sorted(months[len(overdue) :])


def test_cashflow_forecast_keeps_currencies_apart(world):
    rows = world.rows("cashflow_forecast", months="2")
    soon = next(d for d in world.deals if d["id"] == world.special["closes_next_month_eur"])[
        "expected_close_date"
    ][:7]
    month = {r["currency"]: r for r in rows if r["month"] == soon}
    assert {"EUR", "SAR"} <= set(month)
    eur = [
        d for d in world.deals if live_open(d) and (d.get("expected_close_date") or "")[:7] == soon
    ]
    assert month["EUR"]["value"] == pytest.approx(
        sum(d["value"] for d in eur if d["currency"] == "EUR"), abs=0.011
    )


def owner_kpis(world: World, pipeline="", status=""):
    deals = by_owner(world, pipeline=pipeline, status=status)(datetime.now(timezone.utc))
    groups: dict[tuple, list] = {}
    currency = {d["id"]: d["currency"] for d in world.deals}
    owner_of = {d["id"]: d["owner_id"] for d in world.deals}
    for row in deals:
        group = groups.setdefault((owner_of[row["id"]], currency[row["id"]]), [0, 0.0, None])
        group[0] += 1
        group[1] += row["value"]
    return groups


@pytest.mark.parametrize(
    "params",
    [{}, {"status": "won"}, {"status": "all", "pipeline": "4"}, {"pipeline": "Aramco PO"}],
)
def test_owner_kpis(world, params):
    got = world.rows("owner_kpis", **params)
    assert_groups(got, ("owner_id", "currency"), owner_kpis(world, **params))
    for row in got:
        assert row["owner"] == world.users[row["owner_id"]]
    assert [(r["owner"], r["owner_id"], r["currency"]) for r in got] == sorted(
        (r["owner"], r["owner_id"], r["currency"]) for r in got
    )


def pipeline_summary(world: World, pipeline=""):
    ids = world.pipeline_ids(pipeline)
    groups: dict[tuple, list] = {}
    for d in world.deals:
        if live_open(d) and in_ids(d["pipeline_id"], ids):
            group = groups.setdefault((d["stage_id"], d["currency"]), [0, 0.0, 0.0])
            group[0] += 1
            group[1] += d["value"]
            group[2] += d["value"] * world.probability(d) / 100
    for stage in world.stages.values():
        busy = any(s == stage["id"] for s, _ in groups)
        if in_ids(stage["pipeline_id"], ids) and not busy and not stage.get("is_deleted"):
            groups[(stage["id"], None)] = [0, 0.0, 0.0]
    return groups


@pytest.mark.parametrize("pipeline", ["", "4", "Prospecting", "5 Stars"])
def test_pipeline_summary(world, pipeline):
    got = world.rows("pipeline_summary", pipeline=pipeline)
    assert_groups(got, ("stage_id", "currency"), pipeline_summary(world, pipeline))
    order = [
        (
            world.pipelines[r["pipeline_id"]]["order_nr"],
            r["pipeline_id"],
            world.stages[r["stage_id"]]["order_nr"],
            r["stage_id"],
            r["currency"] or "",
        )
        for r in got
    ]
    assert order == sorted(order)  # pipelines, then stages, in Pipedrive's order


def test_pipeline_summary_shows_a_stage_without_open_deals(world):
    empty = [r for r in world.rows("pipeline_summary") if r["deals"] == 0]
    assert empty or all(
        any(live_open(d) and d["stage_id"] == s for d in world.deals) for s in world.stages
    )
    for row in empty:
        assert row["currency"] is None and row["value"] == 0


# -- search_deals ---------------------------------------------------------------------------


def fold(text: str) -> list[str]:
    """unicode61 tokens: letters and digits, case and diacritics folded."""
    plain = "".join(
        c for c in unicodedata.normalize("NFKD", text or "") if not unicodedata.combining(c)
    )
    return re.findall(r"[^\W_]+", plain.lower())


def search(world: World, q="", pipeline="", owner=""):
    pipelines, owners = world.pipeline_ids(pipeline), world.owner_ids(owner)
    # the query splits q on spaces, tabs and line ends; FTS5 drops a word without tokens
    # ("&"), and a query made only of such words matches nothing
    parts = [part for part in re.split(r"[ \t\r\n]+", q) if part]
    words = [fold(part) for part in parts if fold(part)]

    def matches(text):
        tokens = fold(text)
        # each query word is a phrase of its own tokens, the last one a prefix
        for phrase in words:
            n = len(phrase)
            if not any(
                tokens[i : i + n - 1] == phrase[:-1] and tokens[i + n - 1].startswith(phrase[-1])
                for i in range(len(tokens) - n + 1)
            ):
                return False
        return True

    def found(deal):
        if not parts:
            return True
        if not words:
            return False
        return (
            matches(deal["title"])
            or matches(world.orgs.get(deal.get("org_id")))
            or matches(world.persons.get(deal.get("person_id")))
        )

    def expect(now):
        deals = [
            d
            for d in world.deals
            if live(d)
            and in_ids(d["pipeline_id"], pipelines)
            and in_ids(d["owner_id"], owners)
            and found(d)
        ]
        deals.sort(key=lambda d: (utc(d["update_time"]), d["id"]), reverse=True)
        return [{"id": d["id"], "status": status_of(d)} for d in deals]

    return expect


@pytest.mark.parametrize(
    "params",
    [
        {"q": "gulf"},
        {"q": "GULF st"},
        {"q": "muller"},
        {"q": "al-mutairi"},
        {"q": "bold"},
        {"q": "substation", "pipeline": "4"},
        {"q": "trading", "owner": "Omar Haddad"},
        {"q": "zzzz-nothing"},
        {},
        {"owner": "3"},
    ],
)
def test_search_deals(world, params):
    rows = check(world, "search_deals", search(world, **params), params)
    if params.get("q") in ("gulf", "bold"):
        assert rows


@pytest.mark.parametrize(
    "q", ['"', '""', "AND(", "NEAR(a b)", "a*", "-x", "'", "^", ":", "\t", " \n ", "gulf &"]
)
def test_search_input_is_never_read_as_fts_syntax(world, q):
    check(world, "search_deals", search(world, q=q), {"q": q})


def test_search_ignores_accents_and_case(world):
    accented = next(
        (org, word)
        for d in world.deals
        if live(d) and d.get("org_id")
        for org in [world.orgs.get(d["org_id"]) or ""]
        for word in org.split()
        if word.isalpha() and not word.isascii() and fold(word) and fold(word)[0].isascii()
    )
    org, word = accented
    plain = fold(word)[0].upper()
    rows = check(world, "search_deals", search(world, q=plain), {"q": plain})
    assert org in {r["org_name"] for r in rows}


def test_search_finds_deals_by_person_name(world):
    person_deal = next(d for d in world.deals if live(d) and d.get("person_id"))
    name = world.persons[person_deal["person_id"]]
    ids = {r["id"] for r in world.rows("search_deals", q=name)}
    assert person_deal["id"] in ids


# -- deal_notes, sync_status ----------------------------------------------------------------


def test_deal_notes_oldest_first_without_deleted_ones(world):
    deal_id = world.special["html"]
    rows = world.rows("deal_notes", deal_id=str(deal_id))
    assert [r["id"] for r in rows] == [world.special["first_note"], world.special["second_note"]]
    assert rows[0]["content"] == "<p>First <b>note</b></p>"  # JSON carries the HTML as it is
    assert all(r["deal_id"] == deal_id and r["deal_title"] == "<b>Bold</b> deal" for r in rows)
    conn = sqlite3.connect(f"file:{world.path}?mode=ro", uri=True)
    try:
        flagged = conn.execute(
            "select is_deleted from notes where id = ?", [world.special["deleted_note"]]
        ).fetchone()
    finally:
        conn.close()
    assert flagged == (1,)  # in the table, flagged, and left out of the query


def test_deal_notes_match_the_fake(world):
    by_deal: dict[int, list] = {}
    for note in world.notes:
        if note.get("deal_id"):
            by_deal.setdefault(note["deal_id"], []).append(note)
    deal_id, notes = max(by_deal.items(), key=lambda item: len(item[1]))
    notes.sort(key=lambda n: (utc(n["add_time"]), n["id"]))
    rows = world.rows("deal_notes", deal_id=str(deal_id))
    assert [(r["id"], r["content"], r["author"]) for r in rows] == [
        (n["id"], n["content"], world.users[n["user_id"]]) for n in notes
    ]


def test_deal_products_in_order_and_paged_by_after(world):
    by_deal: dict[int, list] = {}
    for item in world.line_items:
        by_deal.setdefault(item["deal_id"], []).append(item)
    deal_id, items = max(by_deal.items(), key=lambda entry: len(entry[1]))
    items.sort(key=lambda i: (i.get("order_nr") or 0, i["id"]))
    rows = world.rows("deal_products", deal_id=str(deal_id))
    assert [(r["id"], r["name"], r["quantity"], r["sum"], r["currency"]) for r in rows] == [
        (i["id"], i["name"], i["quantity"], i["sum"], i["currency"]) for i in items
    ]
    first = world.rows("deal_products", deal_id=str(deal_id), limit="1")
    last = first[-1]
    rest = world.rows(
        "deal_products", deal_id=str(deal_id), after=f"{last['order_nr']},{last['id']}"
    )
    assert first + rest == rows
    assert world.rows("deal_products", deal_id=str(deal_id), after="x") == []


@pytest.mark.parametrize("deal_id", ["", "abc", "-1", "999999"])
def test_deal_products_without_a_deal_id_give_no_rows(world, deal_id):
    assert world.rows("deal_products", deal_id=deal_id) == []


def _product_sales(world, now, product="", pipeline="", months=12):
    start = date(now.year, now.month, 1)
    for _ in range(months - 1):
        start = (start - timedelta(days=1)).replace(day=1)
    deals = {d["id"]: d for d in world.deals}
    pipelines = world.pipeline_ids(pipeline)
    groups: dict[tuple, dict] = {}
    for item in world.line_items:
        deal = deals.get(item["deal_id"])
        if not deal or deal["status"] != "won" or deal["is_archived"] or deal.get("is_deleted"):
            continue
        if utc(deal["won_time"]) < start.isoformat() + "T00:00:00Z":
            continue
        if pipelines is not None and deal["pipeline_id"] not in pipelines:
            continue
        name = world.products[item["product_id"]]["name"]
        if product and product not in (str(item["product_id"]), name):
            continue
        key = (item["product_id"], name, deal["won_time"][:7], item["currency"])
        group = groups.setdefault(key, {"deals": set(), "quantity": 0, "revenue": 0.0})
        group["deals"].add(deal["id"])
        group["quantity"] += item["quantity"]
        group["revenue"] += item["sum"]
    rows = [
        {
            "product_id": pid,
            "product": name,
            "month": month,
            "currency": currency,
            "won_deals": len(g["deals"]),
            "quantity": g["quantity"],
            "revenue": round(g["revenue"], 2),
        }
        for (pid, name, month, currency), g in groups.items()
    ]
    return sorted(
        rows,
        key=lambda r: (
            -int(r["month"].replace("-", "")),
            r["product"],
            r["product_id"],
            r["currency"],
        ),
    )


@pytest.mark.parametrize(
    "params, kwargs",
    [
        ({}, {}),
        ({"months": "36"}, {"months": 36}),
        ({"months": "x"}, {}),
        ({"pipeline": "3", "months": "36"}, {"pipeline": "3", "months": 36}),
        ({"product": "2", "months": "36"}, {"product": "2", "months": 36}),
        ({"pipeline": "no such pipeline"}, {"pipeline": "no such pipeline"}),
    ],
)
def test_product_sales(world, params, kwargs):
    check(world, "product_sales", lambda now: _product_sales(world, now, **kwargs), params)
    if kwargs.get("months") == 36 and not kwargs.get("pipeline"):
        assert world.rows("product_sales", **params)  # the demo has sales to show


def test_product_sales_paged_by_after(world):
    rows = world.rows("product_sales", months="36")
    assert len(rows) > 10
    got, last = [], None
    while True:
        after = (
            ""
            if last is None
            else (f"{last['month']},{last['currency']},{last['product']},{last['product_id']}")
        )
        page = world.rows("product_sales", months="36", limit="7", after=after)
        if not page:
            break
        got, last = got + page, page[-1]
    assert got == rows
    # a name with commas still resumes right after its row
    key = rows[3]
    after = f"{key['month']},{key['currency']},{key['product']},{key['product_id']}"
    assert world.rows("product_sales", months="36", after=after) == rows[4:]
    for malformed in ("abc", "2026-11,17", "x,", ",", "1,2,a"):
        assert world.rows("product_sales", months="36", after=malformed) == [], malformed


def test_near_invoicing_shows_the_line_items_behind_the_value(world):
    rows = world.rows("near_invoicing", stages="")
    items: dict[int, list] = {}
    for item in world.line_items:
        items.setdefault(item["deal_id"], []).append(item)
    assert any(r["line_items"] for r in rows)
    for row in rows:
        mine = items.get(row["id"], [])
        assert row["line_items"] == len(mine)
        totals: dict[str, float] = {}
        for item in mine:
            totals[item["currency"]] = totals.get(item["currency"], 0) + item["sum"]
        want = "; ".join(f"{c} {round(t, 2)}" for c, t in sorted(totals.items())) or None
        assert row["line_items_sum"] == want


@pytest.mark.parametrize("deal_id", ["", "abc", "-1", "1.5", "999999"])
def test_deal_notes_without_a_deal_id_give_no_rows(world, deal_id):
    assert world.rows("deal_notes", deal_id=deal_id) == []


def test_sync_status_shows_every_entity(world):
    rows = world.rows("sync_status")
    entities = {spec.name for spec in builtin_entities()}
    assert {r["entity_type"] for r in rows} == entities
    assert all(r["status"] == "success" and r["error_message"] is None for r in rows)
    assert all(0 <= r["minutes_since_sync"] < 60 for r in rows)


# -- pages, safety, table metadata ----------------------------------------------------------


def test_html_in_titles_and_notes_is_escaped_on_pages(world):
    page = world.get("/pipedrive/overdue_deals").text
    assert "&lt;b&gt;Bold&lt;/b&gt; deal" in page
    assert "<b>Bold</b>" not in page
    notes = world.get(f"/pipedrive/deal_notes?deal_id={world.special['html']}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in notes
    assert "<script>alert(1)" not in notes


@pytest.mark.parametrize(
    "sql",
    [
        "delete from deals",
        "update deals set title = 'x'",
        "drop table deals",
        "with x as (select 1) delete from deals",
        "insert into deals (id) values (999999)",
        "attach database '/tmp/x.db' as x",
        "pragma writable_schema = 1",
    ],
)
def test_arbitrary_sql_cannot_write(world, sql):
    response = world.get("/pipedrive.json?" + urlencode({"sql": sql}))
    assert response.status_code in (400, 403), response.text
    assert deal_count(world) == len(world.deals)


def deal_count(world: World) -> int:
    conn = sqlite3.connect(f"file:{world.path}?mode=ro", uri=True)
    try:
        return conn.execute("select count(*) from deals").fetchone()[0]
    finally:
        conn.close()


def test_table_metadata_labels_facets_and_hidden_tables(world):
    labels = {"pipelines": "name", "stages": "name", "users": "name"}
    labels |= {"organizations": "name", "persons": "name", "deals": "title"}
    for table, column in labels.items():
        assert world.ds.metadata("label_column", database="pipedrive", table=table) == column
    path = f"/pipedrive/deals.json?id={world.special['html']}&_labels=on&_shape=array"
    row = world.get(path).json()[0]
    for column, table in [("pipeline_id", world.pipelines), ("owner_id", world.users)]:
        label = table[row[column]["value"]]
        assert row[column]["label"] == (label if isinstance(label, str) else label["name"])
    # The totals tables name their pipeline, stage and owner too.
    for path, column, names in [
        ("open_deal_totals", "stage_id", world.stages),
        ("open_deal_owner_totals", "owner_id", world.users),
    ]:
        row = world.get(f"/pipedrive/{path}.json?_labels=on&_shape=array&_size=1").json()[0]
        name = names[row[column]["value"]]
        assert row[column]["label"] == (name if isinstance(name, str) else name["name"])
    facets = world.get("/pipedrive/deals.json").json()["facet_results"]
    assert set(facets) == {"status", "pipeline_id", "stage_id", "owner_id", "currency"}
    assert not any(f.get("timed_out") for f in facets.values())
    tables = {t["name"]: t for t in world.get("/pipedrive.json").json()["tables"]}
    hidden_tables = ("_pdsync_seen", "_pdsync_digests", "_pdsync_state", "_sqlite_migrations")
    for hidden in (*hidden_tables, "sync_streams", "deals_fts"):
        assert tables[hidden]["hidden"], hidden
    visible = ("deals", "pipelines", "stages", "notes", "sync_metadata", "sync_runs")
    for shown in (*visible, "open_deal_totals", "open_deal_owner_totals"):
        assert not tables[shown]["hidden"], shown


# The default lists walk a partial index of open deals in their ORDER BY and stop after
# Datasette's 1,001st row. A query whose WHERE drifts from OPEN_DEAL (entities.py) silently
# loses its index and reads every deal instead: 10x slower at 100k deals.
OPEN_DEAL_WALKS = {
    ("overdue_deals", ""): "idx_deals_open_update_time",
    ("overdue_deals", "3"): "idx_deals_open_pipeline_update_time",
    ("stuck_deals", ""): "idx_deals_open_stage_since",
    ("rotten_deals", ""): "idx_deals_open_update_time",
    ("near_invoicing", ""): "idx_deals_open_expected_close",
}
# The default totals read the sums the sync keeps (totals.py) along a covering index, in
# the order they group by, never every open deal.
OPEN_DEAL_TOTALS = {
    ("owner_kpis", ""): "COVERING INDEX open_deal_owner_totals_keys",
    ("pipeline_summary", ""): "COVERING INDEX open_deal_totals_keys",
    ("cashflow_forecast", ""): "COVERING INDEX open_deal_totals_months",
}


@pytest.mark.parametrize("name, pipeline", list(OPEN_DEAL_WALKS) + list(OPEN_DEAL_TOTALS))
def test_open_deal_lists_and_totals_read_their_index(world, name, pipeline):
    sql = world.metadata["databases"]["pipedrive"]["queries"][name]["sql"]
    params = dict.fromkeys(re.findall(r":(\w+)", sql), "") | {"pipeline": pipeline}
    conn = sqlite3.connect(f"file:{world.path}?mode=ro", uri=True)
    try:
        plan = [row[3] for row in conn.execute("explain query plan " + sql, params)]
    finally:
        conn.close()
    index = {**OPEN_DEAL_WALKS, **OPEN_DEAL_TOTALS}[name, pipeline]
    assert any(index in step for step in plan), plan
    if (name, pipeline) in OPEN_DEAL_WALKS:
        assert not any("TEMP B-TREE FOR ORDER BY" in step for step in plan), plan
    else:
        assert not any(re.match(r"SCAN (d|deals)\b", step) for step in plan), plan


# -- complete answers: the limit and after fragments, and lists longer than a page ----------


def normalized(sql: str) -> str:
    return " ".join(sql.split())


@pytest.mark.parametrize("name", DEAL_LISTS)
def test_every_list_says_the_limit_and_after_clauses_word_for_word(world, name):
    sql = normalized(world.metadata["databases"]["pipedrive"]["queries"][name]["sql"])
    assert normalized(AFTER_KEY) in sql
    limits = sql.count(normalized(LIST_LIMIT))
    assert limits >= 1
    # no other row limit: only the "limit 1" of a pipeline, stage or owner lookup
    rest = sql.replace(normalized(LIST_LIMIT), "")
    assert re.findall(r"\blimit (?!1\b)", rest) == [], name
    assert "after_key" in sql.split(normalized(AFTER_KEY), 1)[1], name


def metadata_sql(value):
    """Every SQL text in ``value`` (metadata.yml: canned queries, charts), whitespace normalized."""
    if isinstance(value, dict):
        return [sql for v in value.values() for sql in metadata_sql(v)]
    if isinstance(value, list):
        return [sql for v in value for sql in metadata_sql(v)]
    return [normalized(value)] if isinstance(value, str) and "select " in value else []


def test_repeated_fragments_are_the_constants_of_queries_py():
    """The idioms metadata.yml repeats are pdsync.queries' constants, word for word."""
    digits = "not glob '*[^0-9]*'"
    counts = {"lookups": 0, "numbers": 0, "open": 0}
    for sql in metadata_sql(yaml.safe_load(METADATA_PATH.read_text())):
        rest = sql
        for m in re.finditer(r"select id from (\w+) where case when trim\(:(\w+)\)", sql):
            forms = [f.format(table=m[1], param=m[2]) for f in (ID_OR_NAME, EVERY_OR_ID_OR_NAME)]
            form = next(
                (normalized(f) for f in forms if sql.startswith(normalized(f), m.start())), 0
            )
            assert form, sql[m.start() :]
            rest = rest.replace(form, "")
            counts["lookups"] += 1
        for m in re.finditer(r"case when trim\(:(\w+)\) <> '' and trim", sql):
            default = re.match(r".*? else (-?\d+) end", sql[m.start() :])[1]
            form = normalized(WHOLE_NUMBER.format(param=m[1], default=default))
            assert sql.startswith(form, m.start()), sql[m.start() :]
            rest = rest.replace(form, "")
            counts["numbers"] += 1
        # nothing else tells digits from names by hand but a stage list's items, deal_id, and
        # product_sales' line items whose product is not in the products table
        others = set(re.findall(r"(\S+) " + re.escape(digits), rest))
        assert others <= {"w.name", "trim(:deal_id)", "trim(:product)"}, others
        for m in re.finditer(r"\+?(?:(\w+)\.)?status = 'open'", sql):
            form = normalized(open_deal(m[1] or ""))
            # the charts leave out open_deal's "+" (an index hint the lists need)
            assert sql.startswith((form, form.lstrip("+")), m.start()), sql[m.start() :]
            counts["open"] += 1
    assert counts["lookups"] >= 20 and counts["numbers"] >= 10 and counts["open"] >= 16, counts


TIES = 30  # deals with the same sort value in every list: pages must break them by id


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A company with lists longer than Datasette's 1,000-row page, and a group of deals
    that tie on every list's sort value."""
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakePipedrive(deals=2400, seed=23, now=t0)
    try:
        stages = fake.records("stages")
        rotting = next(
            s
            for s in stages
            if s["is_deal_rot_enabled"] and s["days_to_rotten"] and s["days_to_rotten"] <= 40
        )
        fake.freeze(t0 - 40 * DAY)
        ties = [
            fake.add_deal(
                title=f"tied deal {i}",
                stage_id=rotting["id"],
                owner_id=3,
                value=100,
                currency="SAR",
                expected_close_date=(t0 + 20 * DAY).date(),
            )["id"]
            for i in range(TIES)
        ]
        fake.freeze(t0)
        path = tmp_path_factory.mktemp("canned-big") / "pipedrive.db"
        with FakeServer(fake) as server:
            result = pdsync.sync(
                str(path),
                token=fake.token,
                base_url=server.url,
                auth_path=None,
                client_options=FAST_CLIENT,
            )
            assert result.ok, result.errors
        world = World(path, fake, {"rotting_stage": rotting["id"]})
        world.ties = ties
    finally:
        fake.close()
    yield world
    world.loop.close()


def big_lists(big: World) -> dict[str, tuple[dict, object]]:
    """Each list with parameters that include the tied deals, and its expectation."""
    stage = str(big.special["rotting_stage"])
    return {
        "overdue_deals": ({}, overdue(big)),
        "stuck_deals": ({}, in_stage(big)),
        "rotten_deals": ({}, rotten(big)),
        "near_invoicing": ({"stages": stage}, near_invoicing(big, stages=stage)),
        "deals_in_stage": ({}, in_stage(big, min_days=0)),
        "deals_by_owner": ({"status": "all"}, by_owner(big, status="all")),
        "search_deals": ({}, search(big)),
    }


def key_of(name: str, row: dict) -> str:
    return f"{row[SORT_KEY[name]] or ''},{row['id']}"


def expected_ids(expect, moment: datetime) -> list[int]:
    return [r["id"] for r in expect(moment)]


def test_the_big_world_has_lists_longer_than_a_page(big):
    now = datetime.now(timezone.utc)
    sizes = {name: len(expect(now)) for name, (_, expect) in big_lists(big).items()}
    assert sizes["deals_by_owner"] > 2 * PAGE and sizes["search_deals"] > 2 * PAGE, sizes
    assert sum(size > PAGE for size in sizes.values()) >= 4, sizes


@pytest.mark.parametrize("name", DEAL_LISTS)
def test_a_long_list_says_truncated_and_after_returns_the_rest(big, name):
    params, expect = big_lists(big)[name]
    before = datetime.now(timezone.utc)
    rows, truncated = big.page(name, **params)
    pages = [rows]
    while truncated:
        assert len(rows) == PAGE, name
        rows, truncated = big.page(name, **params, after=key_of(name, rows[-1]))
        pages.append(rows)
    after = datetime.now(timezone.utc)
    got = [r["id"] for page in pages for r in page]
    wanted = [expected_ids(expect, before), expected_ids(expect, after)]
    assert set(big.ties) <= set(wanted[0]), name  # the tied deals are in every list
    assert len(got) == len(set(got)), f"{name}: duplicates"
    assert got in wanted, (name, len(got), len(wanted[0]))
    assert len(pages) == len(wanted[0]) // PAGE + 1, name


@pytest.mark.parametrize("name", DEAL_LISTS)
def test_small_pages_through_tied_deals_have_no_gaps_or_duplicates(big, name):
    params, expect = big_lists(big)[name]
    before = datetime.now(timezone.utc)
    first_tie = expected_ids(expect, before).index(
        next(i for i in expected_ids(expect, before) if i in set(big.ties))
    )
    # The first page stops three rows into the tied deals, the next ones cut them in 7s,
    # the last one, without limit, takes the rest (truncated, then continued).
    rows, _ = big.page(name, **params, limit=str(first_tie + 3))
    got, last = [r["id"] for r in rows], rows[-1]
    for _ in range(TIES // 7 + 2):
        rows, _ = big.page(name, **params, limit="7", after=key_of(name, last))
        got, last = got + [r["id"] for r in rows], (rows or [last])[-1]
    truncated = True
    while truncated:
        rows, truncated = big.page(name, **params, after=key_of(name, last))
        got, last = got + [r["id"] for r in rows], (rows or [last])[-1]
    after = datetime.now(timezone.utc)
    assert len(got) == len(set(got)), f"{name}: duplicates"
    assert got in [expected_ids(expect, before), expected_ids(expect, after)], name


@pytest.mark.parametrize("name", DEAL_LISTS)
@pytest.mark.parametrize("value", ["abc", "2025-01-01T00:00:00Z", "12", "x,", ",", "1,2,a"])
def test_a_malformed_after_gives_no_rows(big, name, value):
    params, _ = big_lists(big)[name]
    assert big.page(name, **params, after=value) == ([], False)


def test_after_the_last_row_there_is_nothing(big):
    rows = pdsync.query(str(big.path), "overdue_deals")
    assert len(rows) > PAGE
    assert big.page("overdue_deals", after=key_of("overdue_deals", rows[-1])) == ([], False)


def test_the_python_api_returns_more_than_a_page(big):
    params, expect = big_lists(big)["deals_by_owner"]
    before = datetime.now(timezone.utc)
    got = [r["id"] for r in pdsync.query(str(big.path), "deals_by_owner", **params)]
    after = datetime.now(timezone.utc)
    assert len(got) > 2 * PAGE
    assert got in [expected_ids(expect, before), expected_ids(expect, after)]


def test_the_page_says_when_a_list_is_cut(big):
    page = big.get("/pipedrive/deals_by_owner?status=all")
    assert page.status_code == 200
    assert "returning more than 1,000 rows" in page.text  # Datasette's own wording
    short = big.get("/pipedrive/deals_by_owner?status=all&limit=10").text
    assert "returning 10 rows" in short and "more than" not in short


def test_the_faster_json_renderer_answers_what_datasette_does(big):
    """pdsync's reads.py takes over .json; every answer must be Datasette's own, parsed."""
    from datasette.renderer import json_renderer

    deal = big.rows("deals_by_owner", owner="3", limit="1")[0]["id"]
    paths = [f"/pipedrive/{name}.json" for name in CONTRACT]
    paths += [f"/pipedrive/{name}.json?_shape=objects" for name in DEAL_LISTS]
    paths += [f"/pipedrive/{name}.json?_shape=array&limit=3" for name in DEAL_LISTS]
    paths += [
        "/pipedrive/deals_by_owner.json?status=all",  # truncated
        "/pipedrive/deals_by_owner.json?status=all&_shape=array&_nl=on",
        "/pipedrive/overdue_deals.json?_shape=arrayfirst",
        "/pipedrive/deals.json",  # a table page, with a next link
        "/pipedrive/deals.json?_shape=object&_size=5",
        f"/pipedrive/deals/{deal}.json",
        "/pipedrive.json?" + urlencode({"sql": "select 1e999 as big, x'ff' as raw, x'41' as a"}),
        "/pipedrive.json?" + urlencode({"sql": "select 1e999 as big", "_json_infinity": "1"}),
        "/pipedrive.json?" + urlencode({"sql": "select no_such_column from deals"}),
        "/pipedrive/sync_status.json?_shape=nonsense",
    ]

    async def check():
        ds = pdsync.datasette(big.path)
        try:
            fast = ds.renderers["json"]
            assert fast[0].__name__ == "render_json"  # pdsync's, not Datasette's
            for path in paths:
                ours = await ds.client.get(path)
                ds.renderers["json"] = (json_renderer, lambda: True)
                theirs = await ds.client.get(path)
                ds.renderers["json"] = fast
                assert ours.status_code == theirs.status_code, path
                for header in ("content-type", "link"):
                    assert ours.headers.get(header) == theirs.headers.get(header), path
                if "_nl=" in path or "_json_infinity" in path:
                    timing = re.compile(r'"query_ms": [0-9.e-]+')
                    assert timing.sub("", ours.text) == timing.sub("", theirs.text), path
                    continue
                mine, datasettes = ours.json(), theirs.json()
                for body in (mine, datasettes):
                    if isinstance(body, dict):
                        body.pop("query_ms", None)
                assert mine == datasettes, path
        finally:
            unregister_pdsync_plugins()

    asyncio.run(check())


# -- deal history: stage_durations, stage_conversion, deal_history ---------------------------


def v1_utc(text: str) -> str:
    return text.replace(" ", "T") + "Z"


def stage_path(world: World, deal: dict) -> list[tuple[int, str, str | None]]:
    """(stage, entered, left) from the deal's changelog: its first stage from add_time."""
    moves = [e for e in world.changelogs[deal["id"]] if e["field_key"] == "stage_id"]
    first = int(moves[0]["old_value"]) if moves else deal["stage_id"]
    path = [(first, utc(deal["add_time"]), None)]
    for move in moves:
        path[-1] = (path[-1][0], path[-1][1], v1_utc(move["time"]))
        path.append((int(move["new_value"]), v1_utc(move["time"]), None))
    return path


def moment(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def test_history_was_read_for_every_deal(world):
    db = sqlite3.connect(world.path)
    read = db.execute("select count(*) from _pdsync_history where reread = 0").fetchone()[0]
    assert read == db.execute("select count(*) from deals").fetchone()[0] == len(world.deals)
    moves = sum(len(stage_path(world, d)) - 1 for d in world.deals)
    assert moves > len(world.deals) // 2
    stored = db.execute("select count(*) from deal_changes where field_key = 'stage_id'")
    assert stored.fetchone()[0] == moves


def stage_durations(world: World, pipeline: str = "", since: int = 365):
    ids = world.pipeline_ids(pipeline)

    def expect(now):
        line = now - timedelta(days=since)
        spent: dict[int, list[tuple[int, float]]] = {}
        for deal in world.deals:
            if not live(deal):
                continue
            for stage, entered, left in stage_path(world, deal):
                if left is not None and moment(left) >= line.replace(microsecond=0):
                    days_in = (moment(left) - moment(entered)).total_seconds() / 86400
                    spent.setdefault(stage, []).append((deal["id"], round(days_in, 2)))
        rows = []
        for stage in sorted(world.stages.values(), key=lambda s: stage_sort(world, s)):
            if not in_ids(stage["pipeline_id"], ids):
                continue
            found = sorted(d for _, d in spent.get(stage["id"], []))
            n = len(found)
            rows.append(
                {
                    "stage_id": stage["id"],
                    "deals_left": len({i for i, _ in spent.get(stage["id"], [])}),
                    "mean": sum(found) / n if n else None,
                    "median": (found[(n - 1) // 2] + found[n // 2]) / 2 if n else None,
                    "p90": found[math.ceil(0.9 * n) - 1] if n else None,
                }
            )
        return rows

    return expect


def stage_sort(world: World, stage: dict) -> tuple:
    pipeline = world.pipelines[stage["pipeline_id"]]
    return (pipeline["order_nr"], pipeline["id"], stage["order_nr"], stage["id"])


def close_enough(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is want
    return abs(got - want) <= 0.051  # rounded to 1 decimal in SQL


@pytest.mark.parametrize(("pipeline", "since"), [("", ""), ("1", "90"), ("Prospecting", "2000")])
def test_stage_durations(world, pipeline, since):
    days_back = int(since) if since else 365
    expect = stage_durations(world, pipeline, days_back)
    got = world.rows("stage_durations", pipeline=pipeline, since=since)
    want = expect(datetime.now(timezone.utc))
    assert [r["stage_id"] for r in got] == [r["stage_id"] for r in want]
    assert any(r["deals_left"] for r in want)  # not vacuous: deals left these stages
    for g, w in zip(got, want, strict=True):
        assert g["deals_left"] == w["deals_left"], g
        assert close_enough(g["mean_days"], w["mean"]), (g, w)
        assert close_enough(g["median_days"], w["median"]), (g, w)
        assert close_enough(g["p90_days"], w["p90"]), (g, w)


def sql_round(share: float) -> float:
    """SQLite's round(x, 3): halves away from zero (10/32 is 0.313, where Python says 0.312)."""
    return math.floor(share * 1000 + 0.5) / 1000


def stage_conversion(world: World, pipeline: str = "", since: int = 365):
    ids = world.pipeline_ids(pipeline)

    def expect(now):
        line = (now - timedelta(days=since)).replace(microsecond=0)
        furthest: dict[tuple[int, int], int] = {}
        status = {}
        for deal in world.deals:
            if not live(deal) or moment(utc(deal["add_time"])) < line:
                continue
            status[deal["id"]] = deal["status"]
            for stage, _, _ in stage_path(world, deal):
                s = world.stages[stage]
                key = (s["pipeline_id"], deal["id"])
                furthest[key] = max(furthest.get(key, 0), s["order_nr"])
        rows = []
        stages = sorted(
            (s for s in world.stages.values() if in_ids(s["pipeline_id"], ids)),
            key=lambda s: stage_sort(world, s),
        )
        for i, stage in enumerate(stages):
            reached = [
                d
                for (p, d), nr in furthest.items()
                if p == stage["pipeline_id"] and nr >= stage["order_nr"]
            ]
            following = stages[i + 1] if i + 1 < len(stages) else None
            if following and following["pipeline_id"] != stage["pipeline_id"]:
                following = None
            onward = [
                d
                for (p, d), nr in furthest.items()
                if following and p == stage["pipeline_id"] and nr >= following["order_nr"]
            ]
            won = [d for d in reached if status[d] == "won"]
            rows.append(
                {
                    "stage_id": stage["id"],
                    "reached": len(reached),
                    "reached_next_share": (
                        sql_round(len(onward) / len(reached)) if following and reached else None
                    ),
                    "won_share": sql_round(len(won) / len(reached)) if reached else None,
                }
            )
        return rows

    return expect


@pytest.mark.parametrize(
    ("pipeline", "since"), [("", ""), ("1", "2000"), ("Aramco PO", "30"), ("nonexistent", "")]
)
def test_stage_conversion(world, pipeline, since):
    rows = check(
        world,
        "stage_conversion",
        stage_conversion(world, pipeline, int(since) if since else 365),
        {"pipeline": pipeline, "since": since},
    )
    if pipeline == "nonexistent":
        assert rows == []
    elif since != "30":
        assert any(r["reached"] for r in rows)
    for pipe in {r["pipeline_id"] for r in rows}:
        reached = [r["reached"] for r in rows if r["pipeline_id"] == pipe]
        assert reached == sorted(reached, reverse=True)  # a funnel narrows


def test_stage_conversion_works_from_python(world):
    rows = pdsync.query(world.path, "stage_conversion", pipeline="1", since=2000)
    assert rows == world.rows("stage_conversion", pipeline="1", since="2000")
    assert rows[0]["reached"] > 0


def test_deal_history_names_stages_and_users_oldest_first(world):
    deal = max(world.deals, key=lambda d: len(world.changelogs[d["id"]]))
    rows = world.rows("deal_history", deal_id=str(deal["id"]))
    log = world.changelogs[deal["id"]]
    assert [(r["field_key"], r["old_value"], r["new_value"], r["time"]) for r in rows] == [
        (e["field_key"], e["old_value"], e["new_value"], v1_utc(e["time"])) for e in log
    ]
    names = {"stage_id": {i: s["name"] for i, s in world.stages.items()}, "user_id": world.users}
    names["pipeline_id"] = {i: p["name"] for i, p in world.pipelines.items()}
    for row, e in zip(rows, log, strict=True):
        assert row["changed_by"] == world.users[e["actor_user_id"]]
        assert row["source"] == "changelog"
        if e["field_key"] in names:
            assert row["new_label"] == names[e["field_key"]][int(e["new_value"])]
            assert row["old_label"] == names[e["field_key"]][int(e["old_value"])]
    assert any(r["field_key"] == "stage_id" for r in rows)
    assert world.rows("deal_history", deal_id="") == []
