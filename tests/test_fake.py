"""The fake Pipedrive, over real HTTP, checked against the official OpenAPI specs."""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdsync.fake import FakePipedrive, FakeServer
from pdsync.fake.core import ENTITIES as FAKE_ENTITIES
from pdsync.fake.history import text

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "pipedrive-api"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
V2_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")
V1_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


# -- OpenAPI → JSON Schema --------------------------------------------------------------------


class Spec:
    """Response schemas of the official specs as JSON Schema (refs inlined, nullable typed)."""

    def __init__(self, path: Path) -> None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with path.open(encoding="utf-8") as fh:
            self.doc = yaml.load(fh, Loader=loader)

    def _resolve(self, ref: str) -> dict:
        node: Any = self.doc
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node

    def convert(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.convert(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return self.convert(self._resolve(node["$ref"]))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("example", "examples", "description", "title", "nullable", "default"):
                continue
            if key.startswith("x-"):
                continue
            if key == "properties":
                out[key] = {name: self.convert(sub) for name, sub in value.items()}
            elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
                out[key] = self.convert(value)
            elif key in ("allOf", "oneOf", "anyOf"):
                out[key] = [self.convert(sub) for sub in value]
            else:
                out[key] = value
        # The list schemas type next_cursor as a plain string while their own description says
        # it "will be `null`" on the last page; trust the prose there, and only there.
        says_null = "will be `null`" in str(node.get("description", ""))
        if node.get("nullable") or says_null:
            if "type" in out:
                out["type"] = [out["type"], "null"]
                if "enum" in out:
                    out["enum"] = [*out["enum"], None]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out

    def operation(self, path: str, method: str = "get") -> dict:
        return self.doc["paths"][path][method]

    def response(self, path: str, status: str = "200", method: str = "get") -> dict:
        operation = self.operation(path, method)
        content = operation["responses"][status]["content"]["application/json"]
        return self.convert(content["schema"])

    def example(self, path: str, status: str = "200", method: str = "get") -> Any:
        operation = self.operation(path, method)
        content = operation["responses"][status]["content"]["application/json"]
        return content.get("example")


def _props(schema: dict) -> dict[str, Any]:
    """Properties of an object schema, merged across allOf."""
    props = dict(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        props.update(_props(sub))
    for sub in schema.get("anyOf", []):
        props.update(_props(sub))
    return props


class Checker:
    def __init__(self, spec: Spec, path: str, status: str = "200", method: str = "get") -> None:
        self.schema = spec.response(path, status, method)
        self.validator = jsonschema.Draft7Validator(
            self.schema, format_checker=jsonschema.FormatChecker()
        )
        # Keys the spec knows for one record: schema properties plus its own example's keys.
        data = _props(self.schema).get("data", {})
        item = data.get("items", data)
        self.known = set(_props(item))
        example = spec.example(path, status, method)
        if isinstance(example, dict):
            sample = example.get("data")
            for rec in sample if isinstance(sample, list) else [sample]:
                if isinstance(rec, dict):
                    self.known |= set(rec)

    def errors(self, body: Any) -> list[str]:
        return [f"{list(e.absolute_path)}: {e.message}" for e in self.validator.iter_errors(body)]

    def check(self, body: Any) -> None:
        errors = self.errors(body)
        assert not errors, errors[:5]
        data = body.get("data")
        for rec in data if isinstance(data, list) else [data] if data is not None else []:
            unknown = set(rec) - self.known
            assert not unknown, f"fields the spec does not know: {sorted(unknown)}"


@pytest.fixture(scope="module")
def specs() -> dict[str, Spec]:
    if not SPEC_DIR.is_dir():
        pytest.skip(f"official Pipedrive OpenAPI specs not found at {SPEC_DIR}")
    return {
        "v1": Spec(SPEC_DIR / "pipedrive-openapi-v1.yaml"),
        "v2": Spec(SPEC_DIR / "pipedrive-openapi-v2.yaml"),
    }


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> FakePipedrive:
    """A shared company; tests using it must not change it."""
    with FakePipedrive(deals=400, seed=7, now=NOW) as f:
        yield f


@pytest.fixture(scope="module")
def server(fake: FakePipedrive) -> FakeServer:
    with FakeServer(fake) as s:
        yield s


@pytest.fixture
def client(server: FakeServer, fake: FakePipedrive) -> httpx.Client:
    fake.clear_faults()
    with httpx.Client(base_url=server.url, headers={"x-api-token": fake.token}, timeout=10) as c:
        yield c
    fake.clear_faults()


class Live:
    """A small throwaway company with its own server, for tests that change things."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("deals", 50)
        kwargs.setdefault("seed", 3)
        kwargs.setdefault("now", NOW)
        self.fake = FakePipedrive(**kwargs)
        self.server = FakeServer(self.fake).start()
        self.client = httpx.Client(
            base_url=self.server.url, headers={"x-api-token": self.fake.token}, timeout=10
        )

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.fake.close()


@pytest.fixture
def live() -> Live:
    env = Live()
    yield env
    env.close()


def walk(client: httpx.Client, path: str, **params: Any) -> tuple[list[dict], list[dict]]:
    """All records of a v2 list (cursor) and the raw pages."""
    params = {k: v for k, v in params.items() if v is not None}
    records, pages = [], []
    while True:
        resp = client.get(path, params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body)
        records.extend(body["data"])
        cursor = body["additional_data"]["next_cursor"]
        if cursor is None:
            return records, pages
        params["cursor"] = cursor


def walk_v1(client: httpx.Client, path: str, **params: Any) -> tuple[list[dict], list[dict]]:
    records, pages = [], []
    start = 0
    while True:
        resp = client.get(path, params={**params, "start": start})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body)
        records.extend(body["data"])
        pagination = body["additional_data"]["pagination"]
        if not pagination["more_items_in_collection"]:
            assert "next_start" not in pagination
            return records, pages
        start = pagination["next_start"]


def ts(text: str) -> datetime:
    """Parse a v2 (RFC 3339) or v1 (``YYYY-MM-DD HH:MM:SS`` UTC) timestamp."""
    if "T" in text:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def rfc(moment: datetime, millis: bool = False) -> str:
    text = moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{moment.microsecond // 1000:03d}Z" if millis else "Z")


def ids(records: list[dict]) -> list[int]:
    return [r["id"] for r in records]


def listed_deals(fake: FakePipedrive, archived: bool = False, statuses=("open", "won", "lost")):
    return [
        d for d in fake.records("deals") if d["is_archived"] == archived and d["status"] in statuses
    ]


# -- every response matches the official spec -------------------------------------------------

V2_LISTS = [
    ("/api/v2/deals", "/deals", {}),
    ("/api/v2/deals", "/deals", {"status": "open,won,lost,deleted", "sort_by": "update_time"}),
    ("/api/v2/deals/archived", "/deals/archived", {}),
    ("/api/v2/persons", "/persons", {}),
    ("/api/v2/organizations", "/organizations", {}),
    ("/api/v2/activities", "/activities", {}),
    ("/api/v2/pipelines", "/pipelines", {}),
    ("/api/v2/stages", "/stages", {}),
    ("/api/v2/dealFields", "/dealFields", {}),
    (
        "/api/v2/dealFields",
        "/dealFields",
        {"include_fields": "ui_visibility,important_fields,required_fields"},
    ),
    ("/api/v2/personFields", "/personFields", {"include_fields": "ui_visibility"}),
    ("/api/v2/products", "/products", {"sort_by": "update_time"}),
    ("/api/v2/productFields", "/productFields", {"include_fields": "ui_visibility"}),
    ("/api/v2/activityFields", "/activityFields", {}),
    ("/api/v2/deals/products", "/deals/products", {"deal_ids": ",".join(map(str, range(1, 101)))}),
    ("/api/v2/projects", "/projects", {}),
    ("/api/v2/projects", "/projects", {"status": "open,completed,canceled,deleted"}),
    ("/api/v2/projects/archived", "/projects/archived", {}),
    ("/api/v2/tasks", "/tasks", {}),
    (
        "/api/v2/projectFields",
        "/projectFields",
        {"include_fields": "ui_visibility,important_fields,required_fields"},
    ),
    (
        "/api/v2/organizationFields",
        "/organizationFields",
        {"include_fields": "ui_visibility,important_fields,required_fields"},
    ),
]


@pytest.mark.parametrize(("path", "spec_path", "params"), V2_LISTS)
def test_v2_lists_match_the_spec(client, specs, path, spec_path, params):
    checker = Checker(specs["v2"], spec_path)
    records, pages = walk(client, path, limit=100, **params)
    assert records, path
    for page in pages:
        checker.check(page)


def test_single_project_and_task_match_the_spec(live, specs):
    """GET /api/v2/projects/{id} finds a project wherever it is listed (archived, deleted:
    by its status); GET /api/v2/tasks/{id} a live task; both cost a token; else 404."""
    fake, client = live.fake, live.client
    projects, tasks = Checker(specs["v2"], "/projects/{id}"), Checker(specs["v2"], "/tasks/{id}")
    listed = fake.records("projects")
    archived = next(p for p in listed if p["archive_time"])
    for project in (listed[0], archived):
        body = client.get(f"/api/v2/projects/{project['id']}").json()
        projects.check(body)
        assert body["data"] == project
    gone = fake.delete_project(listed[0]["id"])
    body = client.get(f"/api/v2/projects/{gone['id']}").json()
    projects.check(body)
    assert body["data"]["status"] == "deleted"
    task = fake.records("tasks")[-1]
    body = client.get(f"/api/v2/tasks/{task['id']}").json()
    tasks.check(body)
    assert body["data"] == task
    fake.delete_task(task["id"])
    spent = fake.tokens_spent
    assert client.get(f"/api/v2/tasks/{task['id']}").status_code == 404
    assert client.get("/api/v2/projects/999999").status_code == 404
    assert fake.tokens_spent - spent == 2  # a token each, as the spec's table says


def test_webhooks_endpoints_match_the_spec(live, specs):
    hook = {
        "subscription_url": "https://example.org/-/pdsync/webhook",
        "event_action": "*",
        "event_object": "deal",
        "name": "pdsync deal",
        "http_auth_user": "u",
        "http_auth_password": "p",
        "version": "2.0",
    }
    created = live.client.post("/v1/webhooks", json=hook)
    assert created.status_code == 201
    Checker(specs["v1"], "/webhooks", "201", "post").check(created.json())
    assert created.json()["data"]["http_auth_password"] is None  # never read back
    listed = live.client.get("/v1/webhooks")
    Checker(specs["v1"], "/webhooks").check(listed.json())
    assert [h["id"] for h in listed.json()["data"]] == [created.json()["data"]["id"]]
    bad = live.client.post("/v1/webhooks", json={**hook, "event_object": "board"})
    assert bad.status_code == 400
    Checker(specs["v1"], "/webhooks", "400", "post").check(bad.json())
    assert "event_object" in bad.json()["errors"]
    path = f"/v1/webhooks/{created.json()['data']['id']}"
    deleted = live.client.delete(path)
    Checker(specs["v1"], "/webhooks/{id}", "200", "delete").check(deleted.json())
    again = live.client.delete(path)
    assert again.status_code == 404
    Checker(specs["v1"], "/webhooks/{id}", "404", "delete").check(again.json())
    assert live.client.get("/v1/webhooks").json()["data"] == []


def test_v1_endpoints_match_the_spec(client, specs):
    notes_checker = Checker(specs["v1"], "/notes")
    _, pages = walk_v1(client, "/v1/notes", limit=100)
    assert len(pages) > 1
    for page in pages:
        notes_checker.check(page)
    users = client.get("/v1/users").json()
    Checker(specs["v1"], "/users").check(users)
    assert "additional_data" not in users  # /v1/users is not paginated
    me = client.get("/v1/users/me").json()
    Checker(specs["v1"], "/users/me").check(me)
    assert me["data"]["company_domain"]


@pytest.mark.parametrize(
    "path", ["/v1/currencies", "/v1/activityTypes", "/v1/leadLabels", "/v1/leadSources"]
)
def test_v1_reference_lists_match_the_spec(client, specs, path):
    body = client.get(path).json()
    Checker(specs["v1"], path[3:]).check(body)
    assert body["data"] and "additional_data" not in body  # not paginated


def test_deals_report_products_count_when_asked(client, fake, specs):
    body = client.get(
        "/api/v2/deals", params={"limit": 500, "include_fields": "products_count"}
    ).json()
    Checker(specs["v2"], "/deals").validator.validate(body)
    items: dict[int, int] = {}
    for item in fake.records("deal_products"):
        items[item["deal_id"]] = items.get(item["deal_id"], 0) + 1
    assert {d["id"]: d["products_count"] for d in body["data"]} == {
        d["id"]: items.get(d["id"], 0) for d in body["data"]
    }
    assert any(body_deal["products_count"] for body_deal in body["data"])
    plain = client.get("/api/v2/deals", params={"limit": 5}).json()["data"]
    assert all("products_count" not in d for d in plain)


def test_deal_products_need_deal_ids_at_most_100(client):
    assert client.get("/api/v2/deals/products").status_code == 400
    too_many = ",".join(map(str, range(1, 102)))
    assert client.get("/api/v2/deals/products", params={"deal_ids": too_many}).status_code == 400


def test_line_item_and_product_mutations(live, specs):
    fake, client = live.fake, live.client
    deal = next(d for d in fake.records("deals") if not d["is_deleted"])
    product = fake.records("products")[0]
    item = fake.add_line_item(deal["id"], product["id"], quantity=4, discount=10)
    bumped = next(d for d in fake.records("deals") if d["id"] == deal["id"])
    assert bumped["update_time"] > deal["update_time"]  # the assumption pdsync relies on
    listed = walk(client, "/api/v2/deals/products", deal_ids=str(deal["id"]))[0]
    assert item["id"] in ids(listed)
    assert item["sum"] == round(4 * item["item_price"] * 0.9 * (1 + item["tax"] / 100), 2)
    changed = fake.update_line_item(item["id"], quantity=1)
    assert changed["sum"] < item["sum"]
    fake.remove_line_item(item["id"])
    listed, pages = walk(client, "/api/v2/deals/products", deal_ids=str(deal["id"]))
    assert item["id"] not in ids(listed)
    for page in pages:
        Checker(specs["v2"], "/deals/products").check(page)
    fake.update_product(product["id"], name="Renamed valve")
    fake.delete_product(fake.add_product("Gone soon", 10)["id"])
    products, pages = walk(client, "/api/v2/products")
    assert "Renamed valve" in [p["name"] for p in products]
    assert "Gone soon" not in [p["name"] for p in products]
    for page in pages:
        Checker(specs["v2"], "/products").check(page)


def test_the_validator_is_not_vacuous(client, specs):
    checker = Checker(specs["v2"], "/deals")
    body = client.get("/api/v2/deals", params={"limit": 3}).json()
    checker.check(body)
    assert checker.known >= {"id", "title", "won_time", "custom_fields"}

    def broken(change) -> list[str]:
        copied = copy.deepcopy(body)
        change(copied)
        return checker.errors(copied)

    assert broken(lambda b: b["data"][0].update(won_time=None))  # not nullable in the spec
    assert broken(lambda b: b["data"][0].update(id="1"))
    assert broken(lambda b: b["data"][0].update(title=5))
    assert broken(lambda b: b["data"][0].update(label_ids=["a"]))
    assert broken(lambda b: b.update(success="yes"))
    assert broken(lambda b: b["additional_data"].update(next_cursor=12))
    assert not broken(lambda b: b["data"][0].update(probability=None))  # nullable
    assert not broken(lambda b: b["additional_data"].update(next_cursor=None))
    with pytest.raises(AssertionError, match="does not know"):
        checker.check({**body, "data": [{**body["data"][0], "made_up_field": 1}]})
    me_checker = Checker(specs["v1"], "/users/me")
    me = client.get("/v1/users/me").json()
    me["data"]["company_domain"] = 5
    assert me_checker.errors(me)
    notes = Checker(specs["v1"], "/notes")
    note = client.get("/v1/notes", params={"limit": 1}).json()
    note["data"][0]["deal"] = {"title": 1}
    assert notes.errors(note)


def test_error_bodies_match_the_spec(server, specs):
    unauthorized = httpx.get(server.url + "/v1/users/me")
    assert unauthorized.status_code == 401
    checker = Checker(specs["v1"], "/users/me", "401")
    body = unauthorized.json()
    assert not checker.errors(body)
    assert body == {"success": False, "error": "unauthorized access", "errorCode": 401}
    assert checker.errors({**body, "errorCode": "401"})
    # 400/404 follow the spec's generic error shape (v2 documents it for 404).
    error_schema = specs["v2"].response("/deals/{id}/convert/status/{conversion_id}", "404")
    validator = jsonschema.Draft7Validator(error_schema)
    headers = {"x-api-token": "demo-token"}
    for path, status in (("/api/v2/deals?limit=501", 400), ("/api/v2/nope", 404)):
        resp = httpx.get(server.url + path, headers=headers)
        assert resp.status_code == status
        err = resp.json()
        assert not list(validator.iter_errors(err))
        assert err["success"] is False and err["error"] and err["error_info"]
        assert set(err) >= {"success", "error", "error_info", "data", "additional_data"}


# -- authentication ---------------------------------------------------------------------------


def test_auth_header_bearer_and_token_in_url(server, fake):
    url = server.url + "/api/v2/pipelines"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"x-api-token": "wrong"}).status_code == 401
    assert httpx.get(url, headers={"x-api-token": fake.token}).status_code == 200
    bearer = {"Authorization": f"Bearer {fake.token}"}
    assert httpx.get(url, headers=bearer).status_code == 200
    assert fake.token_in_url_seen is False
    assert httpx.get(url, params={"api_token": fake.token}).status_code == 200
    assert fake.token_in_url_seen is True
    fake.token_in_url_seen = False  # shared fake: leave it as found


# -- pagination -------------------------------------------------------------------------------

SORTABLE = [
    ("/api/v2/deals", "deals"),
    ("/api/v2/persons", "persons"),
    ("/api/v2/organizations", "organizations"),
    ("/api/v2/activities", "activities"),
]


def _expected(fake: FakePipedrive, entity: str) -> list[dict]:
    return listed_deals(fake) if entity == "deals" else fake.records(entity)


def _sort_key(sort_by: str):
    if sort_by == "id":
        return lambda r: (r["id"],)
    return lambda r: (ts(r[sort_by]), r["id"])


@pytest.mark.parametrize(("path", "entity"), SORTABLE)
@pytest.mark.parametrize("sort_by", ["id", "update_time", "add_time"])
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_cursor_walk_returns_every_record_once_in_order(
    client, fake, path, entity, sort_by, direction
):
    records, pages = walk(client, path, limit=37, sort_by=sort_by, sort_direction=direction)
    assert len(ids(records)) == len(set(ids(records)))
    expected = sorted(_expected(fake, entity), key=_sort_key(sort_by), reverse=direction == "desc")
    assert ids(records) == ids(expected)
    assert records == expected
    assert all(len(p["data"]) == 37 for p in pages[:-1])


def test_cursor_is_opaque_base64_and_limit_defaults_to_100(client, fake):
    body = client.get("/api/v2/deals").json()
    assert len(body["data"]) == 100
    cursor = body["additional_data"]["next_cursor"]
    decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert decoded["id"] == body["data"][-1]["id"]
    last = client.get("/api/v2/pipelines", params={"limit": 500}).json()
    assert last["additional_data"]["next_cursor"] is None
    assert len(last["data"]) == 8


@pytest.mark.parametrize(
    "path", ["/api/v2/deals", "/api/v2/persons", "/api/v2/stages", "/api/v2/dealFields"]
)
def test_limit_over_500_is_refused(client, path):
    assert client.get(path, params={"limit": 500}).status_code == 200
    resp = client.get(path, params={"limit": 501})
    assert resp.status_code == 400
    assert "500" in resp.json()["error"]
    assert client.get("/v1/notes", params={"limit": 501}).status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"sort_by": "title"},
        {"sort_direction": "up"},
        {"status": "closed"},
        {"status": "open,bogus"},
        {"updated_since": "yesterday"},
        {"updated_since": "2025-01-01"},
        {"updated_until": "2025-01-01 10:00:00"},
        {"cursor": "not-a-cursor"},
        {"pipeline_id": "x"},
        {"limit": "0"},
        {"limit": "ten"},
    ],
)
def test_invalid_parameters_are_400(client, params):
    resp = client.get("/api/v2/deals", params=params)
    assert resp.status_code == 400, params
    assert resp.json()["success"] is False


def test_cursor_from_another_sort_is_refused(client):
    body = client.get("/api/v2/deals", params={"limit": 5}).json()
    cursor = body["additional_data"]["next_cursor"]
    resp = client.get("/api/v2/deals", params={"cursor": cursor, "sort_by": "update_time"})
    assert resp.status_code == 400


def test_updated_since_is_inclusive_and_updated_until_exclusive(client, fake):
    deals = listed_deals(fake)
    pivot = sorted(deals, key=lambda d: ts(d["update_time"]))[len(deals) // 2]
    moment = ts(pivot["update_time"])
    has_ms = "." in pivot["update_time"]
    after = {d["id"] for d in deals if ts(d["update_time"]) >= moment}
    before = {d["id"] for d in deals if ts(d["update_time"]) < moment}
    for since in (
        pivot["update_time"],
        rfc(moment, millis=True),
        moment.astimezone(timezone(timedelta(hours=3))).isoformat(),  # offset form
    ):
        got, _ = walk(client, "/api/v2/deals", updated_since=since, limit=500)
        assert set(ids(got)) == after, since
        assert pivot["id"] in ids(got)
    got, _ = walk(client, "/api/v2/deals", updated_until=pivot["update_time"], limit=500)
    assert set(ids(got)) == before
    assert pivot["id"] not in ids(got)
    if not has_ms:  # one millisecond later excludes a record that has whole seconds
        later = rfc(moment + timedelta(milliseconds=1), millis=True)
        got, _ = walk(client, "/api/v2/deals", updated_since=later, limit=500)
        assert pivot["id"] not in ids(got)
    window, _ = walk(
        client,
        "/api/v2/deals",
        updated_since=pivot["update_time"],
        updated_until=rfc(moment + timedelta(days=30)),
    )
    assert all(moment <= ts(d["update_time"]) < moment + timedelta(days=30) for d in window)


def test_deal_status_filters(client, fake):
    all_deals = fake.records("deals")
    got = lambda **p: set(ids(walk(client, "/api/v2/deals", limit=500, **p)[0]))  # noqa: E731
    plain = [d for d in all_deals if not d["is_archived"]]
    assert got() == {d["id"] for d in plain if d["status"] in ("open", "won", "lost")}
    assert got(status="won") == {d["id"] for d in plain if d["status"] == "won"}
    assert got(status="open,lost") == {d["id"] for d in plain if d["status"] in ("open", "lost")}
    deleted = got(status="deleted")
    assert deleted and deleted == {d["id"] for d in plain if d["status"] == "deleted"}
    assert all(d["is_deleted"] for d in plain if d["id"] in deleted)
    everything = got(status="open,won,lost,deleted")
    assert everything == {d["id"] for d in plain}
    statuses = {d["status"] for d in all_deals}
    assert statuses == {"open", "won", "lost", "deleted"}


def test_archived_deals_only_at_the_archived_endpoint(client, fake):
    archived = {d["id"] for d in fake.records("deals") if d["is_archived"]}
    assert archived
    listed = set(ids(walk(client, "/api/v2/deals", status="open,won,lost,deleted")[0]))
    assert not listed & archived
    got, _ = walk(client, "/api/v2/deals/archived", limit=10)
    assert {d["id"] for d in got} == {
        d["id"] for d in fake.records("deals") if d["is_archived"] and d["status"] != "deleted"
    }
    assert all(d["is_archived"] and d["archive_time"] for d in got)


def test_filters_by_pipeline_stage_and_owner(client, fake):
    deals = listed_deals(fake)
    for name in ("pipeline_id", "stage_id", "owner_id"):
        value = deals[0][name]
        got, _ = walk(client, "/api/v2/deals", limit=500, **{name: value})
        assert set(ids(got)) == {d["id"] for d in deals if d.get(name) == value}
    stages = client.get("/api/v2/stages", params={"pipeline_id": 5}).json()["data"]
    assert stages and all(s["pipeline_id"] == 5 for s in stages)
    assert [s["order_nr"] for s in stages] == list(range(1, len(stages) + 1))


def test_deleted_deals_stay_30_days_then_are_purged(live):
    fake, client = live.fake, live.client
    fake.freeze(NOW)
    fake.delete_deal(1)
    visible = lambda: set(ids(walk(client, "/api/v2/deals", status="deleted")[0]))  # noqa: E731
    recent = visible()
    assert 1 in recent and len(recent) > 1  # generated recent deletions too
    fake.advance(29 * 86400)
    assert 1 in visible()
    assert any(d["id"] == 1 for d in fake.records("deals"))
    fake.advance(2 * 86400)
    assert visible() == set()
    assert all(d["status"] != "deleted" for d in fake.records("deals"))
    assert fake.count("deals") == len(fake.records("deals"))


# -- keyset pagination under concurrent changes -----------------------------------------------


def test_record_updated_mid_walk_moves_behind_the_cursor(live):
    fake, client = live.fake, live.client
    fake.freeze(NOW + timedelta(hours=1))
    before = listed_deals(fake)
    params: dict[str, Any] = {"limit": 10, "sort_by": "update_time"}
    first = client.get("/api/v2/deals", params=params).json()
    seen = ids(first["data"])
    fake.update_deal(seen[0], title="moved after being seen")
    unseen = next(d["id"] for d in before if d["id"] not in seen)
    fake.advance(1)
    fake.update_deal(unseen, value=1)
    rest, _ = walk(
        client, "/api/v2/deals", cursor=first["additional_data"]["next_cursor"], **params
    )
    walked = seen + ids(rest)
    assert set(walked) == {d["id"] for d in before}  # nothing skipped
    assert walked[-2:] == [seen[0], unseen]  # the updated ones come last
    assert rest[-2]["title"] == "moved after being seen"


def test_v1_notes_offset_pagination(client, fake):
    notes = fake.records("notes")
    got, pages = walk_v1(client, "/v1/notes", limit=40)
    assert got == notes  # default order is id
    assert len(pages) == -(-len(notes) // 40)
    assert pages[0]["additional_data"]["pagination"] == {
        "start": 0,
        "limit": 40,
        "more_items_in_collection": True,
        "next_start": 40,
    }
    desc, _ = walk_v1(client, "/v1/notes", limit=50, sort="update_time DESC")
    assert ids(desc) == ids(
        sorted(notes, key=lambda n: (-ts(n["update_time"]).timestamp(), n["id"]))
    )
    deal_id = next(n["deal_id"] for n in notes if n.get("deal_id"))
    for_deal, _ = walk_v1(client, "/v1/notes", deal_id=deal_id)
    assert ids(for_deal) == [n["id"] for n in notes if n.get("deal_id") == deal_id]
    assert all(n["deal"]["title"] for n in for_deal)
    pivot = sorted(notes, key=lambda n: ts(n["update_time"]))[len(notes) // 2]
    since, _ = walk_v1(client, "/v1/notes", updated_since=rfc(ts(pivot["update_time"])))
    moment = ts(pivot["update_time"])
    assert set(ids(since)) == {n["id"] for n in notes if ts(n["update_time"]) >= moment}
    for bad in ("title ASC", "id SIDEWAYS", "id ASC DESC"):
        assert client.get("/v1/notes", params={"sort": bad}).status_code == 400


def test_v1_offset_pagination_is_honest_about_changes(live):
    """Deleting a record already paged past shifts the rest: the next page skips one."""
    fake, client = live.fake, live.client
    notes = fake.records("notes")
    first = client.get("/v1/notes", params={"limit": 5, "start": 0}).json()
    fake.delete_note(first["data"][0]["id"])
    second = client.get("/v1/notes", params={"limit": 5, "start": 5}).json()
    assert ids(second["data"]) == ids(notes[6:11])  # notes[5] was skipped, as on Pipedrive


# -- mutations --------------------------------------------------------------------------------


def _find(client: httpx.Client, path: str, id_: int, **params: Any) -> dict | None:
    records, _ = walk(client, path, limit=500, **params)
    return next((r for r in records if r["id"] == id_), None)


def test_deal_mutations_bump_update_time_and_show_up(live, specs):
    fake, client = live.fake, live.client
    later = NOW + timedelta(hours=2)
    fake.freeze(later)
    deal_id = listed_deals(fake)[0]["id"]
    updated = fake.update_deal(deal_id, title="Renamed <i>deal</i>", value=1234.5, currency="EUR")
    assert ts(updated["update_time"]) == later
    since = rfc(later)
    got, _ = walk(client, "/api/v2/deals", updated_since=since)
    assert ids(got) == [deal_id]
    assert got[0] == updated and got[0]["title"] == "Renamed <i>deal</i>"

    fake.advance(60)
    won = fake.set_deal_status(deal_id, "won")
    assert won["status"] == "won" and won["won_time"] == won["close_time"] == won["update_time"]
    assert "lost_time" not in won
    lost = fake.set_deal_status(deal_id, "lost", lost_reason="Price too high")
    assert lost["lost_reason"] == "Price too high" and "won_time" not in lost
    reopened = fake.set_deal_status(deal_id, "open")
    assert reopened["close_time"] is None and reopened["lost_reason"] is None

    fake.advance(60)
    moved = fake.move_deal(deal_id, 30)  # a stage of another pipeline
    stage = next(s for s in fake.records("stages") if s["id"] == 30)
    assert moved["stage_id"] == 30 and moved["pipeline_id"] == stage["pipeline_id"]
    assert moved["stage_change_time"] == moved["update_time"]

    fake.archive_deal(deal_id)
    assert _find(client, "/api/v2/deals", deal_id) is None
    assert _find(client, "/api/v2/deals/archived", deal_id)["is_archived"] is True
    fake.unarchive_deal(deal_id)
    assert _find(client, "/api/v2/deals", deal_id)["archive_time"] is None

    custom = {f["field_code"]: f for f in fake.records("deal_fields") if f["is_custom_field"]}
    enum_code = next(c for c, f in custom.items() if f["field_type"] == "enum")
    field = fake.add_deal_field_option(enum_code, "Turnkey")
    option = field["options"][-1]
    assert option["label"] == "Turnkey"
    fake.update_deal(deal_id, custom_fields={enum_code: option["id"]})
    assert _find(client, "/api/v2/deals", deal_id)["custom_fields"][enum_code] == option["id"]
    fields = walk(client, "/api/v2/dealFields")[0]
    assert option in next(f for f in fields if f["field_code"] == enum_code)["options"]
    with pytest.raises(ValueError):
        fake.update_deal(deal_id, custom_fields={"not-a-field": 1})
    with pytest.raises(ValueError):
        fake.update_deal(deal_id, colour="red")

    new = fake.add_deal(title="Fresh", value=10, stage_id=3, person_id=1, org_id=2)
    assert new["id"] == max(d["id"] for d in fake.records("deals"))
    assert (new["pipeline_id"], new["stage_id"], new["status"]) == (1, 3, "open")
    assert _find(client, "/api/v2/deals", new["id"]) == new

    fake.delete_deal(new["id"])
    assert _find(client, "/api/v2/deals", new["id"]) is None
    gone = _find(client, "/api/v2/deals", new["id"], status="deleted")
    assert gone["status"] == "deleted" and gone["is_deleted"] is True
    with pytest.raises(KeyError):
        fake.update_deal(new["id"], title="x")
    checker = Checker(specs["v2"], "/deals")
    for page in walk(client, "/api/v2/deals", status="open,won,lost,deleted")[1]:
        checker.check(page)


def test_contact_activity_note_and_pipeline_mutations(live, specs):
    fake, client = live.fake, live.client
    fake.freeze(NOW + timedelta(days=1))
    since = rfc(fake.now())

    person = fake.add_person("Zoë Al-Harbi", org_id=1, emails=["zoe@example.com"])
    fake.update_person(person["id"], job_title="Buyer")
    org = fake.update_organization(2, website="https://example.com")
    fake.delete_person(3)
    fake.delete_organization(4)
    persons, _ = walk(client, "/api/v2/persons", updated_since=since)
    assert ids(persons) == [person["id"]]
    assert persons[0]["job_title"] == "Buyer" and persons[0]["first_name"] == "Zoë"
    assert _find(client, "/api/v2/persons", 3) is None
    orgs, _ = walk(client, "/api/v2/organizations", updated_since=since)
    assert orgs == [org]
    assert 4 not in ids(fake.records("organizations"))

    activity = fake.add_activity("Site visit", deal_id=1, person_id=1, type="meeting")
    done = fake.update_activity(activity["id"], done=True)
    assert done["marked_as_done_time"] == done["update_time"]
    fake.delete_activity(1)
    acts, _ = walk(client, "/api/v2/activities", updated_since=since)
    assert ids(acts) == [activity["id"]] and acts[0]["done"] is True

    note = fake.add_note("<p>Hello &amp; <b>welcome</b></p>", deal_id=2)
    edited = fake.edit_note(note["id"], "<p>Edited</p>")
    fake.delete_note(1)
    notes, _ = walk_v1(client, "/v1/notes", updated_since=since)
    assert notes == [edited]
    assert edited["deal"]["title"] == fake.records("deals")[1]["title"]
    assert V1_TIME.match(edited["update_time"])

    stage = fake.rename_stage(2, "Called")
    pipeline = fake.rename_pipeline(2, "Outbound")
    assert _find(client, "/api/v2/stages", 2)["name"] == "Called"
    assert _find(client, "/api/v2/pipelines", 2) == pipeline
    assert stage["update_time"] == pipeline["update_time"] == rfc(fake.now())

    for path, spec_path in [
        ("/api/v2/persons", "/persons"),
        ("/api/v2/organizations", "/organizations"),
        ("/api/v2/activities", "/activities"),
    ]:
        checker = Checker(specs["v2"], spec_path)
        for page in walk(client, path)[1]:
            checker.check(page)
    for page in walk_v1(client, "/v1/notes")[1]:
        Checker(specs["v1"], "/notes").check(page)


def test_random_mutations_keep_the_api_valid(live, specs):
    fake, client = live.fake, live.client
    fake.freeze(NOW + timedelta(days=2))
    counts = {e: fake.count(e) for e in ("deals", "notes", "activities")}
    applied = fake.random_mutations(200, random.Random(5))
    assert len(applied) == 200
    assert len({name for name, _ in applied}) > 10
    changed, _ = walk(client, "/api/v2/deals", updated_since=rfc(fake.now()), limit=500)
    assert changed
    assert sum(fake.count(e) for e in counts) != sum(counts.values())
    for path, spec_path, params in V2_LISTS:
        checker = Checker(specs["v2"], spec_path)
        for page in walk(client, path, **params)[1]:
            checker.check(page)


# -- rate limit, faults, latency, log ---------------------------------------------------------


def test_burst_limit_headers_and_429():
    env = Live(burst_limit=5)
    try:
        statuses, remaining = [], []
        for _ in range(6):
            resp = env.client.get("/api/v2/pipelines")
            statuses.append(resp.status_code)
            remaining.append(resp.headers.get("x-ratelimit-remaining"))
            assert resp.headers["x-ratelimit-limit"] == "5"
            assert int(resp.headers["x-ratelimit-reset"]) >= 1
        assert statuses == [200] * 5 + [429]
        assert remaining == ["4", "3", "2", "1", "0", "0"]
        body = resp.json()
        assert body["success"] is False and body["error"] == "Request over limit"
        assert body["errorCode"] == 429
        assert env.fake.rate_limited == 1
        assert 1 <= int(resp.headers["x-ratelimit-reset"]) <= 2
    finally:
        env.close()


def test_no_rate_limit_headers_when_unlimited(client):
    resp = client.get("/api/v2/pipelines")
    assert "x-ratelimit-limit" not in resp.headers


@pytest.mark.parametrize("kind", ["429", "429-reset", "500", "502", "503", "401"])
def test_fault_statuses(client, fake, kind):
    fake.inject("/api/v2/deals", kind)
    resp = client.get("/api/v2/deals")
    assert resp.status_code == int(kind[:3])
    assert int(resp.headers["content-length"]) == len(resp.content)
    if kind == "429":
        assert "x-ratelimit-reset" not in resp.headers
    if kind == "429-reset":
        assert resp.headers["x-ratelimit-reset"] == "1"
    if kind in ("429", "429-reset", "500", "401"):
        assert resp.json()["success"] is False
    assert client.get("/api/v2/deals").status_code == 200  # times=1


def test_fault_invalid_json(client, fake):
    fake.inject("/api/v2/persons", "invalid_json")
    resp = client.get("/api/v2/persons")
    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        resp.json()


@pytest.mark.parametrize("kind", ["reset", "truncated"])
def test_fault_broken_connections(client, fake, kind):
    fake.inject("/api/v2/deals", kind)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        client.get("/api/v2/deals", params={"limit": 500})
    assert client.get("/api/v2/deals").status_code == 200  # a new connection works


def test_fault_timeout(server, fake):
    fake.timeout_hold = 1.0
    fake.inject("/api/v2/deals", "timeout")
    try:
        with httpx.Client(base_url=server.url, headers={"x-api-token": fake.token}) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.get("/api/v2/deals", timeout=0.2)
            assert c.get("/api/v2/deals", timeout=5).status_code == 200
    finally:
        fake.timeout_hold = 5.0


def test_fault_after_and_times(client, fake):
    fake.inject("/api/v2/deals", "500", times=2, after=1)
    got = [client.get("/api/v2/deals").status_code for _ in range(4)]
    assert got == [200, 500, 500, 200]
    fake.inject("/api/v2/deals", "503", times=5)
    assert client.get("/api/v2/persons").status_code == 200  # other paths unaffected
    fake.clear_faults()
    assert client.get("/api/v2/deals").status_code == 200
    with pytest.raises(ValueError):
        fake.inject("/api/v2/deals", "meltdown")


def test_request_log(client, fake):
    fake.reset_log()
    client.get("/api/v2/stages", params={"pipeline_id": 2, "limit": 3})
    client.get("/v1/nothing")
    log = fake.requests
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("GET", "/api/v2/stages", 200),
        ("GET", "/v1/nothing", 404),
    ]
    assert log[0]["query"] == "pipeline_id=2&limit=3"
    assert log[0]["headers"]["x-api-token"] == fake.token
    assert all(name == name.lower() for name in log[0]["headers"])
    fake.reset_log()
    assert fake.requests == []


def test_other_methods_and_unknown_paths_are_404(client):
    for method, path in [
        ("POST", "/api/v2/deals"),
        ("PATCH", "/api/v2/deals"),
        ("DELETE", "/api/v2/deals"),
        ("GET", "/api/v2/leads"),
        ("GET", "/v1/deals"),
    ]:
        resp = client.request(method, path, json={"title": "x"})
        assert resp.status_code == 404, (method, path)
        assert resp.json()["success"] is False
    assert client.get("/api/v2/deals").status_code == 200  # the connection stays usable


def test_latency_is_added():
    env = Live(latency=0.2)
    try:
        started = time.perf_counter()
        assert env.client.get("/api/v2/pipelines").status_code == 200
        assert time.perf_counter() - started >= 0.2
    finally:
        env.close()


def test_server_stops_promptly_with_idle_keepalive_connections():
    env = Live()
    url = env.server.url
    assert env.client.get("/api/v2/pipelines").status_code == 200  # connection stays open
    started = time.perf_counter()
    env.server.stop()
    assert time.perf_counter() - started < 3
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/api/v2/pipelines", timeout=2)
    env.close()


def test_close_removes_the_database_file():
    fake = FakePipedrive(deals=10, seed=1)
    path = Path(fake.store.path)
    assert path.exists()
    fake.close()
    assert not path.exists()


# -- the demo company -------------------------------------------------------------------------


def test_pipelines_stages_and_users(fake):
    pipelines = {p["id"]: p["name"] for p in fake.records("pipelines")}
    assert pipelines == {
        1: "Pipeline",
        2: "Prospecting",
        3: "Aramco Inquiries",
        4: "Aramco PO",
        5: "Aramco Projects",
        6: "Bidding Projects",
        10: "Design Development",
        11: "Problematic & Stuck Orders",
    }
    stages = fake.records("stages")
    for pid in pipelines:
        own = sorted((s for s in stages if s["pipeline_id"] == pid), key=lambda s: s["order_nr"])
        assert 4 <= len(own) <= 7
        assert [s["order_nr"] for s in own] == list(range(1, len(own) + 1))
    assert any(s["is_deal_rot_enabled"] and s["days_to_rotten"] for s in stages)
    assert any(s["days_to_rotten"] is None for s in stages)
    users = fake.records("users")
    assert len(users) == 8 and sum(u["is_you"] for u in users) == 1
    assert any(not u["active_flag"] for u in users)


def test_custom_fields_and_their_values(fake):
    fields = [f for f in fake.records("deal_fields") if f["is_custom_field"]]
    assert {"varchar", "enum", "set", "monetary", "daterange", "address", "date"} <= {
        f["field_type"] for f in fields
    }
    assert {"double", "int"} & {f["field_type"] for f in fields}
    assert all(re.fullmatch(r"[0-9a-f]{40}", f["field_code"]) for f in fields)
    standard = [f for f in fake.records("deal_fields") if not f["is_custom_field"]]
    assert {"title", "value"} <= {f["field_code"] for f in standard}
    by_code = {f["field_code"]: f for f in fields}
    seen_types = set()
    for deal in fake.records("deals"):
        assert set(deal["custom_fields"]) == set(by_code)
        for code, value in deal["custom_fields"].items():
            if value is None:
                continue
            ftype = by_code[code]["field_type"]
            seen_types.add(ftype)
            options = {o["id"] for o in by_code[code]["options"] or []}
            if ftype == "enum":
                assert value in options
            elif ftype == "set":
                assert isinstance(value, list) and set(value) <= options
            elif ftype == "monetary":
                assert set(value) == {"value", "currency"} and value["currency"] in {
                    "SAR",
                    "USD",
                    "EUR",
                    "AED",
                }
            elif ftype == "daterange":
                assert set(value) == {"value", "until"} and value["value"] <= value["until"]
            elif ftype == "address":
                assert value["value"] and value["country"]
            elif ftype in ("date",):
                assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)
            elif ftype in ("double", "int"):
                assert isinstance(value, (int, float))
            else:
                assert isinstance(value, str)
    assert seen_types == {f["field_type"] for f in fields}
    for entity, kind in (("persons", "person_fields"), ("organizations", "organization_fields")):
        codes = {f["field_code"] for f in fake.records(kind) if f["is_custom_field"]}
        assert 1 <= len(codes) <= 2
        assert all(set(r["custom_fields"]) == codes for r in fake.records(entity))


def test_deals_look_like_a_real_company(fake):
    deals = fake.records("deals")
    listed = [d for d in deals if not d["is_archived"] and d["status"] != "deleted"]
    share_open = sum(d["status"] == "open" for d in listed) / len(listed)
    assert 0.45 < share_open < 0.75
    assert all(d["lost_reason"] for d in deals if d["status"] == "lost")
    currencies = [d["currency"] for d in deals]
    assert currencies.count("SAR") > len(deals) / 2
    assert {"USD", "EUR", "AED"} <= set(currencies)
    assert any('<b>Urgent</b> & "quoted"' in d["title"] for d in deals)
    assert any(not d["title"].isascii() for d in deals)
    ages = [NOW - ts(d["add_time"]) for d in deals]
    assert max(ages) > timedelta(days=900) and min(ages) < timedelta(days=30)
    assert all(ts(d["add_time"]) <= ts(d["update_time"]) <= NOW for d in deals)
    for field in ("add_time", "update_time"):
        assert all(V2_TIME.match(d[field]) for d in deals)
        assert any("." in d[field] for d in deals) and any("." not in d[field] for d in deals)
    archived = [d for d in deals if d["is_archived"]]
    assert archived and all(d["archive_time"] for d in archived)
    names = [p["name"] for p in fake.records("persons")]
    assert any(not n.isascii() for n in names)
    notes = fake.records("notes")
    assert all(n["content"].startswith("<") for n in notes)
    assert all(V1_TIME.match(n["add_time"]) and V1_TIME.match(n["update_time"]) for n in notes)
    activities = fake.records("activities")
    assert any(a.get("deal_id") for a in activities) and any(a.get("person_id") for a in activities)
    assert fake.count("deals") == 400  # deals=N: N deals exist upstream (purged ones are gaps)
    assert max(d["id"] for d in deals) > 400
    assert fake.count("persons") >= 400 // 3 and fake.count("organizations") >= 400 // 5


def test_same_seed_and_now_give_the_same_company():
    with (
        FakePipedrive(deals=60, seed=11, now=NOW) as one,
        FakePipedrive(deals=60, seed=11, now=NOW) as two,
        FakePipedrive(deals=60, seed=12, now=NOW) as other,
    ):
        for entity in ("deals", "persons", "notes", "deal_fields", "users", "leads"):
            assert one.records(entity) == two.records(entity)
        assert one.records("deals") != other.records("deals")


def test_no_generated_record_is_added_or_updated_in_the_future():
    """Pipedrive has no record changed after "now". A large company's last activities and
    notes were added up to six hours after it (the webhook bench's sync refused one)."""
    now = datetime(2026, 12, 2, 11, 36, tzinfo=timezone.utc)  # when the bench saw it
    with FakePipedrive(deals=14_000, seed=3, now=now) as fake:  # a seed that had some
        for entity in FAKE_ENTITIES:
            for record in fake.iter_records(entity):
                for name in ("add_time", "update_time"):
                    value = record.get(name)
                    if value:
                        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
                        moment = moment.replace(tzinfo=moment.tzinfo or timezone.utc)
                        assert moment <= now, (entity, record["id"], name, value)


def test_records_and_count_agree(fake):
    for entity in FAKE_ENTITIES:
        assert fake.count(entity) == len(fake.records(entity)), entity
    with pytest.raises(ValueError):
        fake.records("files")


def test_clock(live):
    fake = live.fake
    assert fake.now() == NOW  # `now` freezes the clock
    fake.advance(90)
    assert fake.now() == NOW + timedelta(seconds=90)
    fake.freeze(datetime(2026, 1, 1))  # naive means UTC
    assert fake.now() == datetime(2026, 1, 1, tzinfo=timezone.utc)
    fake.unfreeze()
    assert fake.now() >= datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert fake.now().tzinfo is not None


# -- property: any sort, direction, page size and status list walks the right set ----------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sort_by=st.sampled_from(["id", "update_time", "add_time"]),
    direction=st.sampled_from(["asc", "desc"]),
    limit=st.integers(min_value=1, max_value=500),
    statuses=st.sets(st.sampled_from(["open", "won", "lost", "deleted"]), min_size=1),
    archived=st.booleans(),
)
def test_any_walk_matches_ground_truth(client, fake, sort_by, direction, limit, statuses, archived):
    path = "/api/v2/deals/archived" if archived else "/api/v2/deals"
    order = sorted(statuses)
    got, pages = walk(
        client, path, sort_by=sort_by, sort_direction=direction, limit=limit, status=",".join(order)
    )
    expected = sorted(
        listed_deals(fake, archived, statuses), key=_sort_key(sort_by), reverse=direction == "desc"
    )
    assert ids(got) == ids(expected)
    assert len(pages) == max(1, -(-len(expected) // limit))


def test_declared_token_costs_are_pipedrives():
    """Each declared route's token cost is the one in Pipedrive's published table."""
    from pdsync.client import token_cost
    from pdsync.fake.entities import BY_PATH

    for path, (_, route) in BY_PATH.items():
        assert route.tokens == token_cost(path), path


# -- leads ------------------------------------------------------------------------------------

HASH_KEY = re.compile(r"^[0-9a-f]{40}$")


def check_leads(checker: Checker, page: dict) -> None:
    """Against the spec; deal custom fields are top-level hash keys, as the spec's prose says."""
    checker.check({**page, "data": [_without_custom(r) for r in page["data"]]})


def _without_custom(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not HASH_KEY.match(k)}


@pytest.mark.parametrize("path", ["/v1/leads", "/v1/leads/archived"])
def test_leads_match_the_spec(client, fake, specs, path):
    checker = Checker(specs["v1"], path[3:])
    records, pages = walk_leads(client, path, limit=3)
    assert len(pages) > 1
    for page in pages:
        check_leads(checker, page)
        assert set(page["additional_data"]) == {"start", "limit", "more_items_in_collection"}
    archived = path.endswith("archived")
    want = [r for r in fake.records("leads") if r["is_archived"] == archived]
    # Oldest first by default, as the spec says.
    assert [r["id"] for r in records] == [
        r["id"] for r in sorted(want, key=lambda r: (ts(r["add_time"]), r["id"]))
    ]
    assert records == sorted(want, key=lambda r: (ts(r["add_time"]), r["id"]))
    labels = {label["id"] for label in fake.records("lead_labels")}
    assert all(set(r["label_ids"]) <= labels for r in records)
    deal_codes = {f["field_code"] for f in fake.records("deal_fields")}
    assert any(HASH_KEY.match(k) for r in records for k in r)
    assert all(k in deal_codes for r in records for k in r if HASH_KEY.match(k))


def walk_leads(client: httpx.Client, path: str, **params: Any) -> tuple[list[dict], list[dict]]:
    records, pages, start = [], [], 0
    while True:
        resp = client.get(path, params={**params, "start": start})
        assert resp.status_code == 200, resp.text
        pages.append(resp.json())
        records.extend(pages[-1]["data"])
        if not pages[-1]["additional_data"]["more_items_in_collection"]:
            return records, pages
        start += len(pages[-1]["data"])


def test_leads_updated_since_and_sort(client, fake):
    leads = [r for r in fake.records("leads") if not r["is_archived"]]
    pivot = sorted(r["update_time"] for r in leads)[len(leads) // 2]
    since, _ = walk_leads(client, "/v1/leads", updated_since=pivot, sort="update_time ASC")
    want = sorted((r for r in leads if r["update_time"] >= pivot), key=lambda r: r["update_time"])
    assert [r["id"] for r in since] == [r["id"] for r in want]
    archived = [r for r in fake.records("leads") if r["is_archived"]]
    desc, _ = walk_leads(client, "/v1/leads/archived", sort="update_time DESC", limit=3)
    assert [r["id"] for r in desc] == [
        r["id"] for r in sorted(archived, key=lambda r: r["update_time"], reverse=True)
    ]
    # The archived list takes no updated_since: it lists every archived lead anyway.
    everything, _ = walk_leads(client, "/v1/leads/archived", updated_since=pivot)
    assert len(everything) == len(archived)
    assert client.get("/v1/leads", params={"sort": "value ASC"}).status_code == 400


def test_some_generated_leads_are_converted_and_some_archived(fake):
    stored = fake.store.scalar("SELECT count(*) FROM leads")
    converted = fake.store.scalar("SELECT count(*) FROM leads WHERE converted_at IS NOT NULL")
    listed = fake.records("leads")
    assert converted and len(listed) == stored - converted
    assert 0 < sum(r["is_archived"] for r in listed) < len(listed)


def test_lead_mutations(live, specs):
    fake, client = live.fake, live.client
    fake.freeze(NOW + timedelta(days=3))
    checker = Checker(specs["v1"], "/leads")
    code = fake.records("deal_fields")[-1]["field_code"]
    lead = fake.add_lead("Inbound: chillers", organization_id=2, value=(1200, "SAR"))
    fake.advance(5)
    fake.update_lead(lead["id"], title="Inbound: 4 chillers", custom_fields={code: None})
    since = (NOW + timedelta(days=3, seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    changed, pages = walk_leads(client, "/v1/leads", updated_since=since)
    check_leads(checker, pages[0])
    assert [r["title"] for r in changed] == ["Inbound: 4 chillers"]
    assert changed[0]["value"] == {"amount": 1200, "currency": "SAR"}
    fake.advance(5)
    fake.archive_lead(lead["id"])
    assert lead["id"] not in {r["id"] for r in walk_leads(client, "/v1/leads")[0]}
    assert lead["id"] in {r["id"] for r in walk_leads(client, "/v1/leads/archived")[0]}
    fake.advance(5)
    deal = fake.convert_lead(lead["id"])
    assert deal["title"] == "Inbound: 4 chillers" and deal["org_id"] == 2
    assert lead["id"] not in {r["id"] for r in fake.records("leads")}
    assert lead["id"] not in {r["id"] for r in walk_leads(client, "/v1/leads/archived")[0]}
    with pytest.raises(KeyError):
        fake.update_lead(lead["id"], title="gone")


# -- deal history: /v1/deals/{id}/changelog ---------------------------------------------------


def walk_changelog(client: httpx.Client, deal_id: int, limit: int = 2) -> list[dict]:
    """Every changelog page of a deal, following next_cursor."""
    pages, params = [], {"limit": limit}
    while True:
        resp = client.get(f"/v1/deals/{deal_id}/changelog", params=params)
        assert resp.status_code == 200, resp.text
        pages.append(resp.json())
        cursor = pages[-1]["additional_data"]["next_cursor"]
        if cursor is None:
            return pages
        params["cursor"] = cursor


def test_changelog_matches_the_spec_and_pages_by_cursor(client, fake, specs):
    checker = Checker(specs["v1"], "/deals/{id}/changelog")
    walked = 0
    for deal in fake.records("deals")[:60]:
        pages = walk_changelog(client, deal["id"])
        for page in pages:
            checker.check(page)
        entries = [e for page in pages for e in page["data"]]
        # Newest first on the wire; the ground truth is oldest first.
        assert entries[::-1] == fake.changelog(deal["id"])
        assert all(V1_TIME.match(e["time"]) for e in entries)
        walked += len(pages) > 1
    assert walked > 5  # several deals needed more than one page


def test_changelog_is_consistent_with_each_deal(fake):
    """The seeded history ends where the deal stands: its stage at stage_change_time, its
    status at its close, every change between add_time and update_time."""
    stages = {s["id"]: s["pipeline_id"] for s in fake.records("stages")}
    moved = 0
    for deal in fake.records("deals"):
        log = fake.changelog(deal["id"])
        add, update = ts(deal["add_time"]), ts(deal["update_time"])
        for e in log:
            assert add.replace(microsecond=0) <= ts(e["time"]) <= update, (deal["id"], e)
        moves = [e for e in log if e["field_key"] == "stage_id"]
        if deal.get("stage_change_time") is None:
            assert not moves
        elif moves:
            moved += 1
            assert moves[-1]["new_value"] == str(deal["stage_id"])
            assert ts(moves[-1]["time"]) == ts(deal["stage_change_time"]).replace(microsecond=0)
            for a, b in zip(moves, moves[1:], strict=False):
                assert a["new_value"] == b["old_value"]  # one path, no jumps
        for e in log:
            if e["field_key"] == "pipeline_id":  # with the move out of the old pipeline
                assert e["old_value"] != e["new_value"] == str(deal["pipeline_id"])
                first = next(m for m in moves if m["time"] == e["time"])
                assert str(stages[int(first["old_value"])]) == e["old_value"]
        closes = [e for e in log if e["field_key"] == "status"]
        if deal["status"] == "open":
            assert not closes
        else:
            assert closes[-1]["new_value"] == deal["status"]
    assert moved > len(fake.records("deals")) // 3


def test_changelog_of_an_unknown_deal_is_404(client):
    assert client.get("/v1/deals/999999/changelog").status_code == 404
    assert client.get("/v1/deals/1/changelog", params={"cursor": "nonsense!"}).status_code == 400


def test_every_deal_mutation_appends_to_the_changelog(live, specs):
    fake = live.fake
    deal = next(d for d in fake.records("deals") if d["status"] == "open")
    before = fake.changelog(deal["id"])
    other_stage = next(
        s["id"]
        for s in fake.records("stages")
        if s["pipeline_id"] == deal["pipeline_id"] and s["id"] != deal["stage_id"]
    )
    fake.advance(60)
    fake.move_deal(deal["id"], other_stage)
    fake.advance(60)
    fake.update_deal(deal["id"], value=1234, title="Renamed")
    fake.advance(60)
    fake.set_deal_status(deal["id"], "won")
    after = fake.changelog(deal["id"])
    added = [(e["field_key"], e["old_value"], e["new_value"]) for e in after[len(before) :]]
    assert after[: len(before)] == before
    assert added == [
        ("stage_id", str(deal["stage_id"]), str(other_stage)),
        ("title", deal["title"], "Renamed"),
        ("value", text(deal["value"]), "1234"),
        ("status", "open", "won"),
    ]
    stored = {d["id"]: d for d in fake.records("deals")}[deal["id"]]
    assert after[-1]["time"] == stored["won_time"][:19].replace("T", " ")
    new = fake.add_deal(title="Fresh")
    assert fake.changelog(new["id"]) == []  # creation is not a change
    page = live.client.get(f"/v1/deals/{deal['id']}/changelog").json()
    Checker(specs["v1"], "/deals/{id}/changelog").check(page)


def test_changelog_pages_cost_20_tokens_and_the_daily_budget_ends_in_429(live):
    fake = live.fake
    fake.tokens_spent = 0
    assert live.client.get("/v1/deals/1/changelog").status_code == 200
    assert fake.tokens_spent == 20
    assert live.client.get("/api/v2/deals").status_code == 200
    assert fake.tokens_spent == 30
    fake.daily_budget = 45
    refused = live.client.get("/v1/deals/1/changelog")
    assert refused.status_code == 429
    assert int(refused.headers["x-ratelimit-reset"]) > 0
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert live.client.get("/api/v2/pipelines").status_code == 200  # 5 tokens still fit
