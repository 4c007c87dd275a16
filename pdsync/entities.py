"""One declarative spec per Pipedrive entity: where it comes from and how it is stored.

The sync engine, the database shape and the CLI's ``--only`` choices are all driven by
these specs. Adding an entity means adding a spec here (or returning one from a plugin's
``pdsync_entities`` hook), not writing a function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

# A record as stored: column name -> value.
Row = dict[str, Any]


def open_deal(row: str = "") -> str:
    """An open deal, as SQL over ``row``'s columns (a table name, or a trigger's old/new).
    "+status" keeps SQLite off the status index (half the deals are open: walking it in
    another order is slower than it looks)."""
    c = f"{row}." if row else ""
    return (
        f"+{c}status = 'open' and coalesce({c}is_archived, 0) = 0"
        f" and coalesce({c}is_deleted, 0) = 0"
    )


# As the canned queries say it, word for word.
OPEN_DEAL = open_deal()


@dataclass(frozen=True)
class Children:
    """A list asked per batch of parent records the database names, because the endpoint
    takes no updated_since (deal line items: ``deal_ids``, at most 100 a request).

    A run asks for the parents that have children (``has_children``, SQL over the parent's
    columns) or had some, and whose ``update_time`` moved since their children were last
    fetched (every such parent on a full pass). Each batch is written with the versions it
    covers, and a stored child of an asked parent that the answer leaves out is deleted.
    """

    parent: str  # the parent entity, synced earlier in the run: "deals"
    param: str  # the request parameter listing parent ids: "deal_ids"
    column: str  # the child column holding the parent id: "deal_id"
    has_children: str  # e.g. "products_count > 0"
    per_request: int = 100


@dataclass(frozen=True)
class Stream:
    """One list endpoint that feeds an entity's table."""

    path: str  # e.g. "/api/v2/deals" or "/v1/notes"
    params: tuple[tuple[str, str], ...] = ()
    children: Children | None = None
    # A v1 list without updated_since (/v1/leads/archived): read newest first (``params``
    # sort it by update_time DESC) down to the first page reaching past the watermark, which
    # moves only when the stream ends (its first page is its newest).
    newest_first: bool = False

    @property
    def key(self) -> str:
        """Stable name for this stream's watermark."""
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.path}?{query}" if query else self.path

    @property
    def is_v1(self) -> bool:
        return self.path.startswith("/v1/")


@dataclass(frozen=True)
class EntitySpec:
    name: str  # table name and sync_metadata.entity_type, in Pipedrive's words
    streams: tuple[Stream, ...]
    # Incremental entities are fetched with updated_since=watermark, sorted by update_time.
    # The others are small and fetched whole on every run (and reconciled every run).
    incremental: bool
    columns: dict[str, type]  # pinned types: records are wide and sparse
    pk: str = "id"
    foreign_keys: tuple[tuple[str, str, str], ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    expression_indexes: dict[str, str] = field(default_factory=dict)  # name -> SQL expression
    # name -> (SQL columns, SQL condition): indexes over the rows the canned queries list.
    partial_indexes: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Denormalised copies of other records (v1 notes carry the deal's title...) go stale:
    # the foreign keys give the same thing, current.
    drop: tuple[str, ...] = ()
    # Table holding this entity's custom-field definitions, if it has custom fields.
    fields_table: str | None = None
    # Values written to rows that are no longer visible upstream after a full pass.
    when_gone: dict[str, Any] = field(default_factory=lambda: {"is_deleted": 1})
    # Columns pdsync fills itself, from no field of a record (the record a merged one went
    # into, from a webhook): made with the table, and never in a sync's row, which gives
    # every declared column a value and would clear them.
    local_columns: dict[str, type] = field(default_factory=dict)
    # Last tweak of a stored row (after timestamps and JSON are handled).
    transform: Callable[[Row, dict], None] | None = None
    description: str = ""
    # Reference data that rarely changes is fetched at most this often (None: every run);
    # --full and naming the entity in --only fetch it anyway.
    refresh: timedelta | None = None
    # v1 leads send the custom fields (fields_table's) as top-level keys named by their hash.
    custom_at_top: bool = False
    # GET of one record by id ("/api/v2/projects/{id}"), for a whole list of several streams:
    # a paced pass asks it about each id no stream listed before taking the id for gone (a
    # record that moved between streams mid-pass may have been missed by both cursors).
    record_path: str | None = None

    @property
    def table_columns(self) -> dict[str, type]:
        """Every column the table is made with: the records' and pdsync's own."""
        return {**self.columns, **self.local_columns}

    @property
    def dependent(self) -> bool:
        """Fetched per parent record, after the parents (see ``Children``)."""
        return any(stream.children for stream in self.streams)


_TIMESTAMPS = ("add_time", "update_time")
# Records Pipedrive merges: the deleted one's row names the survivor (webhook_apply.py).
MERGED = {"merged_to_id": int}


def _pipelines() -> EntitySpec:
    return EntitySpec(
        name="pipelines",
        streams=(Stream("/api/v2/pipelines"),),
        incremental=False,
        columns={
            "id": int,
            "name": str,
            "order_nr": int,
            "is_deleted": int,
            "is_deal_probability_enabled": int,
            "add_time": str,
            "update_time": str,
        },
        description="Sales pipelines.",
    )


def _stages() -> EntitySpec:
    return EntitySpec(
        name="stages",
        streams=(Stream("/api/v2/stages"),),
        incremental=False,
        columns={
            "id": int,
            "name": str,
            "pipeline_id": int,
            "order_nr": int,
            "deal_probability": int,
            "is_deal_rot_enabled": int,
            "days_to_rotten": int,
            "is_deleted": int,
            "add_time": str,
            "update_time": str,
        },
        foreign_keys=(("pipeline_id", "pipelines", "id"),),
        indexes=(("pipeline_id", "order_nr"),),
        description="Stages of each pipeline, in order_nr order.",
    )


def _users_transform(row: Row, record: dict) -> None:
    # v1 users say is_deleted, and also active_flag for deactivated users.
    row["is_deleted"] = int(bool(record.get("is_deleted")))


def _users() -> EntitySpec:
    return EntitySpec(
        name="users",
        streams=(Stream("/v1/users"),),
        incremental=False,
        columns={
            "id": int,
            "name": str,
            "email": str,
            "active_flag": int,
            "is_admin": int,
            "role_id": int,
            "default_currency": str,
            "timezone_name": str,
            "created": str,
            "modified": str,
            "last_login": str,
            "is_deleted": int,
        },
        transform=_users_transform,
        description="Pipedrive users: deal and activity owners.",
        # A new user is rare; until the hour is up their deals show the owner's id only.
        refresh=HOURLY,
    )


def _field_definitions(
    name: str, path: str, what: str, refresh: timedelta | None = None
) -> EntitySpec:
    return EntitySpec(
        name=name,
        streams=(Stream(path),),
        incremental=False,
        pk="field_code",
        columns={
            "field_code": str,
            "field_name": str,
            "field_type": str,
            "column_name": str,  # pdsync's readable column for a custom field
            "is_custom_field": int,
            "description": str,
            "options": str,
            "subfields": str,
            "is_deleted": int,
        },
        description=f"{what} field definitions; custom fields get readable {what.lower()} columns.",
        refresh=refresh,
    )


def _deals_transform(row: Row, record: dict) -> None:
    # One status for every way a deal can end: Pipedrive's deleted deals say so with a flag.
    if record.get("is_deleted"):
        row["status"] = "deleted"
    row["is_archived"] = int(bool(record.get("is_archived")))
    row["is_deleted"] = int(bool(record.get("is_deleted")))


# products_count says which deals have line items worth asking for; source_lead_id which
# lead a deal was converted from (pdsync/conversions.py).
DEAL_INCLUDE = "products_count,source_lead_id"
_DEAL_PARAMS = (("status", "open,won,lost,deleted"), ("include_fields", DEAL_INCLUDE))


def _deals() -> EntitySpec:
    return EntitySpec(
        name="deals",
        streams=(
            # No status filter means open, won and lost; deleted (kept 30 days) needs asking.
            # products_count says which deals have line items worth asking for.
            Stream("/api/v2/deals", _DEAL_PARAMS),
            # Archived deals are only listed here (since 2025-07-15), deleted ones on request.
            Stream("/api/v2/deals/archived", _DEAL_PARAMS),
        ),
        incremental=True,
        columns={
            "id": int,
            "title": str,
            "pipeline_id": int,
            "stage_id": int,
            "owner_id": int,
            "creator_user_id": int,
            "person_id": int,
            "org_id": int,
            "value": float,
            "currency": str,
            "status": str,
            "is_archived": int,
            "is_deleted": int,
            "add_time": str,
            "update_time": str,
            "stage_change_time": str,
            "close_time": str,
            "won_time": str,
            "lost_time": str,
            "archive_time": str,
            "expected_close_date": str,
            "probability": float,
            "lost_reason": str,
            "visible_to": int,
            "label_ids": str,
            "origin": str,
            "origin_id": str,
            "channel": int,
            "channel_id": str,
            "acv": float,
            "arr": float,
            "mrr": float,
            "local_won_date": str,
            "local_lost_date": str,
            "local_close_date": str,
            "products_count": int,
            "source_lead_id": str,  # the lead this deal was converted from
            "custom_fields": str,
        },
        foreign_keys=(
            ("pipeline_id", "pipelines", "id"),
            ("stage_id", "stages", "id"),
            ("owner_id", "users", "id"),
            ("creator_user_id", "users", "id"),
            ("person_id", "persons", "id"),
            ("org_id", "organizations", "id"),
        ),
        # Chosen with benchmarks/query_bench.py: the canned queries' lists walk these in
        # update_time order, and the aggregates read only the wide status index.
        indexes=(
            ("pipeline_id", "update_time"),
            ("stage_id",),
            (
                "status",
                "pipeline_id",
                "stage_id",
                "currency",
                "owner_id",
                "value",
                "probability",
                "expected_close_date",
                "is_archived",
                "is_deleted",
            ),
            # deals_by_owner walks one owner's deals newest first; the other columns let it
            # filter on status and pipeline without reading each row.
            ("owner_id", "update_time", "status", "pipeline_id", "is_archived", "is_deleted"),
            ("update_time",),
            ("org_id",),
            ("person_id",),
            ("expected_close_date",),
            ("currency",),
        ),
        # Days in stage count from the stage change, else from creation.
        expression_indexes={"stage_since": "coalesce(stage_change_time, add_time)"},
        # The lists of open deals (overdue, stuck, rotten, near invoicing) walk these in their
        # ORDER BY and stop at Datasette's 1,001st row, never touching won or lost deals. The
        # queries repeat OPEN_DEAL word for word: that is how SQLite matches a partial index.
        partial_indexes={
            "open_update_time": ("update_time, id", OPEN_DEAL),
            "open_pipeline_update_time": ("pipeline_id, update_time, id", OPEN_DEAL),
            "open_stage_since": (
                "coalesce(stage_change_time, add_time), id, pipeline_id",
                OPEN_DEAL,
            ),
            # A lead's conversion, looked up when the lead is written (conversions.py).
            "converted_leads": ("source_lead_id", "source_lead_id is not null"),
            # Also covers cashflow_forecast's current month (its other months are totals).
            "open_expected_close": (
                "expected_close_date is null, expected_close_date, id, stage_id, pipeline_id,"
                " currency, value, probability, status, is_archived, is_deleted",
                OPEN_DEAL,
            ),
        },
        fields_table="deal_fields",
        when_gone={"is_deleted": 1, "status": "deleted"},
        local_columns=MERGED,
        transform=_deals_transform,
        description="Deals: open, won, lost, and archived or deleted ones flagged.",
    )


def _organizations() -> EntitySpec:
    return EntitySpec(
        name="organizations",
        streams=(Stream("/api/v2/organizations"),),
        incremental=True,
        columns={
            "id": int,
            "name": str,
            "owner_id": int,
            "add_time": str,
            "update_time": str,
            "address": str,
            "is_deleted": int,
            "visible_to": int,
            "label_ids": str,
            "website": str,
            "industry": str,
            "annual_revenue": float,
            "employee_count": int,
            "custom_fields": str,
        },
        foreign_keys=(("owner_id", "users", "id"),),
        indexes=(("owner_id",), ("update_time",)),
        fields_table="organization_fields",
        local_columns=MERGED,
        description="Organizations (companies) that deals and persons belong to.",
    )


def _persons() -> EntitySpec:
    return EntitySpec(
        name="persons",
        streams=(Stream("/api/v2/persons"),),
        incremental=True,
        columns={
            "id": int,
            "name": str,
            "first_name": str,
            "last_name": str,
            "owner_id": int,
            "org_id": int,
            "add_time": str,
            "update_time": str,
            "emails": str,
            "phones": str,
            "is_deleted": int,
            "visible_to": int,
            "label_ids": str,
            "job_title": str,
            "custom_fields": str,
        },
        foreign_keys=(("owner_id", "users", "id"), ("org_id", "organizations", "id")),
        indexes=(("org_id",), ("owner_id",), ("update_time",)),
        fields_table="person_fields",
        local_columns=MERGED,
        description="Persons (contacts).",
    )


def _activities() -> EntitySpec:
    return EntitySpec(
        name="activities",
        streams=(Stream("/api/v2/activities"),),
        incremental=True,
        columns={
            "id": int,
            "subject": str,
            "type": str,
            "owner_id": int,
            "deal_id": int,
            "person_id": int,
            "org_id": int,
            "done": int,
            "due_date": str,
            "due_time": str,
            "duration": str,
            "busy": int,
            "add_time": str,
            "update_time": str,
            "marked_as_done_time": str,
            "is_deleted": int,
            "note": str,
            "public_description": str,
            "location": str,
            "participants": str,
            "attendees": str,
        },
        foreign_keys=(
            ("owner_id", "users", "id"),
            ("deal_id", "deals", "id"),
            ("person_id", "persons", "id"),
            ("org_id", "organizations", "id"),
        ),
        indexes=(("deal_id",), ("owner_id",), ("update_time",), ("due_date",)),
        description="Activities: calls, meetings, tasks, deadlines.",
    )


def _notes_transform(row: Row, record: dict) -> None:
    # v1 marks a removed note with active_flag; everything else here says is_deleted.
    row["is_deleted"] = int(record.get("active_flag") is False)


def _notes() -> EntitySpec:
    return EntitySpec(
        name="notes",
        streams=(Stream("/v1/notes", (("sort", "update_time ASC"),)),),
        incremental=True,
        columns={
            "id": int,
            "content": str,
            "deal_id": int,
            "person_id": int,
            "org_id": int,
            "user_id": int,
            "lead_id": str,
            "add_time": str,
            "update_time": str,
            "active_flag": int,
            "pinned_to_deal_flag": int,
            "pinned_to_person_flag": int,
            "pinned_to_organization_flag": int,
            "last_update_user_id": int,
            "is_deleted": int,
        },
        foreign_keys=(
            ("deal_id", "deals", "id"),
            ("person_id", "persons", "id"),
            ("org_id", "organizations", "id"),
            ("user_id", "users", "id"),
        ),
        indexes=(("deal_id",), ("update_time",)),
        drop=("deal", "person", "organization", "user", "project", "lead"),
        transform=_notes_transform,
        description="Notes on deals, persons and organizations (content is HTML).",
    )


def _products() -> EntitySpec:
    return EntitySpec(
        name="products",
        streams=(Stream("/api/v2/products"),),
        incremental=True,
        columns={
            "id": int,
            "name": str,
            "code": str,
            "description": str,
            "unit": str,
            "tax": float,
            "category": str,
            "is_linkable": int,
            "is_deleted": int,
            "visible_to": int,
            "owner_id": int,
            "add_time": str,
            "update_time": str,
            "billing_frequency": str,
            "billing_frequency_cycles": int,
            "prices": str,  # [{currency, price, cost, ...}], one per currency
            "custom_fields": str,
        },
        foreign_keys=(("owner_id", "users", "id"),),
        indexes=(("update_time",),),
        fields_table="product_fields",
        description="The product catalogue, with a price per currency (prices).",
    )


def _deal_products() -> EntitySpec:
    return EntitySpec(
        name="deal_products",
        # No updated_since: asked only for deals with products whose update_time moved
        # (adding a product bumps it: an assumption, see README).
        streams=(
            Stream(
                "/api/v2/deals/products",
                (("sort_by", "id"),),
                children=Children("deals", "deal_ids", "deal_id", "products_count > 0"),
            ),
        ),
        incremental=False,
        columns={
            "id": int,
            "deal_id": int,
            "product_id": int,
            "name": str,
            "order_nr": int,
            "quantity": float,
            "item_price": float,
            "discount": float,
            "discount_type": str,  # percentage or amount
            "tax": float,
            "tax_method": str,  # exclusive, inclusive or none
            "sum": float,
            "currency": str,
            "comments": str,
            "is_enabled": int,
            "product_variation_id": int,
            "billing_frequency": str,
            "billing_frequency_cycles": int,
            "billing_start_date": str,
            "add_time": str,
            "update_time": str,
        },
        foreign_keys=(("deal_id", "deals", "id"), ("product_id", "products", "id")),
        indexes=(("deal_id", "order_nr", "id"), ("product_id",)),
        description="Deal line items: the products on each deal, in order_nr order.",
    )


def _leads_transform(row: Row, record: dict) -> None:
    # value is {amount, currency} or null: the same two columns as a deal's.
    value = record.get("value")
    value = value if isinstance(value, dict) else {}
    row["value"], row["currency"] = value.get("amount"), value.get("currency")
    row["is_archived"] = int(bool(record.get("is_archived")))
    row["is_deleted"] = 0  # listed, so not converted or deleted


def _leads() -> EntitySpec:
    return EntitySpec(
        name="leads",
        streams=(
            Stream("/v1/leads", (("sort", "update_time ASC"),)),
            Stream("/v1/leads/archived", (("sort", "update_time DESC"),), newest_first=True),
        ),
        incremental=True,
        pk="id",
        columns={
            "id": str,  # a UUID
            "title": str,
            "owner_id": int,
            "creator_id": int,
            "person_id": int,
            "organization_id": int,
            "label_ids": str,  # JSON array of lead_labels ids
            "source_name": str,
            "origin": str,
            "origin_id": str,
            "channel": int,
            "channel_id": str,
            "source_deal_id": int,
            "value": float,
            "currency": str,
            "expected_close_date": str,
            "next_activity_id": int,
            "is_archived": int,
            "was_seen": int,
            "visible_to": str,
            "cc_email": str,
            "add_time": str,
            "update_time": str,
            "is_deleted": int,
            "converted_deal_id": int,  # set from the deal's source_lead_id (conversions.py)
        },
        foreign_keys=(
            ("owner_id", "users", "id"),
            ("creator_id", "users", "id"),
            ("person_id", "persons", "id"),
            ("organization_id", "organizations", "id"),
            ("converted_deal_id", "deals", "id"),
        ),
        indexes=(("update_time",), ("owner_id",), ("add_time",)),
        fields_table="deal_fields",  # leads have the deals' custom fields
        custom_at_top=True,
        transform=_leads_transform,
        description=(
            "Leads in the inbox and archived ones; a lead converted to a deal is flagged"
            " is_deleted (with converted_deal_id) by the run that brings the deal, a deleted"
            " one by the next full pass."
        ),
    )


# Reference lists change a few times a year: once an hour is fresh enough, and it saves a
# request (20 tokens for most) on every other run.
HOURLY = timedelta(hours=1)


def _reference(
    name: str, path: str, columns: dict[str, type], pk: str = "id", description: str = ""
) -> EntitySpec:
    return EntitySpec(
        name=name,
        streams=(Stream(path),),
        incremental=False,
        columns={**columns, "is_deleted": int},
        pk=pk,
        refresh=HOURLY,
        description=description,
    )


def _reference_lists() -> list[EntitySpec]:
    return [
        _reference(
            "currencies",
            "/v1/currencies",
            {
                "id": int,
                "code": str,
                "name": str,
                "decimal_points": int,
                "symbol": str,
                "active_flag": int,
                "is_custom_flag": int,
            },
            description="Currencies the account can use (code is what deals say).",
        ),
        _reference(
            "activity_types",
            "/v1/activityTypes",
            {
                "id": int,
                "name": str,
                "key_string": str,  # what activities.type says
                "icon_key": str,
                "order_nr": int,
                "active_flag": int,
                "is_custom_flag": int,
                "color": str,
                "add_time": str,
                "update_time": str,
            },
            description="Activity types; activities.type is their key_string.",
        ),
        _reference(
            "lead_labels",
            "/v1/leadLabels",
            {"id": str, "name": str, "color": str, "add_time": str, "update_time": str},
            description="Lead labels (ids are UUIDs).",
        ),
        _reference(
            "lead_sources",
            "/v1/leadSources",
            {"name": str},
            pk="name",
            description="Where leads come from.",
        ),
    ]


def builtin_entities() -> list[EntitySpec]:
    """pdsync's own specs, in the order their tables are created (referenced tables first)."""
    return [
        _pipelines(),
        _stages(),
        _users(),
        _field_definitions("deal_fields", "/api/v2/dealFields", "Deal"),
        # Deal fields every run: leads keep no raw custom fields to fill a new column from
        # later. The others are hourly: a new field's column is filled from custom_fields.
        _field_definitions("person_fields", "/api/v2/personFields", "Person", HOURLY),
        _field_definitions(
            "organization_fields", "/api/v2/organizationFields", "Organization", HOURLY
        ),
        _organizations(),
        _persons(),
        _deals(),
        _activities(),
        _notes(),
        _field_definitions("product_fields", "/api/v2/productFields", "Product", HOURLY),
        _products(),
        _deal_products(),
        _field_definitions("activity_fields", "/api/v2/activityFields", "Activity", HOURLY),
        *_reference_lists(),
        _leads(),
        *project_specs(),
    ]


def project_specs() -> list[EntitySpec]:
    from .projects import project_specs as specs  # projects.py builds on this module

    return specs()


def by_name(entities: list[EntitySpec] | None = None) -> dict[str, EntitySpec]:
    return {spec.name: spec for spec in (entities or builtin_entities())}
