"""Records in the API's shape, one builder per entity (used by the generators and mutations).

Field lists are copied from the official OpenAPI specs; a field the spec calls non-nullable is
left out when it has no value (``prune``), because the spec offers no other valid way to say
"empty".
"""

from __future__ import annotations

import random
from typing import Any

from .entities import BY_NAME
from .wire import DAY_MS, v1_time, v2_time


def prune(entity: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Drop the nulls the spec does not allow for ``entity`` (its declared ``nullable``)."""
    keep = BY_NAME[entity].nullable
    return {k: v for k, v in rec.items() if v is not None or k in keep}


def precise(id_: int) -> bool:
    """Whether a record's v2 times carry milliseconds (the real API varies)."""
    return id_ % 3 == 0


def uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def user_record(uid: int, spec: tuple, now_ms: int, rng: random.Random) -> dict:
    name, email, admin, active, phone, icon = spec
    created = now_ms - rng.randint(400, 1500) * DAY_MS
    access = [
        {"app": "sales", "admin": admin, "permission_set_id": uuid(rng)},
        {"app": "global", "admin": admin, "permission_set_id": uuid(rng)},
    ]
    if admin:
        access.append({"app": "account_settings", "admin": True, "permission_set_id": uuid(rng)})
    return {
        "id": uid,
        "name": name,
        "default_currency": "SAR",
        "locale": "en_US",
        "lang": 1,
        "email": email,
        "phone": phone,
        "activated": active,
        "last_login": v1_time(now_ms - rng.randint(1, 60 if active else 400) * 3_600_000),
        "created": v1_time(created),
        "modified": v1_time(created + rng.randint(1, 300) * DAY_MS) if uid % 2 else None,
        "has_created_company": uid == 1,
        "access": access,
        "active_flag": active,
        "timezone_name": "Europe/Berlin" if "Müller" in name else "Asia/Riyadh",
        "timezone_offset": "+01:00" if "Müller" in name else "+03:00",
        "role_id": 1,
        "icon_url": f"https://avatars.example/u{uid}.png" if icon else None,
        "is_you": uid == 1,
        "is_deleted": False,
    }


def deal_record(
    id_: int,
    *,
    title: str,
    owner_id: int,
    person_id: int | None,
    org_id: int | None,
    pipeline_id: int,
    stage_id: int,
    value: float,
    currency: str,
    add_time: int,
    update_time: int,
    stage_change_time: int | None = None,
    status: str = "open",
    is_archived: bool = False,
    archive_time: int | None = None,
    probability: float | None = None,
    lost_reason: str | None = None,
    visible_to: int = 3,
    close_time: int | None = None,
    won_time: int | None = None,
    lost_time: int | None = None,
    expected_close_date: str | None = None,
    label_ids: list[int] | None = None,
    origin: str = "ManuallyCreated",
    creator_user_id: int | None = None,
    custom_fields: dict | None = None,
) -> dict:
    """A deal exactly as GET /api/v2/deals returns it."""
    ms = precise(id_)

    def t(x: int | None) -> str | None:
        return None if x is None else v2_time(x, ms)

    return prune(
        "deals",
        {
            "id": id_,
            "title": title,
            "creator_user_id": creator_user_id or owner_id,
            "owner_id": owner_id,
            "person_id": person_id,
            "org_id": org_id,
            "pipeline_id": pipeline_id,
            "stage_id": stage_id,
            "value": value,
            "currency": currency,
            "add_time": t(add_time),
            "update_time": t(update_time),
            "stage_change_time": t(stage_change_time),
            "is_deleted": status == "deleted",
            "is_archived": is_archived,
            "archive_time": t(archive_time),
            "status": status,
            "probability": probability,
            "lost_reason": lost_reason,
            "visible_to": visible_to,
            "close_time": t(close_time),
            "won_time": t(won_time),
            "lost_time": t(lost_time),
            "expected_close_date": expected_close_date,
            "label_ids": label_ids or [],
            "origin": origin,
            "origin_id": None,
            "channel": None,
            "channel_id": None,
            "arr": None,
            "mrr": None,
            "acv": None,
            "custom_fields": custom_fields or {},
        },
    )


def person_record(
    id_: int,
    *,
    first_name: str,
    last_name: str,
    owner_id: int,
    org_id: int | None,
    add_time: int,
    update_time: int,
    emails: list[dict] | None = None,
    phones: list[dict] | None = None,
    job_title: str | None = None,
    label_ids: list[int] | None = None,
    custom_fields: dict | None = None,
    is_deleted: bool = False,
    visible_to: int = 3,
) -> dict:
    ms = precise(id_)
    return prune(
        "persons",
        {
            "id": id_,
            "name": f"{first_name} {last_name}".strip(),
            "first_name": first_name,
            "last_name": last_name,
            "owner_id": owner_id,
            "org_id": org_id,
            "add_time": v2_time(add_time, ms),
            "update_time": v2_time(update_time, ms),
            "emails": emails or [],
            "phones": phones or [],
            "is_deleted": is_deleted,
            "visible_to": visible_to,
            "label_ids": label_ids or [],
            "job_title": job_title,
            "custom_fields": custom_fields or {},
        },
    )


def organization_record(
    id_: int,
    *,
    name: str,
    owner_id: int,
    add_time: int,
    update_time: int,
    address: dict | None = None,
    website: str | None = None,
    linkedin: str | None = None,
    industry: int | None = None,
    annual_revenue: int | None = None,
    employee_count: int | None = None,
    label_ids: list[int] | None = None,
    custom_fields: dict | None = None,
    is_deleted: bool = False,
    visible_to: int = 3,
) -> dict:
    ms = precise(id_)
    return prune(
        "organizations",
        {
            "id": id_,
            "name": name,
            "owner_id": owner_id,
            "add_time": v2_time(add_time, ms),
            "update_time": v2_time(update_time, ms),
            "is_deleted": is_deleted,
            "visible_to": visible_to,
            "address": address,
            "label_ids": label_ids or [],
            "website": website,
            "linkedin": linkedin,
            "industry": industry,
            "annual_revenue": annual_revenue,
            "employee_count": employee_count,
            "custom_fields": custom_fields or {},
        },
    )


def activity_record(
    id_: int,
    *,
    subject: str,
    type: str,  # noqa: A002 - Pipedrive's name
    owner_id: int,
    add_time: int,
    update_time: int,
    deal_id: int | None = None,
    person_id: int | None = None,
    org_id: int | None = None,
    due_date: str | None = None,
    due_time: str | None = None,
    duration: str | None = None,
    busy: bool = False,
    done: bool = False,
    marked_as_done_time: int | None = None,
    location: dict | None = None,
    note: str | None = None,
    creator_user_id: int | None = None,
    is_deleted: bool = False,
) -> dict:
    ms = precise(id_)
    return prune(
        "activities",
        {
            "id": id_,
            "subject": subject,
            "type": type,
            "owner_id": owner_id,
            "creator_user_id": creator_user_id or owner_id,
            "is_deleted": is_deleted,
            "add_time": v2_time(add_time, ms),
            "update_time": v2_time(update_time, ms),
            "deal_id": deal_id,
            "person_id": person_id,
            "org_id": org_id,
            "due_date": due_date,
            "due_time": due_time,
            "duration": duration,
            "busy": busy,
            "done": done,
            "marked_as_done_time": (
                None if marked_as_done_time is None else v2_time(marked_as_done_time, ms)
            ),
            "location": location,
            "participants": [{"person_id": person_id, "primary": True}] if person_id else [],
            "note": note,
        },
    )


def note_record(
    id_: int,
    *,
    content: str,
    user_id: int,
    add_time: int,
    update_time: int,
    deal_id: int | None = None,
    person_id: int | None = None,
    org_id: int | None = None,
    active: bool = True,
    last_update_user_id: int | None = None,
) -> dict:
    """A v1 note without the embedded deal/person/organization/user (joined when served)."""
    return prune(
        "notes",
        {
            "id": id_,
            "active_flag": active,
            "add_time": v1_time(add_time),
            "content": content,
            "deal_id": deal_id,
            "last_update_user_id": last_update_user_id or user_id,
            "org_id": org_id,
            "person_id": person_id,
            "pinned_to_deal_flag": False,
            "pinned_to_organization_flag": False,
            "pinned_to_person_flag": False,
            "pinned_to_project_flag": False,
            "pinned_to_task_flag": False,
            "update_time": v1_time(update_time),
            "user_id": user_id,
        },
    )


def product_record(
    id_: int,
    *,
    name: str,
    code: str,
    unit: str,
    category: str,
    owner_id: int,
    add_time: int,
    update_time: int,
    prices: list[tuple[str, float, float]],  # (currency, price, cost)
    tax: float = 15,
    custom_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A product exactly as GET /api/v2/products returns it."""
    ms = precise(id_)
    return prune(
        "products",
        {
            "id": id_,
            "name": name,
            "code": code,
            "description": f"{name} ({category.lower()})",
            "unit": unit,
            "tax": tax,
            "category": category,
            "is_linkable": True,
            "is_deleted": False,
            "visible_to": 3,
            "owner_id": owner_id,
            "add_time": v2_time(add_time, ms),
            "update_time": v2_time(update_time, ms),
            "billing_frequency": "annually" if unit == "year" else "one-time",
            "billing_frequency_cycles": None,
            "prices": [
                {
                    "product_id": id_,
                    "price": price,
                    "currency": currency,
                    "cost": cost,
                    "direct_cost": None,
                    "notes": "",
                }
                for currency, price, cost in prices
            ],
            "custom_fields": custom_fields or {},
        },
    )


def line_item_sum(
    quantity: float, item_price: float, discount: float, discount_type: str, tax: float, method: str
) -> float:
    """What Pipedrive shows as a line item's sum: after the discount, with an exclusive tax."""
    gross = quantity * item_price
    net = gross - (gross * discount / 100 if discount_type == "percentage" else discount)
    return round(net * (1 + tax / 100) if method == "exclusive" else net, 2)


def line_item_record(
    id_: int,
    *,
    deal_id: int,
    product: dict[str, Any],
    order_nr: int,
    currency: str,
    quantity: float,
    item_price: float,
    discount: float,
    discount_type: str,
    tax_method: str,
    add_time: int,
    update_time: int,
    comments: str = "",
) -> dict[str, Any]:
    """A deal's line item exactly as GET /api/v2/deals/products returns it."""
    ms = precise(id_)
    tax = product["tax"] if tax_method != "none" else 0
    return prune(
        "deal_products",
        {
            "id": id_,
            "sum": line_item_sum(quantity, item_price, discount, discount_type, tax, tax_method),
            "tax": tax,
            "deal_id": deal_id,
            "name": product["name"],
            "product_id": product["id"],
            "product_variation_id": None,
            "order_nr": order_nr,
            "add_time": v2_time(add_time, ms),
            "update_time": v2_time(update_time, ms),
            "comments": comments,
            "currency": currency,
            "discount": discount,
            "quantity": quantity,
            "item_price": item_price,
            "tax_method": tax_method,
            "discount_type": discount_type,
            "is_enabled": True,
            "billing_frequency": product.get("billing_frequency", "one-time"),
            "billing_frequency_cycles": None,
            "billing_start_date": None,
        },
    )


def lead_record(
    id_: str,
    *,
    title: str,
    owner_id: int,
    person_id: int | None,
    organization_id: int | None,
    label_ids: list[str],
    source_name: str,
    value: tuple[float, str] | None,
    expected_close_date: str | None,
    is_archived: bool,
    was_seen: bool,
    add_time: int,
    update_time: int,
    custom_fields: dict[str, Any] | None = None,
) -> dict:
    """A lead exactly as GET /v1/leads returns it: times with milliseconds, and the deal
    custom fields that have a value as top-level keys ("the same format as with the Deals
    endpoints", v1's)."""
    rec = {
        "id": id_,
        "title": title,
        "owner_id": owner_id,
        "creator_id": owner_id,
        "label_ids": label_ids,
        "person_id": person_id,
        "organization_id": organization_id,
        "source_name": source_name,
        "origin": "API" if source_name == "API" else "ManuallyCreated",
        "origin_id": None,
        "channel": None,
        "channel_id": None,
        "source_deal_id": None,
        "is_archived": is_archived,
        "was_seen": was_seen,
        "value": None if value is None else {"amount": value[0], "currency": value[1]},
        "expected_close_date": expected_close_date,
        "next_activity_id": None,
        "add_time": v2_time(add_time, True),
        "update_time": v2_time(update_time, True),
        "visible_to": "3",
        "cc_email": f"demo+1+lead{id_[:8]}@demo.pipedrivemail.com",
    }
    rec.update({k: v for k, v in (custom_fields or {}).items() if v is not None})
    return rec
