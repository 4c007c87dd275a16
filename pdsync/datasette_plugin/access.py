"""Who gets in: the sign-in gate, ``/-/login``, API tokens and the permissions they carry.

Three modes (``pdsync serve`` picks one from its address, see ``pdsync.serve``):

- ``local``: bound to loopback, everything as plain Datasette (and as pdsync always did).
- ``private``: anonymous visitors get nothing but the sign-in page and static files. The
  gate is an ASGI wrapper, not only a
  permission: it refuses by default, so a route another plugin adds without a permission check
  (a dashboard, a download) is covered too.
- ``public``: anyone reads; arbitrary SQL still needs an allowed actor.

Plain ``datasette`` users choose with ``plugins: pdsync: require_sign_in: true`` and
``secrets_file: PATH``; ``pdsync serve`` passes them in ``PDSYNC_SERVE_MODE`` and
``PDSYNC_SECRETS_FILE`` so that nothing about them is published in ``/-/metadata.json``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from urllib.parse import quote, urlsplit

from datasette.utils import actor_matches_allow, baseconv
from datasette.utils.asgi import Request, Response

from pdsync import access
from pdsync.timestamps import parse_interval

from .config import plugin_config

log = logging.getLogger("pdsync.serve")

MODE_ENV = "PDSYNC_SERVE_MODE"
SECRETS_ENV = "PDSYNC_SECRETS_FILE"
SESSION_ENV = "PDSYNC_SESSION_LENGTH"
MODES = ("local", "private", "public")
# Reachable without signing in: signing in itself and what its page needs, and the webhook
# receiver, which checks its own credentials (webhook.py).
OPEN_PATHS = ("/-/login", "/-/logout", "/-/auth-token", "/favicon.ico", "/-/pdsync/webhook")
OPEN_PREFIXES = ("/-/static/", "/-/static-plugins/")
# Actions that read; anonymous visitors get none of them in private mode.
SQL_ACTION = "execute-sql"

_cache: dict[str, access.Cached] = {}


def mode(datasette) -> str:
    env = os.environ.get(MODE_ENV)
    if env in MODES:
        return env
    return "private" if plugin_config(datasette).get("require_sign_in") else "local"


def session_seconds(datasette) -> float:
    """How long a sign-in lasts: `pdsync serve --session-length`, or ``session_length`` in
    the plugin's configuration (an interval: 30d, 12h), else a month. A bad value is refused
    by the CLI; here it falls back to the default rather than opening sessions for ever."""
    value = os.environ.get(SESSION_ENV) or plugin_config(datasette).get("session_length")
    if value:
        try:
            return parse_interval(value, None)
        except ValueError:
            log.error("session_length %r is not an interval: sessions last 30d", value)
    return access.SESSION_SECONDS


def secrets_file(datasette) -> access.Cached | None:
    path = os.environ.get(SECRETS_ENV) or plugin_config(datasette).get("secrets_file")
    if not path:
        return None
    if path not in _cache:
        _cache[path] = access.Cached(os.path.expanduser(path))
    return _cache[path]


def secrets_data(datasette) -> dict:
    """The secrets file's content; {} when there is none or it cannot be read (one log line
    per new problem, never a traceback: nobody signs in until it is fixed)."""
    cached = secrets_file(datasette)
    if cached is None:
        return {}
    try:
        return cached.data()
    except access.SecretsError as exc:
        if str(exc) != getattr(cached, "problem", None):
            cached.problem = str(exc)
            log.error("%s", exc)
        return {}


def _bearer(headers) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def actor_for_token(datasette, request):
    token = _bearer(request.headers)
    if token:
        actor, _ = access.token_actor(secrets_data(datasette), token)
        return actor
    return None


def permission(datasette, actor, action, resource) -> bool | None:
    """The permission_allowed answer for the actions this module decides, else None."""
    data = None
    if actor and actor.get("pdsync"):
        data = secrets_data(datasette)
        if not access.still_valid(data, actor, session_seconds(datasette)):
            return False  # a removed user's cookie opens nothing
    current = mode(datasette)
    if action == SQL_ACTION and current != "local":
        if actor and actor.get("id") == "root":
            return True
        allow = plugin_config(datasette).get("allow_sql")
        if allow is not None and actor_matches_allow(actor, allow):
            return True
        if data is not None and "sql" in access.abilities(data, actor):
            return True
        return False
    if action == "pdsync-sync" and data is not None and "sync" in access.abilities(data, actor):
        return True
    if current == "private" and actor is None and action.startswith("view-"):
        return False
    return None


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def resolve_actor(datasette, scope) -> dict | None:
    # The same hooks Datasette runs for the request, so any sign-in plugin counts here too.
    from datasette.plugins import pm
    from datasette.utils import await_me_maybe

    request = Request(scope, None)
    for actor in pm.hook.actor_from_request(datasette=datasette, request=request):
        actor = await await_me_maybe(actor)
        if actor:
            return actor
    return None


def _refusal(datasette, scope, reason: str) -> Response:
    headers = dict(scope.get("headers") or [])
    path = scope.get("path", "/")
    if b"text/html" in headers.get(b"accept", b"") and scope.get("method") in ("GET", "HEAD"):
        login = datasette.urls.path("/-/login")
        return Response.redirect(f"{login}?next={quote(path)}")
    return Response.json(
        {"ok": False, "error": reason, "status": 401},
        status=401,
        headers={"www-authenticate": 'Bearer realm="pdsync"'},
    )


def _malformed_basic(value: bytes) -> bool:
    # datasette-auth-passwords decodes Basic credentials as ASCII and raises (a 500 with a
    # traceback) on anything else: such a header is refused here first.
    if not value[:6].lower() == b"basic ":
        return False
    try:
        return ":" not in base64.b64decode(value[6:].strip(), validate=True).decode("ascii")
    except ValueError:
        return True


def gate(datasette, app):
    """The ASGI wrapper: refuses what an actor may not see before Datasette does any work."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if _malformed_basic(headers.get(b"authorization", b"")):
            return await Response.json(
                {"ok": False, "error": "malformed Basic credentials", "status": 400},
                status=400,
            ).asgi_send(send)
        token = _bearer({"authorization": headers.get(b"authorization", b"").decode("latin-1")})
        if token:
            # A script learns that its token is dead, whatever the mode.
            actor, why = access.token_actor(secrets_data(datasette), token)
            if actor is None:
                return await Response.json(
                    {"ok": False, "error": why, "status": 401},
                    status=401,
                    headers={"www-authenticate": 'Bearer error="invalid_token"'},
                ).asgi_send(send)
        if mode(datasette) != "private":
            return await app(scope, receive, send)
        path = scope.get("path", "/")
        base = datasette.setting("base_url").rstrip("/")
        if base and path.startswith(base):
            path = path[len(base) :] or "/"
        if _is_open(path):
            return await app(scope, receive, send)
        actor = await resolve_actor(datasette, scope)
        valid = actor is not None and access.still_valid(
            secrets_data(datasette), actor, session_seconds(datasette)
        )
        if not valid:
            return await _refusal(datasette, scope, "sign in, or send a token").asgi_send(send)
        return await app(scope, receive, send)

    return guarded


async def login(request, datasette) -> Response:
    """datasette-auth-passwords' sign-in form, checked against the secrets file (its own
    ``/-/login`` reads hashes from plugin configuration, which ``/-/metadata.json`` shows)."""
    if request.method not in ("GET", "POST"):
        return Response.text("Method not allowed", status=405)
    error = None
    status = 200
    if request.method == "POST":
        form = await request.post_vars()
        # PBKDF2 takes a tenth of a second: off the event loop, and a few at a time, so a
        # burst of sign-ins cannot stall every other page.
        async with _hashing(datasette):
            actor = await asyncio.to_thread(
                access.user_actor,
                secrets_data(datasette),
                form.get("username") or "",
                form.get("password") or "",
            )
        if actor:
            response = Response.redirect(_next(datasette, request.args.get("next")))
            https = request.scheme == "https" or _forwarded_https(request)
            # The cookie ends with the session too ("e", which Datasette checks, and
            # max_age, after which the browser forgets it); still_valid checks "since".
            length = session_seconds(datasette)
            ends = baseconv.base62.encode(int(actor["since"] + length))
            response.set_cookie(
                "ds_actor",
                datasette.sign({"a": actor, "e": ends}, "actor"),
                max_age=int(length),
                httponly=True,
                samesite="lax",
                secure=https,
            )
            return response
        error, status = "Wrong user name or password", 401
    elif not secrets_data(datasette).get("users"):
        error = "Nobody can sign in yet: add someone with `pdsync user add DB_PATH NAME`."
    html = await datasette.render_template("password_login.html", {"error": error}, request=request)
    return Response.html(html, status=status)


def _next(datasette, target: str | None) -> str:
    # Only a path on this site: never an open redirect to another host ("//host", "/\thost"
    # that browsers read as "//host", a scheme), nor a header split by a newline.
    if (
        target
        and target.startswith("/")
        and "\\" not in target
        and not any(ord(c) < 0x21 or ord(c) == 0x7F for c in target)
    ):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return datasette.urls.path("/")


def _forwarded_https(request) -> bool:
    # Behind the TLS proxy README shows, the proxy says so; the cookie then stays on https.
    return request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"


def _hashing(datasette) -> asyncio.Semaphore:
    """Two password checks at a time, per instance (a semaphore belongs to one event loop)."""
    if getattr(datasette, "_pdsync_sign_ins", None) is None:
        datasette._pdsync_sign_ins = asyncio.Semaphore(2)
    return datasette._pdsync_sign_ins
