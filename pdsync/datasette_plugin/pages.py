"""HTML pages made once for every reader Datasette answers the same, not once per reader.

Why: an HTML table page costs 100-300 ms of Python on the one event loop (Jinja, 100 rows
by 45 columns); kept per reader, 16 people asking for the deals page cost 16 of them per
sync, and at 32 readers the queue behind them was seconds long (docs/benchmarks.md,
section 9).

What of a page is the reader's own, in Datasette 0.65's templates: their name (``<strong>``
in the nav), the CSRF token of the log-out form (their ``ds_csrftoken`` cookie, as
asgi-csrf writes it), whether that form shows (a ``ds_actor`` cookie), their messages (a
``ds_messages`` cookie), and everything decided by a permission check (the menu, the SQL
links, whether the page shows at all). A page is shared only when all of that is handled:

- the page made for one reader is kept with their name and token cut out, and only if it
  is HTML (a download names no one: never cut into), each was in it at most once, nothing
  else of their actor (id, session, sign-in time) is, and no other name shows as the
  reader's nor another token in a form (one Cookie header only); a canned query reading the
  reader (``:_actor_id``) is never kept at all: its rows are theirs (cache.key_for);
- another reader gets it with their own name and token put in, only if they send no cookie
  but ``ds_actor`` and ``ds_csrftoken`` (valid), are the same kind of actor (user or token,
  with or without either cookie) asking the same host, and Datasette answers every
  permission check the page's making asked the same for them (the checks are recorded while
  it is made; making it for them would ask the same ones, since nothing else of theirs
  reaches the page);
- only while nothing else can put them in a page: Datasette's own templates (no template
  directory), and no plugins but Datasette's, pdsync's and those listed in ``KNOWN``, whose
  hooks read the actor only through permissions; and only while ``cache._answers_are_ours``.

Otherwise a page stays per reader and cookies, as before (cache.py).
"""

from __future__ import annotations

import json
import re
import secrets
from contextvars import ContextVar
from http.cookies import SimpleCookie

from datasette.plugins import pm
from datasette.utils import display_actor
from itsdangerous import BadSignature
from itsdangerous.url_safe import URLSafeSerializer
from markupsafe import escape

from .cache import MAX_VISIBLE, answers_depend_on, make, send_hit, wait_for_maker

# Plugins read for what their hooks do with the actor (datasette-auth-passwords: a "Log in"
# link when there is none; datasette-dashboards, -render-markdown, -leaflet: nothing).
KNOWN = {"pdsync.datasette_plugin", "auth_passwords", "dashboards", "render_markdown", "leaflet"}
COOKIES = {"ds_actor", "ds_csrftoken"}
_NONCE = secrets.token_hex(16)
NAME = f"\x00pdsync-name-{_NONCE}\x00".encode()
TOKEN = f"\x00pdsync-csrftoken-{_NONCE}\x00".encode()

_SHOWN_NAME = re.compile(rb'<div class="actor">\s*<strong>(.*?)</strong>', re.DOTALL)
_FORM_TOKEN = re.compile(rb'name="csrftoken" value="([^"]*)"')

_asked: ContextVar[list | None] = ContextVar("pdsync_permissions_asked", default=None)


def install(datasette) -> None:
    """Record the permission checks made while a shared page is made (once)."""
    if getattr(datasette, "_pdsync_pages", False):
        return
    original = datasette.permission_allowed

    async def permission_allowed(actor, action, resource=None, default=False):
        answer = await original(actor, action, resource=resource, default=default)
        asked = _asked.get()
        if asked is not None:
            asked.append((_json(actor), action, _json(resource), default, answer))
        return answer

    datasette.permission_allowed = permission_allowed
    datasette._pdsync_pages = True


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def possible(datasette) -> bool:
    """Nothing but Datasette's templates and the known plugins can show the actor."""
    if getattr(datasette, "template_dir", None):
        return False
    names = {pm.get_name(plugin) for plugin in pm.get_plugins()}
    return all(n in KNOWN or n.startswith("datasette.") for n in names)


class Reader:
    """What of a page is this reader's own, if it can be shared with them at all."""

    def __init__(self, actor: dict, name: bytes, token: bytes | None, kind: tuple):
        self.actor, self.name, self.token, self.kind = actor, name, token, kind


def reader(datasette, scope: dict, actor: dict | None) -> Reader | None:
    if not actor or b"_context" in scope.get("query_string", b""):
        return None
    raw = scope.get("headers") or []
    if sum(1 for name, _ in raw if name.lower() == b"cookie") > 1:
        return None  # which one would each part of Datasette read?
    headers = dict(raw)
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:
        return None
    if set(cookies) - COOKIES:
        return None  # messages, or another application's cookie
    token = None
    if "ds_csrftoken" in cookies:
        token = cookies["ds_csrftoken"].value
        try:
            URLSafeSerializer(datasette._secret).loads(token, "csrftoken")
        except BadSignature:
            return None  # asgi-csrf would make a new one, and set it
    name = str(escape(display_actor(actor))).encode()
    # A page with a CSRF token goes only to readers with one (without, it would set one).
    kind = (
        actor.get("pdsync"),
        tuple(sorted(actor)),
        "ds_actor" in cookies,
        token is not None,
        headers.get(b"host"),  # absolute URLs in the page (its JSON link) name the host asked
    )
    return Reader(actor, name, token.encode() if token else None, kind)


def cut(body: bytes, who: Reader) -> bytes | None:
    """The page without its reader's name and CSRF token; None if that cannot be sure."""
    if body.count(who.name) > 1 or _NONCE.encode() in body:
        return None
    skeleton = body.replace(who.name, NAME)
    if who.token is not None:
        if skeleton.count(who.token) > 1:
            return None
        skeleton = skeleton.replace(who.token, TOKEN)
    for key, value in who.actor.items():
        text = str(value).encode()
        if key != "pdsync" and len(text) >= 3 and text in skeleton:
            return None  # something of the actor we do not know how to replace
    # Belt and braces: every name shown as the reader's, and every CSRF token in a form,
    # is now a mark to fill (a token asgi-csrf took from elsewhere would show here).
    shown = _SHOWN_NAME.findall(skeleton) + _FORM_TOKEN.findall(skeleton)
    if any(found not in (NAME, TOKEN) for found in shown):
        return None
    return skeleton


def _html(start: dict) -> bool:
    types = [v for k, v in start.get("headers") or [] if k.lower() == b"content-type"]
    return len(types) == 1 and types[0].split(b";")[0].strip().lower() == b"text/html"


def fill(skeleton: bytes, who: Reader) -> bytes:
    return skeleton.replace(NAME, who.name).replace(TOKEN, who.token or b"")


def checks_and_answers(asked: list, actor: dict) -> tuple[tuple, tuple] | None:
    """The checks asked about this actor (or about an anonymous visitor: whether a table is
    private), and their answers; None if another actor was asked about, or one question got
    two answers."""
    who = _json(actor)
    found: dict[tuple, object] = {}
    for asked_about, action, resource, default, answer in asked:
        if asked_about not in (who, "null"):
            return None
        question = (asked_about == who, action, resource, default)
        if found.setdefault(question, answer) != answer:
            return None
    return tuple(found), tuple(found.values())


async def answers(datasette, actor: dict, checks: tuple, remembered: dict) -> tuple:
    """This actor's answers to ``checks`` (remembered for the data's version)."""
    who = _json(actor)
    depends = answers_depend_on(datasette)
    found = []
    for about_them, action, resource, default in checks:
        key = ("page-check", who if about_them else "null", action, resource, default, *depends)
        if key not in remembered:
            remembered[key] = await datasette.permission_allowed(
                actor if about_them else None, action, resource=_resource(resource), default=default
            )
        found.append(remembered[key])
    return tuple(found)


def _resource(text: str):
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


async def serve(
    cache, datasette, who: Reader, asked_for: tuple, version, remembered, app, scope, receive, send
):
    """The shared page for ``who``, or made (for them, as Datasette makes it) and kept."""
    base = ("shared-page", who.kind, *asked_for)
    await wait_for_maker(cache, base)  # someone else's copy of the page: it may be theirs too
    checks = cache.page_checks.get(base)
    if checks is not None:
        mine = await answers(datasette, who.actor, checks, remembered)
        found = cache.get((base, checks, mine), version)
        if found is not None:
            start, skeleton = found
            return await send_hit(cache, send, start, fill(skeleton, who))

    def keep(start: dict, body: bytes) -> None:
        if not _html(start):
            return  # a download (the database, a blob) names no one: never cut into
        made = checks_and_answers(_asked.get(), who.actor)
        skeleton = cut(body, who) if made else None
        if skeleton is not None:
            checks, mine = made
            if len(cache.page_checks) > MAX_VISIBLE:
                cache.page_checks.clear()
            cache.page_checks[base] = checks
            cache.put((base, checks, mine), version, start, skeleton)

    recording = _asked.set([])
    try:
        await make(cache, base, app, scope, receive, send, keep)
    finally:
        _asked.reset(recording)
