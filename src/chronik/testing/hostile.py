"""The contract for bad input: what a store does with anything a caller may hand it.

Mixed into :class:`~chronik.testing.contract.EventLogContract` and
:class:`~chronik.testing.contract.InspectableContract`, so every backend runs it unchanged:

- :class:`HostileAppendContract` — each rule of docs/limits.md once by example, then
  hypothesis: strings with control characters and lone surrogates, NaN and Infinity, deep
  and wide JSON, huge integers, odd ids, types, schema versions and metadata. Either the
  append succeeds and reads back equal, or it raises a :class:`~chronik.errors.ChronikError`
  and the store is unchanged; and a memory store (the reference) accepts and refuses the
  same appends and reads back the same.
- :class:`HostileReadContract` and :class:`HostileInspectionContract` — reads with
  arguments of the wrong type or out of range answer with an
  :class:`~chronik.errors.InvalidArgument` or the result the reference gives.

Needs hypothesis, besides pytest and an asyncio plugin. Each property runs 60 examples;
``CHRONIK_HOSTILE_EXAMPLES=2000`` runs more (a nightly run).
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chronik.context import context
from chronik.errors import (
    ChronikError,
    ConcurrencyError,
    InvalidArgument,
    InvalidEvent,
    InvalidExpectedVersion,
    InvalidStreamId,
    PayloadTooLarge,
)
from chronik.events import ANY, MAX_POSITION, NO_STREAM, STREAM_EXISTS, NewEvent, RecordedEvent
from chronik.store import connect
from chronik.store.port import EventLog, EventStore
from chronik.store.validation import DEFAULT_MAX_JSON_DEPTH

__all__ = ["HostileAppendContract", "HostileInspectionContract", "HostileReadContract"]

PROPERTY = settings(
    max_examples=int(os.environ.get("CHRONIK_HOSTILE_EXAMPLES", "60")),  # more for a nightly run
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one store for all examples, on purpose
        HealthCheck.differing_executors,  # one test, run by each backend's subclass
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


T = TypeVar("T")


async def _collect(it: AsyncIterable[T]) -> list[T]:
    return [e async for e in it]


async def _state(log: Any, *streams: Any) -> list[int | None]:
    """What must not move when an append is refused: the versions of the streams it names.

    An append writes to one stream only. (Not the head: on PostgreSQL it moves when other
    transactions of the cluster end, see docs/ordering.md.)
    """
    versions = []
    for stream_id in streams:
        try:
            versions.append(await log.stream_version(stream_id))
        except InvalidStreamId:  # nothing is ever stored under it
            versions.append(None)
    return versions


def _nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    value: Any = leaf
    for level in range(depth - 1):
        value = {"a": value} if level % 2 else [value]
    return {"a": value}


def _json_bytes(value: Any) -> bytes:
    try:
        return msgspec.json.encode(value)
    except (TypeError, ValueError):  # a lone surrogate
        return b'{"a": "\\ud800"}'


# -- hostile values ------------------------------------------------------------------------

_NASTY = ["\x00", "\x01", "\t", "\n", "\x7f", "\u2028", "\ud800", "\udfff", "\ufeff", "\u200d",
          "é", "🎉", '"', "\\", "\\u0000", "null", "NaN", " "]  # fmt: skip
text = st.one_of(
    st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), max_size=12),
    st.lists(st.sampled_from(_NASTY), max_size=4).map("".join),
    st.sampled_from(["", "x" * 255, "x" * 256, "é" * 128, "order-1"]),
)
"""Strings with control characters, lone surrogates, escapes, and at and over 255 bytes."""
floats = st.floats() | st.sampled_from(
    [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
)
integers = st.integers() | st.sampled_from(
    [2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**40]
)


def _json(keys: st.SearchStrategy[str], leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
        max_leaves=12,
    )


def _objects(
    keys: st.SearchStrategy[str], leaves: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(keys, _json(keys, leaves), max_size=5),
        st.builds(_nested, st.integers(1, DEFAULT_MAX_JSON_DEPTH + 3), leaves),  # to the limit
        st.integers(0, 400).map(lambda n: {f"k{i}": i for i in range(n)}),  # wide
    )


# what a store keeps: control characters (NUL too) in data, big numbers, unicode, -0.0
fair_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["\x00", "\\u0000", "null", "🎉", '"\\', "x" * 300]
)
fair_scalars = st.one_of(
    st.none(), st.booleans(), integers, st.floats(allow_nan=False, allow_infinity=False), fair_text
)
fair_objects = _objects(fair_text, fair_scalars)
# what a store refuses, among what it keeps: NaN, Infinity, lone surrogates, too deep
hostile_scalars = st.one_of(st.none(), st.booleans(), integers, floats, text)
hostile_objects = _objects(text, hostile_scalars)
_ODD_JSON = [b"[1]", b"null", b"{}", b' {"a": 1} ', b'{"a":NaN}', b'{"a":1e999}',
             b'{"a":"\\ud800"}', b'{"a":"\\u0000"}', b'\xff{"a":1}', b'{"a":1} x',
             b'{"a":1,"a":2}', b"{" * 600]  # fmt: skip
raw_json = st.one_of(
    hostile_objects.map(_json_bytes),  # NaN written as null: valid JSON bytes
    st.binary(max_size=16),
    st.sampled_from(_ODD_JSON),
)
fair_metadata = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "correlation_id": st.uuids() | st.sampled_from(["c-1", "Zoë", "x" * 255]),
        "causation_id": st.none() | st.uuids().map(str),
        "actor": st.sampled_from(["alice", "bob@example.org"]),
        "tenant": fair_scalars.filter(lambda v: not (isinstance(v, str) and "\x00" in v)),
        "nested": _json(st.sampled_from(["a", "b"]), st.integers() | st.none()),
    },
)
hostile_metadata = st.dictionaries(
    st.sampled_from(["correlation_id", "causation_id", "actor", "traceparent", "tenant"]) | text,
    st.one_of(hostile_scalars, st.uuids(), _json(text, hostile_scalars)),
    min_size=1,
    max_size=3,
)
HOSTILE = {
    "type": text | integers | st.none(),
    "data": hostile_objects | raw_json | st.sampled_from([[1], "x", None]),
    "metadata": hostile_metadata | st.sampled_from([["x"], "x", 5]),
    "event_id": st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: u.hex),
        st.sampled_from(["nope", "", 42, None, b"\x00" * 16]),
    ),
    "schema_version": st.sampled_from([0, -1, 2**31 - 1, 2**31, True, "1", None, 1.0]),
}
"""For each field of a NewEvent, values a store must refuse or normalise."""


@st.composite
def new_events(draw: st.DrawFn) -> NewEvent:
    """A fair event, or (half the time) one with one field hostile."""
    fields: dict[str, Any] = {
        "type": draw(st.sampled_from(["Happened", "Order Placed", "Zoë", "🎉", "T" * 255])),
        "data": draw(fair_objects | fair_objects.map(_json_bytes)),
        "metadata": draw(fair_metadata),
        "event_id": uuid.uuid4(),  # fresh: an id stored before is a case of its own
        "schema_version": draw(st.integers(1, 3) | st.just(2**31 - 1)),
    }
    if draw(st.booleans()):
        field = draw(st.sampled_from(sorted(HOSTILE)))
        fields[field] = draw(HOSTILE[field])
    return NewEvent(**fields)


expected_versions = st.sampled_from(
    [ANY] * 4 + [NO_STREAM] * 3 + [STREAM_EXISTS, 0, 2**31 - 1, 2**31, 2**63, -3, True, "0", None]
)


@st.composite
def appends(draw: st.DrawFn) -> tuple[Any, Any, Any]:
    """One append's arguments: mostly fair events to a fresh stream, some of them hostile;
    now and then the stream id, the expected version or the list itself is."""
    events: Any = draw(st.lists(new_events(), max_size=3))
    if draw(st.integers(0, 9)) == 9:  # not 0: hypothesis starts from the smallest draws
        events = draw(st.sampled_from(["events", None, NewEvent("Happened"), (NewEvent("X"),)]))
    stream: Any = "fresh"
    if draw(st.integers(0, 9)) == 9:
        stream = draw(st.sampled_from(["", "$all", "a\x00b", "x" * 256, 7, "order-1"]))
    return events, draw(expected_versions), stream


def _expected_data(data: Any) -> Any:
    return msgspec.json.decode(data) if isinstance(data, bytes) else data


def _expected_metadata(given: Any) -> dict[str, Any]:
    merged = {"correlation_id": "hostile-1", **(given or {})}
    return msgspec.json.decode(msgspec.json.encode(merged))  # type: ignore[no-any-return]


def _metadata(stored: RecordedEvent, given: Any) -> dict[str, Any]:
    """The stored metadata, less the traceparent of the append's span (when tracing is
    configured) unless the event gave one of its own."""
    if given and "traceparent" in given:
        return stored.metadata
    return {k: v for k, v in stored.metadata.items() if k != "traceparent"}


def _summary(stored: RecordedEvent, given: Any) -> tuple[Any, ...]:
    return (stored.event_id, stored.stream_id, stored.version, stored.type,
            stored.schema_version, stored.data, _metadata(stored, given))  # fmt: skip


class _WithReference:
    @pytest.fixture
    async def reference(self, store: EventLog) -> AsyncIterator[EventStore]:
        """A memory store, the reference implementation, with the store's size limit (and
        the default depth limit): fed the same input, it must answer the same."""
        async with await connect("memory://", max_event_bytes=store.max_event_bytes) as ref:
            yield ref


class HostileAppendContract(_WithReference):
    """Appends of anything: each limit by example, then generated hostile input."""

    async def test_nan_and_infinity_are_refused_not_stored_as_null(self, store: EventLog) -> None:
        before = await _state(store, "s-1", "s-2")
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(InvalidEvent, match="NaN or Infinity") as info:
                await store.append("s-1", [NewEvent("X", {"prices": [1.0, {"p": bad}]})])
            assert info.value.field == "data"
            with pytest.raises(InvalidEvent) as info:
                await store.append("s-1", [NewEvent("X", {}, metadata={"score": bad})])
            assert info.value.field == "metadata"
        assert await _state(store, "s-1", "s-2") == before
        await store.append("s-1", [NewEvent("X", {"none": None, "zero": -0.0, "big": 1e308})])
        (got,) = await _collect(store.read_stream("s-1"))
        assert got.data == {"none": None, "zero": 0.0, "big": 1e308}

    async def test_an_event_id_is_a_uuid_with_one_spelling(self, store: EventLog) -> None:
        some = uuid.uuid4()
        first = await store.append("s-1", [NewEvent("X", {}, event_id=str(some).upper())])  # type: ignore[arg-type]
        again = await store.append("s-1", [NewEvent("X", {}, event_id=str(some))])  # type: ignore[arg-type]
        assert again == first  # the same id: an idempotent retry, not a second event
        (got,) = await _collect(store.read_stream("s-1"))
        assert got.event_id == some and isinstance(got.event_id, uuid.UUID)
        before = await _state(store, "s-1", "s-2")
        for bad in ("nope", "", 42, None):
            with pytest.raises(InvalidEvent) as info:
                await store.append("s-2", [NewEvent("X", {}, event_id=bad)])  # type: ignore[arg-type]
            assert info.value.field == "event_id"
        assert await _state(store, "s-1", "s-2") == before
        assert got.to_dict()["event_id"] == str(some)

    async def test_bytes_data_must_be_one_json_object(self, store: EventLog) -> None:
        before = await _state(store, "s-1", "s-2")
        bad_bytes = [b"not json", b"\xff\xfe{}", b'{"a":"\xff"}', b"[1, 2]", b"null", b'{"a":NaN}',
                     b'{"a":1e999}', b'{"a":"\\ud800"}', b'{"a":1} trailing', b""]  # fmt: skip
        for bad in bad_bytes:
            with pytest.raises(InvalidEvent) as info:
                await store.append("s-1", [NewEvent("X", bad)])
            assert (info.value.field, info.value.index) == ("data", 0), bad
        assert await _state(store, "s-1", "s-2") == before
        await store.append("s-1", [NewEvent("X", b' {"a": [1, "\\u0000"]} ')])
        (got,) = await _collect(store.read_stream("s-1"))
        assert got.data == {"a": [1, "\x00"]}  # NUL in data is kept (not in metadata)

    async def test_the_type_is_checked_and_counted_in_the_size(self, store: EventLog) -> None:
        before = await _state(store, "s-1", "s-2")
        for bad in ("", "a\x00b", "tab\t", "line\u2028", "\ud800", "x" * 256, "é" * 128, 7, None):
            with pytest.raises(InvalidEvent) as info:
                await store.append("s-1", [NewEvent(bad, {})])  # type: ignore[arg-type]
            assert info.value.field == "type"
        with pytest.raises(InvalidEvent, match="over the limit of 255"):
            await store.append("s-1", [NewEvent("T" * 2 * 1024 * 1024, {})])
        assert await _state(store, "s-1", "s-2") == before
        await store.append("s-0", [NewEvent("X", {})])
        meta = len((await _collect(store.read_stream("s-0")))[0].raw_metadata)
        limit = store.max_event_bytes
        with context(correlation_id="c" * 36):
            fill = limit - meta - len(b'{"b":""}') - 200  # fits with a short type ...
            await store.append("s-2", [NewEvent("T", {"b": "y" * fill})])
            with pytest.raises(PayloadTooLarge) as too_large:  # ... not with a long one
                await store.append("s-3", [NewEvent("T" * 250, {"b": "y" * fill})])
        assert too_large.value.size > limit
        assert await store.stream_version("s-3") is None

    async def test_deep_json_is_an_invalid_event_not_a_recursion_error(
        self, store: EventLog
    ) -> None:
        depth = DEFAULT_MAX_JSON_DEPTH
        await store.append("s-1", [NewEvent("X", _nested(depth))])
        before = await _state(store, "s-1", "s-2")
        for bad in (_nested(depth + 1), _nested(1000), _nested(100_000)):
            with pytest.raises(InvalidEvent, match="deep") as info:
                await store.append("s-1", [NewEvent("X", bad)])
            assert info.value.field == "data"
        for raw in (msgspec.json.encode(_nested(depth + 1)), b"[" * 10_000):
            with pytest.raises(InvalidEvent):
                await store.append("s-1", [NewEvent("X", b'{"a":' + raw + b"}")])
        with pytest.raises(InvalidEvent, match="deep") as info:
            await store.append("s-1", [NewEvent("X", {}, metadata=_nested(depth + 1))])
        assert info.value.field == "metadata"
        assert await _state(store, "s-1", "s-2") == before
        (got,) = await _collect(store.read_stream("s-1"))
        assert got.data == _nested(depth)

    async def test_versions_out_of_range_are_refused(self, store: EventLog) -> None:
        for bad in (2**31, 2**63, 2**70):
            with pytest.raises(InvalidExpectedVersion, match="largest version"):
                await store.append("s-1", [NewEvent("X", {})], expected_version=bad)
        with pytest.raises(ConcurrencyError):  # in range: a version the stream is not at
            await store.append("s-1", [NewEvent("X", {})], expected_version=2**31 - 1)
        for odd in (0, -1, 2**31, True, "1", None, 1.0):
            with pytest.raises(InvalidEvent) as info:
                await store.append("s-1", [NewEvent("X", {}, schema_version=odd)])  # type: ignore[arg-type]
            assert info.value.field == "schema_version"
        assert await _state(store, "s-1", "s-2") == [None, None]
        await store.append("s-1", [NewEvent("X", {}, schema_version=2**31 - 1)])
        (got,) = await _collect(store.read_stream("s-1"))
        assert got.schema_version == 2**31 - 1

    async def test_reserved_metadata_has_its_types(self, store: EventLog) -> None:
        bad_values = {
            "correlation_id": [123, 1.5, ["x"], "", "a\x00", "a\nb", "x" * 256],
            "causation_id": [7, {"id": 1}],
            "actor": [uuid.uuid4(), 3],
            "traceparent": [b"00-", 1],
        }
        for key, values in bad_values.items():
            for bad in values:
                with pytest.raises(InvalidEvent) as info:
                    await store.append("s-1", [NewEvent("X", {}, metadata={key: bad})])
                assert info.value.field == f"metadata.{key}"
        with pytest.raises(InvalidEvent, match="NUL"):
            await store.append("s-1", [NewEvent("X", {}, metadata={"note": "a\x00b"})])
        with context(actor=42), pytest.raises(InvalidEvent, match=r"chronik\.context"):  # type: ignore[arg-type]
            await store.append("s-1", [NewEvent("X", {})])
        with context(correlation_id="a\x00"), pytest.raises(InvalidEvent):
            await store.append("s-1", [NewEvent("X", {})])
        assert await _state(store, "s-1", "s-2") == [None, None]
        corr = uuid.uuid4()
        await store.append("s-1", [NewEvent("X", {}, metadata={"correlation_id": corr,
                                                              "causation_id": None})])  # fmt: skip
        (got,) = await _collect(store.read_stream("s-1"))
        assert got.correlation_id == str(corr) and got.metadata["causation_id"] is None

    @PROPERTY
    @given(attempt=appends())
    async def test_hostile_appends_round_trip_or_change_nothing(
        self, store: EventLog, attempt: tuple[Any, Any, Any]
    ) -> None:
        events, expected, stream = attempt
        stream_id = f"p-{uuid.uuid4().hex}" if stream == "fresh" else stream
        before = await _state(store, stream_id)
        try:
            with context(correlation_id="hostile-1"):
                result = await store.append(stream_id, events, expected_version=expected)
        except ChronikError as exc:
            event(type(exc).__name__)
            assert await _state(store, stream_id) == before
            return
        event("appended")
        if not events:
            assert await _state(store, stream_id) == before
            return
        first = result.version - len(events) + 1
        got = await _collect(store.read_stream(stream_id, from_version=first))
        assert [e.version for e in got] == list(range(first, result.version + 1))
        assert got[-1].position == result.position
        for new, stored in zip(events, got, strict=True):
            assert stored.event_id == uuid.UUID(str(new.event_id))
            assert (stored.type, stored.schema_version) == (new.type, new.schema_version)
            assert stored.data == _expected_data(new.data)
            assert _metadata(stored, new.metadata) == _expected_metadata(new.metadata)
        assert await _state(store, stream_id) == [result.version]

    @PROPERTY
    @given(attempt=appends())
    async def test_hostile_appends_match_the_memory_reference(
        self, store: EventLog, reference: EventStore, attempt: tuple[Any, Any, Any]
    ) -> None:
        events, expected, stream = attempt
        stream_id = f"p-{uuid.uuid4().hex}" if stream == "fresh" else stream
        outcomes: list[Any] = []
        for target in (reference, store):
            try:
                with context(correlation_id="hostile-1"):
                    await target.append(stream_id, events, expected_version=expected)
            except ChronikError as exc:
                outcomes.append(type(exc).__name__)
            else:
                stored = await _collect(target.read_stream(stream_id)) if events else []
                given = [e.metadata for e in events]
                outcomes.append([_summary(e, g) for e, g in zip(stored, given, strict=True)])
        assert outcomes[1] == outcomes[0], (attempt, outcomes)


# -- reads ---------------------------------------------------------------------------------

_ODD = [True, "1", 1.5, b"1"]
positions = st.one_of(
    st.tuples(st.just("nth"), st.integers(0, 7)),  # the position of the n-th event
    st.tuples(st.just("raw"), st.sampled_from(
        [0, -1, -(2**70), 2**62, MAX_POSITION, 2**63, 2**70, *_ODD, None])),
)  # fmt: skip
limits = st.none() | st.integers(-3, 8) | st.sampled_from([2**31, 2**63, 2**70, -(2**70), *_ODD])
versions = (
    st.none()
    | st.integers(-3, 5)
    | st.sampled_from([2**31 - 1, 2**31, 2**63, 2**70, -(2**70), *_ODD])
)
names = st.sampled_from(["r", "q", "", "r-1", "x\x00", "\ud800", 5])
filters = st.none() | st.lists(names, max_size=3) | st.sampled_from(["r", 5, b"r"])
streams = st.sampled_from(["r-1", "q-1", "none-1", "", "$x", "a\x00", "\ud800", 5])
_CORRELATION = uuid.UUID(int=7)


async def _seed(log: Any) -> list[int]:
    """The same five events in ``log`` (once), and their positions in order, 0 first."""
    if await log.stream_version("r-2") is None:
        with context(correlation_id=str(_CORRELATION)):
            await log.append("r-1", [NewEvent("A", {"n": 0}), NewEvent("B", {"n": 1})])
        with context(correlation_id="c-2"):
            await log.append("q-1", [NewEvent("A", {"n": 2})])
            await log.append("r-1", [NewEvent("B", {"n": 3})])
        await log.append("r-2", [NewEvent("A", {"n": 4})])
    for _ in range(400):  # PostgreSQL: until no older transaction of the cluster hides them
        seeded = await _collect(log.read_all())
        if len(seeded) == 5:
            break
        await asyncio.sleep(0.05)
    return [0, *[e.position for e in seeded]]


def _position(choice: tuple[str, Any], seeded: list[int]) -> Any:
    kind, value = choice
    return seeded[min(value, len(seeded) - 1)] if kind == "nth" else value


async def _outcome(call: Awaitable[Any]) -> Any:
    """What a call answers: its result, or the name of the ChronikError it raised."""
    try:
        result = await call
    except ChronikError as exc:
        return type(exc).__name__
    if isinstance(result, list):
        return [_place(item) for item in result]
    if isinstance(result, tuple):  # read_page: positions differ between backends
        return [_place(item) for item in result[0]], result[2]
    return result


def _place(item: Any) -> Any:
    if isinstance(item, RecordedEvent):
        return item.stream_id, item.version
    return item.stream_id  # a StreamInfo


def _places(found: list[RecordedEvent]) -> list[tuple[str, int]]:
    return [(e.stream_id, e.version) for e in found]


class HostileReadContract(_WithReference):
    """Reads of the log with arguments of any type and size."""

    async def test_read_arguments_out_of_range_read_what_they_mean(self, store: EventLog) -> None:
        positions_ = await _seed(store)
        everything = _places(await _collect(store.read_all()))
        assert await _collect(store.read_all(after=2**70)) == []
        assert _places(await _collect(store.read_all(after=-5))) == everything
        assert _places(await _collect(store.read_all(limit=2**70))) == everything
        assert await _collect(store.read_all(after=positions_[-1], limit=-(2**70))) == []
        forward = _places(await _collect(store.read_stream("r-1")))
        assert await _collect(store.read_stream("r-1", from_version=2**70)) == []
        assert await _collect(store.read_stream("r-1", from_version=2**31)) == []
        assert _places(await _collect(store.read_stream("r-1", from_version=-(2**70)))) == forward
        backwards = await _collect(store.read_stream("r-1", from_version=2**70, backwards=True))
        assert _places(backwards) == forward[::-1]
        assert await _collect(store.read_stream("r-1", from_version=-1, backwards=True)) == []
        page, _, more = await store.read_page(after=2**70, limit=10)
        assert (page, more) == ([], False)

    async def test_read_arguments_of_the_wrong_type_are_invalid(self, store: EventLog) -> None:
        await _seed(store)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: _collect(store.read_all(after="1")),  # type: ignore[arg-type]
            lambda: _collect(store.read_all(after=True)),
            lambda: _collect(store.read_all(after=1.5)),  # type: ignore[arg-type]
            lambda: _collect(store.read_all(limit="3")),  # type: ignore[arg-type]
            lambda: _collect(store.read_all(categories="r")),
            lambda: _collect(store.read_all(types=[5])),  # type: ignore[list-item]
            lambda: _collect(store.read_all(types=["A\x00"])),
            lambda: _collect(store.read_stream("r-1", from_version="0")),  # type: ignore[arg-type]
            lambda: _collect(store.read_stream("r-1", limit=2.0)),  # type: ignore[arg-type]
            lambda: store.read_page(after=0, limit=None),  # type: ignore[arg-type]
            lambda: store.read_page(after="0", limit=5),  # type: ignore[arg-type]
        ]
        for call in calls:
            with pytest.raises(InvalidArgument):
                await call()

    @PROPERTY
    @given(
        after=positions,
        limit=limits,
        kinds=st.tuples(filters, filters),
        stream=streams,
        from_version=versions,
        backwards=st.booleans(),
    )
    async def test_hostile_reads_match_the_memory_reference(
        self,
        store: EventLog,
        reference: EventStore,
        after: tuple[str, Any],
        limit: Any,
        kinds: tuple[Any, Any],
        stream: Any,
        from_version: Any,
        backwards: bool,
    ) -> None:
        answers = []
        categories, types_ = kinds
        for target in (reference, store):
            where = _position(after, await _seed(target))
            answers.append(
                [
                    await _outcome(
                        _collect(
                            target.read_all(
                                after=where, categories=categories, types=types_, limit=limit
                            )
                        )
                    ),
                    await _outcome(
                        _collect(
                            target.read_stream(
                                stream, from_version=from_version, limit=limit, backwards=backwards
                            )
                        )
                    ),
                    await _outcome(
                        target.read_page(
                            after=where, limit=limit, categories=categories, types=types_
                        )
                    ),
                    await _outcome(target.stream_version(stream)),
                ]
            )
        assert answers[1] == answers[0], (
            after,
            limit,
            kinds,
            stream,
            from_version,
            backwards,
            answers,
        )


class HostileInspectionContract(_WithReference):
    """Inspection (counts, streams, correlations) with arguments of any type and size."""

    async def test_read_correlation_takes_a_str_or_a_uuid(self, store: EventStore) -> None:
        await _seed(store)
        found = await store.read_correlation(_CORRELATION)  # type: ignore[arg-type]
        assert _places(found) == [("r-1", 0), ("r-1", 1)]
        assert found == await store.read_correlation(str(_CORRELATION))
        assert await store.read_correlation(str(_CORRELATION), limit=2**70) == found
        assert await store.read_correlation("c-2", limit=-1) == []
        for bad in (123, None, 1.5, b"c-2", "c\x00", "\ud800"):
            with pytest.raises(InvalidArgument):
                await store.read_correlation(bad)  # type: ignore[arg-type]
        assert await store.count_events(after=2**70) == 0
        assert await store.count_events(after=-(2**70)) == 5
        with pytest.raises(InvalidArgument):
            await store.count_events(categories="r")
        with pytest.raises(InvalidArgument):
            await _collect(store.streams(category=5))  # type: ignore[arg-type]
        assert [s.stream_id async for s in store.streams(limit=2**70)] == ["q-1", "r-1", "r-2"]

    @PROPERTY
    @given(
        after=positions,
        limit=limits,
        kinds=st.tuples(filters, filters),
        correlation=st.sampled_from(
            [_CORRELATION, str(_CORRELATION), "c-2", "nope", "", "\x00", "\ud800", 123, None]
        ),
        category=st.none() | names,
    )
    async def test_hostile_inspection_matches_the_memory_reference(
        self,
        store: EventStore,
        reference: EventStore,
        after: tuple[str, Any],
        limit: Any,
        kinds: tuple[Any, Any],
        correlation: Any,
        category: Any,
    ) -> None:
        answers = []
        categories, types_ = kinds
        for target in (reference, store):
            where = _position(after, await _seed(target))
            answers.append(
                [
                    await _outcome(
                        target.count_events(after=where, categories=categories, types=types_)
                    ),
                    await _outcome(target.read_correlation(correlation, limit=limit)),
                    await _outcome(_collect(target.streams(category=category, limit=limit))),
                ]
            )
        assert answers[1] == answers[0], (after, limit, kinds, correlation, category, answers)
