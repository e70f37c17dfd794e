"""Live push: the log, a category, a stream, saga states and projection checkpoints as
Server-Sent Events (``GET /live/...``) and over one WebSocket (``/live/ws``).

Every event message carries its position as its id. A client that reconnects with that id
(SSE: the ``Last-Event-ID`` header, which browsers send by themselves; WebSocket: ``after``)
gets every matching event after it, none twice, in order: each connection follows the store
with a :class:`~chronik.subscriptions.Subscription`, which never passes an event that is not
readable yet. Without an id a connection starts at the head (new events only); ``after=0``
replays from the start.

Each connection reads its next page only once the previous one was written to the socket
(a slow client holds one page, not a growing buffer), sends a heartbeat when idle for
``heartbeat`` seconds (proxies keep the connection; the heartbeat carries the position the
feed has passed, so a filtered feed resumes from there), and stops its follower as soon as
the client goes away.

Projection checkpoints are not signalled by the store: one task per app reads them every
``checkpoint_interval`` seconds while someone listens, and each listener gets the latest
position of each checkpoint (a slow listener skips intermediate ones, never the last).

``GET /static/chronik-pending.js`` serves the browser helper that shows "pending" until a
projection has applied a position (see the comment at its top and docs/http.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from chronik.errors import AuthenticationFailed, ChronikError, StoreUnavailable
from chronik.events import RecordedEvent, category_of, validate_stream_id
from chronik.security import OPEN_ACCESS, Access, Operation
from chronik.server.api import MAX_POSITION, EventOut, Position, event_out
from chronik.server.routing import (
    RECHECK_KEY,
    ApiError,
    ErrorBody,
    ErrorDetail,
    access_of,
    check_encoding,
    decode_query,
    error_response,
)
from chronik.store.protocol import EventStore
from chronik.store.validation import check_read_all
from chronik.subscriptions import Backoff, Page, Subscription

__all__ = ["DEFAULT_HEARTBEAT", "CheckpointOut", "SagaEventOut", "live_routes"]

logger = logging.getLogger("chronik.server")

DEFAULT_HEARTBEAT = 15.0
"""Seconds of silence after which a connection gets a heartbeat."""

_CHECKPOINT = re.compile(r"^(?P<projection>.+):v(?P<version>[0-9]{1,9})$")
_POSITION = re.compile(r"^[0-9]{1,19}$")


# -- messages -------------------------------------------------------------------------------


class SagaEventOut(EventOut):
    """An event of a saga instance's stream ``saga_<saga>-<key>`` (its state is their fold)."""

    saga: str
    key: str


class CheckpointOut(msgspec.Struct):
    """A checkpoint that moved. ``projection`` and ``version`` are set when ``name`` is a
    projection's checkpoint (``<projection>:v<version>``); ``active`` when it is the
    version readers use (the one ``/projections/{name}/position`` waits for)."""

    name: str
    position: str
    projection: str | None
    version: int | None
    active: bool


class _WsMessage(msgspec.Struct):
    id: str | None
    kind: str
    data: msgspec.Raw


class _Subscribe(msgspec.Struct, tag_field="subscribe", forbid_unknown_fields=True):
    pass


class SubscribeEvents(_Subscribe, tag="events"):
    after: Position | None = None
    types: list[str] | None = None
    categories: list[str] | None = None


class SubscribeCategory(_Subscribe, tag="category"):
    category: str
    after: Position | None = None
    types: list[str] | None = None


class SubscribeStream(_Subscribe, tag="stream"):
    stream_id: str
    after: Position | None = None
    types: list[str] | None = None


class SubscribeSaga(_Subscribe, tag="saga"):
    saga: str
    after: Position | None = None


class SubscribeProjections(_Subscribe, tag="projections"):
    names: list[str] | None = None


Subscribe = (
    SubscribeEvents | SubscribeCategory | SubscribeStream | SubscribeSaga | SubscribeProjections
)


class EventsQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Position | None = None
    types: list[str] | None = None
    categories: list[str] | None = None


class FilterQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Position | None = None
    types: list[str] | None = None


class AfterQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Position | None = None


class NamesQuery(msgspec.Struct, forbid_unknown_fields=True):
    names: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a feed: its id (a position), its kind and its JSON data."""

    id: str | None
    kind: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """What a feed hands out at a time; ``cursor``: every matching event up to it was in
    this batch or an earlier one (``None``: the feed has no such position)."""

    messages: list[Message]
    cursor: str | None


Feed = AsyncGenerator[Batch, None]


# -- feeds ----------------------------------------------------------------------------------


def _event_message(kind: str) -> Callable[[RecordedEvent], Message]:
    encode = msgspec.json.encode
    if kind == "saga":

        def saga(e: RecordedEvent) -> Message:
            name, _, key = e.stream_id.partition("-")
            out = SagaEventOut(**msgspec.structs.asdict(event_out(e)), saga=name[5:], key=key)
            return Message(str(e.position), kind, encode(out))

        return saga
    return lambda e: Message(str(e.position), kind, encode(event_out(e)))


async def _events(
    store: EventStore,
    after: int,
    *,
    kind: str = "event",
    categories: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    stream_id: str | None = None,
    batch_size: int,
    poll_interval: float,
    visible: Callable[[str], bool] | None = None,
) -> Feed:
    """The matching events after ``after``, a page at a time, following the store (only
    those of categories ``visible`` accepts, when given)."""
    message = _event_message(kind)
    sub = Subscription(
        store, after=after, categories=categories, types=types, batch_size=batch_size,
        poll_interval=poll_interval,
    )  # fmt: skip
    pages = cast(AsyncGenerator[Page, None], sub.pages(follow=True))
    async with contextlib.aclosing(pages):
        async for page in pages:
            chosen: Iterable[RecordedEvent] = page.events
            if stream_id is not None:
                chosen = (e for e in page.events if e.stream_id == stream_id)
            if visible is not None:
                chosen = (e for e in chosen if visible(category_of(e.stream_id)))
            yield Batch([message(e) for e in chosen], str(page.caught_up_to))


class _Listener:
    """One connection's view of the checkpoints: the latest of each not yet sent."""

    def __init__(self, names: Sequence[str] | None) -> None:
        self.names = set(names) if names else None
        self.pending: dict[str, CheckpointOut] = {}
        self.ready = asyncio.Event()

    def offer(self, out: CheckpointOut) -> None:
        if self.names is None or out.name in self.names or out.projection in self.names:
            self.pending[out.name] = out
            self.ready.set()

    async def take(self) -> list[CheckpointOut]:
        await self.ready.wait()
        self.ready.clear()
        taken = list(self.pending.values())
        self.pending.clear()
        return taken


class _CheckpointWatch:
    """Reads the store's checkpoints every ``interval`` seconds while anyone listens (one
    task for all listeners) and offers each change to every listener."""

    def __init__(self, store: EventStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.listeners: set[_Listener] = set()
        self.current: dict[str, CheckpointOut] = {}
        self.active: dict[str, int | None] = {}
        self.task: asyncio.Task[None] | None = None
        self._active_read = -math.inf

    @contextlib.asynccontextmanager
    async def listen(self, names: Sequence[str] | None) -> AsyncIterator[_Listener]:
        listener = _Listener(names)
        for out in self.current.values():
            listener.offer(out)
        self.listeners.add(listener)
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="chronik-live-checkpoints")
        try:
            yield listener
        finally:
            self.listeners.discard(listener)
            if not self.listeners and self.task is not None:
                task, self.task = self.task, None
                self.current.clear()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _read(self) -> dict[str, CheckpointOut]:
        points = await self.store.checkpoints()
        parsed = {name: _CHECKPOINT.match(name) for name in points}
        projections = {m["projection"] for m in parsed.values() if m is not None}
        loop = asyncio.get_running_loop()
        if loop.time() - self._active_read >= 1.0 or not projections <= self.active.keys():
            # a blue/green switch moves no checkpoint: look up active versions each second
            self.active = {p: await self.store.get_active_version(p) for p in projections}
            self._active_read = loop.time()
        found = {}
        for name, position in points.items():
            match = parsed[name]
            projection, version, active = None, None, False
            if match is not None and self.active.get(match["projection"]) is not None:
                projection, version = match["projection"], int(match["version"])
                active = self.active[projection] == version
            found[name] = CheckpointOut(name, str(position), projection, version, active)
        return found

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                found = await self._read()
            except StoreUnavailable as exc:
                logger.warning("live checkpoints: %s; retrying in %.2fs", exc, backoff.delay)
                await backoff.sleep()
                continue
            backoff.reset()
            for name, out in found.items():
                if self.current.get(name) != out:
                    self.current[name] = out
                    for listener in self.listeners:
                        listener.offer(out)
            await asyncio.sleep(self.interval)


async def _checkpoints(watch: _CheckpointWatch, names: Sequence[str] | None) -> Feed:
    encode = msgspec.json.encode
    async with watch.listen(names) as listener:
        while True:
            changed = await listener.take()
            yield Batch([Message(c.position, "checkpoint", encode(c)) for c in changed], None)


# -- sending --------------------------------------------------------------------------------


class _Sink(Protocol):
    async def send(self, messages: list[Message]) -> None: ...

    async def heartbeat(self, cursor: str | None) -> None: ...


async def _next(feed: Feed) -> Batch | None:
    try:
        return await anext(feed)
    except StopAsyncIteration:
        return None


async def _forward(feed: Feed, sink: _Sink, heartbeat: float) -> None:
    """Send the feed's batches, reading the next only once the last was sent (back-pressure);
    a heartbeat after each ``heartbeat`` seconds of silence."""
    announced: str | None = None
    cursor: str | None = None
    async with contextlib.aclosing(feed):
        while True:
            reading = asyncio.create_task(_next(feed), name="chronik-live-read")
            try:
                while not (await asyncio.wait({reading}, timeout=heartbeat))[0]:
                    await sink.heartbeat(cursor if cursor != announced else None)
                    announced = cursor
            finally:
                if not reading.done():
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
            batch = reading.result()
            if batch is None:
                return
            if batch.messages:
                await sink.send(batch.messages)
                announced = batch.messages[-1].id
            cursor = batch.cursor


async def _pump(
    feed: Feed,
    sink: _Sink,
    heartbeat: float,
    gone: Callable[[], Coroutine[Any, Any, None]],
    stopping: asyncio.Event | None = None,
) -> None:
    """Forward ``feed`` to ``sink`` until it ends, ``gone`` returns (the client left) or
    the server is ``stopping`` (the stream then ends cleanly; clients reconnect)."""
    forwarding = asyncio.create_task(_forward(feed, sink, heartbeat), name="chronik-live")
    watching = asyncio.create_task(gone(), name="chronik-live-disconnect")
    tasks: set[asyncio.Task[Any]] = {forwarding, watching}
    if stopping is not None:
        tasks.add(asyncio.create_task(stopping.wait(), name="chronik-live-stopping"))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if forwarding.done() and not forwarding.cancelled():
        error = forwarding.exception()
        if error is not None and not isinstance(error, OSError | WebSocketDisconnect):
            logger.error("live feed failed", exc_info=error)  # not the client leaving: a bug


REAUTH_INTERVAL = 5.0
"""Seconds between two checks of a live connection's credentials: a revoked or expired
token's feed ends at the next check (the client's reconnection is then refused)."""


def _or_refused(
    gone: Callable[[], Coroutine[Any, Any, None]], scope: Scope
) -> Callable[[], Coroutine[Any, Any, None]]:
    """``gone``, or also returning once the connection's credentials are refused."""
    recheck = scope.get(RECHECK_KEY)
    if recheck is None:  # no credentials (no policy, or the anonymous role)
        return gone

    async def refused() -> None:
        while True:
            await asyncio.sleep(REAUTH_INTERVAL)
            try:
                await recheck()
            except AuthenticationFailed:
                return
            except ChronikError:  # the store is unavailable: no verdict, ask again later
                continue

    async def either() -> None:
        waiting = {asyncio.create_task(gone()), asyncio.create_task(refused())}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    return either


class _SseSink:
    def __init__(self, send: Send) -> None:
        self._send = send

    async def write(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def send(self, messages: list[Message]) -> None:
        await self.write(b"".join(_sse_frame(m) for m in messages))

    async def heartbeat(self, cursor: str | None) -> None:
        await self.write(b": heartbeat\n\n" if cursor is None else b"id: %b\n: heartbeat\n\n"
                         % cursor.encode())  # fmt: skip


def _sse_frame(m: Message) -> bytes:
    head = b"" if m.id is None else b"id: " + m.id.encode() + b"\n"
    return head + b"event: " + m.kind.encode() + b"\ndata: " + m.data + b"\n\n"


class EventStreamResponse(Response):
    """A ``text/event-stream`` response fed by a :data:`Feed` until the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self,
        feed: Feed,
        *,
        heartbeat: float,
        retry_ms: int,
        stopping: asyncio.Event | None = None,
    ) -> None:
        # no super().__init__: it would declare a Content-Length
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
        ]
        self.feed = feed
        self.heartbeat = heartbeat
        self.retry_ms = retry_ms
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        sink = _SseSink(send)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await sink.write(b"retry: %d\n\n" % self.retry_ms)
        await _pump(self.feed, sink, self.heartbeat, _or_refused(gone, scope), self.stopping)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _WsSink:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, messages: list[Message]) -> None:
        for m in messages:
            await _ws_send(self.websocket, _WsMessage(m.id, m.kind, msgspec.Raw(m.data)))

    async def heartbeat(self, cursor: str | None) -> None:
        await _ws_send(self.websocket, _WsMessage(cursor, "heartbeat", msgspec.Raw(b"null")))


async def _ws_send(websocket: WebSocket, message: _WsMessage) -> None:
    await websocket.send({"type": "websocket.send", "text": msgspec.json.encode(message).decode()})


# -- routes ---------------------------------------------------------------------------------


def _position(text: str, what: str, kind: str) -> int:
    if not _POSITION.match(text) or int(text) > MAX_POSITION:
        raise ApiError(400, kind, f"{what} {text[:40]!r} is not a position (digits, at most "
                       f"{MAX_POSITION})")  # fmt: skip
    return int(text)


def _after(sub: Subscribe) -> int | None:
    after: str | None = getattr(sub, "after", None)
    return None if after is None else _position(after, "after", "InvalidQuery")


class _Live:
    def __init__(
        self,
        store: EventStore,
        *,
        heartbeat: float,
        batch_size: int,
        poll_interval: float,
        checkpoint_interval: float,
        retry_ms: int,
        subscribe_timeout: float,
        stopping: asyncio.Event | None,
    ) -> None:
        self.store = store
        self.stopping = stopping
        self.heartbeat = heartbeat
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_ms = retry_ms
        self.subscribe_timeout = subscribe_timeout
        self.watch = _CheckpointWatch(store, checkpoint_interval)

    async def _start(self, after: int | None) -> int:
        return await self.store.head_position() if after is None else after

    def _events(self, after: int, **options: Any) -> Feed:
        return _events(self.store, after, batch_size=self.batch_size,
                       poll_interval=self.poll_interval, **options)  # fmt: skip

    def _saga_category(self, name: str) -> str:
        if not name or "-" in name:
            raise ApiError(400, "InvalidSaga", f"saga name {name!r}: not empty, without '-'")
        return f"saga_{name}"

    async def feed(self, sub: Subscribe, after: int | None, access: Access = OPEN_ACCESS) -> Feed:
        """The feed a subscription asks for (``after``: its resume position, parsed), if
        ``access`` may read it (:class:`~chronik.errors.AccessDenied` otherwise). Filter
        texts no store can be asked for (NUL, lone surrogates) are refused here, before the
        stream starts, not by the feed after it started."""
        names: list[str] | None = None
        if isinstance(sub, SubscribeCategory):
            names = [sub.category]
        elif isinstance(sub, SubscribeSaga):
            names = [sub.saga]
        elif isinstance(sub, SubscribeEvents):
            names = sub.categories
        elif isinstance(sub, SubscribeProjections):
            names = sub.names
        check_read_all(0, names, getattr(sub, "types", None), None)
        if isinstance(sub, SubscribeProjections):
            access.authorize(Operation.OPERATE, None)
            return _checkpoints(self.watch, sub.names)
        if isinstance(sub, SubscribeStream):
            validate_stream_id(sub.stream_id)
            access.authorize(Operation.READ, category_of(sub.stream_id))
            start = await self._start(after)
            return self._events(start, categories=[category_of(sub.stream_id)],
                                types=sub.types, stream_id=sub.stream_id)  # fmt: skip
        if isinstance(sub, SubscribeSaga):
            category = self._saga_category(sub.saga)
            access.authorize(Operation.READ, category)
            return self._events(await self._start(after), kind="saga", categories=[category])
        if isinstance(sub, SubscribeCategory):
            access.authorize(Operation.READ, sub.category)
            return self._events(await self._start(after), categories=[sub.category],
                                types=sub.types)  # fmt: skip
        readable = access.readable()
        categories = sub.categories
        for category in categories or ():
            access.authorize(Operation.READ, category)
        if categories is None and readable.exact:
            categories = list(readable.exact)
        return self._events(await self._start(after), categories=categories, types=sub.types,
                            visible=None if readable.everything else readable)  # fmt: skip

    # SSE

    async def _sse(self, request: Request, sub: Subscribe) -> Response:
        check_encoding(request)  # %FF in a stream id must not become U+FFFD
        after = _after(sub)
        last = request.headers.get("last-event-id", "").strip()
        if last:  # a reconnecting EventSource keeps the URL's ?after=: the header wins
            after = _position(last, "Last-Event-ID", "InvalidLastEventId")
        feed = await self.feed(sub, after, access_of(request))
        return EventStreamResponse(
            feed, heartbeat=self.heartbeat, retry_ms=self.retry_ms, stopping=self.stopping
        )

    async def events(self, request: Request) -> Response:
        try:
            q = decode_query(request, EventsQuery)
            return await self._sse(request, SubscribeEvents(q.after, q.types, q.categories))
        except Exception as exc:
            return error_response(exc)

    async def category(self, request: Request) -> Response:
        try:
            q = decode_query(request, FilterQuery)
            category = request.path_params["category"]
            return await self._sse(request, SubscribeCategory(category, q.after, q.types))
        except Exception as exc:
            return error_response(exc)

    async def stream(self, request: Request) -> Response:
        try:
            q = decode_query(request, FilterQuery)
            stream_id = request.path_params["stream_id"]
            return await self._sse(request, SubscribeStream(stream_id, q.after, q.types))
        except Exception as exc:
            return error_response(exc)

    async def saga(self, request: Request) -> Response:
        try:
            q = decode_query(request, AfterQuery)
            return await self._sse(request, SubscribeSaga(request.path_params["name"], q.after))
        except Exception as exc:
            return error_response(exc)

    async def projections(self, request: Request) -> Response:
        try:
            q = decode_query(request, NamesQuery)
            return await self._sse(request, SubscribeProjections(q.names))
        except Exception as exc:
            return error_response(exc)

    # WebSocket

    async def websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            first = await asyncio.wait_for(websocket.receive(), self.subscribe_timeout)
        except TimeoutError:
            await self._ws_refuse(websocket, "SubscribeTimeout", "no subscribe message in time")
            return
        if first["type"] == "websocket.disconnect":
            return
        try:
            raw = first.get("text") or first.get("bytes") or b""
            try:
                sub = msgspec.json.decode(raw, type=Subscribe)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, "InvalidSubscribe", f"subscribe message: {exc}") from None
            feed = await self.feed(sub, _after(sub), access_of(websocket))
        except Exception as exc:
            body = msgspec.Raw(bytes(error_response(exc).body))
            await _ws_send(websocket, _WsMessage(None, "error", body))
            with contextlib.suppress(Exception):
                await websocket.close(1008)
            return

        async def gone() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # nothing more is expected from the client after its subscribe

        await _pump(feed, _WsSink(websocket), self.heartbeat, _or_refused(gone, websocket.scope),
                    self.stopping)  # fmt: skip
        with contextlib.suppress(Exception):
            await websocket.close()

    async def _ws_refuse(self, websocket: WebSocket, type_: str, message: str) -> None:
        body = msgspec.json.encode(ErrorBody(ErrorDetail(type=type_, message=message)))
        with contextlib.suppress(Exception):
            await _ws_send(websocket, _WsMessage(None, "error", msgspec.Raw(body)))
            await websocket.close(1008)


def _static(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    content = resources.files("chronik.server").joinpath("static", name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(content, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=300"})  # fmt: skip

    return serve


def live_routes(
    store: EventStore,
    *,
    heartbeat: float = DEFAULT_HEARTBEAT,
    batch_size: int = 500,
    poll_interval: float = 0.5,
    checkpoint_interval: float = 0.1,
    retry_ms: int = 1000,
    subscribe_timeout: float = 30.0,
    stopping: asyncio.Event | None = None,
) -> list[BaseRoute]:
    """The live-push routes over ``store`` (SSE under ``/live/``, the ``/live/ws`` WebSocket,
    ``/static/chronik-pending.js``).

    Args:
        heartbeat: seconds of silence before a heartbeat is sent.
        batch_size: events read (and sent) at a time per connection.
        poll_interval: how long a follower waits for a change signal before it reads anyway.
        checkpoint_interval: how often checkpoints are read while someone listens.
        retry_ms: the reconnection delay SSE clients are told to use.
        subscribe_timeout: seconds a WebSocket client has to send its subscribe message.
        stopping: set when the server stops: every live stream ends at once (cleanly), so
            that the server does not wait for clients that never leave.
    """
    if not heartbeat > 0 or not checkpoint_interval > 0:
        raise ValueError("heartbeat and checkpoint_interval must be > 0 seconds")
    live = _Live(store, heartbeat=heartbeat, batch_size=batch_size, poll_interval=poll_interval,
                 checkpoint_interval=checkpoint_interval, retry_ms=retry_ms,
                 subscribe_timeout=subscribe_timeout, stopping=stopping)  # fmt: skip
    return [
        Route("/live/events", live.events, methods=["GET"], name="live_events"),
        Route("/live/categories/{category}", live.category, methods=["GET"],
              name="live_category"),
        Route("/live/streams/{stream_id:path}", live.stream, methods=["GET"], name="live_stream"),
        Route("/live/sagas/{name}", live.saga, methods=["GET"], name="live_saga"),
        Route("/live/projections", live.projections, methods=["GET"], name="live_projections"),
        WebSocketRoute("/live/ws", live.websocket, name="live_ws"),
        Route("/static/chronik-pending.js", _static("chronik-pending.js",
              "text/javascript; charset=utf-8"), methods=["GET"], name="chronik_pending_js"),
    ]  # fmt: skip
