"""Authentication on the HTTP face: an ASGI middleware in front of every route, and the
console's login page.

The middleware reads the credentials of each request (``Authorization: Bearer ...``; the
console's ``chronik_token`` cookie for console pages, GET requests and the WebSocket, which
browsers cannot give a header), asks the :class:`~chronik.security.Guard` who it is and
whether it is within its rate, and puts the resulting :class:`~chronik.security.Access` in
the request's scope (``chronik.server.routing.access_of``), where each handler asks it
before any work.
``/openapi.json``, ``/health``, the login page and static assets stay public.

Refusals: 401 (with ``WWW-Authenticate: Bearer``) for missing or bad credentials, 429
(with ``Retry-After``) over the rate, as typed JSON bodies; a WebSocket gets the same
body as an ``error`` message and is closed (1008). A browser asking for a console page
without credentials is sent to the login page instead. The console itself needs ``read``
on every category, and its forms ``operate`` on the store.
"""

from __future__ import annotations

import html
import urllib.parse
from http.cookies import SimpleCookie

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from chronik.errors import AccessDenied, AuthenticationFailed, ChronikError
from chronik.security import Access, Guard, Operation
from chronik.server.console.render import Csrf
from chronik.server.routing import ACCESS_KEY, RECHECK_KEY, error_response

__all__ = ["COOKIE", "AuthMiddleware", "login_routes"]

COOKIE = "chronik_token"
"""The console's cookie (HttpOnly, SameSite=Strict): the token given on the login page."""

_PUBLIC = frozenset(
    {"/openapi.json", "/health", "/console/login", "/console/logout", "/static/chronik-pending.js"}
)
_PUBLIC_PREFIXES = ("/console/static/",)


def _cookie(headers: Headers) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header: as if there were none
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


class AuthMiddleware:
    """Authenticates every HTTP request and WebSocket before the app sees it."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path in _PUBLIC or path.startswith(_PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        from_cookie = False
        console = path == "/console" or path.startswith("/console/")
        if authorization is None and (
            console or scope["type"] == "websocket" or scope.get("method") in ("GET", "HEAD")
        ):
            cookie = _cookie(headers)
            if cookie is not None:
                authorization = f"Bearer {cookie}"
                from_cookie = True
        client = scope.get("client") or ("", 0)
        try:
            if from_cookie and scope["type"] == "websocket":
                _same_origin(headers)  # no cross-site WebSocket riding on the cookie
            access = await self.guard.authenticate(authorization, client=str(client[0]))
            self.guard.admit(access.principal)
            if console:
                _console_access(access, scope)
            elif path == "/metrics":
                access.authorize(Operation.OPERATE, None)
        except ChronikError as exc:
            await self._refuse(exc, scope, receive, send, console=console)
            return
        scope[ACCESS_KEY] = access
        if authorization is not None:  # live feeds check again now and then (revocation)
            guard, credentials, who = self.guard, authorization, str(client[0])

            async def recheck() -> None:
                await guard.authenticate(credentials, client=who)

            scope[RECHECK_KEY] = recheck
        await self.app(scope, receive, send)

    async def _refuse(
        self, exc: ChronikError, scope: Scope, receive: Receive, send: Send, *, console: bool
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            body = bytes(error_response(exc).body)
            text = b'{"id":null,"kind":"error","data":' + body + b"}"
            await send({"type": "websocket.send", "text": text.decode()})
            await send({"type": "websocket.close", "code": 1008})
            return
        response: Response
        wants_html = "text/html" in Headers(scope=scope).get("accept", "")
        if console and isinstance(exc, AuthenticationFailed) and wants_html:
            target = urllib.parse.quote(scope.get("path", "/console/"), safe="/")
            response = RedirectResponse(f"/console/login?next={target}", 303)
        else:
            response = error_response(exc)
        await response(scope, receive, send)


def _same_origin(headers: Headers) -> None:
    origin = headers.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != headers.get("host", ""):
        raise AuthenticationFailed(f"the console's cookie is not accepted from {origin[:100]}")


def _console_access(access: Access, scope: Scope) -> None:
    """The console shows every category and acts on the whole store: it needs ``read`` on
    ``*`` (and ``operate`` on ``*`` for its forms)."""
    if not access.readable().everything:
        raise AccessDenied(access.principal.name, "read", None)
    if scope.get("method") == "POST" and scope.get("path") != "/console/logout":
        access.authorize(Operation.OPERATE, None)


_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chronik: sign in</title>
<link rel="stylesheet" href="/console/static/console.css"></head>
<body><main class="login"><h1>chronik console</h1>
<form method="post" action="/console/login">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="next" value="{next}">
<label>API token <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Sign in</button></form>
<p class="error" role="alert">{error}</p></main></body></html>
"""


def login_routes(guard: Guard) -> list[BaseRoute]:
    """``GET``/``POST /console/login`` (a token in, the ``chronik_token`` cookie out) and
    ``POST /console/logout``."""
    csrf = Csrf()

    def page(next_: str, error: str = "", status: int = 200) -> Response:
        body = _LOGIN.format(csrf=html.escape(csrf.token), next=html.escape(next_),
                             error=html.escape(error))  # fmt: skip
        return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})

    def safe_next(value: str) -> str:
        # only a console path of this server (never //host or another scheme)
        if value.startswith("/console") and not value.startswith("//"):
            return value
        return "/console/"

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(safe_next(request.query_params.get("next", "/console/")))
        try:
            form = await csrf.form(request)
        except (PermissionError, ValueError) as exc:
            return page("/console/", str(exc), 403)
        token = form.get("token", "").strip()
        target = safe_next(form.get("next", "/console/"))
        try:
            access = await guard.authenticate(f"Bearer {token}" if token else None)
            if token == "":
                raise AuthenticationFailed("enter a token")
            _console_access(access, {"method": "GET"})
        except ChronikError as exc:
            return page(target, str(exc), 401 if isinstance(exc, AuthenticationFailed) else 403)
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/console/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return [
        Route("/console/login", login, methods=["GET", "POST"], name="console_login"),
        Route("/console/logout", logout, methods=["POST"], name="console_logout"),
    ]
