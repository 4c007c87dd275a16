"""The demo company's fixed parts: pipelines, users, names, places, custom field definitions,
and how custom field values are made.

``generators.py`` draws the records from these with ``random.Random(seed)``, so the same seed
and ``now`` give the same company.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .wire import DAY_MS, day

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
# The product catalogue of a Gulf MEP contractor: (category, name, unit, SAR list price).
PRODUCT_LINES = [
    ("Valves", "Gate valve DN{n}", "pcs", 850),
    ("Valves", "Butterfly valve DN{n}", "pcs", 1_250),
    ("Pumps", "Centrifugal pump {n} kW", "pcs", 14_500),
    ("Pumps", "Booster set {n} m³/h", "set", 38_000),
    ("Piping", "HDPE pipe PN{n}", "m", 95),
    ("Piping", "Steel pipe SCH{n}", "m", 240),
    ("Instrumentation", "Pressure transmitter {n} bar", "pcs", 3_900),
    ("Electrical", "MCC panel {n} A", "pcs", 62_000),
    ("HVAC", "Chiller {n} TR", "pcs", 410_000),
    ("Services", "Commissioning, {n} days", "day", 4_200),
    ("Services", "Annual maintenance, {n} sites", "year", 96_000),
]
PRODUCT_SIZES = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 40, 50, 80, 100)
# SAR to the other currencies deals are in (line items take their deal's currency).
FROM_SAR = {"SAR": 1.0, "USD": 0.2667, "EUR": 0.2451, "AED": 0.9793}
CURRENCY_LIST = [
    # (code, name, decimal points, symbol)
    ("SAR", "Saudi Riyal", 2, "﷼"),
    ("USD", "US Dollar", 2, "$"),
    ("EUR", "Euro", 2, "€"),
    ("AED", "UAE Dirham", 2, "د.إ"),
    ("GBP", "Pound Sterling", 2, "£"),
    ("KWD", "Kuwaiti Dinar", 3, "د.ك"),
    ("QAR", "Qatari Riyal", 2, "ر.ق"),
    ("BHD", "Bahraini Dinar", 3, ".د.ب"),
]
ACTIVITY_TYPE_ICONS = {
    "call": "call",
    "meeting": "meeting",
    "task": "task",
    "deadline": "deadline",
    "email": "email",
    "lunch": "lunch",
}
LEAD_LABELS = [("Hot", "red"), ("Warm", "yellow"), ("Cold", "blue"), ("Tender", "purple")]
LEAD_SOURCES = [
    "Manually created",
    "Deal",
    "Web forms",
    "Prospector",
    "Leadbooster",
    "Live chat",
    "Import",
    "Website visitors",
    "Workflow automation",
    "API",
]
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


def _hash40(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


@dataclass
class Company:
    """What mutations need to know about the generated company."""

    deal_fields: list[dict] = field(default_factory=list)
    person_fields: list[dict] = field(default_factory=list)
    org_fields: list[dict] = field(default_factory=list)
    product_fields: list[dict] = field(default_factory=list)
    project_fields: list[dict] = field(default_factory=list)
    stage_pipeline: dict[int, int] = field(default_factory=dict)
    first_stage: dict[int, int] = field(default_factory=dict)
    user_ids: list[int] = field(default_factory=list)
    next_id: dict[str, int] = field(default_factory=dict)
    next_option_id: int = 1000

    def custom(self, kind: str) -> list[dict]:
        fields = {
            "deal": self.deal_fields,
            "person": self.person_fields,
            "org": self.org_fields,
            "product": self.product_fields,
            "project": self.project_fields,
        }
        return [f for f in fields[kind] if f["is_custom_field"]]


# -- custom fields ----------------------------------------------------------------------------


def field_definition(
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
    if kind in ("product", "activity"):  # /api/v2/productFields, /activityFields
        rec["ui_visibility"] = {"add_visible_flag": True, "details_visible_flag": True}
        return rec
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


def make_fields(rng: random.Random, company: Company) -> None:
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
        field_definition(
            d, "Title", "title", "varchar", False, description="The title of the deal"
        ),
        field_definition(d, "Value", "value", "monetary", False, subfields=money_sub),
        field_definition(d, "Owner", "owner_id", "user", False),
        field_definition(d, "Contact person", "person_id", "people", False),
        field_definition(d, "Organization", "org_id", "org", False),
        field_definition(d, "Stage", "stage_id", "stage", False),
        field_definition(d, "Status", "status", "status", False, options=status_options),
        field_definition(d, "Expected close date", "expected_close_date", "date", False),
        field_definition(d, "Probability", "probability", "double", False),
        field_definition(d, "Lost reason", "lost_reason", "varchar_options", False),
        field_definition(d, "Visible to", "visible_to", "visible_to", False),
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
        company.deal_fields.append(field_definition(d, name, _hash40(rng), ftype, True, opts, subs))
    p = "person"
    company.person_fields = [
        field_definition(p, "Name", "name", "varchar", False),
        field_definition(p, "Email", "emails", "varchar", False),
        field_definition(p, "Phone", "phones", "phone", False),
        field_definition(p, "Organization", "org_id", "org", False),
        field_definition(p, "Owner", "owner_id", "user", False),
        field_definition(
            p,
            "Preferred Language",
            _hash40(rng),
            "enum",
            True,
            options("Arabic", "English", "French", "German"),
        ),
        field_definition(p, "LinkedIn Profile", _hash40(rng), "varchar", True),
    ]
    o = "org"
    company.org_fields = [
        field_definition(o, "Name", "name", "varchar", False),
        field_definition(o, "Owner", "owner_id", "user", False),
        field_definition(o, "Address", "address", "address", False),
        field_definition(o, "CR Number", _hash40(rng), "varchar", True),
        field_definition(
            o, "Vendor Tier", _hash40(rng), "enum", True, options("Tier 1", "Tier 2", "Tier 3")
        ),
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


def pool(items: list, weights: list[int]) -> list:
    """Weighted choice as a plain list lookup (random.choices is slow in hot loops)."""
    return [item for item, w in zip(items, weights, strict=True) for _ in range(w)]


CURRENCY_POOL = pool(CURRENCIES, CURRENCY_WEIGHTS)


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


def makers(
    fields: list[dict], rng: random.Random, now_ms: int, addresses: list[dict]
) -> list[tuple[str, Callable[[], Any]]]:
    return [(f["field_code"], value_maker(f, rng, now_ms, addresses)) for f in fields]
