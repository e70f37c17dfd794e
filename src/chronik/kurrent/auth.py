"""Authentication and authorisation on the KurrentDB gRPC face, with the policy of every
other face (:mod:`chronik.security`, docs/security.md).

One server interceptor (:class:`AuthInterceptor`) sits in front of every RPC of the server,
whichever servicer answers it. It reads the call's ``authorization`` metadata (KurrentDB
clients send ``Basic base64(user:password)`` from ``kurrentdb://user:password@host``; the
password is a chronik API token or an OIDC JWT; ``Bearer <token>`` works too), asks the
:class:`~chronik.security.Guard` who it is (the same check as the HTTP face: a revoked token
fails from its next call on), applies the per-principal rate, checks the method's
:class:`Rule`, and only then runs the handler, with the caller's
:class:`~chronik.security.Access` in :func:`current_access`. A refusal is a status, never
``INTERNAL``: ``UNAUTHENTICATED`` (kurrentdbclient raises ``UnauthenticatedError``),
``PERMISSION_DENIED`` (``AccessDeniedError``), ``RESOURCE_EXHAUSTED`` over the rate.

A call that streams its answer (reads, subscriptions, ``BatchAppend``) checks its
credentials again every :data:`RECHECK_SECONDS`: a revoked or expired credential ends an
open subscription with ``UNAUTHENTICATED`` within that bound.

Each method has a :class:`Rule`: ``PUBLIC`` (no credentials needed, as KurrentDB serves
``Gossip.Read`` and ``ServerFeatures`` to anyone; bad credentials are still refused),
``CHECKED`` (any authenticated caller: the servicer asks :func:`authorize` per stream, and
filters ``$all`` with :func:`visible`), ``OPERATE`` (``operate`` on the whole store). A
method nobody declared needs ``OPERATE`` (fail closed).

How a new servicer plugs in (one call, then one check per stream)::

    from chronik.kurrent.auth import Rule, authorize, declare

    declare("event_store.client.persistent_subscriptions.PersistentSubscriptions",
            {"Read": Rule.CHECKED, "Create": Rule.OPERATE, "Delete": Rule.OPERATE})

    async def Read(self, request, context):
        authorize(Operation.READ, stream_id)   # PERMISSION_DENIED when not allowed
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from chronik.errors import AccessDenied, AuthenticationFailed, ChronikError, RateLimited
from chronik.events import RecordedEvent, category_of
from chronik.kurrent.mapping import STREAM_PREFIX
from chronik.security import Access, Guard, Operation, Principal

__all__ = [
    "RECHECK_SECONDS",
    "AuthInterceptor",
    "Rule",
    "authorize",
    "current_access",
    "declare",
    "target_of",
    "visible",
]

RECHECK_SECONDS = 5.0
"""How often a streaming call checks its credentials again (the HTTP face's live feeds: 5 s)."""

_META_PREFIX = STREAM_PREFIX + "$"  # chronik id of KurrentDB's "$$name" metadata streams


class Rule(enum.Enum):
    """What a method needs before its handler runs."""

    PUBLIC = "public"
    """Nothing: anyone may call it (bad credentials, if sent, are refused)."""
    CHECKED = "checked"
    """An authenticated caller; the handler authorises per stream."""
    OPERATE = "operate"
    """``operate`` on the whole store."""


_RULES: dict[str, Rule] = {}


def declare(service: str, rules: Mapping[str, Rule]) -> None:
    """Declare the rule of each method of ``service`` (its full name, as in the ``.proto``:
    ``event_store.client.streams.Streams``). A method not declared needs ``OPERATE``."""
    for method, rule in rules.items():
        _RULES[f"/{service}/{method}"] = rule


def rule_of(method: str) -> Rule:
    """The rule of a full method name (``/service/Method``)."""
    return _RULES.get(method, Rule.OPERATE)


declare("event_store.client.gossip.Gossip", {"Read": Rule.PUBLIC})
declare("event_store.client.server_features.ServerFeatures", {"GetSupportedMethods": Rule.PUBLIC})
declare(
    "event_store.client.streams.Streams",
    {m: Rule.CHECKED for m in ("Read", "Append", "BatchAppend", "Delete", "Tombstone")},
)

_ACCESS: contextvars.ContextVar[Access | None] = contextvars.ContextVar(
    "chronik_kurrent_access", default=None
)


def current_access() -> Access:
    """The access of the caller of the RPC being served.

    Raises:
        AccessDenied: outside a call the :class:`AuthInterceptor` let through (a handler
            reached some other way serves nobody).
    """
    access = _ACCESS.get()
    if access is None:
        raise AccessDenied("(unauthenticated)", "call", None)
    return access


def target_of(stream_id: str, operation: Operation) -> tuple[Operation, str]:
    """The operation and category to authorise for ``operation`` on a chronik stream id:
    KurrentDB's metadata stream ``$$name`` (``kurrent$$name``) is the ``read_metadata`` /
    ``write_metadata`` of the category of ``name``."""
    if stream_id.startswith(_META_PREFIX):
        rest = stream_id[len(_META_PREFIX) :]
        underlying = STREAM_PREFIX + rest[1:] if rest.startswith("$") else rest
        if operation is Operation.READ:
            operation = Operation.READ_METADATA
        elif operation is Operation.APPEND:
            operation = Operation.WRITE_METADATA
        return operation, category_of(underlying)
    return operation, category_of(stream_id)


def authorize(operation: Operation, stream_id: str) -> None:
    """Raise :class:`~chronik.errors.AccessDenied` unless the caller may do ``operation``
    on the chronik stream ``stream_id`` (decided from the name alone, before any read)."""
    op, category = target_of(stream_id, operation)
    current_access().authorize(op, category)


def visible(access: Access | None = None) -> Callable[[RecordedEvent], bool]:
    """Whether the caller may see an event of the global log: ``read`` on its category
    (``read_metadata`` on the stream's category for a ``$$name`` metadata event)."""
    access = current_access() if access is None else access
    readable = access.readable()
    if readable.everything and access.allows(Operation.READ_METADATA, None):
        return lambda _event: True
    cache: dict[str, bool] = {}

    def check(event: RecordedEvent) -> bool:
        stream_id = event.stream_id
        if not stream_id.startswith(_META_PREFIX):
            return readable(category_of(stream_id))
        seen = cache.get(stream_id)
        if seen is None:
            op, category = target_of(stream_id, Operation.READ)
            seen = access.allows(op, category)
            if len(cache) < 10_000:
                cache[stream_id] = seen
        return seen

    return check


# -- the interceptor -----------------------------------------------------------------------

_Ctx = grpc.aio.ServicerContext[Any, Any]
_NOBODY = Principal("anonymous", (), "anonymous")


def _authorization(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The one ``authorization`` value of the call (``None``: none sent).

    Raises:
        AuthenticationFailed: more than one, or one that is not text.
    """
    found = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not found:
        return None
    if len(found) > 1:
        raise AuthenticationFailed("more than one authorization header")
    value = found[0]
    if not isinstance(value, str):
        raise AuthenticationFailed("the authorization header is not text")
    return value


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call and applies its method's :class:`Rule` (module docstring).

    ``guard`` ``None``: no policy (the open loopback server), every caller is admin.
    """

    def __init__(self, guard: Guard | None, *, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.guard = guard
        self.recheck_seconds = recheck_seconds

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        rule = rule_of(method)
        if getattr(_behaviour(handler), "chronik_unimplemented", False):
            rule = Rule.CHECKED  # answers UNIMPLEMENTED, to anyone authenticated
        metadata = handler_call_details.invocation_metadata
        return _wrap(handler, _Gate(self, rule, metadata))


class _Gate:
    """The checks of one call: :meth:`enter` before the handler, :meth:`recheck` while it
    streams."""

    def __init__(
        self, owner: AuthInterceptor, rule: Rule, metadata: Sequence[tuple[str, Any]] | None
    ) -> None:
        self.guard = owner.guard
        self.recheck_seconds = owner.recheck_seconds
        self.rule = rule
        self.metadata = metadata
        self.authorization: str | None = None

    async def enter(self, context: _Ctx) -> None:
        if self.guard is None:
            from chronik.security import OPEN_ACCESS

            _ACCESS.set(OPEN_ACCESS)
            return
        try:
            self.authorization = _authorization(self.metadata)
            if self.rule is Rule.PUBLIC and self.authorization is None:
                _ACCESS.set(Access(self.guard.policy, _NOBODY))
                return
            access = await self.guard.authenticate(
                self.authorization, client=_peer(context), basic=True
            )
            self.guard.admit(access.principal)
            if self.rule is Rule.OPERATE:
                access.authorize(Operation.OPERATE, None)
        except Exception as exc:
            await refuse(context, exc)
            raise  # pragma: no cover - refuse raises
        _ACCESS.set(access)

    @property
    def rechecks(self) -> bool:
        return self.guard is not None and self.authorization is not None

    async def recheck(self, context: _Ctx) -> None:
        assert self.guard is not None
        try:
            await self.guard.authenticate(self.authorization, client=_peer(context), basic=True)
        except Exception as exc:
            await refuse(context, exc)


def _peer(context: _Ctx) -> str:
    """The caller's address without its port (``ipv4:127.0.0.1``): one rate bucket per
    anonymous host, as on the HTTP face, not one per connection."""
    try:
        peer = str(context.peer())
    except Exception:  # pragma: no cover - a closed call
        return ""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


async def refuse(context: _Ctx, exc: BaseException) -> None:
    """Answer a security error as its status (``context.abort`` raises); anything else
    is re-raised for the handler's own mapping."""
    if isinstance(exc, AuthenticationFailed):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if isinstance(exc, AccessDenied):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, RateLimited):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, ChronikError):  # the token store cannot be asked
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot authenticate: {exc}")
    raise exc


_SECURITY = (AccessDenied, AuthenticationFailed, RateLimited)


def _behaviour(handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], gate: _Gate) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with ``gate`` in front (and, for a streamed answer, beside it)."""
    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: _Ctx) -> Any:
            await gate.enter(context)
            try:
                return await inner(request, context)
            except _SECURITY as exc:  # a servicer's own authorize(): its status, not UNKNOWN
                await refuse(context, exc)

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary, handler.request_deserializer, handler.response_serializer)
    streaming: Any = handler.unary_stream or handler.stream_stream
    assert streaming is not None
    make_streaming = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    if not inspect.isasyncgenfunction(streaming):  # writes with context.write itself

        async def writer(request: Any, context: _Ctx) -> Any:
            await gate.enter(context)
            try:
                if not gate.rechecks:
                    return await streaming(request, context)
                task = asyncio.ensure_future(streaming(request, context))
                return await _watch_task(task, gate, context)
            except _SECURITY as exc:
                await refuse(context, exc)

        return make_streaming(writer, handler.request_deserializer, handler.response_serializer)

    async def stream(request: Any, context: _Ctx) -> AsyncIterator[Any]:
        await gate.enter(context)
        source = streaming(request, context)
        try:
            if not gate.rechecks:
                async for item in source:
                    yield item
                return
            async for item in _watched(source, gate, context):
                yield item
        except _SECURITY as exc:
            await refuse(context, exc)

    return make_streaming(stream, handler.request_deserializer, handler.response_serializer)


async def _watched(source: AsyncIterator[Any], gate: _Gate, context: _Ctx) -> AsyncIterator[Any]:
    """The items of ``source``, checking the credentials every ``recheck_seconds`` even
    while ``source`` waits (an idle live subscription)."""
    iterator = aiter(source)
    pending: asyncio.Future[Any] | None = None
    due = time.monotonic() + gate.recheck_seconds
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, due - time.monotonic()))
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                finally:
                    pending = None
                yield item
            if time.monotonic() >= due:
                await gate.recheck(context)
                due = time.monotonic() + gate.recheck_seconds
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


async def _watch_task(task: asyncio.Future[Any], gate: _Gate, context: _Ctx) -> Any:
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=gate.recheck_seconds)
            if task in done:
                return task.result()
            await gate.recheck(context)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
