"""Every worker that follows the log, on every backend, through the shapes of log that broke
the copies of the follow loop: a long filtered-out stretch before the wanted events (a
filtered PostgreSQL page is then short or empty while more follows), wanted events
interleaved with others, and wanted events arriving live after catch-up.

Each case ends with every wanted event handled exactly once, in order, and ``catch_up()``
(or the documented ``while await worker.run_once()`` loop) returning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik import EventStore, NewEvent, RecordedEvent
from chronik.decider import Decider
from chronik.projections import ExternalProjection, ProjectionRunner
from chronik.sagas import Reaction, Saga, SagaEvent, SagaRunner
from chronik.snapshots import EveryN, SnapshotConfig, Snapshotter, snapshot_store
from chronik.store import SqlStore, supports
from chronik.subscriptions import Subscription
from tests.conftest import NATS_URL
from tests.integration.conftest import stream_msg_ids

NOISE = 3000
"""Filtered-out events before the wanted ones: three of PostgreSQL's filter windows."""

registry = chronik.EventRegistry()


@registry.event("Placed", version=1)
@dataclass(frozen=True)
class Placed:
    n: int


@registry.event("Noise", version=1)
@dataclass(frozen=True)
class Noise:
    n: int


@dataclass(frozen=True)
class Count:
    n: int = 0


counter: Decider[Any, Any, Count] = Decider(
    decide=lambda command, state: [],
    evolve=lambda state, event: Count(state.n + 1),
    initial_state=Count,
)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/follow.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(url) as s:
        yield s


async def _noise(store: EventStore, n: int, start: int = 0) -> None:
    for first in range(start, start + n, 100):
        batch = [NewEvent("Noise", {"n": k}) for k in range(first, min(first + 100, start + n))]
        await store.append(f"noise-{first}", batch)


async def _wanted(store: EventStore, ns: range) -> list[RecordedEvent]:
    for n in ns:
        await store.append(f"order-{n}", [NewEvent("Placed", {"n": n})])
    return [e async for e in store.read_all(categories=["order"])]


Shape = Callable[[EventStore], Awaitable[list[RecordedEvent]]]


async def filtered_out_first(store: EventStore) -> list[RecordedEvent]:
    await _noise(store, NOISE)
    return await _wanted(store, range(5))


async def interleaved(store: EventStore) -> list[RecordedEvent]:
    for n in range(6):
        await _noise(store, 700, start=n * 700)
        await _wanted(store, range(n, n + 1))
    return [e async for e in store.read_all(categories=["order"])]


SHAPES = [filtered_out_first, interleaved]


# -- each worker kind, reduced to "which wanted positions did it handle, how often" -------------


class Recorder(ExternalProjection):
    name = "recorder"
    event_types = ["Placed"]

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def handle(self, event: RecordedEvent) -> None:
        self.seen.append(event.position)


def _saga() -> Saga[None]:
    def react(state: None, event: RecordedEvent) -> Reaction:
        return Reaction(events=[SagaEvent("Seen", {"position": event.position})], complete=True)

    return Saga(
        name="seer",
        categories=["order"],
        types=["Placed"],
        correlate=lambda e: e.stream_id.partition("-")[2],
        react=react,
        initial_state=lambda: None,
    )


async def _saga_seen(store: EventStore) -> list[int]:
    """The positions the saga saw, from its own events (in the instances' streams)."""
    return [
        int(e.data["position"])
        async for e in store.read_all(categories=["saga_seer"], types=["Seen"])
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Sagas need SQL: SQLite and PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/follow.db"
    else:
        url = str(request.getfixturevalue("pg_url"))
    async with await chronik.connect(url) as s:
        yield s


@pytest.mark.parametrize("shape", SHAPES)
async def test_subscription_catch_up(store: EventStore, shape: Shape) -> None:
    wanted = await shape(store)
    sub = Subscription(store, categories=["order"], batch_size=50)
    got = [e.position async for page in sub.pages(follow=False) for e in page.events]
    assert got == [e.position for e in wanted]


@pytest.mark.parametrize("shape", SHAPES)
async def test_projection_catch_up(store: EventStore, shape: Shape) -> None:
    wanted = await shape(store)
    recorder = Recorder()
    runner = ProjectionRunner(store, [recorder], batch_size=50)
    assert await runner.catch_up() == len(wanted)
    assert recorder.seen == [e.position for e in wanted]
    assert await runner.catch_up() == 0  # nothing new: nothing twice


@pytest.mark.parametrize("shape", SHAPES)
async def test_snapshotter_catch_up(store: EventStore, shape: Shape) -> None:
    wanted = await shape(store)
    config = SnapshotConfig(Count, policy=EveryN(1), inline=False)
    snapshotter = Snapshotter(store, {"order": (counter, config)}, registry=registry, batch_size=50)
    assert await snapshotter.catch_up() == len(wanted)
    snapshotted = {s.stream_id for s in await snapshot_store(store).find()}
    assert snapshotted == {e.stream_id for e in wanted}
    assert await snapshotter.catch_up() == 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_saga_run_once_loop(sql_store: EventStore, shape: Shape) -> None:
    store = sql_store
    wanted = await shape(store)
    runner = SagaRunner(store, _saga(), batch_size=50)
    rounds = 0
    while await runner.run_once():  # the loop docs/sagas.md shows
        rounds += 1
    assert rounds > 0
    assert await _saga_seen(store) == [e.position for e in wanted]
    assert await SagaRunner(store, _saga()).catch_up() == 0  # from the checkpoint: nothing


@pytest.mark.parametrize("shape", SHAPES)
async def test_saga_catch_up(sql_store: EventStore, shape: Shape) -> None:
    store = sql_store
    wanted = await shape(store)
    # every event read counts; the saga's own events are filtered out by type
    assert await SagaRunner(store, _saga(), batch_size=50).catch_up() == len(wanted)
    assert await _saga_seen(store) == [e.position for e in wanted]


async def test_live_after_catch_up_every_worker(store: EventStore) -> None:
    """Catch up through a filtered-out stretch, then take wanted events as they arrive."""
    sql = supports(store, SqlStore)
    await _noise(store, NOISE)
    before = await _wanted(store, range(2))
    recorder = Recorder()
    runner = ProjectionRunner(store, [recorder], batch_size=50, poll_interval=0.05)
    config = SnapshotConfig(Count, policy=EveryN(1), inline=False)
    snapshotter = Snapshotter(
        store, {"order": (counter, config)}, registry=registry, batch_size=50, poll_interval=0.05
    )
    workers: list[chronik.workers.Worker] = [runner, snapshotter]
    if sql:
        workers.append(SagaRunner(store, _saga(), batch_size=50, poll_interval=0.05))
    for worker in workers:
        await worker.start()
    try:
        await _noise(store, 1500, start=NOISE)
        for n in range(2, 6):
            await store.append(f"order-{n}", [NewEvent("Placed", {"n": n})])
            await _noise(store, 300, start=10_000 + n * 300)
        wanted = [e async for e in store.read_all(categories=["order"])]
        await runner.wait_for(await store.head_position(), timeout=30)
        for _ in range(600):
            snapshotted = {s.stream_id for s in await snapshot_store(store).find()}
            if snapshotted == {e.stream_id for e in wanted} and (
                not sql or len(await _saga_seen(store)) == len(wanted)
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        for worker in workers:
            await worker.stop()
    assert recorder.seen == [e.position for e in wanted]
    assert [e.position for e in before] == recorder.seen[:2]
    assert {s.stream_id for s in await snapshot_store(store).find()} == {
        e.stream_id for e in wanted
    }
    if sql:
        assert await _saga_seen(store) == [e.position for e in wanted]


@pytest.mark.nats
@pytest.mark.parametrize("shape", SHAPES)
async def test_relay_catch_up(store: EventStore, shape: Shape, js_stream: tuple[Any, str]) -> None:
    from chronik.nats import OutboxRelay

    js, name = js_stream
    wanted = await shape(store)
    relay = OutboxRelay(store, NATS_URL, name=name, stream=name, prefix=name,
                        categories=["order"], batch_size=50)  # fmt: skip
    try:
        assert await relay.catch_up() == len(wanted)
        assert await relay.catch_up() == 0
    finally:
        await relay.close()
    assert await stream_msg_ids(js, name) == [str(e.event_id) for e in wanted]
