"""Deal history in the fake: ``GET /v1/deals/{id}/changelog`` and the changes behind it.

A deal's seeded history is made from the deal as generated (its stage, pipeline, status and
times), by its own random stream, the first time it is needed: when its changelog is asked
for, or just before the deal is first changed (``record_change``, called where every deal is
written). Building 100,000 histories up front would slow every fake down for the few tests
that read them. Every later change of a logged field appends one entry, at the change's time.
Entries are v1-shaped: whole-second ``time``, values as text, owner as ``user_id``.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from . import params as p
from .params import NotFound, Params
from .store import Store
from .wire import dumps, parse_rfc3339_us, v1_time

# Record key -> changelog field_key, for the deal fields whose changes are logged.
LOGGED = {
    "title": "title",
    "value": "value",
    "currency": "currency",
    "owner_id": "user_id",
    "person_id": "person_id",
    "org_id": "org_id",
    "stage_id": "stage_id",
    "pipeline_id": "pipeline_id",
    "status": "status",
    "expected_close_date": "expected_close_date",
    "probability": "probability",
    "lost_reason": "lost_reason",
}
PATH_PREFIX, PATH_SUFFIX = "/v1/deals/", "/changelog"
CHANGELOG_TOKENS = 20  # a page, in the specs' cost table
_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/121.0"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS deal_changelog (seq INTEGER PRIMARY KEY, deal_id INTEGER NOT"
    " NULL, json BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS deal_changelog_deal ON deal_changelog (deal_id, seq)",
    # Deals whose seeded history is in deal_changelog already (or who have none: new deals).
    "CREATE TABLE IF NOT EXISTS deal_changelog_made (deal_id INTEGER PRIMARY KEY)",
)


def text(value: Any) -> str | None:
    """A field value as the changelog shows it: text, or null."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _ms(value: str | None) -> int | None:
    us = parse_rfc3339_us(value) if value else None
    return None if us is None else us // 1000


def _entry(key: str, old: Any, new: Any, ms: int, user: int, source: str) -> dict[str, Any]:
    return {
        "field_key": key,
        "old_value": text(old),
        "new_value": text(new),
        "actor_user_id": user,
        "time": v1_time(ms),
        "change_source": source,
        "change_source_user_agent": _AGENT if source == "app" else None,
        "is_bulk_update_flag": False,
    }


class History:
    """The changelog table in the fake's store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.lock:
            for sql in _SCHEMA:
                store.conn.execute(sql)

    # -- seeded history -------------------------------------------------------------------

    def _stages(self) -> dict[int, list[int]]:
        by_pipeline: dict[int, list[int]] = {}
        rows = self.store.query("SELECT id, json FROM stages ORDER BY id")
        for sid, raw in rows:
            by_pipeline.setdefault(json.loads(raw)["pipeline_id"], []).append(sid)
        return by_pipeline

    def _users(self) -> list[int]:
        return [r[0] for r in self.store.query("SELECT id FROM users ORDER BY id")]

    def seed(self, deal: dict[str, Any]) -> list[dict[str, Any]]:
        """The history that led to ``deal`` as generated, oldest first: stage moves ending in
        its stage at its stage_change_time, its close, and some edits of value, owner, title
        and expected close date. Times lie between add_time and update_time."""
        at, ut = _ms(deal.get("add_time")), _ms(deal.get("update_time"))
        if at is None or ut is None or ut <= at:
            return []
        rng = random.Random(deal["id"] * 1_000_003 + at)
        users = self._users()
        owner = deal.get("owner_id") or users[0]
        out: list[tuple[int, str, Any, Any]] = []

        def when(lo: int, hi: int) -> int:
            return lo + int((hi - lo) * rng.random()) if hi > lo else hi

        sct = _ms(deal.get("stage_change_time"))
        if sct is not None and at < sct <= ut:
            out += self._moves(rng, deal, at, sct)
        if deal.get("status") in ("won", "lost", "deleted"):
            close = _ms(deal.get("close_time")) or ut
            out.append((min(max(close, at + 1000), ut), "status", "open", deal["status"]))
        if rng.random() < 0.3 and deal.get("value"):
            old = round(deal["value"] * rng.choice((0.5, 0.8, 1.25)))
            out.append((when(at, ut), "value", old if old != deal["value"] else 0, deal["value"]))
        if rng.random() < 0.1 and len(users) > 1:
            previous = rng.choice([u for u in users if u != owner])
            out.append((when(at, ut), "user_id", previous, owner))
        if rng.random() < 0.15 and deal.get("expected_close_date"):
            out.append((when(at, ut), "expected_close_date", None, deal["expected_close_date"]))
        out.sort(key=lambda change: change[0])
        return [
            _entry(key, old, new, ms, rng.choice((owner, owner, users[0])), "app")
            for ms, key, old, new in out
        ]

    def _moves(
        self, rng: random.Random, deal: dict[str, Any], at: int, sct: int
    ) -> list[tuple[int, str, Any, Any]]:
        """Stage moves (across pipelines, sometimes) ending in the deal's stage at sct."""
        stages = self._stages()
        pid, final = deal["pipeline_id"], deal["stage_id"]
        own = stages.get(pid) or [final]
        k = own.index(final) if final in own else 0
        path = [own[j] for j in range(k) if rng.random() < 0.6]  # stages passed on the way
        if not path and k > 0:
            path = [own[k - 1]]
        elif not path and len(own) > 1:
            path = [own[1]]  # in the first stage again: it was moved back
        if k + 1 < len(own) and rng.random() < 0.1:
            path.append(own[k + 1])  # one stage too far, then back
        others = [q for q in stages if q != pid]
        came_from = pid
        if others and (not path or rng.random() < 0.08):
            came_from = rng.choice(others)
            path.insert(0, stages[came_from][0])
        if not path:
            return []
        path.append(final)
        times = sorted(min(sct, at + 1000 + int((sct - at) * rng.random())) for _ in path[2:])
        times.append(sct)
        out = []
        for i, ms in enumerate(times):
            out.append((ms, "stage_id", path[i], path[i + 1]))
            if i == 0 and came_from != pid:
                out.append((ms, "pipeline_id", came_from, pid))
        return out

    def _ensure_seeded(self, deal_id: int, deal: dict[str, Any] | None) -> None:
        if self.store.scalar("SELECT 1 FROM deal_changelog_made WHERE deal_id = ?", [deal_id]):
            return
        entries = self.seed(deal) if deal is not None else []
        with self.store.lock:
            self.store.conn.executemany(
                "INSERT INTO deal_changelog (deal_id, json) VALUES (?, ?)",
                [(deal_id, dumps(e)) for e in entries],
            )
            self.store.conn.execute("INSERT INTO deal_changelog_made VALUES (?)", [deal_id])

    # -- changes --------------------------------------------------------------------------

    def record_change(
        self, old: dict[str, Any] | None, new: dict[str, Any], ms: int, user: int = 1
    ) -> None:
        """A deal written: ``old`` as stored before (None: a new deal, which has no history
        yet), ``new`` as it is now. Each logged field that differs gets an entry."""
        self._ensure_seeded(new["id"], old)
        if old is None:
            return
        entries = [
            _entry(key, old.get(name), new.get(name), ms, user, "api")
            for name, key in LOGGED.items()
            if text(old.get(name)) != text(new.get(name))
        ]
        before, after = old.get("custom_fields") or {}, new.get("custom_fields") or {}
        entries += [
            _entry(code, before.get(code), after.get(code), ms, user, "api")
            for code in sorted(set(before) | set(after))
            if text(before.get(code)) != text(after.get(code))
        ]
        with self.store.lock:
            self.store.conn.executemany(
                "INSERT INTO deal_changelog (deal_id, json) VALUES (?, ?)",
                [(new["id"], dumps(e)) for e in entries],
            )

    def changelog(self, deal_id: int) -> list[dict[str, Any]]:
        """Every entry of the deal's changelog, oldest first (the ground truth)."""
        self._ensure_seeded(deal_id, self._deal(deal_id))
        rows = self.store.query(
            "SELECT json FROM deal_changelog WHERE deal_id = ? ORDER BY seq", [deal_id]
        )
        return [json.loads(r[0]) for r in rows]

    def _deal(self, deal_id: int) -> dict[str, Any] | None:
        raw = self.store.scalar("SELECT json FROM deals WHERE id = ?", [deal_id])
        return None if raw is None else json.loads(raw)

    # -- the endpoint ---------------------------------------------------------------------

    def page(self, deal_id: int, params: Params, alive: bool) -> tuple[list[bytes], str | None]:
        """One page of the changelog, newest first, and the cursor to the next (or None)."""
        if not alive:
            raise NotFound(f"deal {deal_id}")
        limit = p.limit(params)
        self._ensure_seeded(deal_id, self._deal(deal_id))
        where, args = "deal_id = ?", [deal_id]
        cursor = params.get("cursor")
        if cursor:
            where += " AND seq <= ?"
            args.append(_decode(cursor))
        rows = self.store.query(
            f"SELECT seq, json FROM deal_changelog WHERE {where} ORDER BY seq DESC"
            f" LIMIT {limit + 1}",
            args,
        )
        following = _encode(rows[limit][0]) if len(rows) > limit else None
        return [r[1] for r in rows[:limit]], following


def deal_id_of(path: str) -> int | None:
    """The deal id in ``/v1/deals/{id}/changelog``, or None for another path."""
    if not (path.startswith(PATH_PREFIX) and path.endswith(PATH_SUFFIX)):
        return None
    middle = path[len(PATH_PREFIX) : -len(PATH_SUFFIX)]
    return int(middle) if middle.isdigit() else None


def _encode(seq: int) -> str:
    return base64.b64encode(f"id:{seq}".encode()).decode()  # like the spec's "aWQ6NTQ0"


def _decode(cursor: str) -> int:
    try:
        kind, _, seq = base64.b64decode(cursor, validate=True).decode().partition(":")
        if kind == "id" and seq.isdigit():
            return int(seq)
    except ValueError:
        pass
    raise p.bad("cursor", "Invalid cursor")
