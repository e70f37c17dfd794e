"""Online resize 8 -> 16 -> 4 partitions under load, with 3 worker processes, for every kind
that runs partitioned (projection, saga, snapshotter, outbox relay): nothing lost, nothing
applied or published twice, every stream in order, the group at the new count with
generation 3; and the typed errors of resize()."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial

import pytest

import chronik
from chronik import NewEvent
from chronik.errors import InvalidArgument
from chronik.scaleout import Leases, partition_checkpoint, resize
from chronik.snapshots import verify_snapshots
from chronik.store.protocol import EventStore
from tests.conftest import NATS_URL, require_service
from tests.integration import restart_worker as rw
from tests.integration.conftest import stream_msg_ids
from tests.scaleout.app import StreamOrder, append_ticks
from tests.scaleout.cluster import GROUP, Cluster
from tests.scaleout.test_leases import until
from tests.scaleout.test_processes import _all_applied, _check_read_model
from tests.scaleout.test_relay import check_published
from tests.scaleout.test_sagas import all_ended, check_transfers, open_accounts, request
from tests.scaleout.test_snapshots import all_snapshotted

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


@dataclass
class Load:
    """One kind under a resize: its worker group, its worker processes, the n-th unit of
    load (appends), and the kind's own checker over the final store."""

    group: str
    base: str
    """The checkpoint base of the partitions (``so:v1/p3of8``)."""
    cluster: Cluster
    write: Callable[[int], Awaitable[None]]
    done: Callable[[], Awaitable[bool]]
    check: Callable[[], Awaitable[None]]
    pause: float = 0.005
    """Seconds between two writes (a saga's transfer makes three commands to dispatch)."""


Kind = Callable[[str, EventStore], AbstractAsyncContextManager[Load]]


@asynccontextmanager
async def _projection(url: str, store: EventStore) -> AsyncIterator[Load]:
    async def write(n: int) -> None:
        await append_ticks(store, 10, 1, start=n * 10 % 50)

    yield Load(
        GROUP, StreamOrder().checkpoint_name, Cluster(url, 8, ttl=1.0, batch=20), write,
        partial(_all_applied, store), partial(_check_read_model, store),
    )  # fmt: skip


@asynccontextmanager
async def _saga(url: str, store: EventStore) -> AsyncIterator[Load]:
    await open_accounts(store)
    transfers: dict[str, tuple[str, int]] = {}
    yield Load(
        "saga:transfer", "saga:transfer",
        Cluster(url, 8, ttl=1.0, module="tests.scaleout.saga_worker"),
        partial(request, store, transfers), partial(all_ended, store, transfers),
        partial(check_transfers, store, transfers), pause=0.03,
    )  # fmt: skip


def _acct(n: int) -> str:
    """The n-th append's stream: three at a time, ten events each, then never again (so
    streams end all through the run, some near each barrier)."""
    return f"acct-{n // 30}-{n % 3}"


@asynccontextmanager
async def _snapshotter(url: str, store: EventStore) -> AsyncIterator[Load]:
    streams: set[str] = set()

    async def write(n: int) -> None:
        streams.add(_acct(n))
        await store.append(_acct(n), [NewEvent("Added", {"n": n})])

    async def check() -> None:
        assert await all_snapshotted(store, streams), "a stream's last version not snapshotted"
        assert await verify_snapshots(store, rw.TARGETS, registry=rw.registry) == []

    yield Load(
        "snapshotter:so", "snapshotter:so",
        Cluster(url, 8, ttl=1.0, batch=25, module="tests.scaleout.snapshot_worker"),
        write, partial(all_snapshotted, store, streams), check,
    )  # fmt: skip


@asynccontextmanager
async def _relay(url: str, store: EventStore) -> AsyncIterator[Load]:
    require_service("NATS", NATS_URL)
    import nats

    from chronik.nats import ensure_stream

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    name = f"chronik_rs_{uuid.uuid4().hex[:10]}"
    await ensure_stream(js, name, [f"{name}.>"], duplicate_window=120)
    appended: dict[str, tuple[str, int]] = {}
    rng = random.Random(5)

    async def write(n: int) -> None:
        stream = f"acct-{rng.randrange(25)}"
        event = NewEvent("Added", {"n": n})
        appended[str(event.event_id)] = (stream, (await store.append(stream, [event])).version)

    async def done() -> bool:
        return (await js.stream_info(name)).state.messages >= len(appended)

    async def check() -> None:
        check_published(await stream_msg_ids(js, name), appended)

    try:
        yield Load(
            f"relay:{name}", f"relay:{name}",
            Cluster(url, 8, ttl=1.0, module="tests.scaleout.relay_worker", extra=(NATS_URL, name)),
            write, done, check,
        )  # fmt: skip
    finally:
        await js.delete_stream(name)
        await nc.close()


KINDS: dict[str, Kind] = {
    "projection": _projection, "saga": _saga, "snapshotter": _snapshotter, "relay": _relay,
}  # fmt: skip


@pytest.mark.parametrize(
    "kind", ["projection", "saga", "snapshotter", pytest.param("relay", marks=pytest.mark.nats)]
)
async def test_resize_8_16_4_under_load(pg_url: str, store: EventStore, kind: str) -> None:
    async with KINDS[kind](pg_url, store) as load:
        await _resize_under_load(store, load)


async def _resize_under_load(store: EventStore, load: Load) -> None:
    """3 members of ``load``'s group at 8 partitions, a writer appending all along; resize
    to 16, then to 4, each once the previous count is owned; then the kind's checker, and
    each partition of the new count past the last barrier."""
    cluster, members, stop = load.cluster, {"r0", "r1", "r2"}, asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            await load.write(n)
            n += 1
            await asyncio.sleep(load.pause)

    writing = asyncio.create_task(writer())
    try:
        for m in sorted(members):
            cluster.start(m)
        await until(lambda: _leases_of(store, load.group, 8), "8 partitions owned")
        barrier = 0
        for n in (16, 4):
            group = await resize(store, load.group, n)
            assert group.resize_to == n and group.barrier is not None
            barrier = group.barrier
            await until(partial(_leases_of, store, load.group, n), f"{n} owned", 60)
            await asyncio.sleep(0.3)  # more events after the switch
        stop.set()
        await writing
        await until(load.done, "everything handled", timeout=60)
        await load.check()
        group = await Leases(store, load.group, 4, member="probe").group()
        assert (group.partitions, group.generation, group.resize_to) == (4, 3, None)
        checkpoints = await store.checkpoints()
        for p in range(4):
            assert checkpoints[partition_checkpoint(load.base, p, 4)] >= barrier
    finally:
        stop.set()
        await asyncio.gather(writing, return_exceptions=True)
        assert set(cluster.stop_all()) <= {0}


async def _leases_of(store: EventStore, group: str, partitions: int) -> bool:
    """Whether the group is at ``partitions`` and every one of them has a live owner."""
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT g.partitions, count(l.owner) FROM worker_groups g JOIN worker_leases l "
            "ON l.name = g.name AND l.partitions = g.partitions "
            f"AND l.owner IS NOT NULL AND l.expires_at > CAST(({tx.clock_sql}) * 1000000 "
            "AS BIGINT) WHERE g.name = :g GROUP BY g.partitions",
            {"g": group},
        )
    return rows == [(partitions, partitions)]


async def test_resize_refuses_bad_requests_and_changes_nothing(store: EventStore) -> None:
    with pytest.raises(InvalidArgument, match="no worker group"):
        await resize(store, "projection:nope:v1", 4)
    leases = Leases(store, GROUP, 8, member="m")
    await leases.join()
    for bad in (0, 1025, "4"):
        with pytest.raises(InvalidArgument, match="partitions"):
            await resize(store, GROUP, bad)  # type: ignore[arg-type]
    assert (await resize(store, GROUP, 8)).resize_to is None  # the same count: nothing to do
    await resize(store, GROUP, 2)
    with pytest.raises(InvalidArgument, match="in progress"):
        await resize(store, GROUP, 3)
    group = await leases.group()
    assert (group.partitions, group.resize_to) == (8, 2)
