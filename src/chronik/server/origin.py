"""Guards against web pages in the operator's own browser (found by a red-team run).

A server a browser can reach is reachable by every page that browser opens. Without a
policy (or with ``--anonymous``) nothing else stops such a page, so two rules hold on every
request, whatever the policy:

- **Same origin for anything that changes state.** A request other than GET/HEAD/OPTIONS,
  and every WebSocket handshake, is refused (403 ``CrossSiteRequest``) when the browser says
  it comes from another site (``Sec-Fetch-Site: cross-site``) or its ``Origin`` names
  another host and port than the request's ``Host`` (``Origin: null`` included). Clients that
  are not browsers send no ``Origin`` and are not affected; chronik sends no CORS headers, so
  cross-origin reads by scripts were refused by the browser already.
- **Known host names only** (``allowed_hosts``; ``chronik serve`` sets the loopback names
  when it listens on the loopback): a request whose ``Host`` is another name is refused
  (400 ``UnknownHost``), so a DNS-rebinding page (``evil.example`` resolving to 127.0.0.1)
  cannot talk to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from chronik.server.routing import ApiError, error_response

__all__ = ["LOOPBACK_HOSTS", "OriginGuard"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a loopback server answers to."""

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def _hostname(netloc: str) -> str:
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


class OriginGuard:
    """ASGI middleware enforcing the two rules of this module."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal: ApiError | None = None
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            refusal = ApiError(
                400, "UnknownHost", f"this server does not answer to the host name {host!r}"
            )
        elif scope["type"] == "websocket" or scope.get("method", "GET") not in _SAFE:
            origin = headers.get("origin")
            cross = headers.get("sec-fetch-site") == "cross-site"
            if origin is not None:
                cross = cross or origin == "null" or urlsplit(origin).netloc.lower() != host.lower()
            if cross:
                refusal = ApiError(
                    403, "CrossSiteRequest",
                    "refused: a request from another site's page (Origin / Sec-Fetch-Site)",
                )  # fmt: skip
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.type})
        else:
            await error_response(refusal)(scope, receive, send)
