"""The demo company's catalogue and sales side, generated after the first entities: product
and activity field definitions, currencies, activity types, lead labels and sources,
products, deal line items and leads.

Registered (imported by generators.py) after notes and before projects, in this order: each
draws from the random stream after the ones before it, so a seed gives the same company.
"""

from __future__ import annotations

from collections.abc import Iterator

from . import records
from .company import (
    ACTIVITY_TYPE_ICONS,
    ACTIVITY_TYPES,
    CURRENCY_LIST,
    CURRENCY_POOL,
    DEAL_SUBJECTS,
    FROM_SAR,
    LEAD_LABELS,
    LEAD_SOURCES,
    PRODUCT_LINES,
    PRODUCT_SIZES,
    field_definition,
)
from .generators import YEAR_MS, Gen, generates
from .records import precise
from .wire import DAY_MS, day, trunc, v1_time, v2_time


def field_rows(g: Gen, kind: str, fields: list[dict]) -> Iterator[tuple]:
    """Field definitions go to the shared fields table, numbered after the others."""
    for f in fields:
        fid = g.company.next_id["fields"]
        g.company.next_id["fields"] = fid + 1
        yield g.store.row("fields", f, id=fid, kind=kind)


@generates("product_fields", lambda deals: 0)
def product_fields(g: Gen) -> Iterator[tuple]:
    opt = g.company.next_option_id
    lines = sorted({line[0] for line in PRODUCT_LINES})
    options = [{"id": opt + i, "label": label, "color": None} for i, label in enumerate(lines)]
    g.company.next_option_id = opt + len(options)
    money = [
        field_definition("product", "Amount of Price", "value", "double", False),
        field_definition("product", "Currency of Price", "currency", "varchar", False),
    ]
    for f in money:  # subfields carry only these three keys
        for key in ("options", "subfields", "is_custom_field", "is_optional_response_field"):
            f.pop(key)
        f.pop("ui_visibility")
    built_in = [
        field_definition("product", "Name", "name", "varchar", False),
        field_definition("product", "Product code", "code", "varchar", False),
        field_definition("product", "Unit", "unit", "varchar", False),
        field_definition("product", "Tax", "tax", "double", False),
        field_definition("product", "Category", "category", "enum", False, options=options),
        field_definition("product", "Owner", "owner_id", "user", False),
        field_definition("product", "Price", "prices", "price_list", False, subfields=money),
    ]
    custom = [
        field_definition("product", "Brand", f"{g.rng.getrandbits(160):040x}", "varchar", True),
        field_definition(
            "product", "Warranty (months)", f"{g.rng.getrandbits(160):040x}", "int", True
        ),
        field_definition(
            "product",
            "Origin",
            f"{g.rng.getrandbits(160):040x}",
            "enum",
            True,
            options=[
                {"id": g.company.next_option_id + i, "label": label, "color": None}
                for i, label in enumerate(("Local (KSA)", "GCC", "Europe", "Asia"))
            ],
        ),
    ]
    g.company.next_option_id += 4
    g.company.product_fields = built_in + custom
    yield from field_rows(g, "product", g.company.product_fields)


@generates("activity_fields", lambda deals: 0)
def activity_fields(g: Gen) -> Iterator[tuple]:
    types = [{"id": i, "label": t} for i, t in enumerate(ACTIVITY_TYPES, start=1)]
    yield from field_rows(
        g,
        "activity",
        [
            field_definition("activity", "Subject", "subject", "varchar", False),
            field_definition("activity", "Type", "type", "enum", False, options=types),
            field_definition("activity", "Due date", "due_date", "date", False),
            field_definition("activity", "Duration", "duration", "time", False),
            field_definition("activity", "Owner", "owner_id", "user", False),
            field_definition("activity", "Deal", "deal_id", "deal", False),
            field_definition("activity", "Note", "note", "text", False),
        ],
    )


@generates("currencies", lambda deals: len(CURRENCY_LIST))
def currencies(g: Gen) -> Iterator[tuple]:
    for i, (code, name, points, symbol) in enumerate(CURRENCY_LIST, start=1):
        rec = {
            "id": i,
            "code": code,
            "name": name,
            "decimal_points": points,
            "symbol": symbol,
            "active_flag": True,
            "is_custom_flag": False,
        }
        yield g.store.row("currencies", rec)


@generates("activity_types", lambda deals: len(ACTIVITY_TYPES))
def activity_types(g: Gen) -> Iterator[tuple]:
    for i, key in enumerate(ACTIVITY_TYPES, start=1):
        at = g.start - 200 * DAY_MS + i * 60_000
        rec = {
            "id": i,
            "order_nr": i,
            "name": key.capitalize(),
            "key_string": key,
            "icon_key": ACTIVITY_TYPE_ICONS[key],
            "active_flag": True,
            "color": "FFFFFF",
            "is_custom_flag": False,
            "add_time": v1_time(at),
            "update_time": v1_time(at),
        }
        yield g.store.row("activity_types", rec, at, at)


@generates("lead_labels", lambda deals: len(LEAD_LABELS))
def lead_labels(g: Gen) -> Iterator[tuple]:
    for i, (name, color) in enumerate(LEAD_LABELS, start=1):
        at = g.start - 100 * DAY_MS + i * 1000
        rec = {
            "id": records.uuid(g.rng),
            "name": name,
            "color": color,
            "add_time": v2_time(at, True),
            "update_time": v2_time(at, True),
        }
        yield g.store.row("lead_labels", rec, at, at, id=i)


@generates("lead_sources", lambda deals: len(LEAD_SOURCES))
def lead_sources(g: Gen) -> Iterator[tuple]:
    for i, name in enumerate(LEAD_SOURCES, start=1):
        yield g.store.row("lead_sources", {"name": name}, id=i)


@generates("products", lambda deals: max(12, min(240, deals // 400)))
def products(g: Gen) -> Iterator[tuple]:
    r, pick, n = g.r, g.pick, g.size["products"]
    custom = g.custom("product", 0.7)
    for i in range(1, n + 1):
        category, pattern, unit, sar = PRODUCT_LINES[(i - 1) % len(PRODUCT_LINES)]
        size = PRODUCT_SIZES[((i - 1) // len(PRODUCT_LINES)) % len(PRODUCT_SIZES)]
        ms = precise(i)
        at = trunc(g.start - 60 * DAY_MS + int(r() * 3 * YEAR_MS * i / n), ms)
        ut = trunc(g.between(at, g.latest, 1.5), ms)
        price = round(sar * (0.6 + 0.1 * ((i - 1) // len(PRODUCT_LINES))), 2)
        # Everything has a SAR price; some items are also quoted in dollars or euros.
        prices = [("SAR", price, round(price * 0.7, 2))]
        for currency in ("USD", "EUR"):
            if r() < 0.4:
                prices.append((currency, round(price * FROM_SAR[currency], 2), 0))
        rec = records.product_record(
            i,
            name=pattern.format(n=size)
            if i <= len(PRODUCT_LINES) * len(PRODUCT_SIZES)
            else f"{pattern.format(n=size)} ({i})",
            code=f"{category[:3].upper()}-{i:04d}",
            unit=unit,
            category=category,
            owner_id=pick(g.owners),
            add_time=at,
            update_time=ut,
            prices=prices,
            tax=0 if category == "Services" and r() < 0.3 else 15,
            custom_fields=custom(),
        )
        g.products.append(rec)
        yield g.store.row("products", rec, ut, at)


@generates("deal_products", lambda deals: deals)  # an upper bound: ids are not all used
def deal_products(g: Gen) -> Iterator[tuple]:
    """Line items on about a third of the deals, added between the deal's creation and its
    last update (adding one bumps the deal's update_time, which pdsync relies on)."""
    r, pick = g.r, g.pick
    item_id = 0
    deals = g.store.query(
        "SELECT id, at, ut, status, json_extract(CAST(json AS TEXT), '$.currency') FROM deals"
        " ORDER BY id"
    )
    for deal_id, at, ut, status, currency in deals:
        if r() >= (0.55 if status == "won" else 0.3):
            continue
        for order_nr in range(1, 2 + int(r() * r() * 5)):
            item_id += 1
            product = pick(g.products)
            ms = precise(item_id)
            item_at = trunc(g.between(at, ut), ms)
            sar = product["prices"][0]["price"]
            quoted = {p["currency"]: p["price"] for p in product["prices"]}
            item_price = quoted.get(currency, round(sar * FROM_SAR.get(currency, 1.0), 2))
            discount_type = "percentage" if r() < 0.8 else "amount"
            discount = (
                0
                if r() < 0.6
                else (
                    pick((5, 10, 15)) if discount_type == "percentage" else round(item_price * 0.05)
                )
            )
            rec = records.line_item_record(
                item_id,
                deal_id=deal_id,
                product=product,
                order_nr=order_nr,
                currency=currency,
                quantity=pick((1, 1, 2, 3, 4, 6, 10, 12, 24, 50))
                if product["unit"] != "m"
                else float(10 * (1 + int(r() * 80))),
                item_price=item_price,
                discount=discount,
                discount_type=discount_type,
                tax_method=pick(("exclusive", "exclusive", "inclusive", "none")),
                add_time=item_at,
                update_time=item_at,
            )
            yield g.store.row("deal_products", rec, item_at, item_at)


@generates("leads", lambda deals: max(12, deals // 10))
def leads(g: Gen) -> Iterator[tuple]:
    """Leads from the last year: most open in the inbox, some archived, some converted to
    deals (the API deletes those: only the store remembers them, unlisted)."""
    r, pick, n = g.r, g.pick, g.size["leads"]
    custom = g.custom("deal", 0.3)
    labels = [row[0] for row in g.store.query("SELECT json_extract(json, '$.id') FROM lead_labels")]
    n_persons, n_orgs = g.size["persons"], g.size["organizations"]
    for i in range(1, n + 1):
        at = g.latest - YEAR_MS + YEAR_MS * (i - 1) // n + int(r() * 3_600_000)
        at = min(at, g.latest - 60_000)
        ut = g.between(at, g.latest, 1.5)
        x = r()
        converted = ut if x < 0.15 else None  # fixed below for tiny companies
        archived = 0.15 <= x < 0.3 or i % 11 == 4
        if i % 11 == 7:
            converted, archived = ut, False
        person_id = 1 + int(r() * n_persons) if r() < 0.8 else None
        org_id = g.person_org[person_id] if person_id else None
        if org_id is None and (person_id is None or r() < 0.3):
            org_id = 1 + int(r() * n_orgs)
        subject = pick(DEAL_SUBJECTS)
        title = f"{g.org_names[org_id - 1]} – {subject}" if org_id else f"{subject} lead"
        rec = records.lead_record(
            records.uuid(g.rng),
            title=title,
            owner_id=pick(g.owners),
            person_id=person_id,
            organization_id=org_id,
            label_ids=sorted({pick(labels) for _ in range(1 + int(r() * 2))}) if r() < 0.6 else [],
            source_name=pick(LEAD_SOURCES),
            value=(round(g.rng.lognormvariate(10, 1.1)), pick(CURRENCY_POOL))
            if r() < 0.6
            else None,
            expected_close_date=day(at + (30 + int(r() * 150)) * DAY_MS) if r() < 0.4 else None,
            is_archived=archived,
            was_seen=r() < 0.7,
            add_time=at,
            update_time=ut,
            custom_fields=custom(),
        )
        yield g.store.row("leads", rec, ut, at, id=i, converted_at=converted)
