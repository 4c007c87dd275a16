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
    ACTIVITY_TYPES,
    ARABIC_ORGS,
    ARABIC_PERSONS,
    CURRENCY_POOL,
    DEAL_SUBJECTS,
    EURO_ROOTS,
    EURO_SUFFIXES,
    FIRST_NAMES,
    GULF_ROOTS,
    GULF_SUFFIXES,
    JOB_TITLES,
    LAST_NAMES,
    LOST_REASONS,
    NOTE_TEMPLATES,
    OWNER_WEIGHTS,
    PIPELINE_WEIGHTS,
    PIPELINES,
    USERS,
    Company,
    address,
    make_fields,
    makers,
    pool,
)
from .entities import BY_NAME
from .records import precise, prune
from .store import Store
from .wire import DAY_MS, PURGE_AFTER_MS, day, trunc, v2_time

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

    def added(self, at: int) -> int:
        """A generated record's add_time: never after the history's end (a minute before
        "now"). Spread over three years with hours of jitter, the last records would
        otherwise be added up to six hours in the future, and Pipedrive has none of those."""
        return min(at, self.latest)

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
        at = trunc(
            g.added(g.start - YEAR_MS // 2 + span * (i - 1) // n + int(r() * 6 * 3600e3)), ms
        )
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
        at = trunc(g.added(g.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3)), ms)
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
        at = trunc(g.added(g.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3)), ms)
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
        at = trunc(g.added(g.start + 3 * YEAR_MS * (i - 1) // n + int(r() * 6 * 3600e3)), False)
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


# Added after the first entities, drawing from the random stream after them, in order:
# the catalogue and sales side, then projects and tasks.
from . import catalogue as _catalogue  # noqa: E402, F401
from . import projects as _projects  # noqa: E402, F401
