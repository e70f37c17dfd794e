"""``create_app``: the ASGI application of ``chronik serve`` (Starlette)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from chronik.app import App
from chronik.errors import StoreUnavailable
from chronik.security import Guard, Policy, token_store
from chronik.server.api import Api
from chronik.server.console import console_routes
from chronik.server.groups import Groups
from chronik.server.live import live_routes
from chronik.server.openapi import openapi_document
from chronik.server.operations import Operations
from chronik.server.origin import OriginGuard
from chronik.server.routing import (
    ApiError,
    Call,
    Endpoint,
    Reply,
    check_encoding,
    decode_query,
    error_response,
    json_response,
    read_body,
)
from chronik.store import connect, redact_url
from chronik.store.protocol import EventStore

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ServeUrl", "create_app", "create_app_for_url"]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body read (413 above it, before parsing)."""


def _route(endpoint: Endpoint, max_body: int) -> Route:
    first_status = next(iter(endpoint.responses))

    async def handle(request: Request) -> Response:
        try:
            check_encoding(request)
            query = decode_query(request, endpoint.query) if endpoint.query else None
            if endpoint.query is None and request.query_params:
                raise ApiError(400, "InvalidQuery", "this endpoint takes no query parameters")
            body: object = None
            if endpoint.body is not None:
                body = await read_body(request, endpoint.body, max_body)
            path = {k: str(v) for k, v in request.path_params.items()}
            result = await endpoint.handler(Call(request, path, query, body))
        except Exception as exc:
            return error_response(exc)
        if isinstance(result, Reply):
            return json_response(result.body, result.status, result.headers)
        return json_response(result, first_status, {})

    return Route(endpoint.path, handle, methods=[endpoint.method], name=endpoint.operation_id)


class ServeUrl:
    """The ASGI app for a store URL: the store is opened when the server starts (in the
    server's event loop, by the lifespan startup), then the app of :func:`create_app` is
    built on it and serves everything; the store is closed when the server stops."""

    def __init__(self, url: str, create: bool, options: dict[str, Any]) -> None:
        self.url = url
        self.create = create
        self.options = options
        self.app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "lifespan":  # not started (a server without lifespan)
            response = error_response(StoreUnavailable(f"{redact_url(self.url)} is not open"))
            await response(scope, receive, send)
            return
        message = await receive()  # lifespan.startup
        try:
            store = await connect(self.url, create=self.create)
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        self.app = create_app(store, close_store=True, **self.options)
        replayed = False

        async def receive_again() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, receive_again, send)


def _metrics_routes(store: EventStore) -> list[BaseRoute]:
    """``GET /metrics`` in the Prometheus text format (docs/operations.md), when
    prometheus-client is installed (``chronik[ops]``); this server's appends are timed."""
    try:
        from chronik.ops.metrics import CONTENT_TYPE, StoreMetrics
    except ImportError:
        return []
    metrics = StoreMetrics(store)
    metrics.instrument()

    async def scrape(request: Request) -> Response:
        return Response(await metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    return [Route("/metrics", scrape, methods=["GET"])]


def create_app(
    store: EventStore,
    *,
    app: App | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_store: bool = False,
    extra_routes: Sequence[BaseRoute] = (),
    stopping: asyncio.Event | None = None,
    policy: Policy | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The HTTP API, live push and the console over ``store``.

    Args:
        store: an open store (closed with the app when ``close_store``); for a URL, see
            :func:`create_app_for_url`.
        app: the application's registry and deciders (unknown types refused on append,
            state replays).
        allowed_hosts: the ``Host`` names answered (``None``: any); ``chronik serve`` on the
            loopback passes :data:`~chronik.server.origin.LOOPBACK_HOSTS` (DNS rebinding).
            Cross-site state changes are refused in any case (:mod:`chronik.server.origin`).
        max_body_bytes: largest request body (413 above it, refused before parsing).
        policy: who may do what (docs/security.md); every request is then authenticated
            (API tokens of this store, OIDC JWTs, the policy's anonymous role). ``None``:
            no authentication, everyone is admin (the loopback default of ``chronik serve``).
    """
    endpoints = [*Api(store, app).endpoints(), *Operations(store, app).endpoints()]
    endpoints += Groups(store).endpoints()
    document = msgspec.json.encode(openapi_document(endpoints, secured=policy is not None))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_store:
                await store.close()

    routes: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
    routes.extend(_route(ep, max_body_bytes) for ep in endpoints)
    routes.extend(live_routes(store, stopping=stopping))
    # first: pages in the operator's browser may not change state or pass as another host
    middleware: list[Middleware] = [Middleware(OriginGuard, allowed_hosts=allowed_hosts)]
    if policy is not None:
        from chronik.server.auth import AuthMiddleware, login_routes

        guard = Guard(policy, token_store(store))
        middleware.append(Middleware(AuthMiddleware, guard=guard))
        routes.extend(login_routes(guard))
    routes.extend(console_routes(store, app))
    routes.extend(_metrics_routes(store))
    routes.extend(extra_routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        kind = "MethodNotAllowed" if status == 405 else "NotFound"
        return error_response(ApiError(status, kind, f"{request.method} {request.url.path}"))

    web = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
        middleware=middleware,
    )
    web.state.store = store
    web.state.endpoints = endpoints
    return web


def create_app_for_url(
    url: str,
    *,
    create: bool = True,
    app: App | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    extra_routes: Sequence[BaseRoute] = (),
    stopping: asyncio.Event | None = None,
    policy: Policy | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> ServeUrl:
    """The app of :func:`create_app` for a store URL: the store is opened when the server
    starts (in its event loop; ``create=False``: :class:`StoreNotFound` if it is not there)
    and closed when it stops. What ``chronik serve`` runs."""
    options = {
        "app": app,
        "max_body_bytes": max_body_bytes,
        "extra_routes": extra_routes,
        "stopping": stopping,
        "policy": policy,
        "allowed_hosts": allowed_hosts,
    }
    return ServeUrl(url, create, options)
