"""Online resize 8 -> 16 -> 4 partitions under load, with 3 worker processes: nothing lost,
nothing applied twice, every stream in version order; and the typed errors of resize()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest

import chronik
from chronik.errors import InvalidArgument
from chronik.scaleout import Leases, resize
from chronik.store.protocol import EventStore
from tests.scaleout.app import append_ticks
from tests.scaleout.cluster import GROUP, Cluster
from tests.scaleout.test_leases import until
from tests.scaleout.test_processes import _all_applied, _check_read_model

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


async def test_resize_8_16_4_under_load(pg_url: str, store: EventStore) -> None:
    cluster = Cluster(pg_url, 8, ttl=1.0, batch=20)
    members = {"r0", "r1", "r2"}
    stop = asyncio.Event()

    async def writer() -> None:
        start = 0
        while not stop.is_set():
            await append_ticks(store, 10, 1, start=start % 50)
            start += 10
            await asyncio.sleep(0.005)

    writing = asyncio.create_task(writer())
    try:
        for m in sorted(members):
            cluster.start(m)
        await until(lambda: _leases_of(store, 8, members), "8 partitions owned")
        for n in (16, 4):
            group = await resize(store, GROUP, n)
            assert group.resize_to == n and group.barrier is not None
            await until(partial(_leases_of, store, n, members), f"{n} partitions owned", 60)
            await asyncio.sleep(0.3)  # more events after the switch
        stop.set()
        await writing
        await until(lambda: _all_applied(store), "everything applied", timeout=60)
        await _check_read_model(store)
        group = await Leases(store, GROUP, 4, member="probe").group()
        assert (group.partitions, group.generation, group.resize_to) == (4, 3, None)
    finally:
        stop.set()
        await asyncio.gather(writing, return_exceptions=True)
        assert set(cluster.stop_all()) <= {0}


async def _leases_of(store: EventStore, partitions: int, members: set[str]) -> bool:
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT g.partitions, count(l.owner) FROM worker_groups g JOIN worker_leases l "
            "ON l.name = g.name AND l.partitions = g.partitions "
            f"AND l.owner IS NOT NULL AND l.expires_at > CAST(({tx.clock_sql}) * 1000000 "
            "AS BIGINT) WHERE g.name = :g GROUP BY g.partitions",
            {"g": GROUP},
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
