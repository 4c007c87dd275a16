"""What the fake serves, declared once per entity: the bottom layer of the fake.

A declaration says where an entity is listed (paths, API version, token cost), how it is stored
(columns and how each is taken from the API-shaped record, indexes), which parameters narrow
and sort its lists, how it pages, and what "alive" means for it. The store builds its tables
from these, the endpoints their routes and queries, and FakePipedrive its ground truth
(``records``/``count``). Adding an entity is one declaration here plus its record generator in
``generators.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .params import Narrow, Params, bad, flag, id_list, match
from .wire import PURGE_AFTER_MS

# How a column's value is taken from (record, given): ``given`` holds what the writer passes
# besides the record: ut/at (update/add time in ms), deleted_at, and kind/id for fields.
Take = Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Column:
    name: str
    sql: str
    take: Take


def optional(name: str, sql: str = "INTEGER") -> Column:
    """A record key that may be missing or null."""
    return Column(name, sql, lambda rec, given: rec.get(name))


def required(name: str, sql: str, key: str | None = None) -> Column:
    """A record key that is always there (a KeyError means a broken record)."""
    key = key or name
    return Column(name, sql, lambda rec, given: rec[key])


def bit(name: str, key: str, negate: bool = False) -> Column:
    """A boolean record key as 0/1."""
    if negate:
        return Column(name, "INTEGER NOT NULL", lambda rec, given: int(not rec[key]))
    return Column(name, "INTEGER NOT NULL", lambda rec, given: int(rec[key]))


def given(name: str, sql: str) -> Column:
    """A value the writer passes next to the record, not part of it."""
    return Column(name, sql, lambda rec, given: given.get(name))


UPDATE_TIME = Column("ut", "INTEGER NOT NULL", lambda rec, given: given["ut"])
ADD_TIME = Column("at", "INTEGER NOT NULL", lambda rec, given: given["at"])
TIMES = (UPDATE_TIME, ADD_TIME)


@dataclass(frozen=True)
class Table:
    """One SQLite table of the store: id, the columns, and the record as JSON."""

    name: str
    columns: tuple[Column, ...]
    # Column lists, created after the bulk load (cheaper than maintaining them row by row).
    indexes: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    # The row id; records carry their own except field definitions (their display order).
    key: Take = lambda rec, given: rec["id"]  # noqa: E731


@dataclass(frozen=True)
class Route:
    path: str
    tokens: int  # Pipedrive's token cost of one GET (pdsync/data/token_costs.csv)
    scope: str | None = None  # SQL for what this path lists; default: the entity's live ones
    since: bool = True  # a v1 offset list takes updated_since (/v1/leads/archived does not)

    @property
    def version(self) -> int:
        return 2 if self.path.startswith("/api/v2/") else 1


@dataclass(frozen=True)
class Embed:
    """A v1 object the API joins into each record: ``{key: {column: <table>.<column>}}``."""

    key: str
    table: str
    via: str  # the record's column holding the joined id
    column: str


TIME_SORTS = {"id": "id", "update_time": "ut", "add_time": "at"}


@dataclass(frozen=True)
class Entity:
    name: str  # as in ENTITIES and in pdsync's entity names
    singular: str
    table: Table
    routes: tuple[Route, ...]
    # "cursor": v2 keyset pages; "offset": v1 start/limit; "all": v1, one unpaged answer.
    paging: Literal["cursor", "offset", "all"] = "cursor"
    live: str = "1"  # SQL: the record is not deleted
    purged_after_ms: int | None = None  # deleted ones stay listed this long (deals)
    kind: str | None = None  # field definitions: their kind in the shared table
    # sort_by value -> column; empty: the list takes no sort parameters (id ascending).
    sorts: Mapping[str, str] = field(default_factory=lambda: TIME_SORTS)
    filters: Mapping[str, str] = field(default_factory=dict)  # integer parameter -> column
    narrow: tuple[Narrow, ...] = ()  # other parameters, read before the common ones
    incremental: bool = True  # takes updated_since / updated_until
    ids: bool = True  # takes ids=1,2,3
    namespaces: tuple[str, ...] = ()  # objects only sent when asked for with include_fields
    # Values only sent when asked for with include_fields: name -> SQL over the row's ``id``
    # giving the value as JSON text (products_count, source_lead_id).
    counts: Mapping[str, str] = field(default_factory=dict)
    embeds: tuple[Embed, ...] = ()
    embeds_user: str | None = None  # column naming the user whose object is embedded
    nullable: frozenset[str] = frozenset()  # fields the spec marks nullable: kept as null
    writable: frozenset[str] = frozenset()  # what the mutation methods accept
    default_sort: str = "id ASC"  # a v1 offset list's order without ``sort``
    # v1 offset lists put start/limit/more_items_in_collection under additional_data's
    # "pagination"; the leads lists put them straight in additional_data (their spec says so).
    pagination_key: str | None = "pagination"
    # GET of one record by id (``/api/v2/projects/{id}``): its path, token cost and ``scope``,
    # the stored rows it finds (None: the live ones; others are 404).
    record: Route | None = None

    def alive(self, now_ms: int) -> tuple[str, list[Any]]:
        """SQL and arguments for the records that exist upstream (what records() returns)."""
        where, args = self.live, []
        if self.purged_after_ms is not None:
            where, args = f"({self.live} OR deleted_at >= ?)", [now_ms - self.purged_after_ms]
        if self.kind is not None:
            where, args = f"kind = ? AND {where}", [self.kind, *args]
        return where, args


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# -- deals ------------------------------------------------------------------------------------

DEAL_STATUSES = ("open", "won", "lost", "deleted")


def deal_status_clause(statuses: list[str], now_ms: int) -> tuple[str, list[Any]]:
    """SQL for a status list; deleted deals show for 30 days, then they are purged."""
    plain = [s for s in statuses if s != "deleted"]
    parts, args = [], []
    if plain:
        parts.append(f"status IN ({','.join('?' * len(plain))})")
        args.extend(plain)
    if "deleted" in statuses:
        parts.append("(status = 'deleted' AND deleted_at >= ?)")
        args.append(now_ms - PURGE_AFTER_MS)
    return "(" + " OR ".join(parts) + ")", args


def _deal_status(params: Params, now_ms: int) -> tuple[list[str], list[Any]]:
    raw = params.get("status")
    statuses = ["open", "won", "lost"]
    if raw is not None:
        statuses = [s.strip() for s in raw.split(",") if s.strip()]
        for s in statuses:
            if s not in DEAL_STATUSES:
                options = " | ".join(f"'{a}'" for a in DEAL_STATUSES)
                raise bad("status", f"Invalid enum value. Expected {options}, received '{s}'")
        if not statuses:
            statuses = ["open", "won", "lost"]
    clause, args = deal_status_clause(statuses, now_ms)
    return [clause], args


DEALS = Entity(
    name="deals",
    singular="deal",
    table=Table(
        "deals",
        (
            *TIMES,
            required("status", "TEXT NOT NULL"),
            bit("archived", "is_archived"),
            given("deleted_at", "INTEGER"),
            optional("pipeline_id"),
            optional("stage_id"),
            optional("owner_id"),
            optional("person_id"),
            optional("org_id"),
            required("title", "TEXT"),
        ),
        indexes=("archived", "archived, ut", "archived, at"),
    ),
    routes=(
        Route("/api/v2/deals", 10, scope="archived = 0"),
        Route("/api/v2/deals/archived", 20, scope="archived = 1"),
    ),
    live="status != 'deleted'",
    purged_after_ms=PURGE_AFTER_MS,
    filters={k: k for k in ("owner_id", "person_id", "org_id", "pipeline_id", "stage_id")},
    narrow=(_deal_status,),
    counts={
        "products_count": "SELECT count(*) FROM deal_products p WHERE p.deal_id = deals.id",
        # The lead a deal was converted from, as JSON (a string, or null).
        # (ANALYZE sees a column of nulls and would scan: the index is named.)
        "source_lead_id": "SELECT coalesce((SELECT json_quote(l.uuid) FROM leads l"
        " INDEXED BY leads_deal_id WHERE l.deal_id = deals.id), 'null')",
    },
    nullable=_words(
        "probability lost_reason close_time origin_id channel channel_id source_lead_id "
        "arr mrr acv archive_time"
    ),
    writable=_words(
        "title value currency owner_id person_id org_id expected_close_date probability "
        "custom_fields label_ids visible_to lost_reason stage_id pipeline_id status"
    ),
)

# -- contacts ---------------------------------------------------------------------------------

PERSONS = Entity(
    name="persons",
    singular="person",
    table=Table(
        "persons",
        (
            *TIMES,
            bit("gone", "is_deleted"),
            optional("owner_id"),
            optional("org_id"),
            required("name", "TEXT"),
        ),
        indexes=("ut", "at"),
    ),
    routes=(Route("/api/v2/persons", 10),),
    live="gone = 0",
    filters={"owner_id": "owner_id", "org_id": "org_id"},
    narrow=(match("deal_id", "id = (SELECT person_id FROM deals WHERE id = ?)"),),
    writable=_words(
        "name first_name last_name org_id owner_id emails phones job_title custom_fields "
        "label_ids visible_to"
    ),
)

ORGANIZATIONS = Entity(
    name="organizations",
    singular="organization",
    table=Table(
        "organizations",
        (*TIMES, bit("gone", "is_deleted"), optional("owner_id"), required("name", "TEXT")),
        indexes=("ut", "at"),
    ),
    routes=(Route("/api/v2/organizations", 10),),
    live="gone = 0",
    filters={"owner_id": "owner_id"},
    nullable=_words("website linkedin industry annual_revenue employee_count"),
    writable=_words(
        "name owner_id address website linkedin industry annual_revenue employee_count "
        "custom_fields label_ids visible_to"
    ),
)

# -- activities and notes ---------------------------------------------------------------------

ACTIVITIES = Entity(
    name="activities",
    singular="activity",
    table=Table(
        "activities",
        (
            *TIMES,
            bit("gone", "is_deleted"),
            optional("owner_id"),
            optional("deal_id"),
            optional("person_id"),
            optional("org_id"),
            Column("done", "INTEGER", lambda rec, given: int(rec["done"])),
            Column("due", "TEXT NOT NULL", lambda rec, given: rec.get("due_date") or ""),
        ),
        indexes=("ut", "at", "due"),
    ),
    routes=(Route("/api/v2/activities", 10),),
    live="gone = 0",
    sorts={**TIME_SORTS, "due_date": "due"},
    filters={k: k for k in ("owner_id", "deal_id", "person_id", "org_id")},
    narrow=(flag("done", "done"),),
    writable=_words(
        "subject type owner_id deal_id person_id org_id due_date due_time duration busy done "
        "note location"
    ),
)

NOTES = Entity(
    name="notes",
    singular="note",
    table=Table(
        "notes",
        (
            *TIMES,
            bit("gone", "active_flag", negate=True),
            optional("user_id"),
            optional("deal_id"),
            optional("person_id"),
            optional("org_id"),
            required("content", "TEXT"),
        ),
        # Covering indexes so OFFSET can skip rows without reading note bodies.
        indexes=("gone", "gone, ut", "gone, at", "deal_id", "person_id", "org_id"),
    ),
    routes=(Route("/v1/notes", 20),),
    paging="offset",
    live="gone = 0",
    sorts={
        "id": "id",
        "user_id": "user_id",
        "deal_id": "deal_id",
        "person_id": "person_id",
        "org_id": "org_id",
        "content": "content",
        "add_time": "at",
        "update_time": "ut",
    },
    filters={k: k for k in ("deal_id", "person_id", "org_id", "user_id")},
    embeds=(
        Embed("deal", "deals", "deal_id", "title"),
        Embed("organization", "organizations", "org_id", "name"),
        Embed("person", "persons", "person_id", "name"),
    ),
    embeds_user="user_id",
)

# -- company setup: pipelines, stages, users, fields ------------------------------------------

PIPELINES = Entity(
    name="pipelines",
    singular="pipeline",
    table=Table("pipelines", (*TIMES, required("order_nr", "INTEGER"))),
    routes=(Route("/api/v2/pipelines", 5),),
    incremental=False,
)

STAGES = Entity(
    name="stages",
    singular="stage",
    table=Table(
        "stages", (*TIMES, required("pipeline_id", "INTEGER"), required("order_nr", "INTEGER"))
    ),
    routes=(Route("/api/v2/stages", 5),),
    sorts={**TIME_SORTS, "order_nr": "order_nr"},
    filters={"pipeline_id": "pipeline_id"},
    incremental=False,
    nullable=frozenset({"days_to_rotten"}),
)

USERS = Entity(
    name="users",
    singular="user",
    table=Table("users", (required("name", "TEXT"),)),
    routes=(Route("/v1/users", 20),),
    paging="all",
    sorts={},
    nullable=frozenset({"phone", "modified", "icon_url"}),
)

# One table for deal, person and organization fields; id is the display order.
FIELDS = Table(
    "fields",
    (given("kind", "TEXT NOT NULL"), required("code", "TEXT NOT NULL", key="field_code")),
    unique=("kind, code",),
    key=lambda rec, given: given["id"],
)


def _fields(
    name: str,
    path: str,
    kind: str,
    namespaces: tuple[str, ...] = ("ui_visibility", "important_fields", "required_fields"),
) -> Entity:
    return Entity(
        name=name,
        singular=name[:-1],
        table=FIELDS,
        routes=(Route(path, 10),),
        kind=kind,
        sorts={},
        incremental=False,
        ids=False,
        namespaces=namespaces,
    )


# -- products and deal line items -------------------------------------------------------------

PRODUCTS = Entity(
    name="products",
    singular="product",
    table=Table(
        "products",
        (*TIMES, bit("gone", "is_deleted"), optional("owner_id"), required("name", "TEXT")),
        indexes=("ut", "at"),
    ),
    routes=(Route("/api/v2/products", 10),),
    live="gone = 0",
    sorts={**TIME_SORTS, "name": "name"},
    filters={"owner_id": "owner_id"},
    nullable=_words("category billing_frequency_cycles direct_cost"),
    writable=_words("name code unit tax description category prices custom_fields owner_id"),
)

# A line item removed upstream is gone from the store: the API forgets it.
DEAL_PRODUCTS = Entity(
    name="deal_products",
    singular="line_item",
    table=Table(
        "deal_products",
        (
            *TIMES,
            required("deal_id", "INTEGER NOT NULL"),
            required("product_id", "INTEGER NOT NULL"),
            optional("order_nr"),
        ),
        indexes=("deal_id, id", "ut", "at"),
    ),
    routes=(Route("/api/v2/deals/products", 10),),
    sorts={**TIME_SORTS, "deal_id": "deal_id", "order_nr": "order_nr"},
    narrow=(id_list("deal_ids", "deal_id"),),
    incremental=False,
    ids=False,
    nullable=_words("product_variation_id order_nr billing_frequency_cycles billing_start_date"),
    writable=_words("quantity item_price discount discount_type tax comments"),
)

# -- leads ------------------------------------------------------------------------------------

# Ids are UUIDs: the store keys leads by their order and finds them by ``uuid``. A converted
# lead is deleted upstream (the v2 convert endpoint says so): ``converted_at`` hides it.
LEADS = Entity(
    name="leads",
    singular="lead",
    table=Table(
        "leads",
        (
            *TIMES,
            bit("archived", "is_archived"),
            given("converted_at", "INTEGER"),
            given("deal_id", "INTEGER"),  # the deal a converted lead became
            optional("owner_id"),
            optional("person_id"),
            optional("organization_id"),
            required("uuid", "TEXT NOT NULL", "id"),
            required("title", "TEXT"),
        ),
        indexes=("archived, ut", "archived, at", "deal_id"),
        unique=("uuid",),
        key=lambda rec, given: given["id"],
    ),
    routes=(
        Route("/v1/leads", 20, scope="archived = 0 AND converted_at IS NULL"),
        Route("/v1/leads/archived", 40, scope="archived = 1 AND converted_at IS NULL", since=False),
    ),
    paging="offset",
    live="converted_at IS NULL",
    sorts={
        "id": "uuid",
        "title": "title",
        "owner_id": "owner_id",
        "add_time": "at",
        "update_time": "ut",
    },
    filters={k: k for k in ("owner_id", "person_id", "organization_id")},
    ids=False,
    nullable=_words(
        "person_id organization_id origin_id channel channel_id source_deal_id value "
        "expected_close_date next_activity_id"
    ),
    writable=_words(
        "title owner_id person_id organization_id label_ids value expected_close_date "
        "was_seen visible_to custom_fields"
    ),
    default_sort="add_time ASC",
    pagination_key=None,
)

# -- reference tables: v1, one unpaged answer each ---------------------------------------------


def _reference(name: str, path: str, tokens: int, column: Column) -> Entity:
    # Lead labels (UUIDs) and lead sources (only a name) have no integer id: the store keys
    # them by their order.
    uuid = column.name in ("lead_label", "lead_source")
    return Entity(
        name=name,
        singular=name[:-1],
        table=Table(name, (column,), key=(lambda rec, given: given["id"]) if uuid else rec_id),
        routes=(Route(path, tokens),),
        paging="all",
        sorts={},
        incremental=False,
        ids=False,
    )


def rec_id(rec: dict[str, Any], given: dict[str, Any]) -> Any:
    return rec["id"]


CURRENCIES = _reference("currencies", "/v1/currencies", 20, required("code", "TEXT"))
ACTIVITY_TYPES = _reference(
    "activity_types", "/v1/activityTypes", 20, required("key_string", "TEXT")
)
LEAD_LABELS = _reference("lead_labels", "/v1/leadLabels", 10, required("lead_label", "TEXT", "id"))
LEAD_SOURCES = _reference(
    "lead_sources", "/v1/leadSources", 2, required("lead_source", "TEXT", "name")
)


# -- projects and tasks (v2; no updated_since, no sort: cursor pages in id order) -------------

PROJECT_STATUSES = ("open", "completed", "canceled", "deleted")


def _project_status(params: Params, now_ms: int) -> tuple[list[str], list[Any]]:
    """``status=open,completed``; without it every status but deleted (the spec says so)."""
    raw = params.get("status")
    statuses = [s.strip() for s in (raw or "").split(",") if s.strip()] or list(
        PROJECT_STATUSES[:3]
    )
    for s in statuses:
        if s not in PROJECT_STATUSES:
            options = " | ".join(f"'{a}'" for a in PROJECT_STATUSES)
            raise bad("status", f"Invalid enum value. Expected {options}, received '{s}'")
    return [f"status IN ({','.join('?' * len(statuses))})"], statuses


def _linked(name: str, key: str) -> Narrow:
    """``deal_id=5``: projects whose ``deal_ids`` (an array) hold 5."""
    return match(
        name,
        f"EXISTS (SELECT 1 FROM json_each(json_extract(CAST(projects.json AS TEXT), '$.{key}'))"
        " WHERE value = ?)",
    )


def _parent_task(params: Params, now_ms: int) -> tuple[list[str], list[Any]]:
    """``parent_task_id=null``: root tasks; an integer: that task's subtasks."""
    raw = params.get("parent_task_id")
    if raw is None:
        return [], []
    if raw == "null":
        return ["parent_task_id IS NULL"], []
    if not raw.isdigit():
        raise bad("parent_task_id", "Expected integer or null")
    return ["parent_task_id = ?"], [int(raw)]


PROJECTS = Entity(
    name="projects",
    singular="project",
    table=Table(
        "projects",
        (
            *TIMES,
            required("status", "TEXT NOT NULL"),
            Column(
                "archived",
                "INTEGER NOT NULL",
                lambda rec, given: int(rec.get("archive_time") is not None),
            ),
            optional("owner_id"),
            optional("phase_id"),
            required("title", "TEXT"),
        ),
    ),
    routes=(
        Route("/api/v2/projects", 10, scope="archived = 0"),
        Route("/api/v2/projects/archived", 10, scope="archived = 1"),
    ),
    live="status != 'deleted'",
    # A deleted project is still there by id, with its status (as status=deleted lists it).
    record=Route("/api/v2/projects/{id}", 1, scope="1"),
    sorts={},
    filters={"phase_id": "phase_id"},
    narrow=(
        _project_status,
        _linked("deal_id", "deal_ids"),
        _linked("person_id", "person_ids"),
        _linked("org_id", "org_ids"),
    ),
    incremental=False,
    ids=False,
    nullable=_words("health_status archive_time"),
    writable=_words(
        "title description status owner_id phase_id board_id start_date end_date deal_ids "
        "person_ids org_ids label_ids health_status custom_fields"
    ),
)

# A deleted task is gone from the list (``deleted_at`` remembers when).
TASKS = Entity(
    name="tasks",
    singular="task",
    table=Table(
        "tasks",
        (
            *TIMES,
            given("deleted_at", "INTEGER"),
            required("project_id", "INTEGER NOT NULL"),
            bit("done", "is_done"),
            bit("milestone", "is_milestone"),
            optional("parent_task_id"),
            Column(
                "assignees", "TEXT", lambda rec, given: json.dumps(rec.get("assignee_ids") or [])
            ),
        ),
        indexes=("project_id",),
    ),
    routes=(Route("/api/v2/tasks", 10),),
    live="deleted_at IS NULL",
    record=Route("/api/v2/tasks/{id}", 1),  # a deleted task: 404
    sorts={},
    filters={"project_id": "project_id"},
    narrow=(
        flag("is_done", "done"),
        flag("is_milestone", "milestone"),
        _parent_task,
        match("assignee_id", "EXISTS (SELECT 1 FROM json_each(tasks.assignees) WHERE value = ?)"),
    ),
    incremental=False,
    ids=False,
    nullable=_words("description due_date start_date parent_task_id priority marked_as_done_time"),
    writable=_words(
        "title description project_id is_done is_milestone due_date start_date parent_task_id "
        "assignee_ids priority"
    ),
)


ENTITIES_DECLARED: tuple[Entity, ...] = (
    DEALS,
    PERSONS,
    ORGANIZATIONS,
    ACTIVITIES,
    NOTES,
    PIPELINES,
    STAGES,
    USERS,
    _fields("deal_fields", "/api/v2/dealFields", "deal"),
    _fields("person_fields", "/api/v2/personFields", "person"),
    _fields("organization_fields", "/api/v2/organizationFields", "org"),
    PRODUCTS,
    _fields("product_fields", "/api/v2/productFields", "product", ("ui_visibility",)),
    DEAL_PRODUCTS,
    _fields("activity_fields", "/api/v2/activityFields", "activity", ("ui_visibility",)),
    CURRENCIES,
    ACTIVITY_TYPES,
    LEAD_LABELS,
    LEAD_SOURCES,
    LEADS,
    _fields("project_fields", "/api/v2/projectFields", "project"),
    PROJECTS,
    TASKS,
)

# -- derived look-ups -------------------------------------------------------------------------

ENTITIES = tuple(e.name for e in ENTITIES_DECLARED)
BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES_DECLARED}
BY_PATH: dict[str, tuple[Entity, Route]] = {
    r.path: (e, r) for e in ENTITIES_DECLARED for r in e.routes
}
# The path before ``{id}`` of each single-record GET.
BY_RECORD_PREFIX: dict[str, tuple[Entity, Route]] = {
    e.record.path.removesuffix("{id}"): (e, e.record) for e in ENTITIES_DECLARED if e.record
}
TABLES: dict[str, Table] = {e.table.name: e.table for e in ENTITIES_DECLARED}
FIELD_KINDS = {e.name: e.kind for e in ENTITIES_DECLARED if e.kind is not None}


def record_route(path: str) -> tuple[Entity, Route, int] | None:
    """The entity, route and id of a single-record GET (``/api/v2/projects/8``), or None."""
    prefix, _, id_ = path.rstrip("/").rpartition("/")
    found = BY_RECORD_PREFIX.get(prefix + "/")
    if found is None or not id_.isdigit():
        return None
    return found[0], found[1], int(id_)


def entity(name: str) -> Entity:
    found = BY_NAME.get(name)
    if found is None:
        raise ValueError(f"unknown entity {name!r}; expected one of {', '.join(ENTITIES)}")
    return found
