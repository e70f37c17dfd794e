"""Partitions and leases in one process: the stable hash, fair shares, acquire / renew /
release / takeover, the fence rejecting a stale owner's batch (deterministic), two runners
splitting the partitions, a rebuild across partitions, and SQLite's single owner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chronik
from chronik.errors import InvalidArgument, LeaseLost, WorkOwned
from chronik.scaleout import (
    Leases,
    PartitionedProjectionRunner,
    fair_share,
    group_name,
    partition_of,
    reset_partitioned,
    workers_status,
)
from chronik.store.protocol import EventStore
from tests.scaleout.app import StreamOrder, append_ticks, applied_twice, expected_model, model


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the hash ----------------------------------------------------------------------------


def test_partition_of_is_the_documented_blake2b_hash() -> None:
    # fixed values: the same in every process and Python version (never hash())
    assert [partition_of(s, 8) for s in ("order-1", "order-2", "acct-42", "é-1", "")] == [
        5, 3, 4, 2, 4,
    ]  # fmt: skip
    assert partition_of("order-1", 1) == 0


@given(st.text(), st.integers(1, 1024))
def test_partition_of_is_in_range_and_deterministic(stream_id: str, n: int) -> None:
    p = partition_of(stream_id, n)
    assert 0 <= p < n
    assert partition_of(stream_id, n) == p


@pytest.mark.parametrize("bad", [0, -1, 1025, 2.0, "8", None, True])
def test_partition_count_is_checked(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="partitions"):
        partition_of("order-1", bad)  # type: ignore[arg-type]


@given(st.integers(1, 64), st.lists(st.text(min_size=1), min_size=1, max_size=20, unique=True))
def test_fair_shares_add_up_and_differ_by_at_most_one(partitions: int, members: list[str]) -> None:
    members = sorted(members)
    shares = [fair_share(partitions, members, m) for m in members]
    assert sum(shares) == partitions
    assert max(shares) - min(shares) <= 1
    assert fair_share(partitions, members, "\x00not-a-member") == 0


# -- leases against a store ----------------------------------------------------------------


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as store:
        yield store


@pytest.mark.postgres
async def test_acquire_renew_release_and_takeover_after_expiry(pg: EventStore) -> None:
    a = Leases(pg, "g", 4, member="a", ttl=0.5)
    b = Leases(pg, "g", 4, member="b", ttl=0.5)
    await a.join()
    await b.join()
    assert await a.acquire(0) == 1
    assert await b.acquire(0) is None  # owned and not expired
    members, mine = await a.heartbeat()
    assert members == ["a", "b"] and mine == {0: 1}
    assert await a.release(0, 1)
    assert await b.acquire(0) == 2  # released: no wait for expiry, a new epoch
    await asyncio.sleep(0.6)  # b does not renew: expired
    assert await a.acquire(0) == 3
    _, b_owns = await b.heartbeat()
    assert b_owns == {}  # b learns it lost partition 0
    assert not await b.release(0, 2)  # and cannot release what is no longer its own


@pytest.mark.postgres
async def test_a_stale_owners_batch_is_rejected_and_rolled_back(pg: EventStore) -> None:
    """The deterministic fencing test: the owner's lease is taken over between two of its
    batches; its next batch (writes + checkpoint) rolls back with LeaseLost, it stops
    handling the partition, and the new owner applies the events exactly once."""
    p = StreamOrder()
    old = PartitionedProjectionRunner(
        pg, p, partitions=1, member="old", lease_ttl=30, batch_size=10, poll_interval=0.05
    )
    await old.start()
    await until(lambda: _owned(old, 1), "old owns the partition")
    await append_ticks(pg, 3, 2)
    await until(lambda: _applied(pg, 6), "first events applied")
    follower = old.followers[0]
    # a takeover: the lease expired (forced) and another member took it (epoch 2)
    async with pg.transaction() as tx:
        await tx.execute(
            "UPDATE worker_leases SET expires_at = 0 WHERE name = :n", {"n": group_name(p)}
        )
    new = Leases(pg, group_name(p), 1, member="new", ttl=30)
    assert await new.acquire(0) == 2
    cp_before = await pg.get_checkpoint(follower.checkpoint_name)
    await append_ticks(pg, 3, 1)
    await until(lambda: _async(follower.lease_lost is not None), "the stale owner stops")
    assert "lost" in (follower.lease_lost or "")
    assert await pg.get_checkpoint(follower.checkpoint_name) == cp_before  # rolled back
    assert sum(e for _, e, _ in (await model(pg)).values()) == 6  # its writes too
    # the stale runner's heartbeat also sees it lost, and it does not take it back
    await old.tick()
    assert old.owned() == {}
    await old.stop()
    # the new owner applies the rest exactly once
    runner = PartitionedProjectionRunner(pg, p, partitions=1, member="new", lease_ttl=30,
                                         batch_size=10, poll_interval=0.05)  # fmt: skip
    async with runner:
        await until(lambda: _applied(pg, 9), "new owner applied the rest")
    assert await model(pg) == await expected_model(pg)
    assert await applied_twice(pg) == 0


@pytest.mark.postgres
async def test_fence_check_in_a_transaction_raises_lease_lost(pg: EventStore) -> None:
    a = Leases(pg, "f", 2, member="a", ttl=30)
    await a.join()
    epoch = await a.acquire(1)
    assert epoch == 1
    async with pg.transaction() as tx:  # current: passes
        await a.check(tx, 1, epoch)
    with pytest.raises(LeaseLost, match="f/p1of2"):
        async with pg.transaction() as tx:
            await a.check(tx, 1, epoch + 1)  # a stale (or forged) epoch
            await tx.set_checkpoint("should-not-exist", 5)
    assert await pg.get_checkpoint("should-not-exist") is None


@pytest.mark.postgres
async def test_two_runners_split_the_partitions_and_apply_everything_once(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as s1, await chronik.connect(pg_url) as s2:
        p = StreamOrder()
        r1 = PartitionedProjectionRunner(
            s1, p, partitions=8, member="m1", lease_ttl=2, heartbeat=0.1, batch_size=20,
            poll_interval=0.05,
        )  # fmt: skip
        r2 = PartitionedProjectionRunner(
            s2, p, partitions=8, member="m2", lease_ttl=2, heartbeat=0.1, batch_size=20,
            poll_interval=0.05,
        )  # fmt: skip
        async with r1, r2:
            await until(
                lambda: _async(len(r1.owned()) == 4 and len(r2.owned()) == 4), "4 partitions each"
            )
            assert set(r1.owned()).isdisjoint(r2.owned())
            await append_ticks(s1, 20, 5)
            await until(lambda: _applied(s1, 100), "100 events applied")
            status = await workers_status(s1, group_name(p))
            assert [len(g.members) for g in status] == [2]
            assert {x.owner for x in status[0].partitions} == {"m1", "m2"}

            async def no_lag() -> bool:
                # a partition with nothing in the last page commits its checkpoint past it
                # a moment after the last event was applied by another
                status = await workers_status(s1, group_name(p))
                return all(x.lag == 0 for x in status[0].partitions)

            await until(no_lag, "every partition's checkpoint at the head")
            # r2 leaves gracefully: its partitions are handed over without waiting for expiry
            await r2.stop()
            await until(lambda: _async(len(r1.owned()) == 8), "r1 owns all 8", timeout=1.5)
            await append_ticks(s1, 20, 2)
            await until(lambda: _applied(s1, 140), "140 events applied")
            # a rebuild across partitions while r1 runs: replayed from 0, nothing twice
            await reset_partitioned(s1, p, 8)
            await until(lambda: _applied(s1, 140), "rebuilt")
        assert await model(s1) == await expected_model(s1)
        assert await applied_twice(s1) == 0


async def test_sqlite_runs_one_process_per_group(sqlite_url: str) -> None:
    async with await chronik.connect(sqlite_url) as s1, await chronik.connect(sqlite_url) as s2:
        p = StreamOrder()
        first = PartitionedProjectionRunner(s1, p, partitions=2, member="one", lease_ttl=5)
        async with first:
            await append_ticks(s1, 4, 2)
            await until(lambda: _applied(s1, 8), "applied on SQLite")
            second = PartitionedProjectionRunner(s2, p, partitions=2, member="two", lease_ttl=5)
            with pytest.raises(WorkOwned, match="one process per worker group"):
                await second.start()
            assert second.owned() == {}
        assert await model(s1) == await expected_model(s1)


async def _owned(runner: PartitionedProjectionRunner, n: int) -> bool:
    return len(runner.owned()) == n


async def _applied(store: EventStore, n: int) -> bool:
    try:
        return sum(e for _, e, _ in (await model(store)).values()) == n
    except Exception:  # the table is being rebuilt
        return False


async def _async(value: bool) -> bool:
    return value


@pytest.mark.postgres
async def test_cancelled_at_any_point_then_restarted_applies_each_event_once(
    pg_url: str,
) -> None:
    """A runner stopped with no grace (its batches cancelled at whatever await they were)
    and started again, many times while events arrive: nothing lost, nothing twice, order
    kept; the leases it held come back to the next incarnation."""
    import random

    import tests.scaleout.app as app

    rng = random.Random(3)
    app.HANDLER_SECONDS = 0.002  # batches long enough to be cut in the middle
    try:
        async with await chronik.connect(pg_url) as store:
            p = StreamOrder()
            total = 0
            for round_ in range(8):
                runner = PartitionedProjectionRunner(
                    store, p, partitions=4, member=f"m{round_}", lease_ttl=0.5,
                    heartbeat=0.05, batch_size=15, poll_interval=0.02,
                )  # fmt: skip
                await runner.start()
                await append_ticks(store, 10, 2, start=round_ % 3 * 10)
                total += 20
                await asyncio.sleep(rng.uniform(0.01, 0.3))
                await runner.stop(grace=0)  # cancels batches in flight (they roll back)
            runner = PartitionedProjectionRunner(
                store, p, partitions=4, member="last", lease_ttl=0.5, heartbeat=0.05
            )
            async with runner:
                await until(lambda: _applied(store, total), "everything applied", timeout=60)
            assert await model(store) == await expected_model(store)
            assert await applied_twice(store) == 0
    finally:
        app.HANDLER_SECONDS = 0.0


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=40))
def test_hostile_group_names_are_refused_or_round_trip(name: str) -> None:
    """Any text: a typed error (the store unchanged), or a group stored under exactly that
    name and kept apart from the others."""
    import tempfile

    from chronik.scaleout.leases import group_leases
    from chronik.store import SqlStore, require

    async def check(folder: str) -> None:
        async with await chronik.connect(f"sqlite:///{folder}/h.db") as store:
            other = Leases(store, "other", 1, member="x")
            await other.join()
            try:
                leases = Leases(store, name, 2, member="m")
            except InvalidArgument:
                assert await group_leases(require(store, SqlStore), name) == []
                return
            await leases.join()
            assert await leases.acquire(1) == 1
            got = await group_leases(require(store, SqlStore), name)
            assert [(x.name, x.partition, x.owner) for x in got] == [
                (name, 0, None), (name, 1, "m"),
            ]  # fmt: skip
            assert [x.owner for x in await other.leases()] == [None]

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(check(folder))
