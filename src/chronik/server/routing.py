"""A small typed layer over Starlette: every endpoint declares its query, body and response
types (msgspec Structs), and the OpenAPI document is generated from those declarations.

An :class:`Endpoint` handler receives a :class:`Call` (the store, the path parameters, the
decoded query and body) and returns a Struct (sent with the endpoint's first status) or a
:class:`Reply` (another status, headers). Every chronik error becomes a typed JSON body
(:func:`error_response`); bodies are size-checked before they are parsed.
"""

from __future__ import annotations

import logging
import math
import types
import typing
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from chronik import errors
from chronik.security.policy import OPEN_ACCESS, Access

__all__ = [  # ApiError is the layer's own signal (never raised to users): not exported
    "Call",
    "Endpoint",
    "ErrorBody",
    "ErrorDetail",
    "Reply",
    "access_of",
    "error_response",
    "json_response",
]

logger = logging.getLogger("chronik.server")

Q = TypeVar("Q")
B = TypeVar("B")


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    """What went wrong: the chronik error class, its message, and fields that help a client
    recover (the stream's current version on a conflict, the limit on a size error)."""

    type: str
    message: str
    stream_id: str | None = None
    expected_version: int | None = None
    current_version: int | None = None
    limit: int | None = None


class ErrorBody(msgspec.Struct):
    """Every 4xx and 5xx response body."""

    error: ErrorDetail


class ApiError(Exception):
    """An HTTP error raised by the server layer itself (bad query, wrong content type...)."""

    def __init__(self, status: int, type_: str, message: str, *, limit: int | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.limit = limit


@dataclass(frozen=True)
class Reply:
    """A handler's answer with a status other than the endpoint's first, or headers."""

    body: msgspec.Struct | None
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Call(Generic[Q, B]):
    """What a handler gets."""

    request: Request
    path: dict[str, str]
    query: Q
    body: B


Handler = Callable[[Call[Any, Any]], Awaitable[msgspec.Struct | Reply]]


@dataclass(frozen=True)
class Endpoint:
    """One operation: method, path, the types of its query, body and responses, its
    handler. ``responses`` maps status codes to their body type (``None``: no body)."""

    method: str
    path: str
    handler: Handler
    summary: str
    responses: Mapping[int, type | None]
    query: type | None = None
    body: type | None = None
    tag: str = "events"
    errors: tuple[int, ...] = (400,)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers the handler reads: name → description (documented as parameters)."""

    @property
    def operation_id(self) -> str:
        return getattr(self.handler, "__name__", self.path)


ACCESS_KEY = "chronik.access"
"""Where the auth middleware (``chronik.server.auth``) puts a request's access in its scope."""
RECHECK_KEY = "chronik.recheck"
"""Where it puts a coroutine function that checks the request's credentials again (raises
:class:`~chronik.errors.AuthenticationFailed` once revoked or expired): long-lived
connections call it now and then."""


def access_of(request: Any) -> Access:
    """The :class:`~chronik.security.Access` of a request or WebSocket (set by the auth
    middleware; without a policy there is none and everyone is admin)."""
    scope = request if isinstance(request, dict) else request.scope
    found = scope.get(ACCESS_KEY)
    return found if isinstance(found, Access) else OPEN_ACCESS


def json_response(body: msgspec.Struct | None, status: int, headers: Mapping[str, str]) -> Response:
    content = b"" if body is None else msgspec.json.encode(body)
    return Response(content, status, dict(headers), media_type="application/json")


# The HTTP status of each chronik error (the core knows no HTTP; this is the only mapping).
_STATUS: list[tuple[type[Exception], int]] = [
    (errors.ConcurrencyError, 409),
    (errors.DuplicateEventId, 409),
    (errors.StreamNotFound, 404),
    (errors.GroupNotFound, 404),
    (errors.GroupExists, 409),
    (errors.UnknownProjection, 404),
    (errors.PayloadTooLarge, 413),
    (errors.BatchTooLarge, 413),
    (errors.UnknownEventType, 422),
    (errors.StoreUnavailable, 503),
    (errors.WaitTimeout, 504),
    (errors.MissingCapability, 501),
    (errors.AuthenticationFailed, 401),
    (errors.AccessDenied, 403),
    (errors.RateLimited, 429),
    (errors.ChronikError, 400),
]


def error_response(exc: Exception) -> Response:
    """The typed JSON error for ``exc`` (a chronik error, an :class:`ApiError`, or a bug,
    which is logged and answered 500 without its details)."""
    if isinstance(exc, ClientDisconnect):  # the client left mid-body: nobody to answer
        detail = ErrorDetail(type="ClientDisconnect", message="the client went away")
        return json_response(ErrorBody(detail), 400, {})
    if isinstance(exc, ApiError):
        detail = ErrorDetail(type=exc.type, message=exc.message, limit=exc.limit)
        return json_response(ErrorBody(detail), exc.status, {})
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            detail = ErrorDetail(type=type(exc).__name__, message=str(exc))
            if isinstance(exc, errors.ConcurrencyError):
                detail.stream_id = exc.stream_id
                detail.expected_version = exc.expected
                detail.current_version = exc.actual
            if isinstance(exc, errors.PayloadTooLarge):
                detail.limit = exc.limit
            headers = {"Retry-After": "1"} if status == 503 else {}
            if isinstance(exc, errors.AuthenticationFailed):
                headers = {"WWW-Authenticate": 'Bearer realm="chronik"'}
            if isinstance(exc, errors.RateLimited):
                headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
            return json_response(ErrorBody(detail), status, headers)
    logger.exception("unexpected error in the HTTP API", exc_info=exc)
    detail = ErrorDetail(type="InternalError", message="internal error (logged by the server)")
    return json_response(ErrorBody(detail), 500, {})


def check_encoding(request: Request) -> None:
    """Refuse a path or query whose percent-escapes are not UTF-8 (``%FF``, an encoded lone
    surrogate): Starlette would turn them into U+FFFD, silently changing a stream id."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    parts = [raw_path, *request.scope.get("query_string", b"").replace(b"+", b" ").split(b"&")]
    for part in parts:
        try:
            urllib.parse.unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, "InvalidEncoding", "the URL holds percent-escapes that are not UTF-8"
            ) from None


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin is list


def decode_query(request: Request, query_type: type[Q]) -> Q:
    """The query string as ``query_type`` (a Struct; strings converted to its field types).
    Unknown parameters are refused, so a typo is not silently ignored."""
    info = msgspec.structs.fields(query_type)  # type: ignore[arg-type]
    known = {f.encode_name: f for f in info}
    raw: dict[str, Any] = {}
    for name in request.query_params:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ApiError(
                400, "InvalidQuery", f"unknown query parameter {name!r} (allowed: {allowed})"
            )
    for name, f in known.items():
        if _is_list(f.type):
            values = request.query_params.getlist(name)
            if values:
                raw[name] = [v for value in values for v in value.split(",") if v]
        elif name in request.query_params:
            raw[name] = request.query_params[name]
    try:
        return msgspec.convert(raw, query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "InvalidQuery", f"query: {exc}") from None


async def read_body(request: Request, body_type: type[B], max_bytes: int) -> B:
    """The request body as ``body_type``: refused before parsing when it is not JSON or
    larger than ``max_bytes`` (413, from Content-Length or while reading)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "the body must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "InvalidRequest", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise ApiError(
                413,
                "PayloadTooLarge",
                f"body of {declared} bytes, over {max_bytes}",
                limit=max_bytes,
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "PayloadTooLarge", f"body over {max_bytes} bytes", limit=max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "InvalidBody", f"body: {exc}") from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ApiError(400, "MalformedJson", f"body is not valid JSON: {exc}") from None
