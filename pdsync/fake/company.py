"""A seeded demo company: pipelines, users, custom fields, orgs, persons, deals, activities, notes.

Everything derives from ``random.Random(seed)`` and the reference time, so the same seed and
``now`` give the same company. Records are built in the API's shape (field lists copied from
the official OpenAPI specs); a field the spec calls non-nullable is left out when it has no
value, because the spec offers no other valid way to say "empty".
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .store import DAY_MS, PURGE_AFTER_MS, Store, day, trunc, v1_time, v2_time

YEAR_MS = 365 * DAY_MS

# Fields the v2/v1 response schemas mark nullable: these stay as null, others are dropped.
NULLABLE = {
    "deals": frozenset(
        "probability lost_reason close_time origin_id channel channel_id source_lead_id "
        "arr mrr acv archive_time".split()
    ),
    "persons": frozenset(),
    "organizations": frozenset("website linkedin industry annual_revenue employee_count".split()),
    "activities": frozenset(),
    "notes": frozenset(),
    "stages": frozenset({"days_to_rotten"}),
    "users": frozenset({"phone", "modified", "icon_url"}),
}


def prune(entity: str, rec: dict[str, Any]) -> dict[str, Any]:
    keep = NULLABLE[entity]
    return {k: v for k, v in rec.items() if v is not None or k in keep}


def precise(id_: int) -> bool:
    """Whether a record's v2 times carry milliseconds (the real API varies)."""
    return id_ % 3 == 0


# -- static parts of the company --------------------------------------------------------------

# (id, name, [(stage name, deal_probability, days_to_rotten or None = rotting off)])
# fmt: off
PIPELINES: list[tuple[int, str, list[tuple[str, int, int | None]]]] = [
    (1, "Pipeline", [("Qualified", 10, None), ("Contact Made", 20, None),
                     ("Demo Scheduled", 40, 14), ("Proposal Made", 60, 21),
                     ("Negotiations Started", 80, 30)]),
    (2, "Prospecting", [("Lead In", 5, None), ("Contacted", 15, 10),
                        ("Needs Identified", 30, None), ("Meeting Arranged", 50, 14)]),
    (3, "Aramco Inquiries", [("Inquiry Received", 10, 7), ("Technical Review", 25, None),
                             ("Clarifications", 40, 14), ("Quotation Submitted", 60, 30),
                             ("Commercial Evaluation", 75, 45)]),
    (4, "Aramco PO", [("PO Received", 90, None), ("Order Confirmation", 92, 7),
                      ("Procurement", 94, 30), ("Manufacturing", 96, 60), ("Inspection", 97, 14),
                      ("Shipped", 99, 21), ("Invoiced", 100, 45)]),
    (5, "Aramco Projects", [("Kick-off", 50, None), ("Design", 60, 45), ("Execution", 70, 90),
                            ("Testing & Commissioning", 85, 30), ("Handover", 95, 21),
                            ("Closed Out", 100, None)]),
    (6, "Bidding Projects", [("Tender Received", 5, None), ("Pre-bid Meeting", 10, 7),
                             ("Bid Preparation", 20, 14), ("Bid Submitted", 35, 45),
                             ("Technical Evaluation", 50, 30), ("Award", 80, None)]),
    (10, "Design Development", [("Brief", 10, None), ("Concept Design", 25, 30),
                                ("Schematic Design", 40, 30), ("Detailed Design", 60, 45),
                                ("IFC Drawings", 85, 21)]),
    (11, "Problematic & Stuck Orders", [("On Hold", 30, None), ("Payment Delayed", 50, 30),
                                        ("Customer Dispute", 30, 14), ("Supplier Delay", 60, 21),
                                        ("Escalated", 40, 7)]),
]
# fmt: on
PIPELINE_WEIGHTS = {1: 10, 2: 14, 3: 20, 4: 14, 5: 12, 6: 15, 10: 9, 11: 6}

USERS = [
    # (name, email, admin, active, phone, icon)
    ("Faisal Al-Qahtani", "faisal@gulf-fitout.example", True, True, "+966 50 123 4567", True),
    ("Sara Al-Harbi", "sara@gulf-fitout.example", False, True, "+966 55 987 6543", True),
    ("Omar Haddad", "omar@gulf-fitout.example", False, True, None, False),
    ("Lena Müller", "lena.mueller@gulf-fitout.example", False, True, "+49 89 1234567", True),
    ("James Whitfield", "james@gulf-fitout.example", False, True, "+971 4 555 0101", False),
    ("Noura Al-Mutairi", "noura@gulf-fitout.example", True, True, None, True),
    ("Rajesh Menon", "rajesh@gulf-fitout.example", False, True, "+966 13 882 1100", False),
    ("Élodie Laurent", "elodie@gulf-fitout.example", False, False, None, False),
]
OWNER_WEIGHTS = [14, 18, 16, 10, 12, 12, 14, 4]

COMPANY = {
    "company_id": 7345120,
    "company_name": "Gulf Fit-Out & Engineering Co.",
    "company_domain": "gulf-fitout",
    "company_country": "SA",
    "company_industry": "Construction",
}

CITIES = [
    # (locality, admin_area_level_1, country, postal_code, weight)
    ("Riyadh", "Riyadh Province", "Saudi Arabia", "12271", 20),
    ("Jeddah", "Makkah Province", "Saudi Arabia", "23442", 12),
    ("Dammam", "Eastern Province", "Saudi Arabia", "32241", 10),
    ("Dhahran", "Eastern Province", "Saudi Arabia", "34465", 8),
    ("Al Khobar", "Eastern Province", "Saudi Arabia", "34426", 6),
    ("Jubail", "Eastern Province", "Saudi Arabia", "35514", 5),
    ("Yanbu", "Madinah Province", "Saudi Arabia", "46455", 3),
    ("Dubai", "Dubai", "United Arab Emirates", "00000", 8),
    ("Abu Dhabi", "Abu Dhabi", "United Arab Emirates", "00000", 5),
    ("Doha", "Doha", "Qatar", "00000", 4),
    ("Kuwait City", "Al Asimah", "Kuwait", "13001", 3),
    ("Manama", "Capital Governorate", "Bahrain", "317", 2),
    ("Muscat", "Muscat Governorate", "Oman", "100", 2),
    ("München", "Bayern", "Germany", "80331", 2),
    ("Rotterdam", "Zuid-Holland", "Netherlands", "3011", 1),
    ("Göteborg", "Västra Götaland", "Sweden", "411 04", 1),
    ("Lyon", "Auvergne-Rhône-Alpes", "France", "69002", 1),
    ("Zürich", "Zürich", "Switzerland", "8001", 1),
    ("Milano", "Lombardia", "Italy", "20121", 1),
]
CITY_WEIGHTS = [c[4] for c in CITIES]
STREETS = [
    "King Fahd Road",
    "Prince Sultan Street",
    "Olaya Street",
    "King Abdulaziz Road",
    "Tahlia Street",
    "Sheikh Zayed Road",
    "Corniche Road",
    "Al Madinah Road",
    "Industrial Area 2, Street 14",
    "Leopoldstraße",
    "Bahnhofstrasse",
]
GULF_ROOTS = (
    "Al Rashid,Al Muhaidib,Al Zamil,Al Fozan,Al Babtain,Nesma,El Seif,Al Yamama,Rawabi,"
    "Al Tamimi,Al Suwaidi,Gulf Horizon,Desert Falcon,Arabian Shield,Red Sea,Najd,Hejaz,"
    "Qassim Steel,Khaleej,Al Othman,Bahrain Marine,Qatar Gulf,Oman Pearl,Al Jazirah,"
    "Eastern Star,Al Bawani,Sahara Peak,Al Faisaliah,Dar Al Riyadh,Al Khorayef"
).split(",")
GULF_SUFFIXES = [
    "Trading Est.",
    "Contracting Co.",
    "Industrial Services Co.",
    "Engineering LLC",
    "Holding",
    "W.L.L.",
    "Group",
    "for Trading & Contracting",
    "Electro-Mechanical Co.",
]
EURO_ROOTS = (
    "Müller & Söhne,Björk,Lefèvre,Nordström,Van der Berg,Rossi,Łódź Fabrication,Hansen,"
    "Dubois,Krämer,Øresund,Schäfer,García,Žilina Valves"
).split(",")
EURO_SUFFIXES = ["GmbH", "AB", "S.A.", "B.V.", "S.p.A.", "Ltd", "sp. z o.o.", "A/S", "AG"]
ARABIC_ORGS = ["شركة الراشد للمقاولات", "مؤسسة النخبة التجارية", "مصنع الخليج للصلب"]
FIRST_NAMES = (
    "Mohammed,Abdullah,Fahad,Khalid,Faisal,Sultan,Saud,Nasser,Turki,Omar,Ahmed,Yousef,Ali,"
    "Hassan,Ibrahim,Noura,Sara,Reem,Lama,Hind,Maha,Dana,Layla,Fatimah,Aisha,Hans,Jürgen,"
    "Søren,François,José,Zoë,Björn,Łukasz,Chiara,Matteo,Émilie,Ingrid,Siobhán,Mark,Peter,"
    "Anna,Rajesh,Priya,Imran,Suresh"
).split(",")
LAST_NAMES = (
    "Al-Qahtani,Al-Otaibi,Al-Ghamdi,Al-Zahrani,Al-Shehri,Al-Harbi,Al-Dosari,Al-Mutairi,"
    "Al-Subaie,Al-Shammari,Haddad,Khoury,Nasser,Mansour,Müller,Schröder,Jørgensen,Lefèvre,"
    "García,Rossi,Nowak,Nyström,O'Brien,Menon,Iyer,Qureshi"
).split(",")
ARABIC_PERSONS = [("محمد", "العتيبي"), ("سارة", "القحطاني"), ("عبدالله", "الشهري")]
JOB_TITLES = [
    "Procurement Manager",
    "Project Manager",
    "Purchasing Officer",
    "Technical Director",
    "CEO",
    "Site Engineer",
    "Contracts Manager",
    "Facilities Manager",
    None,
]
DEAL_SUBJECTS = [
    "HVAC upgrade",
    "Fire fighting system",
    "Control valves supply",
    "Office fit-out",
    "Pump station retrofit",
    "Instrumentation package",
    "Cable trays & supports",
    "Annual maintenance contract",
    "Substation MEP works",
    "Cleanroom design",
    "Piping spools",
    "Chiller replacement",
    "Warehouse racking",
    "Villa interior design",
]
LOST_REASONS = [
    "Price too high",
    "Lost to competitor",
    "Budget cancelled",
    "No response from customer",
    "Project postponed",
    "Technical non-compliance",
]
CURRENCIES = ["SAR", "USD", "EUR", "AED"]
CURRENCY_WEIGHTS = [72, 14, 8, 6]
ACTIVITY_TYPES = ["call", "meeting", "task", "deadline", "email", "lunch"]
ACTIVITY_SUBJECTS = [
    "Follow up on quotation",
    "Site visit",
    "Technical clarification call",
    "Send revised offer",
    "PO follow-up",
    "Kick-off meeting",
    "Submit bid documents",
    "Call re: payment",
    "Factory acceptance test",
]
NOTE_TEMPLATES = [
    "<p>Spoke with <b>{who}</b> about the revised quotation. Client asked for "
    "&quot;best and final&quot; price.</p>",
    "<ul><li>Delivery: {n} weeks</li><li>Payment: 30% advance, 70% on delivery</li></ul>",
    "<p>تم إرسال العرض الفني إلى العميل</p>",
    "<p>Meeting notes:<br>- Scope confirmed<br>- Next step: PO from {who}</p>",
    "<p>Customer complained about delay &amp; asked for escalation to <i>management</i>.</p>",
    "<p>Prüfung bestanden – Lieferung KW {n}.</p>",
    "<div>Called {who}, no answer. Will retry on Sunday.</div>",
]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _hash40(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


@dataclass
class Company:
    """What mutations need to know about the generated company."""

    deal_fields: list[dict] = field(default_factory=list)
    person_fields: list[dict] = field(default_factory=list)
    org_fields: list[dict] = field(default_factory=list)
    stage_pipeline: dict[int, int] = field(default_factory=dict)
    first_stage: dict[int, int] = field(default_factory=dict)
    user_ids: list[int] = field(default_factory=list)
    next_id: dict[str, int] = field(default_factory=dict)
    next_option_id: int = 1000

    def custom(self, kind: str) -> list[dict]:
        fields = {"deal": self.deal_fields, "person": self.person_fields, "org": self.org_fields}
        return [f for f in fields[kind] if f["is_custom_field"]]


# -- custom fields ----------------------------------------------------------------------------


def _field(
    kind: str,
    name: str,
    code: str,
    ftype: str,
    custom: bool,
    options: list[dict] | None = None,
    subfields: list[dict] | None = None,
    description: str | None = None,
) -> dict:
    rec: dict[str, Any] = {"field_name": name, "field_code": code}
    if kind == "deal":
        # Only dealFields documents a description.
        rec["description"] = description or name
    rec.update(
        field_type=ftype,
        options=options,
        subfields=subfields,
        is_custom_field=custom,
        is_optional_response_field=False,
    )
    if kind == "deal":
        rec["ui_visibility"] = {
            "add_visible_flag": True,
            "details_visible_flag": True,
            "projects_detail_visible_flag": False,
            "show_in_pipelines": {"show_in_all": True, "pipeline_ids": []},
        }
        rec["required_fields"] = {"enabled": False, "stage_ids": [], "statuses": {}}
    elif kind == "person":
        rec["ui_visibility"] = {
            "add_visible_flag": True,
            "details_visible_flag": True,
            "show_in_add_deal_dialog": {"show": custom, "order": None},
        }
        rec["required_fields"] = {"enabled": False}
    else:
        rec["ui_visibility"] = {
            "add_visible_flag": True,
            "details_visible_flag": True,
            "org_detail_visible_flag": True,
            "person_detail_visible_flag": False,
            "deal_detail_visible_flag": custom,
            "show_in_add_deal_dialog": {"show": False, "order": None},
            "show_in_add_person_dialog": {"show": False, "order": None},
        }
        rec["required_fields"] = {"enabled": False}
    rec["important_fields"] = {"enabled": False, "stage_ids": []}
    return rec


def _subfields(*parts: tuple[str, str, str]) -> list[dict]:
    return [{"field_code": c, "field_name": n, "field_type": t} for c, n, t in parts]


_ADDRESS_PARTS = (
    "subpremise street_number route sublocality locality admin_area_level_1 "
    "admin_area_level_2 country postal_code formatted_address"
).split()


def _make_fields(rng: random.Random, company: Company) -> None:
    opt = company.next_option_id

    def options(*labels: str) -> list[dict]:
        nonlocal opt
        out = []
        for label in labels:
            out.append({"id": opt, "label": label, "color": None})
            opt += 1
        return out

    status_options = [
        {"id": s, "label": s.capitalize(), "color": None} for s in ("open", "won", "lost")
    ]
    money_sub = _subfields(
        ("value", "Amount of Value", "double"), ("currency", "Currency of Value", "varchar")
    )
    d = "deal"
    company.deal_fields = [
        _field(d, "Title", "title", "varchar", False, description="The title of the deal"),
        _field(d, "Value", "value", "monetary", False, subfields=money_sub),
        _field(d, "Owner", "owner_id", "user", False),
        _field(d, "Contact person", "person_id", "people", False),
        _field(d, "Organization", "org_id", "org", False),
        _field(d, "Stage", "stage_id", "stage", False),
        _field(d, "Status", "status", "status", False, options=status_options),
        _field(d, "Expected close date", "expected_close_date", "date", False),
        _field(d, "Probability", "probability", "double", False),
        _field(d, "Lost reason", "lost_reason", "varchar_options", False),
        _field(d, "Visible to", "visible_to", "visible_to", False),
    ]
    custom_deal = [
        ("Project Reference", "varchar", None, None),
        (
            "Project Type",
            "enum",
            options(
                "Fit-out", "MEP", "Civil Works", "Supply Only", "Maintenance", "Design & Build"
            ),
            None,
        ),
        (
            "Scope of Supply",
            "set",
            options("Valves", "Pumps", "Piping", "Instrumentation", "Electrical", "HVAC"),
            None,
        ),
        (
            "PO Value",
            "monetary",
            None,
            _subfields(("value", "PO Value", "double"), ("currency", "Currency", "varchar")),
        ),
        (
            "Delivery Window",
            "daterange",
            None,
            _subfields(("value", "Start", "date"), ("until", "End", "date")),
        ),
        (
            "Site Address",
            "address",
            None,
            _subfields(*((p, p.replace("_", " ").capitalize(), "varchar") for p in _ADDRESS_PARTS)),
        ),
        ("Gross Margin %", "double", None, None),
        ("Units", "int", None, None),
        ("Bid Submission Date", "date", None, None),
    ]
    for name, ftype, opts, subs in custom_deal:
        company.deal_fields.append(_field(d, name, _hash40(rng), ftype, True, opts, subs))
    p = "person"
    company.person_fields = [
        _field(p, "Name", "name", "varchar", False),
        _field(p, "Email", "emails", "varchar", False),
        _field(p, "Phone", "phones", "phone", False),
        _field(p, "Organization", "org_id", "org", False),
        _field(p, "Owner", "owner_id", "user", False),
        _field(
            p,
            "Preferred Language",
            _hash40(rng),
            "enum",
            True,
            options("Arabic", "English", "French", "German"),
        ),
        _field(p, "LinkedIn Profile", _hash40(rng), "varchar", True),
    ]
    o = "org"
    company.org_fields = [
        _field(o, "Name", "name", "varchar", False),
        _field(o, "Owner", "owner_id", "user", False),
        _field(o, "Address", "address", "address", False),
        _field(o, "CR Number", _hash40(rng), "varchar", True),
        _field(o, "Vendor Tier", _hash40(rng), "enum", True, options("Tier 1", "Tier 2", "Tier 3")),
    ]
    company.next_option_id = opt


def address(rng: random.Random) -> dict[str, str]:
    city, region, country, postal, _ = rng.choices(CITIES, CITY_WEIGHTS)[0]
    number = str(rng.randint(1, 9999))
    route = rng.choice(STREETS)
    return {
        "value": f"{number} {route}, {city}, {country}",
        "country": country,
        "admin_area_level_1": region,
        "admin_area_level_2": city,
        "locality": city,
        "sublocality": rng.choice(["Al Olaya", "Downtown", "Industrial City", "Old Town"]),
        "route": route,
        "street_number": number,
        "subpremise": rng.choice(["", "", "Building 7", "Office 1204", "Floor 3"]),
        "postal_code": postal,
    }


def _pool(items: list, weights: list[int]) -> list:
    """Weighted choice as a plain list lookup (random.choices is slow in hot loops)."""
    return [item for item, w in zip(items, weights, strict=True) for _ in range(w)]


CURRENCY_POOL = _pool(CURRENCIES, CURRENCY_WEIGHTS)


def value_maker(
    f: dict, rng: random.Random, now_ms: int, addresses: list[dict] | None = None
) -> Callable[[], Any]:
    """A function making values shaped as v2 returns them for this custom field."""
    r = rng.random
    ftype, name = f["field_type"], f["field_name"]
    if ftype == "varchar":
        if "LinkedIn" in name:
            return lambda: f"https://www.linkedin.com/in/u{10000 + int(r() * 90000)}"
        if "CR" in name:
            return lambda: str(1010000000 + int(r() * 3020999999))
        return lambda: f"PRJ-{2022 + int(r() * 5)}-{1 + int(r() * 99999):05d}"
    if ftype in ("enum", "set"):
        ids = [o["id"] for o in f["options"]]
        if ftype == "enum":
            return lambda: ids[int(r() * len(ids))]
        return lambda: sorted(rng.sample(ids, 1 + int(r() * min(3, len(ids)))))
    if ftype == "monetary":
        pool = CURRENCY_POOL
        return lambda: {
            "value": round(5_000 + r() * 1_995_000, 2),
            "currency": pool[int(r() * len(pool))],
        }
    if ftype == "daterange":

        def daterange() -> dict[str, str]:
            begin = now_ms + (int(r() * 401) - 200) * DAY_MS
            return {"value": day(begin), "until": day(begin + (7 + int(r() * 114)) * DAY_MS)}

        return daterange
    if ftype == "address":
        if addresses:
            return lambda: addresses[int(r() * len(addresses))]
        return lambda: address(rng)
    if ftype == "double":
        return lambda: round(4 + r() * 34, 2)
    if ftype == "int":
        return lambda: 1 + int(r() * 500)
    if ftype == "date":
        return lambda: day(now_ms + (int(r() * 521) - 400) * DAY_MS)
    raise ValueError(ftype)


def custom_value(f: dict, rng: random.Random, now_ms: int) -> Any:
    """One value for a custom field, shaped as v2 returns it."""
    return value_maker(f, rng, now_ms)()


def _makers(
    fields: list[dict], rng: random.Random, now_ms: int, addresses: list[dict]
) -> list[tuple[str, Callable[[], Any]]]:
    return [(f["field_code"], value_maker(f, rng, now_ms, addresses)) for f in fields]


# -- record builders (also used by mutations) ---------------------------------------------------


def user_record(uid: int, spec: tuple, now_ms: int, rng: random.Random) -> dict:
    name, email, admin, active, phone, icon = spec
    created = now_ms - rng.randint(400, 1500) * DAY_MS
    access = [
        {"app": "sales", "admin": admin, "permission_set_id": _uuid(rng)},
        {"app": "global", "admin": admin, "permission_set_id": _uuid(rng)},
    ]
    if admin:
        access.append({"app": "account_settings", "admin": True, "permission_set_id": _uuid(rng)})
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


# -- generation -------------------------------------------------------------------------------

_BATCH = 5000


def _between(rng: random.Random, lo: int, hi: int, skew: float = 1.0) -> int:
    """A time in [lo, hi]; skew < 1 leans towards hi (recent)."""
    if hi <= lo:
        return lo
    return lo + int((hi - lo) * rng.random() ** skew)


def build(store: Store, seed: int, now_ms: int, n_deals: int) -> Company:
    """Fill ``store`` with a demo company where ``n_deals`` deals exist upstream.

    Some are archived, some deleted within the last 30 days; deals deleted earlier are purged
    and only leave gaps in the ids.
    """
    rng = random.Random(seed)
    company = Company()
    store.begin_load()  # one transaction: per-batch commits cost more than the inserts
    _make_fields(rng, company)
    n_orgs = max(5, n_deals // 5)
    n_persons = max(8, n_deals // 3)
    n_activities = max(5, n_deals // 2)
    n_notes = max(5, n_deals // 3)
    start = now_ms - 3 * YEAR_MS
    latest = now_ms - 60_000  # generated history ends a minute before "now"

    # Users, pipelines, stages, fields.
    users = [user_record(i + 1, spec, now_ms, rng) for i, spec in enumerate(USERS)]
    store.insert_many("users", (store.row("users", u) for u in users))
    company.user_ids = [u["id"] for u in users]
    stage_id = 0
    pipe_rows, stage_rows = [], []
    for order, (pid, pname, stages) in enumerate(PIPELINES, start=1):
        at = trunc(start - rng.randint(30, 300) * DAY_MS, False)
        ut = trunc(_between(rng, at, latest, 2.0), False)
        pipe = {
            "id": pid,
            "name": pname,
            "order_nr": order,
            "is_deleted": False,
            "is_deal_probability_enabled": pid in (3, 4, 5, 6),
            "add_time": v2_time(at),
            "update_time": v2_time(ut),
        }
        pipe_rows.append(store.row("pipelines", pipe, ut, at))
        for nr, (sname, prob, rot) in enumerate(stages, start=1):
            stage_id += 1
            sat = at + nr * 60_000
            sut = trunc(_between(rng, sat, latest, 2.0), False)
            stage = prune(
                "stages",
                {
                    "id": stage_id,
                    "order_nr": nr,
                    "name": sname,
                    "is_deleted": False,
                    "deal_probability": prob,
                    "pipeline_id": pid,
                    "is_deal_rot_enabled": rot is not None,
                    "days_to_rotten": rot,
                    "add_time": v2_time(sat),
                    "update_time": v2_time(sut),
                },
            )
            stage_rows.append(store.row("stages", stage, sut, sat))
            company.stage_pipeline[stage_id] = pid
            company.first_stage.setdefault(pid, stage_id)
    store.insert_many("pipelines", pipe_rows)
    store.insert_many("stages", stage_rows)
    fid = 0
    for kind, fields in (
        ("deal", company.deal_fields),
        ("person", company.person_fields),
        ("org", company.org_fields),
    ):
        rows = []
        for f in fields:
            fid += 1
            rows.append(store.row("fields", f, id=fid, kind=kind))
        store.insert_many("fields", rows)
    company.next_id["fields"] = fid + 1

    stages_by_pipeline: dict[int, list[int]] = {}
    for sid, pid in company.stage_pipeline.items():
        stages_by_pipeline.setdefault(pid, []).append(sid)
    g = _Gen(store, rng, now_ms, company)
    org_names = g.organizations(n_orgs)
    person_org = g.persons(n_persons, n_orgs)
    top = g.deals(n_deals, n_persons, n_orgs, org_names, person_org, stages_by_pipeline)
    g.activities(n_activities, top, n_persons, person_org)
    g.notes(n_notes, top, n_persons, n_orgs, person_org)
    company.next_id.update(
        deals=top + 1,
        persons=n_persons + 1,
        organizations=n_orgs + 1,
        activities=n_activities + 1,
        notes=n_notes + 1,
    )
    store.finish_load()
    return company


class _Gen:
    """The bulk generators; hot loops use plain list lookups instead of random.choices."""

    def __init__(self, store: Store, rng: random.Random, now_ms: int, company: Company) -> None:
        self.store = store
        self.rng = rng
        self.r = rng.random
        self.now_ms = now_ms
        self.start = now_ms - 3 * YEAR_MS
        self.latest = now_ms - 60_000  # generated history ends a minute before "now"
        self.owners = _pool(company.user_ids, OWNER_WEIGHTS)
        self.addresses = [address(rng) for _ in range(256)]
        self.company = company

    def pick(self, seq: list | tuple) -> Any:
        return seq[int(self.r() * len(seq))]

    def between(self, lo: int, hi: int, skew: float = 1.0) -> int:
        """A time in [lo, hi]; skew < 1 leans towards hi (recent)."""
        if hi <= lo:
            return lo
        return lo + int((hi - lo) * self.r() ** skew)

    def custom(self, kind: str, fill: float) -> Callable[[], dict[str, Any]]:
        makers = _makers(self.company.custom(kind), self.rng, self.now_ms, self.addresses)
        r = self.r
        return lambda: {code: make() if r() < fill else None for code, make in makers}

    def _flush(self, entity: str, rows: list[tuple], force: bool = False) -> list[tuple]:
        if rows and (force or len(rows) >= _BATCH):
            self.store.insert_many(entity, rows)
            return []
        return rows

    def organizations(self, n: int) -> list[str]:
        r, pick, row = self.r, self.pick, self.store.row
        custom = self.custom("org", 0.5)
        span = 3 * YEAR_MS + YEAR_MS // 2  # organizations go back a little further than deals
        names: list[str] = []
        rows: list[tuple] = []
        for i in range(1, n + 1):
            ms = precise(i)
            at = trunc(self.start - YEAR_MS // 2 + span * (i - 1) // n + int(r() * 6 * 3600e3), ms)
            ut = trunc(self.between(at, self.latest, 0.7), ms)
            x = r()
            if x < 0.02:
                name = pick(ARABIC_ORGS)
            elif x < 0.82:
                name = f"{pick(GULF_ROOTS)} {pick(GULF_SUFFIXES)}"
            else:
                name = f"{pick(EURO_ROOTS)} {pick(EURO_SUFFIXES)}"
            names.append(name)
            slug = _ascii(name).replace(" ", "")[:18] or "org"
            rec = organization_record(
                i,
                name=name,
                owner_id=pick(self.owners),
                add_time=at,
                update_time=ut,
                address=pick(self.addresses) if r() < 0.8 else None,
                website=f"https://www.{slug}.example" if r() < 0.6 else None,
                linkedin=f"https://www.linkedin.com/company/{slug}" if r() < 0.2 else None,
                industry=pick((None, None, 1, 2, 5, 8)),
                annual_revenue=pick((None, None, 5_000_000, 25_000_000, 120_000_000)),
                employee_count=pick((None, 12, 45, 250, 1200)),
                label_ids=[1 + int(r() * 4)] if r() < 0.2 else [],
                custom_fields=custom(),
                visible_to=pick((3, 3, 7)),
            )
            rows.append(row("organizations", rec, ut, at))
            rows = self._flush("organizations", rows)
        self._flush("organizations", rows, True)
        return names

    def persons(self, n: int, n_orgs: int) -> list[int | None]:
        r, pick, row = self.r, self.pick, self.store.row
        custom = self.custom("person", 0.4)
        person_org: list[int | None] = [None]  # index = person id
        rows: list[tuple] = []
        for i in range(1, n + 1):
            ms = precise(i)
            at = trunc(self.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3), ms)
            ut = trunc(self.between(at, self.latest, 0.7), ms)
            if r() < 0.02:
                first, last = pick(ARABIC_PERSONS)
            else:
                first, last = pick(FIRST_NAMES), pick(LAST_NAMES)
            org_id = 1 + int(r() * n_orgs) if r() < 0.9 else None
            person_org.append(org_id)
            local = _ascii(f"{first}.{last}").replace(" ", "").strip(".") or "contact"
            emails = [{"value": f"{local}{i}@example.com", "primary": True, "label": "work"}]
            if r() < 0.15:
                emails.append(
                    {"value": f"{local}{i}@mail.example", "primary": False, "label": "home"}
                )
            phones = []
            if r() < 0.85:
                number = f"+966 5{int(r() * 10)} {100 + int(r() * 900)} {1000 + int(r() * 9000)}"
                phones.append({"value": number, "primary": True, "label": pick(("work", "mobile"))})
            rec = person_record(
                i,
                first_name=first,
                last_name=last,
                owner_id=pick(self.owners),
                org_id=org_id,
                add_time=at,
                update_time=ut,
                emails=emails,
                phones=phones,
                job_title=pick(JOB_TITLES),
                label_ids=[1 + int(r() * 4)] if r() < 0.1 else [],
                custom_fields=custom(),
            )
            rows.append(row("persons", rec, ut, at))
            rows = self._flush("persons", rows)
        self._flush("persons", rows, True)
        return person_org

    def deals(
        self,
        n: int,
        n_persons: int,
        n_orgs: int,
        org_names: list[str],
        person_org: list[int | None],
        stages_by_pipeline: dict[int, list[int]],
    ) -> int:
        """``n`` deals that exist upstream; returns the highest id used."""
        r, pick, row, between = self.r, self.pick, self.store.row, self.between
        custom = self.custom("deal", 0.6)
        pipelines = _pool(list(PIPELINE_WEIGHTS), list(PIPELINE_WEIGHTS.values()))
        now_ms, latest = self.now_ms, self.latest
        purge_line = now_ms - PURGE_AFTER_MS
        rows: list[tuple] = []
        span = n + n // 41 + 1  # ids, counting the gaps purged deals leave
        i = made = 0
        while made < n:
            i += 1
            ms = precise(i)
            at = self.start + 3 * YEAR_MS * (i - 1) // span + int(r() * 3_600_000)
            at = trunc(min(at, latest - 3_600_000), ms)
            if i % 41 == 11 and at < purge_line - DAY_MS:
                continue  # deleted long ago and purged: only a gap in the ids remains
            made += 1
            # Fixed residues guarantee archived/deleted/HTML deals even in tiny companies.
            deleted_recently = i % 29 == 3
            archived = i % 17 == 5 and not deleted_recently
            if deleted_recently:
                ut = between(max(at, purge_line + DAY_MS), latest)
            else:
                ut = between(at, latest, 0.5)
            pid = pick(pipelines)
            stages = stages_by_pipeline[pid]
            sid = stages[min(len(stages) - 1, int(len(stages) * r() ** 1.3))]
            x = r()
            status = "open" if x < 0.6 else ("won" if x < 0.82 else "lost")
            if archived and r() < 0.8:
                status = pick(("won", "lost"))
            close = won = lost = None
            if status != "open":
                close = trunc(between(at, ut), ms)
                won, lost = (close, None) if status == "won" else (None, close)
            sct = trunc(between(at, ut), ms) if r() < 0.75 else None
            ut = trunc(ut, ms)
            deleted_at = None
            if deleted_recently:
                deleted_at = ut
                status = "deleted"
            person_id = 1 + int(r() * n_persons) if r() < 0.92 else None
            org_id = person_org[person_id] if person_id else None
            if org_id is None and r() < 0.7:
                org_id = 1 + int(r() * n_orgs)
            subject = pick(DEAL_SUBJECTS)
            if i % 97 == 13:
                title = f'<b>Urgent</b> & "quoted" {subject}'
            elif org_id:
                title = f"{org_names[org_id - 1]} – {subject}"
            else:
                title = f"{subject} #{i}"
            value: float = round(self.rng.lognormvariate(11, 1.2)) if r() < 0.95 else 0
            if r() < 0.1:
                value += 0.5
            rec = deal_record(
                i,
                title=title,
                owner_id=pick(self.owners),
                person_id=person_id,
                org_id=org_id,
                pipeline_id=pid,
                stage_id=sid,
                value=value,
                currency=pick(CURRENCY_POOL),
                add_time=at,
                update_time=ut,
                stage_change_time=sct,
                status=status,
                is_archived=archived,
                archive_time=ut if archived else None,
                probability=pick((10, 25, 50, 75, 90)) if r() < 0.2 else None,
                lost_reason=pick(LOST_REASONS) if lost is not None else None,
                visible_to=pick((3, 3, 7)),
                close_time=close,
                won_time=won,
                lost_time=lost,
                expected_close_date=day(at + (14 + int(r() * 226)) * DAY_MS)
                if r() < 0.85
                else None,
                label_ids=sorted({1 + int(r() * 5), 1 + int(r() * 5)}) if r() < 0.3 else [],
                origin=pick(("ManuallyCreated", "ManuallyCreated", "API", "Import")),
                custom_fields=custom(),
            )
            rows.append(row("deals", rec, ut, at, deleted_at=deleted_at))
            rows = self._flush("deals", rows)
        self._flush("deals", rows, True)
        return i

    def activities(
        self, n: int, n_deals: int, n_persons: int, person_org: list[int | None]
    ) -> None:
        r, pick, row, latest = self.r, self.pick, self.store.row, self.latest
        rows: list[tuple] = []
        for i in range(1, n + 1):
            ms = precise(i)
            at = trunc(self.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3), ms)
            due = at + int(r() * 31) * DAY_MS
            done = due < latest and r() < 0.8
            ut = self.between(at, latest, 0.6)
            marked = None
            if done:
                marked = ut = trunc(max(ut, min(due, latest)), ms)
            ut = trunc(ut, ms)
            person_id = 1 + int(r() * n_persons) if r() < 0.7 else None
            atype = pick(ACTIVITY_TYPES)
            rec = activity_record(
                i,
                subject=pick(ACTIVITY_SUBJECTS),
                type=atype,
                owner_id=pick(self.owners),
                add_time=at,
                update_time=ut,
                deal_id=1 + int(r() * n_deals) if n_deals and r() < 0.8 else None,
                person_id=person_id,
                org_id=person_org[person_id] if person_id else None,
                due_date=day(due),
                due_time=f"{7 + int(r() * 11):02d}:{pick(('00', '30'))}:00" if r() < 0.7 else None,
                duration=pick(("00:30:00", "01:00:00", None)),
                busy=atype == "meeting",
                done=done,
                marked_as_done_time=marked,
                location=pick(self.addresses) if atype == "meeting" and r() < 0.5 else None,
                note="<p>Agenda: <b>scope</b> &amp; schedule</p>" if r() < 0.2 else None,
            )
            rows.append(row("activities", rec, ut, at))
            rows = self._flush("activities", rows)
        self._flush("activities", rows, True)

    def notes(
        self, n: int, n_deals: int, n_persons: int, n_orgs: int, person_org: list[int | None]
    ) -> None:
        r, pick, row = self.r, self.pick, self.store.row
        rows: list[tuple] = []
        for i in range(1, n + 1):
            # v1 times: whole seconds.
            at = trunc(self.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3), False)
            ut = trunc(at if r() < 0.8 else self.between(at, self.latest), False)
            x = r()
            deal_id = person_id = org_id = None
            if x < 0.7 and n_deals:
                deal_id = 1 + int(r() * n_deals)
            elif x < 0.9:
                person_id = 1 + int(r() * n_persons)
                org_id = person_org[person_id]
            else:
                org_id = 1 + int(r() * n_orgs)
            who = f"{pick(FIRST_NAMES)} {pick(LAST_NAMES)}"
            rec = note_record(
                i,
                content=pick(NOTE_TEMPLATES).format(who=who, n=2 + int(r() * 15)),
                user_id=pick(self.owners),
                add_time=at,
                update_time=ut,
                deal_id=deal_id,
                person_id=person_id,
                org_id=org_id,
            )
            rows.append(row("notes", rec, ut, at))
            rows = self._flush("notes", rows)
        self._flush("notes", rows, True)


def _ascii(text: str) -> str:
    """Lower-case ASCII letters, digits, dots and spaces (for e-mail addresses and URLs)."""
    plain = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in plain if ch.isascii() and (ch.isalnum() or ch in ". "))
