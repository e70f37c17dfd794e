"""The contracts an event store backend passes unchanged: one suite per capability.

- :class:`EventLogContract` — :class:`~chronik.store.port.EventLog` (every backend);
- :class:`InspectableContract` — :class:`~chronik.store.port.Inspectable`;
- :class:`WorkerStateContract` — :class:`~chronik.store.port.WorkerState`;
- :class:`SqlStoreContract` — :class:`~chronik.store.port.SqlStore`;
- :class:`FencingContract` — :class:`~chronik.store.port.Fencing`;
- :class:`EventStoreContract` — the first three: what every backend of chronik has.

The log and inspection suites include :mod:`chronik.testing.hostile`: every rule of what a
store accepts (docs/limits.md), by example and property-tested against the memory store.

A backend's test file subclasses the suites of the capabilities it declares and gives each
test a fresh, empty ``store``::

    class TestMyBackend(EventStoreContract, SqlStoreContract):
        @pytest.fixture
        async def store(self) -> AsyncIterator[EventStore]:
            async with await MyStore.open(...) as s:
                yield s

Needs pytest, hypothesis and an asyncio plugin (pytest-asyncio in auto mode).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chronik.context import context
from chronik.errors import (
    CheckpointMoved,
    ConcurrencyError,
    DuplicateEventId,
    InvalidExpectedVersion,
    InvalidStreamId,
    PayloadTooLarge,
    SerializationError,
    StoreFenced,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
)
from chronik.store.capabilities import require, supports
from chronik.store.port import (
    EventLog,
    EventStore,
    Fencing,
    ImportedEvent,
    Inspectable,
    SqlStore,
    WorkerState,
)
from chronik.testing.hostile import (
    HostileAppendContract,
    HostileInspectionContract,
    HostileReadContract,
)

__all__ = [
    "EventLogContract",
    "EventStoreContract",
    "FencingContract",
    "InspectableContract",
    "SqlStoreContract",
    "WorkerStateContract",
]


def ev(type_: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(type=type_, data=data)


async def collect(it: Any) -> list[RecordedEvent]:
    return [e async for e in it]


class EventLogContract(HostileAppendContract, HostileReadContract):
    """:class:`~chronik.store.port.EventLog`: append, read, versions, the head, pages; and
    bad input of every kind (:mod:`chronik.testing.hostile`)."""

    async def test_declares_the_event_log(self, store: EventLog) -> None:
        assert supports(store, EventLog)

    # -- append and expected versions ---------------------------------------------------

    async def test_append_to_new_stream_returns_version_and_position(self, store: EventLog) -> None:
        result = await store.append("order-1", [ev(n=1), ev(n=2)], expected_version=NO_STREAM)
        assert isinstance(result, AppendResult)
        assert result.version == 1
        events = await collect(store.read_stream("order-1"))
        assert [e.version for e in events] == [0, 1]
        assert [e.data for e in events] == [{"n": 1}, {"n": 2}]
        assert events[-1].position == result.position
        assert events[0].position < events[1].position
        assert await store.stream_version("order-1") == 1

    async def test_expected_exact_version(self, store: EventLog) -> None:
        await store.append("s-1", [ev()], expected_version=NO_STREAM)
        r = await store.append("s-1", [ev()], expected_version=0)
        assert r.version == 1
        r = await store.append("s-1", [ev(), ev()], expected_version=1)
        assert r.version == 3

    async def test_conflicts_write_nothing(self, store: EventLog) -> None:
        await store.append("s-1", [ev(n=0)], expected_version=NO_STREAM)
        head = await store.head_position()
        cases: list[tuple[str, int, int | None]] = [
            ("s-1", NO_STREAM, 0),
            ("s-1", 5, 0),
            ("s-1", 1, 0),
            ("s-2", STREAM_EXISTS, -1),
            ("s-2", 0, -1),
        ]
        for stream, expected, actual in cases:
            with pytest.raises(ConcurrencyError) as info:
                await store.append(stream, [ev(n=99), ev(n=98)], expected_version=expected)
            assert info.value.stream_id == stream
            assert info.value.expected == expected
            assert info.value.actual == actual
        assert await store.head_position() == head
        assert [e.data for e in await collect(store.read_stream("s-1"))] == [{"n": 0}]
        assert await store.stream_version("s-2") is None
        assert len(await collect(store.read_all())) == 1

    async def test_stream_exists_and_any(self, store: EventLog) -> None:
        r = await store.append("s-1", [ev()], expected_version=ANY)
        assert r.version == 0
        r = await store.append("s-1", [ev()], expected_version=STREAM_EXISTS)
        assert r.version == 1
        r = await store.append("s-1", [ev()])  # ANY is the default
        assert r.version == 2

    @pytest.mark.parametrize("bad", [-3, -5, -100, 1.5, "0", None, True])
    async def test_invalid_expected_version(self, store: EventLog, bad: Any) -> None:
        with pytest.raises(InvalidExpectedVersion):
            await store.append("s-1", [ev()], expected_version=bad)
        assert await store.stream_version("s-1") is None

    async def test_empty_append_checks_version_and_writes_nothing(self, store: EventLog) -> None:
        with pytest.raises(ConcurrencyError):
            await store.append("s-1", [], expected_version=STREAM_EXISTS)
        await store.append("s-1", [ev()], expected_version=NO_STREAM)
        r = await store.append("s-1", [], expected_version=0)
        assert r.version == 0
        assert len(await collect(store.read_all())) == 1

    async def test_concurrent_appends_one_wins(self, store: EventLog) -> None:
        await store.append("hot-1", [ev()], expected_version=NO_STREAM)

        async def attempt(n: int) -> str:
            try:
                await store.append("hot-1", [ev(n=n)], expected_version=0)
            except ConcurrencyError:
                return "conflict"
            return "ok"

        outcomes = await asyncio.gather(*(attempt(n) for n in range(8)))
        assert outcomes.count("ok") == 1
        assert outcomes.count("conflict") == 7
        assert [e.version for e in await collect(store.read_stream("hot-1"))] == [0, 1]

    # -- idempotency --------------------------------------------------------------------

    async def test_idempotent_retry_returns_original_result(self, store: EventLog) -> None:
        batch = [ev(n=1), ev(n=2)]
        first = await store.append("s-1", batch, expected_version=NO_STREAM)
        again = await store.append("s-1", batch, expected_version=NO_STREAM)
        assert again == first
        later = await store.append("s-1", [ev(n=3)], expected_version=1)
        exact = await store.append("s-1", batch, expected_version=NO_STREAM)
        assert exact == first
        assert await store.append("s-1", batch, expected_version=ANY) == first
        assert await store.append("s-1", [ev(n=4)], expected_version=2) != later
        assert [e.data["n"] for e in await collect(store.read_stream("s-1"))] == [1, 2, 3, 4]

    async def test_same_id_other_content_or_place_is_rejected(self, store: EventLog) -> None:
        original = ev(n=1)
        await store.append("s-1", [original, ev(n=2)], expected_version=NO_STREAM)
        head = await store.head_position()
        changed = NewEvent(type=original.type, data={"n": 42}, event_id=original.event_id)
        with pytest.raises(DuplicateEventId):
            await store.append("s-1", [changed], expected_version=NO_STREAM)
        with pytest.raises(DuplicateEventId):
            await store.append("other-1", [original], expected_version=ANY)
        with pytest.raises(DuplicateEventId):
            await store.append("s-1", [original, ev(n=3)], expected_version=NO_STREAM)
        with pytest.raises(DuplicateEventId):
            await store.append("s-1", [original], expected_version=1)
        with pytest.raises(DuplicateEventId):
            await store.append("s-1", [ev(), ev()][:1] * 2, expected_version=ANY)
        assert await store.head_position() == head
        assert await store.stream_version("other-1") is None

    # -- atomicity and bad input --------------------------------------------------------

    async def test_batch_is_all_or_nothing(self, store: EventLog) -> None:
        await store.append("s-1", [ev()], expected_version=NO_STREAM)
        big = NewEvent(type="Big", data={"blob": "x" * (store.max_event_bytes + 1)})
        with pytest.raises(PayloadTooLarge) as info:
            await store.append("s-1", [ev(n=1), big, ev(n=3)], expected_version=0)
        assert info.value.index == 1
        assert info.value.limit == store.max_event_bytes
        with pytest.raises(SerializationError):
            await store.append("s-1", [ev(n=1), NewEvent("Bad", {"x": object()})])
        existing = (await collect(store.read_stream("s-1")))[0]
        clash = NewEvent(type=existing.type, data={"other": 1}, event_id=existing.event_id)
        with pytest.raises(DuplicateEventId):
            await store.append("s-1", [ev(n=1), clash], expected_version=0)
        assert await store.stream_version("s-1") == 0
        assert len(await collect(store.read_all())) == 1

    async def test_payload_just_under_limit_is_stored(self, store: EventLog) -> None:
        await store.append("s-1", [ev(n=0)])
        meta = (await collect(store.read_stream("s-1")))[0].raw_metadata
        overhead = len(b'{"blob":""}')
        with context(correlation_id="c" * 36):
            fill = store.max_event_bytes - overhead - len(meta) - 64
            r = await store.append("s-2", [NewEvent("Big", {"blob": "y" * fill})])
        assert r.version == 0

    @pytest.mark.parametrize(
        "bad",
        ["", "$system", "a\x00b", "line\nbreak", "tab\tx", "x" * 256, "é" * 128, 42, None],
    )
    async def test_invalid_stream_ids_rejected(self, store: EventLog, bad: Any) -> None:
        with pytest.raises(InvalidStreamId):
            await store.append(bad, [ev()])
        with pytest.raises(InvalidStreamId):
            await collect(store.read_stream(bad))
        assert await store.head_position() == 0

    async def test_unicode_stream_ids_and_data(self, store: EventLog) -> None:
        ids = ["заказ-1", "注文-2", "emoji-🎉", "with space-1", "x" * 255, "é" * 127]
        for sid in ids:
            await store.append(
                sid, [ev(text="héllo ✓ 🎉", quote='"\\')], expected_version=NO_STREAM
            )
        for sid in ids:
            (got,) = await collect(store.read_stream(sid))
            assert got.stream_id == sid
            assert got.data == {"text": "héllo ✓ 🎉", "quote": '"\\'}
        assert {e.stream_id for e in await collect(store.read_all())} == set(ids)
        assert [e.stream_id for e in await collect(store.read_all(categories=["заказ"]))] == [
            "заказ-1"
        ]

    async def test_non_event_input_is_a_type_error(self, store: EventLog) -> None:
        with pytest.raises(TypeError):
            await store.append("s-1", [{"type": "X"}])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            await store.append("s-1", ev())  # type: ignore[arg-type]
        with pytest.raises(SerializationError):
            await store.append("s-1", [NewEvent("X", data=[1, 2])])  # type: ignore[arg-type]
        assert await store.head_position() == 0

    # -- reading ------------------------------------------------------------------------

    async def test_read_missing_stream_raises(self, store: EventLog) -> None:
        with pytest.raises(StreamNotFound):
            await collect(store.read_stream("nothing-here"))
        with pytest.raises(StreamNotFound):
            await collect(store.read_stream("nothing-here", backwards=True))
        await store.append("some-1", [ev()])
        assert await collect(store.read_stream("some-1", from_version=5)) == []

    async def test_paging_both_directions(self, store: EventLog) -> None:
        total = 1203
        for start in range(0, total, 401):
            await store.append("long-1", [ev(n=n) for n in range(start, min(start + 401, total))])
        await store.append("other-1", [ev(n=-1)])
        fwd = await collect(store.read_stream("long-1"))
        assert [e.version for e in fwd] == list(range(total))
        assert [e.data["n"] for e in fwd] == list(range(total))
        back = await collect(store.read_stream("long-1", backwards=True))
        assert [e.version for e in back] == list(range(total - 1, -1, -1))
        part = await collect(store.read_stream("long-1", from_version=499, limit=503))
        assert [e.version for e in part] == list(range(499, 1002))
        part = await collect(
            store.read_stream("long-1", from_version=700, backwards=True, limit=600)
        )
        assert [e.version for e in part] == list(range(700, 100, -1))
        assert await collect(store.read_stream("long-1", limit=0)) == []
        assert [
            e.version for e in await collect(store.read_stream("long-1", from_version=1202))
        ] == [1202]

    async def test_read_all_order_after_and_limit(self, store: EventLog) -> None:
        for n in range(30):
            await store.append(f"s-{n % 4}", [ev(n=n)])
        await store.append("t-1", [ev(n=n) for n in range(30, 1230)])
        everything = await collect(store.read_all())
        positions = [e.position for e in everything]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions) == 1230
        assert [e.data["n"] for e in everything] == list(range(1230))
        assert positions[-1] == await store.head_position()
        mid = positions[600]
        rest = await collect(store.read_all(after=mid))
        assert [e.position for e in rest] == positions[601:]
        limited = await collect(store.read_all(after=positions[10], limit=520))
        assert [e.position for e in limited] == positions[11:531]
        assert await collect(store.read_all(after=positions[-1])) == []
        assert await collect(store.read_all(limit=0)) == []
        assert await collect(store.read_all(limit=-1)) == []
        assert await collect(store.read_stream("t-1", limit=-1)) == []

    async def test_readers_that_stop_early_leave_the_store_usable(self, store: EventLog) -> None:
        # Backends may read the next page while the caller consumes this one: a reader that
        # stops (break, or an exception) must neither leak that read nor lose later reads.
        await store.append("long-1", [ev(n=n) for n in range(1200)])
        loop = asyncio.get_running_loop()
        lost: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: lost.append(context))
        try:
            for round_ in range(40):  # more rounds than a pool has connections
                stop_at = 499 + round_ % 3  # just before, at and after a page boundary
                it = store.read_all() if round_ % 2 else store.read_stream("long-1")
                seen = 0
                async for _e in it:
                    seen += 1
                    if seen > stop_at:
                        break
                await it.aclose()  # type: ignore[attr-defined]
                assert seen == stop_at + 1
            await asyncio.sleep(0.05)  # let abandoned read-aheads finish
            assert [e.data["n"] for e in await collect(store.read_all())] == list(range(1200))
            assert len(await collect(store.read_stream("long-1", backwards=True))) == 1200
        finally:
            loop.set_exception_handler(None)
        assert lost == []

    async def test_read_all_filters(self, store: EventLog) -> None:
        await store.append("order-1", [ev("Placed"), ev("Paid")])
        await store.append("payment-1", [ev("Paid")])
        await store.append("order-2", [ev("Placed")])
        await store.append("orderline-1", [ev("Placed")])
        await store.append("solo", [ev("Placed")])
        got = await collect(store.read_all(categories=["order"]))
        assert [(e.stream_id, e.type) for e in got] == [
            ("order-1", "Placed"),
            ("order-1", "Paid"),
            ("order-2", "Placed"),
        ]
        got = await collect(store.read_all(types=["Paid"]))
        assert [e.stream_id for e in got] == ["order-1", "payment-1"]
        got = await collect(store.read_all(categories=["order", "solo"], types=["Placed"]))
        assert [e.stream_id for e in got] == ["order-1", "order-2", "solo"]
        assert await collect(store.read_all(categories=[])) == []
        assert await collect(store.read_all(types=["Nope"])) == []

    async def test_filters_page_through_sparse_matches(self, store: EventLog) -> None:
        await store.append("noise-1", [ev("Noise") for _ in range(1100)])
        await store.append("rare-1", [ev("Rare")])
        await store.append("noise-1", [ev("Noise") for _ in range(600)])
        await store.append("rare-1", [ev("Rare")])
        got = await collect(store.read_all(types=["Rare"]))
        assert [e.version for e in got] == [0, 1]
        got = await collect(store.read_all(categories=["rare"], limit=1))
        assert [e.version for e in got] == [0]

    async def test_recorded_event_fields(self, store: EventLog) -> None:
        new = NewEvent(
            type="Opened", data={"owner": "Zoë"}, metadata={"tenant": "t1"}, schema_version=3
        )
        with context(correlation_id="corr-1", causation_id="cause-1", actor="alice"):
            await store.append("account-7", [new])
        (got,) = await collect(store.read_all())
        assert got.event_id == new.event_id
        assert isinstance(got.event_id, uuid.UUID)
        assert (got.stream_id, got.version, got.type, got.schema_version) == (
            "account-7",
            0,
            "Opened",
            3,
        )
        assert got.category == "account"
        assert got.data == {"owner": "Zoë"}
        assert got.metadata == {
            "correlation_id": "corr-1",
            "causation_id": "cause-1",
            "actor": "alice",
            "tenant": "t1",
        }
        assert got.recorded_at.tzinfo is not None
        assert got == (await collect(store.read_stream("account-7")))[0]

    async def test_context_generates_one_correlation_id_per_append(self, store: EventLog) -> None:
        await store.append("s-1", [ev(), ev()])
        await store.append("s-1", [ev()])
        events = await collect(store.read_stream("s-1"))
        ids = [e.correlation_id for e in events]
        assert ids[0] and ids[0] == ids[1]
        assert ids[2] and ids[2] != ids[0]
        assert "causation_id" not in events[0].metadata

    # -- following the log ----------------------------------------------------------------

    async def test_read_page_says_how_far_it_is_complete(self, store: EventLog) -> None:
        assert await store.read_page(after=0, limit=10) == ([], 0, False)
        await store.append("a-1", [ev(n=n) for n in range(5)])
        await store.append("b-1", [ev(n=n) for n in range(3)])
        head = await store.head_position()
        events, caught_up_to, more = await store.read_page(after=0, limit=3)
        assert [e.data["n"] for e in events] == [0, 1, 2] and more
        assert caught_up_to == events[-1].position
        rest, caught_up_to, more = await store.read_page(after=caught_up_to, limit=10)
        assert [(e.stream_id, e.data["n"]) for e in rest] == [
            ("a-1", 3), ("a-1", 4), ("b-1", 0), ("b-1", 1), ("b-1", 2)
        ]  # fmt: skip
        assert (caught_up_to, more) == (head, False)
        b, caught_up_to, more = await store.read_page(after=0, limit=10, categories=["b"])
        assert [e.stream_id for e in b] == ["b-1"] * 3
        assert (caught_up_to, more) == (head, False)
        one, caught_up_to, more = await store.read_page(after=0, limit=1, types=["Happened"])
        assert len(one) == 1 and more and caught_up_to == one[0].position
        none, caught_up_to, more = await store.read_page(after=0, limit=10, types=["Nope"])
        assert (none, caught_up_to, more) == ([], head, False)
        assert await store.read_page(after=5, limit=0) == ([], 5, False)

    async def test_an_append_sets_the_change_marker(self, store: EventLog) -> None:
        marker = store.change_marker()
        assert not marker.is_set()
        await store.wait_for_change(0.01)  # nothing happened: returns after the timeout
        await store.append("s-1", [ev()])
        assert marker.is_set()
        assert not store.change_marker().is_set()  # a fresh one for the next change


class InspectableContract(HostileInspectionContract):
    """:class:`~chronik.store.port.Inspectable`: streams, stats, counts, correlations; and
    their arguments of every kind (:mod:`chronik.testing.hostile`)."""

    async def test_declares_inspection(self, store: EventStore) -> None:
        assert supports(store, Inspectable)

    async def test_streams_listing_and_stats(self, store: EventStore) -> None:
        await store.append("order-1", [ev(), ev()])
        await store.append("order-2", [ev()])
        await store.append("user-1", [ev()])
        listed = [s async for s in store.streams()]
        assert [(s.stream_id, s.version) for s in listed] == [
            ("order-1", 1),
            ("order-2", 0),
            ("user-1", 0),
        ]
        assert [s.stream_id async for s in store.streams(category="order", limit=1)] == ["order-1"]
        stats = await store.stats()
        assert (stats.events, stats.streams) == (4, 3)
        assert stats.categories == {"order": 3, "user": 1}
        assert stats.head_position == await store.head_position()

    async def test_many_streams_listing_pages(self, store: EventStore) -> None:
        for n in range(520):
            await store.append(f"c-{n:05d}", [ev()])
        names = [s.stream_id async for s in store.streams()]
        assert names == [f"c-{n:05d}" for n in range(520)]

    async def test_count_events_counts_what_read_all_would_yield(self, store: EventStore) -> None:
        await store.append("order-1", [ev("Placed"), ev("Paid")])
        await store.append("user-1", [ev("Placed")])
        first = (await collect(store.read_all(limit=1)))[0].position
        assert await store.count_events() == 3
        assert await store.count_events(after=first) == 2
        assert await store.count_events(categories=["order"]) == 2
        assert await store.count_events(types=["Placed"]) == 2
        assert await store.count_events(categories=["order"], types=["Paid"]) == 1
        assert await store.count_events(categories=[]) == 0

    async def test_read_correlation_returns_its_events_in_order(self, store: EventStore) -> None:
        for n in range(6):
            with context(correlation_id=f"corr-{n % 2}"):
                await store.append(f"s-{n % 3}", [ev(n=n), ev(n=n)])
        await store.append("s-9", [NewEvent("Happened", {}, {"correlation_id": "corr-1"})])
        found = await store.read_correlation("corr-1")
        assert [e.data.get("n") for e in found] == [1, 1, 3, 3, 5, 5, None]
        assert [e.position for e in found] == sorted(e.position for e in found)
        assert all(e.correlation_id == "corr-1" for e in found)
        assert [e.event_id for e in await store.read_correlation("corr-1", limit=3)] == [
            e.event_id for e in found[:3]
        ]
        assert await store.read_correlation("corr-404") == []


class WorkerStateContract:
    """:class:`~chronik.store.port.WorkerState`: checkpoints, dead letters, active versions
    and imports, committed (or not) with their transaction."""

    async def test_declares_worker_state(self, store: EventStore) -> None:
        assert supports(store, WorkerState)

    async def test_checkpoints_dead_letters_and_versions(self, store: EventStore) -> None:
        await store.append("order-1", [ev()])
        (event,) = await collect(store.read_all())
        async with store.transaction() as tx:
            await tx.set_checkpoint("p:v1", event.position)
            await tx.add_dead_letter("p:v1", event, "boom", 2)
            await tx.set_active_version("p", 2)
        assert await store.get_checkpoint("p:v1") == event.position
        assert await store.checkpoints() == {"p:v1": event.position}
        assert await store.get_active_version("p") == 2
        assert await store.get_active_version("q") is None
        (letter,) = await store.dead_letters("p:v1")
        assert (letter.subscription, letter.event_id, letter.stream_id, letter.type) == (
            "p:v1", event.event_id, "order-1", "Happened"
        )  # fmt: skip
        assert (letter.position, letter.version, letter.error, letter.attempts) == (
            event.position, 0, "boom", 2
        )  # fmt: skip
        created = datetime.fromisoformat(letter.created_at)  # ISO 8601, in UTC
        assert created.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
        async with store.transaction() as tx:  # the same event again: one letter, counted
            await tx.add_dead_letter("p:v1", event, "boom again", 1)
        (letter,) = await store.dead_letters()
        assert (letter.error, letter.attempts) == ("boom again", 3)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.delete_dead_letter(letter.id)
                await tx.set_checkpoint("p:v1", 99)
                raise RuntimeError("rolled back")
        assert await store.get_checkpoint("p:v1") == event.position
        assert len(await store.dead_letters()) == 1
        async with store.transaction() as tx:
            await tx.delete_dead_letter(letter.id)
        assert await store.dead_letters("p:v1") == []

    async def test_advance_checkpoint_moves_it_only_from_where_it_was(
        self, store: EventStore
    ) -> None:
        async with store.transaction() as tx:
            await tx.advance_checkpoint("proj", 0, 5)  # never saved counts as 0
        assert await store.get_checkpoint("proj") == 5
        async with store.transaction() as tx:
            await tx.advance_checkpoint("proj", 5, 8)
        assert await store.get_checkpoint("proj") == 8
        # moved meanwhile (expected 5, it is at 8): the whole transaction rolls back
        with pytest.raises(CheckpointMoved):
            async with store.transaction() as tx:
                await tx.set_checkpoint("other", 9)
                await tx.advance_checkpoint("proj", 5, 12)
        assert await store.get_checkpoint("other") is None
        assert await store.get_checkpoint("proj") == 8

    async def test_import_keeps_everything_but_the_position(self, store: EventStore) -> None:
        await store.append("a-1", [ev(n=0)])
        at = datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        ids = [uuid.uuid4() for _ in range(3)]
        async with store.transaction() as tx:
            await tx.import_events(
                [
                    ImportedEvent(ids[0], "a-1", 1, "Old", 3, b'{"x":1}', b'{"k":"v"}', at),
                    ImportedEvent(ids[1], "b-1", None, "New", 1, b"{}", b"{}", at),
                    ImportedEvent(ids[2], "a-1", None, "Old", 3, b'{"x":2}', b"{}", at),
                ]
            )
            await tx.set_checkpoint("copy", 42)
        events = await collect(store.read_all())
        assert [(e.stream_id, e.version, e.event_id) for e in events[1:]] == [
            ("a-1", 1, ids[0]),
            ("b-1", 0, ids[1]),
            ("a-1", 2, ids[2]),
        ]
        first = events[1]
        assert (first.type, first.schema_version, first.data, first.metadata) == (
            "Old",
            3,
            {"x": 1},
            {"k": "v"},
        )
        assert first.recorded_at == at
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))
        assert await store.get_checkpoint("copy") == 42
        assert await store.stream_version("a-1") == 2

    async def test_import_checks_versions_and_ids_and_writes_all_or_nothing(
        self, store: EventStore
    ) -> None:
        await store.append("a-1", [ev()])
        at = datetime.now(UTC)
        stored = (await collect(store.read_stream("a-1")))[0].event_id
        bad_batches = [
            ("gap", [ImportedEvent(uuid.uuid4(), "a-1", 2, "X", 1, b"{}", b"{}", at)]),
            ("taken", [ImportedEvent(uuid.uuid4(), "a-1", 0, "X", 1, b"{}", b"{}", at)]),
            ("dup", [ImportedEvent(stored, "b-1", 0, "X", 1, b"{}", b"{}", at)]),
            (
                "twice",
                [
                    ImportedEvent(uuid.UUID(int=7), "c-1", 0, "X", 1, b"{}", b"{}", at),
                    ImportedEvent(uuid.UUID(int=7), "c-1", 1, "X", 1, b"{}", b"{}", at),
                ],
            ),
        ]
        for reason, batch in bad_batches:
            good = ImportedEvent(uuid.uuid4(), "z-1", 0, "X", 1, b"{}", b"{}", at)
            with pytest.raises((ConcurrencyError, DuplicateEventId)):
                async with store.transaction() as tx:
                    await tx.import_events([good])
                    await tx.set_checkpoint("copy", 1)
                    await tx.import_events(batch)
            assert await store.stream_version("z-1") is None, reason
            assert await store.get_checkpoint("copy") is None, reason
        assert len(await collect(store.read_all())) == 1


class SqlStoreContract:
    """:class:`~chronik.store.port.SqlStore`: SQL in the store's transactions and queries."""

    async def test_declares_sql(self, store: EventStore) -> None:
        sql = require(store, SqlStore)
        assert sql.dialect  # "sqlite", "postgresql": for SQL text that differs

    async def test_an_error_of_the_sql_is_not_an_outage(self, store: EventStore) -> None:
        """A statement that fails the same way every time (no such table) is the database
        driver's error from ``query()`` and from a transaction, never
        :class:`StoreUnavailable`: a worker retries an outage for ever, but spends a
        delivery (and then dead-letters) on a failing message."""
        sql = require(store, SqlStore)
        with pytest.raises(Exception) as raised:
            await sql.query("SELECT * FROM contract_no_such_table")
        assert not isinstance(raised.value, StoreUnavailable), raised.value
        with pytest.raises(Exception) as raised:
            async with sql.transaction() as tx:
                await tx.execute("INSERT INTO contract_no_such_table VALUES (1)")
        assert not isinstance(raised.value, StoreUnavailable), raised.value
        assert await sql.query("SELECT 1") == [(1,)]  # and the store is fine

    async def test_sql_commits_and_rolls_back_with_the_checkpoint(self, store: EventStore) -> None:
        sql = require(store, SqlStore)
        async with sql.transaction() as tx:
            await tx.execute("CREATE TABLE contract_rm (k TEXT PRIMARY KEY, n INTEGER)")
            await tx.execute("INSERT INTO contract_rm (k, n) VALUES (:k, :n)", {"k": "a", "n": 1})
            assert await tx.fetchone("SELECT n FROM contract_rm WHERE k = :k", {"k": "a"}) == (1,)
            assert await tx.fetchall("SELECT k FROM contract_rm") == [("a",)]
            await tx.set_checkpoint("rm", 1)
        assert await sql.query("SELECT k, n FROM contract_rm") == [("a", 1)]
        with pytest.raises(RuntimeError):
            async with sql.transaction() as tx:
                await tx.execute("INSERT INTO contract_rm (k, n) VALUES ('b', 2)")
                await tx.set_checkpoint("rm", 2)
                raise RuntimeError("rolled back")
        assert await sql.query("SELECT k, n FROM contract_rm ORDER BY k") == [("a", 1)]
        assert await store.get_checkpoint("rm") == 1

    async def test_timestamps_compare_and_order_in_time_columns(self, store: EventStore) -> None:
        sql = require(store, SqlStore)
        early = datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        late = early + timedelta(microseconds=1)
        insert = (
            "INSERT INTO snapshots (stream_id, state_version, version, category, state, "
            "created_at) VALUES (:s, 'v', 0, 'x', :state, :at)"
        )
        async with sql.transaction() as tx:
            await tx.execute(insert, {"s": "x-2", "state": b"{}", "at": tx.timestamp(late)})
            await tx.execute(insert, {"s": "x-1", "state": b"{}", "at": tx.timestamp(early)})
            found = await tx.fetchall(
                "SELECT stream_id FROM snapshots WHERE created_at = :at", {"at": tx.timestamp(late)}
            )
            assert found == [("x-2",)]
        rows = await sql.query("SELECT stream_id FROM snapshots ORDER BY created_at")
        assert rows == [("x-1",), ("x-2",)]


class FencingContract:
    """:class:`~chronik.store.port.Fencing`: a fenced store refuses every new event, on
    every write path, writing nothing; reads and workers' state still work."""

    async def test_fence_keeps_no_password(self, store: EventStore) -> None:
        fencing = require(store, Fencing)
        fence = await fencing.fence("postgresql://app:s3cret@db.example:5432/new?sslpassword=pw")
        assert "s3cret" not in fence.moved_to and "pw" not in fence.moved_to.split("?")[-1]
        assert "db.example:5432/new" in fence.moved_to
        state = await fencing.fence_state()
        assert state is not None and "s3cret" not in state.moved_to
        with pytest.raises(StoreFenced) as refused:
            await store.append("a-1", [ev(n=0)])
        assert "s3cret" not in str(refused.value)
        await fencing.unfence()

    async def test_fence_refuses_every_write_path_and_writes_nothing(
        self, store: EventStore
    ) -> None:
        fencing = require(store, Fencing)
        assert await fencing.fence_state() is None
        first = await store.append("a-1", [ev(n=0)])
        fence = await fencing.fence("sqlite:///new.db")
        assert fence.moved_to == "sqlite:///new.db"
        assert fence.position == first.position
        assert await fencing.fence_state() == fence
        assert await fencing.fence("postgresql://elsewhere") == fence  # fenced once
        head = await store.head_position()
        with pytest.raises(StoreFenced, match=r"sqlite:///new\.db") as refused:
            await store.append("a-1", [ev(n=1)], expected_version=0)
        assert refused.value.moved_to == "sqlite:///new.db"
        assert isinstance(refused.value, StoreFenced) and refused.value.retryable
        with pytest.raises(StoreFenced):
            await store.append("b-1", [ev(n=1), ev(n=2)], expected_version=NO_STREAM)
        # many at once: the grouped write paths (group commit) are fenced too
        outcomes = await asyncio.gather(
            *(store.append(f"c-{i}", [ev(n=i)]) for i in range(40)), return_exceptions=True
        )
        assert all(isinstance(o, StoreFenced) for o in outcomes), outcomes
        at = datetime.now(UTC)
        with pytest.raises(StoreFenced):
            async with store.transaction() as tx:
                await tx.set_checkpoint("copy", 5)
                await tx.import_events(
                    [ImportedEvent(uuid.uuid4(), "d-1", 0, "X", 1, b"{}", b"{}", at)]
                )
        assert await store.get_checkpoint("copy") is None
        assert await store.head_position() == head
        assert [e.stream_id for e in await collect(store.read_all())] == ["a-1"]
        async with store.transaction() as tx:  # workers' state still works
            await tx.set_checkpoint("projection", 1)
        assert await store.get_checkpoint("projection") == 1
        await fencing.unfence()
        assert await fencing.fence_state() is None
        again = await store.append("a-1", [ev(n=1)], expected_version=0)
        assert again.version == 1


class EventStoreContract(EventLogContract, InspectableContract, WorkerStateContract):
    """Everything every backend of chronik has (:class:`~chronik.store.port.EventStore`);
    a backend with SQL adds :class:`SqlStoreContract`."""
