"""Totals of open deals, kept current by triggers, for the canned queries' sums.

cashflow_forecast, pipeline_summary and owner_kpis add up open deals. Summing the deals on
each call reads every open deal (~50k rows and ~18 ms at 100k deals, growing with the
account). These tables hold the same sums per group instead: a few thousand rows however many
deals there are. Triggers on ``deals`` move a deal's share from its old group to its new one
in the transaction that changes the deal, so the totals are never behind the table they sum.

Like full-text search, they are filled once after a table's first load (a trigger per
inserted row would slow the load) and armed in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlite_utils

from .entities import open_deal
from .transaction import write_transaction
from .views import has_rows

# Declared foreign keys let Datasette show names for the ids.
REFERENCES = {"pipeline_id": "pipelines", "stage_id": "stages", "owner_id": "users"}


@dataclass(frozen=True)
class Totals:
    """One table of sums, a row per group of open deals. Expressions read a deal as ``{d}``.

    Key columns hold what the deal holds, null included (a deal without a currency or an
    expected close date), so lookups match with ``is``.
    """

    name: str
    keys: dict[str, str]
    sums: dict[str, str]  # deals (a count) and float sums
    # Other orders to read the groups in (the keys' own order always has an index). Each
    # index carries every column: a query then groups along it without a sort.
    orders: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def create_sql(self) -> dict[str, str]:
        """The table's and its indexes' CREATE statements by name, as sqlite_master has them."""
        keys = [
            f"[{k}] references [{REFERENCES[k]}](id)" if k in REFERENCES else f"[{k}]"
            for k in self.keys
        ]
        sums = [f"[{s}] {'integer' if s == 'deals' else 'float'} not null" for s in self.sums]
        sql = {self.name: f"CREATE TABLE [{self.name}] ({', '.join(keys + sums)})"}
        for suffix, order in {"keys": tuple(self.keys), **self.orders}.items():
            columns = [*order, *(c for c in (*self.keys, *self.sums) if c not in order)]
            name = f"{self.name}_{suffix}"
            quoted = ", ".join(f"[{c}]" for c in columns)
            sql[name] = f"CREATE INDEX [{name}] ON [{self.name}] ({quoted})"
        return sql


TOTALS = (
    Totals(
        name="open_deal_totals",
        keys={
            "pipeline_id": "{d}.pipeline_id",
            "stage_id": "{d}.stage_id",
            "currency": "{d}.currency",
            "close_month": "substr({d}.expected_close_date, 1, 7)",
        },
        sums={
            "deals": "1",
            "value": "coalesce({d}.value, 0)",
            # Weighted values need the stage's probability for deals without their own; it
            # is read at query time, so re-weighting a stage needs no rebuild.
            "value_x_probability": "coalesce({d}.value * {d}.probability, 0)",
            "value_without_probability": (
                "case when {d}.probability is null then coalesce({d}.value, 0) else 0 end"
            ),
        },
        # cashflow_forecast sums by currency and month.
        orders={"months": ("currency", "close_month", "stage_id", "pipeline_id")},
    ),
    Totals(
        name="open_deal_owner_totals",
        keys={
            "owner_id": "{d}.owner_id",
            "pipeline_id": "{d}.pipeline_id",
            "currency": "{d}.currency",
        },
        sums={"deals": "1", "value": "coalesce({d}.value, 0)"},
    ),
)

# Any change to these can move a deal between groups or change what it adds.
WATCHED = (
    "status",
    "is_archived",
    "is_deleted",
    "pipeline_id",
    "stage_id",
    "owner_id",
    "currency",
    "expected_close_date",
    "value",
    "probability",
)
TRIGGERS = ("deals_totals_ai", "deals_totals_ad", "deals_totals_au")


def ensure_totals(db: sqlite_utils.Database, table: str) -> None:
    """Create the totals of ``table`` if it has any; fill and arm them once it has rows.

    Idempotent. A database whose totals were made by another version of this module (their
    tables or triggers differ from what is declared here) gets them rebuilt.
    """
    if table != "deals":
        return
    wanted = _wanted_sql()
    existing = dict(
        db.execute(
            f"select name, sql from sqlite_master where name in ({', '.join('?' for _ in wanted)})",
            list(wanted),
        ).fetchall()
    )
    if all(existing.get(name) == sql for name, sql in wanted.items()):
        return
    filled = has_rows(db, table)
    tables_ok = all(existing.get(n) == wanted[n] for t in TOTALS for n in t.create_sql())
    if tables_ok and not filled:
        return  # still empty: armed after its first load
    with write_transaction(db):
        for name in TRIGGERS:
            db.execute(f"drop trigger if exists [{name}]")
        for totals in TOTALS:
            shape = totals.create_sql()
            if any(existing.get(name) != sql for name, sql in shape.items()):
                db.execute(f"drop table if exists [{totals.name}]")  # and its indexes
                for sql in shape.values():
                    db.execute(sql)
            elif filled:
                db.execute(f"delete from [{totals.name}]")
        if not filled:
            return
        for totals in TOTALS:
            db.execute(f"insert into [{totals.name}] {_sum_sql(totals)}")
        for name in TRIGGERS:
            db.execute(wanted[name])


def problems(db: sqlite_utils.Database) -> list[str]:
    """Groups whose stored totals differ from the deals summed afresh (for tests and checks).

    Sums match to a thousandth of a unit: adding and taking away floats leaves rounding dust.
    """
    found = []
    armed = {t.name for t in db["deals"].triggers}
    if has_rows(db, "deals") and not set(TRIGGERS) <= armed:
        found.append(f"deals: totals triggers missing: {sorted(set(TRIGGERS) - armed)}")
    for totals in TOTALS:
        width = len(totals.keys)
        keys = ", ".join(f"[{k}]" for k in totals.keys)
        stored = {
            row[:width]: row[width:]
            for row in db.execute(f"select * from [{totals.name}]").fetchall()
        }
        fresh = {row[:width]: row[width:] for row in db.execute(_sum_sql(totals)).fetchall()}
        for key in sorted(set(stored) | set(fresh), key=repr):
            a, b = stored.get(key), fresh.get(key)
            if (
                a is None
                or b is None
                or a[0] != b[0]
                or any(
                    abs(x - y) > 1e-3 + 1e-12 * abs(y) for x, y in zip(a[1:], b[1:], strict=True)
                )
            ):
                found.append(f"{totals.name} ({keys}) = {key}: stored {a}, deals give {b}")
    return found


def _wanted_sql() -> dict[str, str]:
    """Each table's and trigger's CREATE statement, as sqlite_master keeps it."""
    sql = {name: create for t in TOTALS for name, create in t.create_sql().items()}
    changed = " or ".join(f"old.[{c}] is not new.[{c}]" for c in WATCHED)
    ai, ad, au = TRIGGERS
    bodies = {
        ai: [_add(t, "new") for t in TOTALS],
        ad: [_take_away(t, "old") for t in TOTALS],
        # An update can close a deal, open it, or move it between groups: take its old
        # share away if it was open, add its new one if it is.
        au: [_take_away(t, "old", open_deal("old")) for t in TOTALS]
        + [_add(t, "new", open_deal("new")) for t in TOTALS],
    }
    heads = {
        ai: f"after insert on [deals] when {open_deal('new')}",
        ad: f"after delete on [deals] when {open_deal('old')}",
        au: (
            f"after update on [deals]\n"
            f"when ({open_deal('old')} or {open_deal('new')}) and ({changed})"
        ),
    }
    for name in TRIGGERS:
        body = "\n".join(bodies[name])
        sql[name] = f"CREATE TRIGGER [{name}] {heads[name]}\nbegin\n{body}\nend"
    return sql


def _match(totals: Totals, row: str) -> str:
    return " and ".join(f"[{k}] is {e.format(d=row)}" for k, e in totals.keys.items())


def _add(totals: Totals, row: str, when: str = "") -> str:
    """Statements adding deal ``row`` to its group (made if missing), if ``when`` holds."""
    match = _match(totals, row)
    guard = f" and {when}" if when else ""
    added = ", ".join(f"[{s}] = [{s}] + {e.format(d=row)}" for s, e in totals.sums.items())
    columns = ", ".join(f"[{c}]" for c in (*totals.keys, *totals.sums))
    values = ", ".join(e.format(d=row) for e in (*totals.keys.values(), *totals.sums.values()))
    return (
        f"update [{totals.name}] set {added} where {match}{guard};\n"
        f"insert into [{totals.name}] ({columns}) select {values}\n"
        f"  where not exists (select 1 from [{totals.name}] where {match}){guard};"
    )


def _take_away(totals: Totals, row: str, when: str = "") -> str:
    """Statements taking deal ``row`` out of its group, if ``when`` holds. An emptied group
    goes: no rows of zeros, and no float dust left behind by the subtractions."""
    match = _match(totals, row)
    guard = f" and {when}" if when else ""
    taken = ", ".join(f"[{s}] = [{s}] - {e.format(d=row)}" for s, e in totals.sums.items())
    return (
        f"update [{totals.name}] set {taken} where {match}{guard};\n"
        f"delete from [{totals.name}] where {match} and [deals] <= 0;"
    )


def _sum_sql(totals: Totals) -> str:
    keys = [e.format(d="deals") for e in totals.keys.values()]
    sums = [
        "count(*)" if e == "1" else f"total({e.format(d='deals')})" for e in totals.sums.values()
    ]
    return (
        f"select {', '.join(keys + sums)} from deals where {open_deal('deals')}"
        f" group by {', '.join(keys)}"
    )
