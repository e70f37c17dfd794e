"""The JSON API's endpoints: their types (the OpenAPI document is made from them) and
handlers. Positions travel as strings of digits (PostgreSQL positions pass 2^53, which
JavaScript numbers cannot hold); versions are integers.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from chronik.app import App
from chronik.errors import ChronikError, UnknownEventType, WaitTimeout
from chronik.events import ANY, NO_STREAM, STREAM_EXISTS, NewEvent, RecordedEvent, category_of
from chronik.security import Operation
from chronik.server.routing import ApiError, Call, Endpoint, Reply, access_of
from chronik.store.capabilities import require, supports
from chronik.store.port import Fencing
from chronik.store.protocol import EventStore

__all__ = ["Api"]

Position = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$", description="a log position")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
ExpectedVersion = int | Literal["any", "no_stream", "stream_exists"]

_EXPECTED = {"any": ANY, "no_stream": NO_STREAM, "stream_exists": STREAM_EXISTS}
MAX_POSITION = 2**63 - 1


# -- types ----------------------------------------------------------------------------------


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """An event to append. ``event_id`` makes a retry idempotent: give it, and a retry of
    the same request returns the first one's result instead of appending twice."""

    type: str
    data: dict[str, Any] = {}
    metadata: dict[str, Any] | None = None
    event_id: uuid.UUID | None = None
    schema_version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] = 1


class AppendBody(msgspec.Struct, forbid_unknown_fields=True):
    """``expected_version``: an int (the stream's last version), ``"no_stream"``,
    ``"stream_exists"`` or ``"any"`` (default; the ``Expected-Version`` header also works)."""

    events: Annotated[list[EventIn], msgspec.Meta(max_length=10_000)]
    expected_version: ExpectedVersion | None = None


class AppendResponse(msgspec.Struct):
    stream_id: str
    position: str
    """The position of the append's last event."""
    version: int
    """The stream's version after the append."""


class EventOut(msgspec.Struct):
    event_id: str
    stream_id: str
    version: int
    position: str
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime


class StreamQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_version: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    limit: Limit = 100
    direction: Literal["forward", "backward"] = "forward"


class StreamPage(msgspec.Struct):
    stream_id: str
    events: list[EventOut]
    next_version: int | None
    """Ask again with ``from_version`` set to this for the next page (``null``: no more)."""


class LogQuery(msgspec.Struct, forbid_unknown_fields=True):
    after: Position = "0"
    limit: Limit = 100
    types: list[str] | None = None
    categories: list[str] | None = None


class LogPage(msgspec.Struct):
    events: list[EventOut]
    next_after: str
    """Ask again with ``after`` set to this: every matching event up to it was returned."""
    more: bool
    """True when more events are known to be there already."""


class StreamsQuery(msgspec.Struct, forbid_unknown_fields=True):
    category: str | None = None
    limit: Limit = 100


class StreamOut(msgspec.Struct):
    stream_id: str
    version: int
    last_position: str


class StreamList(msgspec.Struct):
    streams: list[StreamOut]


class TraceQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = 1000


class TraceNodeOut(msgspec.Struct):
    event: EventOut
    children: list[TraceNodeOut]
    orphan: bool


class TraceOut(msgspec.Struct):
    correlation_id: str
    events: int
    roots: list[TraceNodeOut]


class StateQuery(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    at: datetime | None = None
    """A time: the state after the last event recorded at or before it."""


class Change(msgspec.Struct):
    path: str
    kind: str
    before: Any = None
    after: Any = None


class Step(msgspec.Struct):
    version: int
    position: str
    type: str
    event_id: str
    recorded_at: datetime
    data: Any
    state: Any
    changes: list[Change]


class StateOut(msgspec.Struct):
    stream_id: str
    version: int
    """The version replayed up to (-1: none)."""
    stream_version: int
    state: Any
    steps: list[Step]


class StatsOut(msgspec.Struct):
    events: int
    streams: int
    head_position: str
    categories: dict[str, int]
    size_bytes: int | None


class Health(msgspec.Struct):
    status: Literal["ok", "fenced"]
    """``fenced``: the store answers reads, but a migration moved its writes to ``moved_to``."""
    head_position: str
    moved_to: str | None = None
    """where writes go now (password hidden), when ``status`` is ``fenced``"""


class ProjectionWaitQuery(msgspec.Struct, forbid_unknown_fields=True):
    min_position: Position
    wait: Annotated[float, msgspec.Meta(ge=0, le=30)] = 0.0
    """Seconds to wait for the projection before answering 202 (pending)."""


class ProjectionPosition(msgspec.Struct):
    projection: str
    min_position: str
    applied: bool
    """True (200): the projection has applied ``min_position``; False (202): pending."""


# -- handlers -------------------------------------------------------------------------------


def event_out(e: RecordedEvent) -> EventOut:
    return EventOut(
        event_id=str(e.event_id),
        stream_id=e.stream_id,
        version=e.version,
        position=str(e.position),
        type=e.type,
        schema_version=e.schema_version,
        data=e.data,
        metadata=e.metadata,
        recorded_at=e.recorded_at,
    )


def _position(text: str, name: str) -> int:
    value = int(text)
    if value > MAX_POSITION:
        raise ApiError(400, "InvalidQuery", f"{name} {text} is beyond the largest position")
    return value


class Api:
    """The endpoints over one store (and optionally an application's registry and
    deciders, for unknown-type checks and state replays)."""

    def __init__(self, store: EventStore, app: App | None = None) -> None:
        self.store = store
        self.app = app

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/streams/{stream_id:path}", self.append, "Append events to a stream",
                     {201: AppendResponse}, body=AppendBody, errors=(400, 409, 413, 415, 422),
                     headers={"Expected-Version": "the expected version, if not in the body"}),
            Endpoint("GET", "/state/{stream_id:path}", self.state,
                     "A stream's state at a version or time, with each event's changes",
                     {200: StateOut}, query=StateQuery, errors=(400, 404, 422), tag="debugging"),
            Endpoint("GET", "/streams/{stream_id:path}", self.read_stream,
                     "Read one stream, forwards or backwards, a page at a time",
                     {200: StreamPage}, query=StreamQuery, errors=(400, 404)),
            Endpoint("GET", "/streams", self.list_streams, "List streams", {200: StreamList},
                     query=StreamsQuery),
            Endpoint("GET", "/events", self.read_log,
                     "Read the global log after a position (filters: types, categories)",
                     {200: LogPage}, query=LogQuery),
            Endpoint("GET", "/correlations/{correlation_id}", self.trace,
                     "The causal trace of a correlation id", {200: TraceOut}, query=TraceQuery,
                     tag="debugging"),
            Endpoint("GET", "/projections/{name}/position", self.projection_position,
                     "Has a projection applied a position? Waits up to `wait` seconds; 202 "
                     "while pending (read-your-writes, from any process)",
                     {200: ProjectionPosition, 202: ProjectionPosition},
                     query=ProjectionWaitQuery, errors=(400, 404), tag="projections"),
            Endpoint("GET", "/stats", self.stats, "Counts of events and streams",
                     {200: StatsOut}, tag="operations"),
            Endpoint("GET", "/health", self.health, "Liveness: the store answers",
                     {200: Health}, tag="operations"),
        ]  # fmt: skip

    async def append(self, call: Call[None, AppendBody]) -> Reply:
        stream_id = call.path["stream_id"]
        access_of(call.request).authorize(Operation.APPEND, category_of(stream_id))
        body = call.body
        expected: ExpectedVersion | None = body.expected_version
        header = call.request.headers.get("expected-version")
        if header is not None:
            parsed = _parse_expected(header)
            if expected is not None and expected != parsed:
                message = f"Expected-Version header {header!r} disagrees with the body"
                raise ApiError(400, "InvalidExpectedVersion", message)
            expected = parsed
        if expected is None:
            expected_version = int(ANY)
        elif isinstance(expected, str):
            expected_version = int(_EXPECTED[expected])
        else:
            expected_version = expected
        registry = self.app.registry if self.app is not None else None
        events = []
        for index, ev in enumerate(body.events):
            if registry is not None and registry.types() and ev.type not in registry:
                raise UnknownEventType(f"events[{index}]: unknown event type {ev.type!r}")
            kwargs: dict[str, Any] = {}
            if ev.event_id is not None:
                kwargs["event_id"] = ev.event_id
            events.append(NewEvent(ev.type, ev.data, ev.metadata, schema_version=ev.schema_version,
                                   **kwargs))  # fmt: skip
        result = await self.store.append(stream_id, events, expected_version=expected_version)
        body_out = AppendResponse(stream_id, str(result.position), result.version)
        location = "/streams/" + urllib.parse.quote(stream_id, safe="")
        return Reply(body_out, 201, {"Location": location})

    async def read_stream(self, call: Call[StreamQuery, None]) -> StreamPage:
        stream_id = call.path["stream_id"]
        access_of(call.request).authorize(Operation.READ, category_of(stream_id))
        q = call.query
        backwards = q.direction == "backward"
        events = [
            e
            async for e in self.store.read_stream(
                stream_id, from_version=q.from_version, limit=q.limit + 1, backwards=backwards
            )
        ]
        more = len(events) > q.limit
        events = events[: q.limit]
        next_version = None
        if more and events:
            next_version = events[-1].version - 1 if backwards else events[-1].version + 1
        return StreamPage(stream_id, [event_out(e) for e in events], next_version)

    async def list_streams(self, call: Call[StreamsQuery, None]) -> StreamList:
        q = call.query
        readable = access_of(call.request).readable()
        if readable.everything:
            found = self.store.streams(category=q.category, limit=q.limit)
        elif q.category is not None and not readable(q.category):
            return StreamList([])
        elif q.category is None and readable.exact:  # a few named categories: ask each
            found_each = [
                s for category in readable.exact
                async for s in self.store.streams(category=category, limit=q.limit)
            ]  # fmt: skip
            found_each.sort(key=lambda s: s.stream_id)
            return StreamList([StreamOut(s.stream_id, s.version, str(s.last_position))
                               for s in found_each[: q.limit]])  # fmt: skip
        else:  # only readable categories: filter, and page until the limit is reached
            found = self.store.streams(category=q.category)
        out: list[StreamOut] = []
        async for s in found:
            if readable(category_of(s.stream_id)):
                out.append(StreamOut(s.stream_id, s.version, str(s.last_position)))
                if len(out) >= q.limit:
                    break
        return StreamList(out)

    async def read_log(self, call: Call[LogQuery, None]) -> LogPage:
        q = call.query
        access = access_of(call.request)
        readable = access.readable()
        categories = q.categories
        for category in categories or ():  # asking for a forbidden category is refused
            access.authorize(Operation.READ, category)
        if categories is None and readable.exact:
            categories = list(readable.exact)  # the store filters (none: an empty page)
        events, caught_up_to, more = await self.store.read_page(
            after=_position(q.after, "after"), limit=q.limit, categories=categories,
            types=q.types,
        )  # fmt: skip
        shown = [event_out(e) for e in events if readable(category_of(e.stream_id))]
        return LogPage(shown, str(caught_up_to), more)

    async def trace(self, call: Call[TraceQuery, None]) -> TraceOut:
        from chronik.debugging import trace

        found = await trace(self.store, call.path["correlation_id"], limit=call.query.limit)
        readable = access_of(call.request).readable()

        def nodes(n: Any, orphan: bool) -> list[TraceNodeOut]:
            # an unreadable event is left out; its readable children become orphans
            if readable(category_of(n.event.stream_id)):
                children = [c for child in n.children for c in nodes(child, False)]
                return [TraceNodeOut(event_out(n.event), children, n.orphan or orphan)]
            return [c for child in n.children for c in nodes(child, True)]

        roots = [out for root in found.roots for out in nodes(root, False)]
        shown = sum(1 for e in found.events if readable(category_of(e.stream_id)))
        return TraceOut(found.correlation_id, shown, roots)

    async def state(self, call: Call[StateQuery, None]) -> StateOut:
        from chronik.debugging import replay

        if self.app is None or not self.app.deciders:
            raise ApiError(422, "NoApp", "state replays need the application's deciders: "
                           "start the server with --app MODULE:OBJECT")  # fmt: skip
        stream_id = call.path["stream_id"]
        access_of(call.request).authorize(Operation.READ, category_of(stream_id))
        q = call.query
        decider = self.app.decider_for(stream_id)
        done = await replay(self.store, stream_id, decider, registry=self.app.registry,
                            to_version=q.version, as_of=q.at)  # fmt: skip
        plain = done.to_dict()
        steps = [
            Step(s["version"], str(s["position"]), s["type"], s["event_id"],
                 datetime.fromisoformat(s["recorded_at"]), s["data"], s["state"],
                 [Change(**c) for c in s["changes"]])
            for s in plain["steps"]
        ]  # fmt: skip
        return StateOut(stream_id, done.version, done.stream_version, plain["final_state"], steps)

    async def projection_position(self, call: Call[ProjectionWaitQuery, None]) -> Reply:
        from chronik.projections.pending import wait_for_projection

        name = call.path["name"]
        q = call.query
        position = _position(q.min_position, "min_position")
        try:
            await wait_for_projection(self.store, name, position, timeout=q.wait)
        except WaitTimeout:
            return Reply(ProjectionPosition(name, q.min_position, False), 202,
                         {"Retry-After": "1"})  # fmt: skip
        except ChronikError as exc:
            if "no active version" in str(exc):
                raise ApiError(404, "ProjectionNotFound", str(exc)) from None
            raise
        return Reply(ProjectionPosition(name, q.min_position, True), 200)

    async def stats(self, call: Call[None, None]) -> StatsOut:
        access_of(call.request).authorize(Operation.OPERATE, None)
        s = await self.store.stats()
        readable = access_of(call.request).readable()
        if readable.everything:
            return StatsOut(s.events, s.streams, str(s.head_position), dict(s.categories),
                            s.size_bytes)  # fmt: skip
        categories = {c: n for c, n in s.categories.items() if readable(c)}
        streams = 0
        for category in categories:
            streams += sum([1 async for _ in self.store.streams(category=category)])
        return StatsOut(sum(categories.values()), streams, str(s.head_position), categories,
                        None)  # fmt: skip

    async def health(self, call: Call[None, None]) -> Health:
        head = await asyncio.wait_for(self.store.head_position(), 5.0)
        if supports(self.store, Fencing):
            fence = await asyncio.wait_for(require(self.store, Fencing).fence_state(), 5.0)
            if fence is not None:
                return Health("fenced", str(head), fence.moved_to)
        return Health("ok", str(head))


def _parse_expected(text: str) -> ExpectedVersion:
    value = text.strip().lower()
    if value in _EXPECTED:
        return value  # type: ignore[return-value]
    if value.isdigit() and len(value) <= 10:
        return int(value)
    message = f"Expected-Version {text!r}: an int >= 0, no_stream, stream_exists or any"
    raise ApiError(400, "InvalidExpectedVersion", message)
