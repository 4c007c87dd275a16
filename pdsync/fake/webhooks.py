"""Webhooks v2 in the fake: ``/v1/webhooks`` and deliveries like Pipedrive's.

Every change of a record passes ``Store.put`` (the one write path of every mutation): its
listener turns the record before and after into an event, ``{meta, data, previous}``, for each
registered webhook whose object and action match, and worker threads POST it with HTTP basic
auth. Like Pipedrive: any 2xx within 10 s is success; otherwise retries after 3, 30 and
150 s; 10 failed first tries in a row ban the webhook for 30 minutes, and what happens
meanwhile is lost; a webhook with no success for 3 days is deleted. No ordering guarantee
(several workers). ``Timing.scaled`` shrinks every delay for tests.
"""

from __future__ import annotations

import base64
import contextvars
import heapq
import http.client
import itertools
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .entities import ENTITIES_DECLARED
from .params import BadRequest, NotFound
from .wire import dumps

if TYPE_CHECKING:
    from .core import FakePipedrive

ACTIONS = ("create", "change", "delete", "*")
OBJECTS = ("activity", "deal", "lead", "note", "organization", "person", "pipeline", "product")
OBJECTS += ("stage", "user", "*")
MAX_PER_USER = 40
_OBJECT_OF = {e.table.name: e.singular for e in ENTITIES_DECLARED if e.singular in OBJECTS}
# Set while a merge deletes the merged record: its delete event says where it went.
merged_to: contextvars.ContextVar[int | None] = contextvars.ContextVar("merged_to", default=None)


@dataclass(frozen=True)
class Timing:
    retries: tuple[float, ...] = (3.0, 30.0, 150.0)
    ban_after: int = 10  # failed first tries in a row
    ban_for: float = 30 * 60.0
    delete_after: float = 3 * 86400.0  # without a successful delivery
    timeout: float = 10.0

    def scaled(self, factor: float) -> Timing:
        return replace(
            self,
            retries=tuple(r * factor for r in self.retries),
            ban_for=self.ban_for * factor,
            delete_after=self.delete_after * factor,
        )


def _iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _deleted(rec: dict | None) -> bool:
    return bool(rec) and (
        rec.get("is_deleted") is True
        or rec.get("active_flag") is False
        or rec.get("status") == "deleted"
    )


class Webhooks:
    """The registry and the deliverer of one fake company."""

    def __init__(self, fake: FakePipedrive, timing: Timing | None = None, workers: int = 4):
        self.fake = fake
        self.timing = timing or Timing()
        self.hooks: dict[int, dict[str, Any]] = {}
        self.state: dict[int, dict[str, Any]] = {}  # per hook: failures in a row, ban, success
        self.delivered = 0
        self.failed = 0
        self.lost = 0  # events a ban dropped
        self.deleted: list[dict] = []  # hooks deleted after days of failures
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, dict]] = []
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fake-webhooks")
        self._local = threading.local()
        self._clock = threading.Thread(target=self._schedule, name="fake-webhooks", daemon=True)
        self._clock.start()
        fake.store.on_put = self.on_put

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- /v1/webhooks -------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        parts = path.rstrip("/").split("/")
        if parts == ["", "v1", "webhooks"] and method == "GET":
            with self._lock:
                listed = [self._public(h) for h in self.hooks.values()]
            return 200, dumps({"status": "ok", "success": True, "data": listed})
        if parts == ["", "v1", "webhooks"] and method == "POST":
            return self._create(body)
        if len(parts) == 4 and parts[:3] == ["", "v1", "webhooks"] and method == "DELETE":
            with self._lock:
                found = parts[3].isdigit() and self.hooks.pop(int(parts[3]), None)
            if not found:
                return 404, dumps(
                    {"status": "error", "success": False, "errors": {"id": ["not found"]}}
                )
            return 200, dumps({"status": "ok", "success": True})
        raise NotFound(path)

    def _create(self, body: bytes) -> tuple[int, bytes]:
        try:
            given = (
                json.loads(body)
                if body.strip().startswith(b"{")
                else dict(parse_qsl(body.decode()))
            )
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is neither JSON nor a form") from None
        errors: dict[str, list[str]] = {}
        for name in ("subscription_url", "event_action", "event_object", "name"):
            if not given.get(name):
                errors[name] = ["is required"]
        if given.get("event_action") and given["event_action"] not in ACTIONS:
            errors["event_action"] = ["is not one of " + ", ".join(ACTIONS)]
        if given.get("event_object") and given["event_object"] not in OBJECTS:
            errors["event_object"] = ["is not one of " + ", ".join(OBJECTS)]
        if not str(given.get("subscription_url", "")).startswith(("http://", "https://")):
            errors.setdefault("subscription_url", ["invalid or non-reachable URL"])
        with self._lock:
            if len(self.hooks) >= MAX_PER_USER:
                errors["user_id"] = [f"at most {MAX_PER_USER} webhooks per user"]
            if errors:
                return 400, dumps({"status": "error", "success": False, "errors": errors})
            hook = {
                "id": next(self._ids),
                "company_id": 1,
                "owner_id": 1,
                "user_id": 1,
                "event_action": given["event_action"],
                "event_object": given["event_object"],
                "subscription_url": given["subscription_url"],
                "version": str(given.get("version") or "2.0"),
                "is_active": 1,
                "add_time": _iso(time.time()),
                "remove_time": None,
                "type": "general",
                "http_auth_user": given.get("http_auth_user"),
                "http_auth_password": given.get("http_auth_password"),
                "remove_reason": None,
                "last_delivery_time": None,
                "last_http_status": None,
                "admin_id": 1,
                "name": str(given["name"])[:255],
            }
            self.hooks[hook["id"]] = hook
            self.state[hook["id"]] = {
                "first_failures": 0,
                "banned_until": 0.0,
                "since": time.time(),
            }
        return 201, dumps({"status": "ok", "success": True, "data": self._public(hook)})

    @staticmethod
    def _public(hook: dict) -> dict:
        return {**hook, "http_auth_password": None}  # never read back

    # -- events -------------------------------------------------------------------------------

    def on_put(self, table: str, before: dict | None, after: dict) -> None:
        entity = _OBJECT_OF.get(table)
        if entity is None or not self.hooks:
            return
        if before is None:
            action, data, previous = "create", after, None
        elif _deleted(after) and not _deleted(before):
            action, data, previous = "delete", None, before
        elif _deleted(after):
            return  # a deleted record touched again: Pipedrive says nothing
        else:
            changed = {
                k: before.get(k) for k in set(before) | set(after) if before.get(k) != after.get(k)
            }
            action, data, previous = "change", after, changed
        meta = {
            "action": action,
            "entity": entity,
            "entity_id": str(after.get("id")),
            "company_id": "1",
            "user_id": "1",
            "correlation_id": str(uuid.uuid4()),
            "host": "fake.pipedrive.com",
            "timestamp": _iso(self.fake.now_ms() / 1000),
            "type": "general",
            "version": "2.0",
            "change_source": "api",
            "is_bulk_edit": False,
        }
        if action == "delete" and merged_to.get() is not None:
            meta["merged_to_id"] = str(merged_to.get())
        now = time.time()
        with self._lock:
            for hook in self.hooks.values():
                if hook["event_object"] not in (entity, "*") or hook["event_action"] not in (
                    action,
                    "*",
                ):
                    continue
                if hook["version"] != "2.0":
                    continue
                if self.state[hook["id"]]["banned_until"] > now:
                    self.lost += 1
                    continue
                event = {
                    "hook": hook["id"],
                    "attempt": 1,
                    "meta": {**meta, "id": str(uuid.uuid4()), "webhook_id": str(hook["id"])},
                    "data": data,
                    "previous": previous,
                }
                heapq.heappush(self._due, (now, next(self._seq), event))
            self._wake.notify()

    # -- delivering ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.time()
                while self._due and self._due[0][0] <= now:
                    _, _, event = heapq.heappop(self._due)
                    try:
                        self._pool.submit(self._deliver, event)
                    except RuntimeError:  # closed meanwhile
                        return
                wait = self._due[0][0] - now if self._due else 1.0
                self._wake.wait(max(0.0, min(wait, 1.0)))

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        """POST on this thread's kept-alive connection to the URL's host (http.client: a
        fraction of httpx's cost a request, which matters at hundreds of deliveries a second)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        connections = self._local.__dict__.setdefault("connections", {})
        for _ in range(2):  # a kept-alive connection the server closed: once more, anew
            conn = connections.get(key)
            if conn is None:
                kind = (
                    http.client.HTTPSConnection
                    if parts.scheme == "https"
                    else http.client.HTTPConnection
                )
                conn = connections[key] = kind(parts.netloc, timeout=self.timing.timeout)
            try:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request("POST", target or "/", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                connections.pop(key, None)
        return None

    def _deliver(self, event: dict) -> None:
        with self._lock:
            hook = self.hooks.get(event["hook"])
        if hook is None:
            return  # removed meanwhile
        body = {"meta": {**event["meta"], "attempt": event["attempt"]}}
        body.update(data=event["data"], previous=event["previous"])
        headers = {"content-type": "application/json", "user-agent": "Pipedrive-Webhook"}
        if hook.get("http_auth_user") is not None:
            pair = f"{hook['http_auth_user']}:{hook.get('http_auth_password') or ''}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._settle(hook, event, self._post(hook["subscription_url"], dumps(body), headers))

    def _settle(self, hook: dict, event: dict, status: int | None) -> None:
        now = time.time()
        ok = status is not None and 200 <= status < 300
        with self._lock:
            state = self.state.get(hook["id"])
            if state is None:
                return
            hook["last_delivery_time"] = _iso(now)
            hook["last_http_status"] = status
            if ok:
                self.delivered += 1
                state["since"] = now
                if event["attempt"] == 1:
                    state["first_failures"] = 0
                return
            self.failed += 1
            if event["attempt"] == 1:
                state["first_failures"] += 1
                if state["first_failures"] >= self.timing.ban_after:
                    state["banned_until"] = now + self.timing.ban_for
                    state["first_failures"] = 0
            if now - state["since"] > self.timing.delete_after:
                self.hooks.pop(hook["id"], None)
                self.deleted.append({**hook, "remove_reason": "no successful delivery in 3 days"})
                return
            if event["attempt"] <= len(self.timing.retries):
                retry = {**event, "attempt": event["attempt"] + 1}
                due = now + self.timing.retries[event["attempt"] - 1]
                heapq.heappush(self._due, (due, next(self._seq), retry))
                self._wake.notify()

    def idle(self) -> bool:
        """Nothing waiting to be sent now (retries due later aside)."""
        with self._lock:
            return not self._due or self._due[0][0] > time.time()


def merge_persons(fake: FakePipedrive, merged: int, into: int) -> None:
    """Merge person ``merged`` into ``into`` as Pipedrive does: ``merged`` is deleted (its
    delete event names ``merged_to_id``), its deals move to ``into``, and ``into`` changes."""
    with fake.store.lock:
        deals = [d["id"] for d in fake.records("deals") if d.get("person_id") == merged]
        token = merged_to.set(into)
        try:
            fake.delete_person(merged)
        finally:
            merged_to.reset(token)
        for deal in deals:
            fake.update_deal(deal, person_id=into)
        fake.update_person(into)
