"""Partitioned snapshotter (scaleout/snapshots.py): three processes, one killed with
SIGKILL while events arrive: every stream ends with a snapshot at its last version, each
snapshot equal to a replay, and the killed member's partitions are taken over."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterable

import pytest

import chronik
from chronik import NewEvent
from chronik.snapshots import snapshot_store, verify_snapshots
from chronik.store.protocol import EventStore
from tests.integration import restart_worker as rw
from tests.scaleout.cluster import Cluster, epochs, owners

GROUP = "snapshotter:so"
PARTS = 6


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


async def _until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _newest(store: EventStore) -> dict[str, int]:
    newest: dict[str, int] = {}
    for snap in await snapshot_store(store).find():
        newest[snap.stream_id] = max(newest.get(snap.stream_id, -1), snap.version)
    return newest


async def all_snapshotted(store: EventStore, streams: Iterable[str]) -> bool:
    """Whether the newest snapshot of every stream written is at its last version."""
    versions = {s: await store.stream_version(s) for s in streams}
    return await _newest(store) == {s: v for s, v in versions.items() if v is not None and v >= 0}


@pytest.mark.postgres
async def test_three_processes_one_killed_every_stream_snapshotted(
    pg_url: str, store: EventStore
) -> None:
    cluster = Cluster(pg_url, PARTS, ttl=2.0, batch=25, module="tests.scaleout.snapshot_worker")
    members = {"w0", "w1", "w2"}
    rng = random.Random(7)
    streams = [f"acct-{n}" for n in range(30)]
    try:
        for m in sorted(members):
            cluster.start(m)

        async def balanced() -> bool:
            owned = await owners(store, GROUP)
            return len(owned) == PARTS and set(owned.values()) == members

        await _until(balanced, "3 members owning 2 partitions each")
        orphaned = {p for p, o in (await owners(store, GROUP)).items() if o == "w0"}
        before = await epochs(store, GROUP)
        for n in range(300):
            if n == 150:
                cluster.kill("w0")
            await store.append(rng.choice(streams), [NewEvent("Added", {"n": n})])
            if n % 10 == 0:
                await asyncio.sleep(0.01)

        await _until(lambda: all_snapshotted(store, streams), "a snapshot at every last version")
        after = await epochs(store, GROUP)
        assert orphaned and all(after[p] > before[p] for p in orphaned), (before, after)
        owned = await owners(store, GROUP)
        assert all(owned[p] in {"w1", "w2"} for p in orphaned), owned
    finally:
        cluster.stop_all()
    assert await verify_snapshots(store, rw.TARGETS, registry=rw.registry) == []
    checkpoints = await store.checkpoints()
    assert all(checkpoints.get(f"{GROUP}/p{p}of{PARTS}", 0) > 0 for p in range(PARTS))
