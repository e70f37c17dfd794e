"""The shared reader (scaleout/reader.py): every partition gets exactly its events, in
position order, whatever the interleaving of partition reads, window size and appends;
and the process reads the store about once, not once per partition."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronik import NewEvent, RecordedEvent
from chronik.scaleout import partition_of
from chronik.scaleout.reader import SharedLog
from chronik.store.memory import MemoryEventStore

PARTS = 4


async def _drive(
    plan: list[tuple[str, int, int]], *, window: int, batch: int, broken: bool = False
) -> tuple[dict[int, list[RecordedEvent]], MemoryEventStore, SharedLog]:
    """Run ``plan``: ("append", stream, n) or ("read", partition, _); then read every
    partition to the end. Returns what each partition got."""
    store = MemoryEventStore()
    log = SharedLog(store, categories=["s"], types=None, batch_size=batch, window=window)
    after = dict.fromkeys(range(PARTS), 0)
    got: dict[int, list[RecordedEvent]] = {p: [] for p in range(PARTS)}

    async def read(p: int) -> bool:
        events, caught, more = await log.read(after[p], batch, p, PARTS)
        if broken and events:
            events = events[1:]  # negative control: a reader that drops an event
        assert all(e.position <= caught for e in events)
        got[p].extend(events)
        after[p] = max(after[p], caught)
        return more

    for op, a, b in plan:
        if op == "append":
            await store.append(f"s-{a}", [NewEvent("E", {"i": i}) for i in range(b)])
            await store.append("other-1", [NewEvent("E", {})])  # filtered out
        else:
            await read(a % PARTS)
    for p in range(PARTS):
        while await read(p):
            pass
    return got, store, log


async def _check(store: MemoryEventStore, got: dict[int, list[RecordedEvent]]) -> None:
    everything = [e async for e in store.read_all() if e.stream_id.startswith("s-")]
    for p in range(PARTS):
        want = [e.event_id for e in everything if partition_of(e.stream_id, PARTS) == p]
        assert [e.event_id for e in got[p]] == want, f"partition {p}"


plans = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 9), st.integers(1, 7)),
        st.tuples(st.just("read"), st.integers(0, PARTS - 1), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans, window=st.integers(1, 30), batch=st.integers(1, 6))
def test_each_partition_gets_exactly_its_events_in_order(
    plan: list[tuple[str, int, int]], window: int, batch: int
) -> None:
    async def go() -> None:
        got, store, _ = await _drive(plan, window=window, batch=batch)
        await _check(store, got)

    asyncio.run(go())


def test_the_check_catches_a_reader_that_drops_an_event() -> None:
    plan = [("append", s, 3) for s in range(10)]

    async def go() -> None:
        got, store, _ = await _drive(plan, window=100, batch=5, broken=True)
        with pytest.raises(AssertionError):
            await _check(store, got)

    asyncio.run(go())


async def test_partitions_at_one_position_share_one_store_read() -> None:
    store = MemoryEventStore()
    for s in range(40):
        await store.append(f"s-{s}", [NewEvent("E", {}) for _ in range(5)])
    log = SharedLog(store, categories=None, types=None, batch_size=1000)
    pages = await asyncio.gather(*(log.read(0, 1000, p, PARTS) for p in range(PARTS)))
    assert sum(len(events) for events, _, _ in pages) == 200
    assert log.store_reads == 1 and log.direct_reads == 0 and log.served == PARTS


async def test_a_partition_behind_the_window_reads_on_its_own_then_joins() -> None:
    store = MemoryEventStore()
    for s in range(20):
        await store.append(f"s-{s}", [NewEvent("E", {}) for _ in range(5)])
    log = SharedLog(store, categories=None, types=None, batch_size=10)
    await log.read(50, 10, 0, PARTS)  # the window starts at 50
    events, caught, _ = await log.read(0, 55, 1, PARTS)  # a taken-over partition at 0
    assert log.direct_reads == 1
    assert all(partition_of(e.stream_id, PARTS) == 1 for e in events)
    assert 50 <= caught < log.span[1]  # reached the window: next read served from memory
    served = log.served
    await log.read(caught, 10, 1, PARTS)
    assert log.served == served + 1
