"""FakePipedrive: the fake company's state, clock and ground truth, behind the HTTP front.

The layers, bottom up: ``entities`` (one declaration per entity), ``store`` (tables built from
them), ``endpoints`` (lists built from them), ``front`` (auth, rate limit, faults, request log;
no entities), and this class tying them together with the generated company (``generators``)
and its mutations (``mutations``, ``churn``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from . import endpoints, generators
from .churn import Churn
from .company import COMPANY
from .entities import BY_PATH, ENTITIES, entity, record_route
from .front import FAULT_KINDS, Front
from .history import CHANGELOG_TOKENS, History, deal_id_of
from .records import prune
from .store import Store
from .webhooks import Timing, Webhooks
from .wire import dumps

__all__ = ["ENTITIES", "FAULT_KINDS", "FakePipedrive"]


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1000))


class FakePipedrive(Front, Churn):
    """A seeded fake Pipedrive company with the API's list endpoints, served by FakeServer.

    ``now`` fixes the reference time of the generated company and freezes the fake clock
    there (deterministic); without it the clock follows real time.
    """

    def __init__(
        self,
        deals: int = 2000,
        seed: int = 1,
        now: datetime | None = None,
        token: str = "demo-token",
        burst_limit: int | None = None,
        latency: float = 0.0,
    ) -> None:
        Front.__init__(self, token, burst_limit, latency)
        self._frozen_ms: int | None = None if now is None else _to_ms(now)
        self._offset_ms = 0
        self.store = Store()
        try:
            self._company = generators.build(self.store, seed, self.now_ms(), deals)
        except BaseException:
            self.store.close()
            raise
        self._user_embeds: dict[int, bytes] | None = None
        self.history = History(self.store)
        self._webhooks: Webhooks | None = None

    def answer(
        self, method: str, path: str, params: dict[str, str], body: bytes = b""
    ) -> bytes | tuple[int, bytes]:
        if path.startswith("/v1/webhooks"):
            return self.webhooks().answer(method, path, body)
        return endpoints.answer(self, method, path, params)

    def webhooks(self, timing: Timing | None = None, workers: int = 4) -> Webhooks:
        """The company's webhooks (registered through /v1/webhooks), delivering from the
        first registration on; ``timing`` scales Pipedrive's retry, ban and deletion delays."""
        if self._webhooks is None:
            self._webhooks = Webhooks(self, timing, workers)
        elif timing is not None:
            self._webhooks.timing = timing
        return self._webhooks

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the state and remove the temporary database file."""
        if self._webhooks is not None:
            self._webhooks.close()
        self.store.close()

    def __enter__(self) -> FakePipedrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clock --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        if self._frozen_ms is not None:
            return self._frozen_ms
        return int(time.time() * 1000) + self._offset_ms

    def now(self) -> datetime:
        """The fake clock: timezone-aware UTC."""
        return datetime.fromtimestamp(self.now_ms() / 1000, tz=timezone.utc)

    def freeze(self, moment: datetime | None = None) -> None:
        """Stop the clock at ``moment`` (a naive datetime is UTC), or where it is now."""
        self._frozen_ms = self.now_ms() if moment is None else _to_ms(moment)

    def unfreeze(self) -> None:
        """Let the clock run on in real time from where it stands."""
        if self._frozen_ms is not None:
            self._offset_ms = self._frozen_ms - int(time.time() * 1000)
            self._frozen_ms = None

    def advance(self, seconds: float) -> None:
        if self._frozen_ms is not None:
            self._frozen_ms += int(seconds * 1000)
        else:
            self._offset_ms += int(seconds * 1000)

    # -- ground truth -------------------------------------------------------------------------

    def iter_records(self, entity_name: str) -> Iterator[dict[str, Any]]:
        """Like records(), streamed in id order (for big companies)."""
        declared = entity(entity_name)
        where, args = declared.alive(self.now_ms())
        return endpoints.iter_records(self, declared, where, args)

    def records(self, entity: str) -> list[dict[str, Any]]:
        """Every record that exists upstream, API-shaped, in id order.

        Deals include archived ones and deleted ones not yet purged; persons, organizations,
        activities and notes exclude deleted ones (the API no longer lists them).
        """
        return list(self.iter_records(entity))

    def count(self, entity_name: str) -> int:
        declared = entity(entity_name)
        where, args = declared.alive(self.now_ms())
        return self.store.scalar(f"SELECT count(*) FROM {declared.table.name} WHERE {where}", args)

    def cost(self, path: str) -> int:
        """Pipedrive's token cost of a GET of ``path`` (the specs' table)."""
        if deal_id_of(path) is not None:
            return CHANGELOG_TOKENS
        found = BY_PATH.get(path.rstrip("/"))
        if found is None and (record := record_route(path)) is not None:
            return record[1].tokens
        return found[1].tokens if found else 0

    def deal_alive(self, deal_id: int) -> bool:
        """The deal exists upstream (deleted ones until they are purged)."""
        where, args = entity("deals").alive(self.now_ms())
        sql = f"SELECT count(*) FROM deals WHERE id = ? AND {where}"
        return bool(self.store.scalar(sql, [deal_id, *args]))

    def changelog(self, deal_id: int) -> list[dict[str, Any]]:
        """The deal's changelog, oldest first: the ground truth of its history."""
        return self.history.changelog(deal_id)

    def user_embeds(self) -> dict[int, bytes]:
        """The ``user`` object v1 notes embed, per user id."""
        if self._user_embeds is None:
            embeds = {}
            for u in self.records("users"):
                embed = {"email": u["email"], "icon_url": u["icon_url"], "is_you": u["is_you"]}
                embed["name"] = u["name"]
                embeds[u["id"]] = dumps(prune("notes", embed))
            self._user_embeds = embeds
        return self._user_embeds

    def me(self) -> dict[str, Any]:
        user = json.loads(self.store.scalar("SELECT json FROM users WHERE id = 1"))
        return {**user, **COMPANY, "language": {"language_code": "en", "country_code": "US"}}
