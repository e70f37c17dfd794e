"""``create_app``: the ASGI application of ``chronik serve`` (Starlette)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from chronik.app import App
from chronik.errors import StoreUnavailable
from chronik.server.api import Api
from chronik.server.openapi import openapi_document
from chronik.server.routing import (
    ApiError,
    Call,
    Endpoint,
    Reply,
    decode_query,
    error_response,
    json_response,
    read_body,
)
from chronik.store import connect
from chronik.store.protocol import EventStore

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body read (413 above it, before parsing)."""


def _route(endpoint: Endpoint, max_body: int) -> Route:
    first_status = next(iter(endpoint.responses))

    async def handle(request: Request) -> Response:
        try:
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


class _OpenedAtStartup:
    """Stands for the store a server opens when it starts (in the server's event loop):
    every attribute is the opened store's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.target: EventStore | None = None

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get("target")
        if target is None:
            raise StoreUnavailable(f"the server has not opened {self.__dict__['url']} yet")
        return getattr(target, name)


def create_app(
    store: EventStore | str,
    *,
    app: App | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_store: bool = False,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The HTTP API (and, where installed, the console) over ``store``.

    Args:
        store: an open store (closed with the app when ``close_store``), or a store URL,
            opened when the server starts (in its event loop) and closed when it stops.
        app: the application's registry and deciders (unknown types refused on append,
            state replays).
        max_body_bytes: largest request body (413 above it, refused before parsing).
    """
    opener: _OpenedAtStartup | None = None
    if isinstance(store, str):
        opener = _OpenedAtStartup(store)
        store = cast(EventStore, opener)
        close_store = True
    endpoints = Api(store, app).endpoints()
    document = msgspec.json.encode(openapi_document(endpoints))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if opener is not None:
            opener.target = await connect(opener.url)
        try:
            yield
        finally:
            if close_store:
                await store.close()

    routes: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
    routes.extend(_route(ep, max_body_bytes) for ep in endpoints)
    routes.extend(extra_routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        kind = "MethodNotAllowed" if status == 405 else "NotFound"
        return error_response(ApiError(status, kind, f"{request.method} {request.url.path}"))

    web = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found}
    )
    web.state.store = store
    web.state.endpoints = endpoints
    return web
