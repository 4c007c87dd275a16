"""The seeded demo company, generated into the store: one record generator per entity.

Everything derives from ``random.Random(seed)`` and the reference time, so the same seed and
``now`` give the same company. The company's setup (users, pipelines, stages, field
definitions) comes first; then each ``@generates`` function runs in the order it is declared
here, drawing from the same random stream. A new entity's generator goes last, so the records
of the others stay the same for a given seed.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from . import records
from .company import (
    ACTIVITY_SUBJECTS,
    ACTIVITY_TYPE_ICONS,
    ACTIVITY_TYPES,
    ARABIC_ORGS,
    ARABIC_PERSONS,
    CURRENCY_LIST,
    CURRENCY_POOL,
    DEAL_SUBJECTS,
    EURO_ROOTS,
    EURO_SUFFIXES,
    FIRST_NAMES,
    FROM_SAR,
    GULF_ROOTS,
    GULF_SUFFIXES,
    JOB_TITLES,
    LAST_NAMES,
    LEAD_LABELS,
    LEAD_SOURCES,
    LOST_REASONS,
    NOTE_TEMPLATES,
    OWNER_WEIGHTS,
    PIPELINE_WEIGHTS,
    PIPELINES,
    PRODUCT_LINES,
    PRODUCT_SIZES,
    USERS,
    Company,
    address,
    field_definition,
    make_fields,
    makers,
    pool,
)
from .entities import BY_NAME
from .records import precise, prune
from .store import Store
from .wire import DAY_MS, PURGE_AFTER_MS, day, trunc, v1_time, v2_time

YEAR_MS = 365 * DAY_MS
_BATCH = 5000


class Gen:
    """What the generators share: the random stream, the clock, the company so far.

    Hot loops use plain list lookups instead of random.choices.
    """

    def __init__(self, store: Store, rng: random.Random, now_ms: int, company: Company) -> None:
        self.store = store
        self.rng = rng
        self.r = rng.random
        self.now_ms = now_ms
        self.start = now_ms - 3 * YEAR_MS
        self.latest = now_ms - 60_000  # generated history ends a minute before "now"
        self.owners = pool(company.user_ids, OWNER_WEIGHTS)
        self.addresses = [address(rng) for _ in range(256)]
        self.company = company
        self.size: dict[str, int] = {}  # how many records each generator makes
        self.last_id: dict[str, int] = {}  # the highest id each generator used
        # Facts later generators draw on.
        self.org_names: list[str] = []
        self.person_org: list[int | None] = [None]  # index = person id
        self.stages_by_pipeline: dict[int, list[int]] = {}
        self.products: list[dict] = []
        for sid, pid in company.stage_pipeline.items():
            self.stages_by_pipeline.setdefault(pid, []).append(sid)

    def pick(self, seq: list | tuple) -> Any:
        return seq[int(self.r() * len(seq))]

    def between(self, lo: int, hi: int, skew: float = 1.0) -> int:
        """A time in [lo, hi]; skew < 1 leans towards hi (recent)."""
        if hi <= lo:
            return lo
        return lo + int((hi - lo) * self.r() ** skew)

    def custom(self, kind: str, fill: float) -> Callable[[], dict[str, Any]]:
        made = makers(self.company.custom(kind), self.rng, self.now_ms, self.addresses)
        r = self.r
        return lambda: {code: make() if r() < fill else None for code, make in made}


@dataclass(frozen=True)
class Generator:
    entity: str
    size: Callable[[int], int]  # how many records, from the number of deals asked for
    rows: Callable[[Gen], Iterator[tuple]]  # store rows, made lazily in id order


GENERATORS: list[Generator] = []


def generates(
    entity: str, size: Callable[[int], int]
) -> Callable[[Callable[[Gen], Iterator[tuple]]], Callable[[Gen], Iterator[tuple]]]:
    """Register a record generator for ``entity``; they run in the order registered."""

    def register(rows: Callable[[Gen], Iterator[tuple]]) -> Callable[[Gen], Iterator[tuple]]:
        GENERATORS.append(Generator(entity, size, rows))
        return rows

    return register


# -- the company's setup ----------------------------------------------------------------------


def _pipelines(store: Store, rng: random.Random, company: Company, now_ms: int) -> None:
    start = now_ms - 3 * YEAR_MS
    latest = now_ms - 60_000

    def between(lo: int, hi: int) -> int:
        return lo if hi <= lo else lo + int((hi - lo) * rng.random() ** 2.0)

    stage_id = 0
    pipe_rows, stage_rows = [], []
    for order, (pid, pname, stages) in enumerate(PIPELINES, start=1):
        at = trunc(start - rng.randint(30, 300) * DAY_MS, False)
        ut = trunc(between(at, latest), False)
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
            sut = trunc(between(sat, latest), False)
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


def _setup(store: Store, rng: random.Random, company: Company, now_ms: int) -> None:
    """Field definitions, users, pipelines and stages."""
    make_fields(rng, company)
    users = [records.user_record(i + 1, spec, now_ms, rng) for i, spec in enumerate(USERS)]
    store.insert_many("users", (store.row("users", u) for u in users))
    company.user_ids = [u["id"] for u in users]
    _pipelines(store, rng, company, now_ms)
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


def build(store: Store, seed: int, now_ms: int, n_deals: int) -> Company:
    """Fill ``store`` with a demo company where ``n_deals`` deals exist upstream.

    Some are archived, some deleted within the last 30 days; deals deleted earlier are purged
    and only leave gaps in the ids.
    """
    rng = random.Random(seed)
    company = Company()
    store.begin_load()  # one transaction: per-batch commits cost more than the inserts
    _setup(store, rng, company, now_ms)
    g = Gen(store, rng, now_ms, company)
    g.size = {gen.entity: gen.size(n_deals) for gen in GENERATORS}
    for gen in GENERATORS:
        table = BY_NAME[gen.entity].table.name
        rows = gen.rows(g)
        last = 0
        while batch := list(islice(rows, _BATCH)):
            store.insert_many(table, batch)
            last = batch[-1][0]
        g.last_id[gen.entity] = last
        company.next_id[gen.entity] = last + 1
    store.finish_load()
    return company


# -- record generators, in the order they draw from the random stream -------------------------


@generates("organizations", lambda deals: max(5, deals // 5))
def organizations(g: Gen) -> Iterator[tuple]:
    r, pick, row, n = g.r, g.pick, g.store.row, g.size["organizations"]
    custom = g.custom("org", 0.5)
    span = 3 * YEAR_MS + YEAR_MS // 2  # organizations go back a little further than deals
    for i in range(1, n + 1):
        ms = precise(i)
        at = trunc(g.start - YEAR_MS // 2 + span * (i - 1) // n + int(r() * 6 * 3600e3), ms)
        ut = trunc(g.between(at, g.latest, 0.7), ms)
        x = r()
        if x < 0.02:
            name = pick(ARABIC_ORGS)
        elif x < 0.82:
            name = f"{pick(GULF_ROOTS)} {pick(GULF_SUFFIXES)}"
        else:
            name = f"{pick(EURO_ROOTS)} {pick(EURO_SUFFIXES)}"
        g.org_names.append(name)
        slug = _ascii(name).replace(" ", "")[:18] or "org"
        rec = records.organization_record(
            i,
            name=name,
            owner_id=pick(g.owners),
            add_time=at,
            update_time=ut,
            address=pick(g.addresses) if r() < 0.8 else None,
            website=f"https://www.{slug}.example" if r() < 0.6 else None,
            linkedin=f"https://www.linkedin.com/company/{slug}" if r() < 0.2 else None,
            industry=pick((None, None, 1, 2, 5, 8)),
            annual_revenue=pick((None, None, 5_000_000, 25_000_000, 120_000_000)),
            employee_count=pick((None, 12, 45, 250, 1200)),
            label_ids=[1 + int(r() * 4)] if r() < 0.2 else [],
            custom_fields=custom(),
            visible_to=pick((3, 3, 7)),
        )
        yield row("organizations", rec, ut, at)


def _contacts(g: Gen, i: int, first: str, last: str) -> tuple[list[dict], list[dict]]:
    """A person's e-mail addresses and phone numbers."""
    r = g.r
    local = _ascii(f"{first}.{last}").replace(" ", "").strip(".") or "contact"
    emails = [{"value": f"{local}{i}@example.com", "primary": True, "label": "work"}]
    if r() < 0.15:
        emails.append({"value": f"{local}{i}@mail.example", "primary": False, "label": "home"})
    phones = []
    if r() < 0.85:
        number = f"+966 5{int(r() * 10)} {100 + int(r() * 900)} {1000 + int(r() * 9000)}"
        phones.append({"value": number, "primary": True, "label": g.pick(("work", "mobile"))})
    return emails, phones


@generates("persons", lambda deals: max(8, deals // 3))
def persons(g: Gen) -> Iterator[tuple]:
    r, pick, row, n = g.r, g.pick, g.store.row, g.size["persons"]
    n_orgs = g.size["organizations"]
    custom = g.custom("person", 0.4)
    for i in range(1, n + 1):
        ms = precise(i)
        at = trunc(g.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3), ms)
        ut = trunc(g.between(at, g.latest, 0.7), ms)
        if r() < 0.02:
            first, last = pick(ARABIC_PERSONS)
        else:
            first, last = pick(FIRST_NAMES), pick(LAST_NAMES)
        org_id = 1 + int(r() * n_orgs) if r() < 0.9 else None
        g.person_org.append(org_id)
        emails, phones = _contacts(g, i, first, last)
        rec = records.person_record(
            i,
            first_name=first,
            last_name=last,
            owner_id=pick(g.owners),
            org_id=org_id,
            add_time=at,
            update_time=ut,
            emails=emails,
            phones=phones,
            job_title=pick(JOB_TITLES),
            label_ids=[1 + int(r() * 4)] if r() < 0.1 else [],
            custom_fields=custom(),
        )
        yield row("persons", rec, ut, at)


@dataclass
class _Life:
    """Where a deal stands: its stage, status and the times of its changes (ms)."""

    ut: int
    pipeline_id: int
    stage_id: int
    status: str
    archived: bool
    close: int | None
    won: int | None
    lost: int | None
    stage_change: int | None
    deleted_at: int | None


def _deal_life(g: Gen, i: int, ms: bool, at: int, pipelines: list[int]) -> _Life:
    r, pick, between, latest = g.r, g.pick, g.between, g.latest
    purge_line = g.now_ms - PURGE_AFTER_MS
    # Fixed residues guarantee archived/deleted/HTML deals even in tiny companies.
    deleted_recently = i % 29 == 3
    archived = i % 17 == 5 and not deleted_recently
    if deleted_recently:
        ut = between(max(at, purge_line + DAY_MS), latest)
    else:
        ut = between(at, latest, 0.5)
    pid = pick(pipelines)
    stages = g.stages_by_pipeline[pid]
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
    return _Life(ut, pid, sid, status, archived, close, won, lost, sct, deleted_at)


def _deal(g: Gen, i: int, at: int, life: _Life, custom: Callable[[], dict]) -> dict[str, Any]:
    r, pick = g.r, g.pick
    person_id = 1 + int(r() * g.size["persons"]) if r() < 0.92 else None
    org_id = g.person_org[person_id] if person_id else None
    if org_id is None and r() < 0.7:
        org_id = 1 + int(r() * g.size["organizations"])
    subject = pick(DEAL_SUBJECTS)
    if i % 97 == 13:
        title = f'<b>Urgent</b> & "quoted" {subject}'
    elif org_id:
        title = f"{g.org_names[org_id - 1]} – {subject}"
    else:
        title = f"{subject} #{i}"
    value: float = round(g.rng.lognormvariate(11, 1.2)) if r() < 0.95 else 0
    if r() < 0.1:
        value += 0.5
    return records.deal_record(
        i,
        title=title,
        owner_id=pick(g.owners),
        person_id=person_id,
        org_id=org_id,
        pipeline_id=life.pipeline_id,
        stage_id=life.stage_id,
        value=value,
        currency=pick(CURRENCY_POOL),
        add_time=at,
        update_time=life.ut,
        stage_change_time=life.stage_change,
        status=life.status,
        is_archived=life.archived,
        archive_time=life.ut if life.archived else None,
        probability=pick((10, 25, 50, 75, 90)) if r() < 0.2 else None,
        lost_reason=pick(LOST_REASONS) if life.lost is not None else None,
        visible_to=pick((3, 3, 7)),
        close_time=life.close,
        won_time=life.won,
        lost_time=life.lost,
        expected_close_date=day(at + (14 + int(r() * 226)) * DAY_MS) if r() < 0.85 else None,
        label_ids=sorted({1 + int(r() * 5), 1 + int(r() * 5)}) if r() < 0.3 else [],
        origin=pick(("ManuallyCreated", "ManuallyCreated", "API", "Import")),
        custom_fields=custom(),
    )


@generates("deals", lambda deals: deals)
def deals(g: Gen) -> Iterator[tuple]:
    """``n`` deals that exist upstream; deals deleted long ago leave gaps in the ids."""
    r, n, latest = g.r, g.size["deals"], g.latest
    custom = g.custom("deal", 0.6)
    pipelines = pool(list(PIPELINE_WEIGHTS), list(PIPELINE_WEIGHTS.values()))
    purge_line = g.now_ms - PURGE_AFTER_MS
    span = n + n // 41 + 1  # ids, counting the gaps purged deals leave
    i = made = 0
    while made < n:
        i += 1
        ms = precise(i)
        at = g.start + 3 * YEAR_MS * (i - 1) // span + int(r() * 3_600_000)
        at = trunc(min(at, latest - 3_600_000), ms)
        if i % 41 == 11 and at < purge_line - DAY_MS:
            continue  # deleted long ago and purged: only a gap in the ids remains
        made += 1
        life = _deal_life(g, i, ms, at, pipelines)
        rec = _deal(g, i, at, life, custom)
        yield g.store.row("deals", rec, life.ut, at, deleted_at=life.deleted_at)


@generates("activities", lambda deals: max(5, deals // 2))
def activities(g: Gen) -> Iterator[tuple]:
    r, pick, row, latest, n = g.r, g.pick, g.store.row, g.latest, g.size["activities"]
    n_deals, n_persons = g.last_id["deals"], g.size["persons"]
    for i in range(1, n + 1):
        ms = precise(i)
        at = trunc(g.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3), ms)
        due = at + int(r() * 31) * DAY_MS
        done = due < latest and r() < 0.8
        ut = g.between(at, latest, 0.6)
        marked = None
        if done:
            marked = ut = trunc(max(ut, min(due, latest)), ms)
        ut = trunc(ut, ms)
        person_id = 1 + int(r() * n_persons) if r() < 0.7 else None
        atype = pick(ACTIVITY_TYPES)
        rec = records.activity_record(
            i,
            subject=pick(ACTIVITY_SUBJECTS),
            type=atype,
            owner_id=pick(g.owners),
            add_time=at,
            update_time=ut,
            deal_id=1 + int(r() * n_deals) if n_deals and r() < 0.8 else None,
            person_id=person_id,
            org_id=g.person_org[person_id] if person_id else None,
            due_date=day(due),
            due_time=f"{7 + int(r() * 11):02d}:{pick(('00', '30'))}:00" if r() < 0.7 else None,
            duration=pick(("00:30:00", "01:00:00", None)),
            busy=atype == "meeting",
            done=done,
            marked_as_done_time=marked,
            location=pick(g.addresses) if atype == "meeting" and r() < 0.5 else None,
            note="<p>Agenda: <b>scope</b> &amp; schedule</p>" if r() < 0.2 else None,
        )
        yield row("activities", rec, ut, at)


@generates("notes", lambda deals: max(5, deals // 3))
def notes(g: Gen) -> Iterator[tuple]:
    r, pick, row, n = g.r, g.pick, g.store.row, g.size["notes"]
    n_deals, n_persons, n_orgs = g.last_id["deals"], g.size["persons"], g.size["organizations"]
    for i in range(1, n + 1):
        # v1 times: whole seconds.
        at = trunc(g.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3), False)
        ut = trunc(at if r() < 0.8 else g.between(at, g.latest), False)
        x = r()
        deal_id = person_id = org_id = None
        if x < 0.7 and n_deals:
            deal_id = 1 + int(r() * n_deals)
        elif x < 0.9:
            person_id = 1 + int(r() * n_persons)
            org_id = g.person_org[person_id]
        else:
            org_id = 1 + int(r() * n_orgs)
        who = f"{pick(FIRST_NAMES)} {pick(LAST_NAMES)}"
        rec = records.note_record(
            i,
            content=pick(NOTE_TEMPLATES).format(who=who, n=2 + int(r() * 15)),
            user_id=pick(g.owners),
            add_time=at,
            update_time=ut,
            deal_id=deal_id,
            person_id=person_id,
            org_id=org_id,
        )
        yield row("notes", rec, ut, at)


def _ascii(text: str) -> str:
    """Lower-case ASCII letters, digits, dots and spaces (for e-mail addresses and URLs)."""
    plain = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in plain if ch.isascii() and (ch.isalnum() or ch in ". "))


# -- added after the first entities: they draw from the random stream after them --------------


def _field_rows(g: Gen, kind: str, fields: list[dict]) -> Iterator[tuple]:
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
    yield from _field_rows(g, "product", g.company.product_fields)


@generates("activity_fields", lambda deals: 0)
def activity_fields(g: Gen) -> Iterator[tuple]:
    types = [{"id": i, "label": t} for i, t in enumerate(ACTIVITY_TYPES, start=1)]
    yield from _field_rows(
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


# Projects and tasks draw after everything above (their own module, registered last).
from . import projects as _projects  # noqa: E402, F401
