"""Partitioned projection workers as processes on PostgreSQL: SIGSTOP past the lease (the
stale owner's commit is rejected), kill -9 of one of 4 (its partitions owned again within
TTL + 1 s), and pause/kill cycles under load: every stream in version order, nothing applied
twice, the read model equal to a from-scratch rebuild."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator

import pytest

import chronik
from chronik.projections import ProjectionRunner
from chronik.store.protocol import EventStore
from tests.scaleout.app import StreamOrder, append_ticks, applied_twice, expected_model, model
from tests.scaleout.cluster import Cluster, epochs, owners
from tests.scaleout.test_leases import until

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


async def _balanced(store: EventStore, members: set[str], partitions: int) -> bool:
    owned = await owners(store)
    if len(owned) != partitions or set(owned.values()) != members:
        return False
    counts = [list(owned.values()).count(m) for m in members]
    return max(counts) - min(counts) <= 1


async def _all_applied(store: EventStore) -> bool:
    try:
        got = await model(store)
    except Exception:  # the table is not there yet
        return False
    return got == await expected_model(store)


async def _check_read_model(store: EventStore) -> None:
    got, want = await model(store), await expected_model(store)
    assert got == want  # every stream complete, in version order (violations 0)
    assert await applied_twice(store) == 0
    assert sum(v for _, _, v in got.values()) == 0


@pytest.mark.parametrize("tamper", ["applied twice", "out of order", "lost"])
async def test_the_checker_catches_what_it_checks(store: EventStore, tamper: str) -> None:
    """Negative control: the read-model check fails on a double apply, an order violation
    and a lost event (each injected into a correct read model)."""
    p = StreamOrder()
    await append_ticks(store, 3, 3)
    await ProjectionRunner(store, [p]).catch_up()
    await _check_read_model(store)  # correct as built
    s, a = p.table("so_streams"), p.table("so_applied")
    change = {
        "applied twice": f"UPDATE {a} SET n = 2 WHERE event_id IN (SELECT min(event_id) FROM {a})",
        "out of order": f"UPDATE {s} SET violations = 1 WHERE stream = 'tick-1'",
        "lost": f"UPDATE {s} SET events = events - 1 WHERE stream = 'tick-2'",
    }[tamper]
    async with store.transaction() as tx:
        await tx.execute(change)
    with pytest.raises(AssertionError):
        await _check_read_model(store)


async def test_sigstopped_owner_is_fenced_out_after_takeover(
    pg_url: str, store: EventStore
) -> None:
    cluster = Cluster(pg_url, 4, ttl=1.0, batch=10)
    try:
        cluster.start("a", handler_ms=20)  # slow batches: likely stopped inside one
        cluster.start("b")
        await until(lambda: _balanced(store, {"a", "b"}, 4), "2 partitions each")
        before = await epochs(store)
        a_parts = {p for p, o in (await owners(store)).items() if o == "a"}
        await append_ticks(store, 20, 3)
        await asyncio.sleep(0.15)
        cluster.signal("a", signal.SIGSTOP)
        # b takes a's partitions once a's leases expired (and the server ended a's
        # transaction that sat idle for one TTL): a new epoch each
        await until(lambda: _balanced(store, {"b"}, 4), "b owns all 4", timeout=20)
        after = await epochs(store)
        assert all(after[p] > before[p] for p in a_parts)
        await append_ticks(store, 20, 2)
        cluster.signal("a", signal.SIGCONT)
        # a wakes up: its batch (if one was open) or its next heartbeat finds the lease
        # gone; it commits nothing and rejoins as a member (the partitions rebalance)
        await until(lambda: _all_applied(store), "everything applied", timeout=60)
        await until(lambda: _balanced(store, {"a", "b"}, 4), "rebalanced after wake-up")
        assert "lost" in cluster.log("a")
        await _check_read_model(store)
    finally:
        assert cluster.stop_all() == [0, 0]


async def test_kill9_of_one_of_four_its_partitions_are_owned_again_within_ttl_plus_1s(
    pg_url: str, store: EventStore
) -> None:
    ttl = 1.0
    cluster = Cluster(pg_url, 8, ttl=ttl, batch=50)
    members = {"w0", "w1", "w2", "w3"}
    try:
        for m in sorted(members):
            cluster.start(m)
        await until(lambda: _balanced(store, members, 8), "2 partitions each")
        await append_ticks(store, 30, 2)
        victim = sorted(members)[random.Random(17).randrange(4)]
        orphaned = {p for p, o in (await owners(store)).items() if o == victim}
        assert len(orphaned) == 2
        cluster.kill(victim)
        killed_at = time.monotonic()
        live = members - {victim}

        async def reowned() -> bool:
            owned = await owners(store)
            return all(owned[p] in live for p in orphaned)

        await until(reowned, "the victim's partitions owned again", timeout=10)
        took = time.monotonic() - killed_at
        assert took <= ttl + 1.0, f"re-owned after {took:.2f}s"
        await append_ticks(store, 30, 2)
        await until(lambda: _all_applied(store), "everything applied", timeout=60)
        await until(lambda: _balanced(store, live, 8), "3 members share 8")
        await _check_read_model(store)
    finally:
        assert set(cluster.stop_all()) <= {0}


async def _cycles(pg_url: str, store: EventStore, cycles: int, seed: int) -> None:
    """4 workers; each cycle SIGSTOPs one past its lease or kill -9s and restarts one, while
    a writer appends; at the end the read model must equal a rebuild."""
    rng = random.Random(seed)
    ttl = 0.6
    cluster = Cluster(pg_url, 8, ttl=ttl, batch=20)
    members = [f"w{i}" for i in range(4)]
    stop_writing = asyncio.Event()

    async def writer() -> None:
        start = 0
        while not stop_writing.is_set():
            await append_ticks(store, 10, 1, start=start % 60)
            start += 10
            await asyncio.sleep(0.01)

    writing = asyncio.create_task(writer())
    try:
        for m in members:
            cluster.start(m)
        await until(lambda: _balanced(store, set(members), 8), "balanced at start")
        for _ in range(cycles):
            m = rng.choice(members)
            if rng.random() < 0.5:
                cluster.signal(m, signal.SIGSTOP)
                await asyncio.sleep(ttl * rng.uniform(0.5, 2.5))
                cluster.signal(m, signal.SIGCONT)
            else:
                cluster.kill(m)
                await asyncio.sleep(rng.uniform(0, ttl))
                cluster.start(m)
            await asyncio.sleep(rng.uniform(0, 0.3))
        stop_writing.set()
        await writing
        await until(lambda: _all_applied(store), "everything applied", timeout=120)
        await _check_read_model(store)
    finally:
        stop_writing.set()
        await asyncio.gather(writing, return_exceptions=True)
        cluster.stop_all()


async def test_pause_and_kill_cycles_keep_order_and_apply_once(
    pg_url: str, store: EventStore
) -> None:
    await _cycles(pg_url, store, cycles=12, seed=1)


@pytest.mark.soak
async def test_soak_200_pause_and_kill_cycles(pg_url: str, store: EventStore) -> None:
    await _cycles(pg_url, store, cycles=200, seed=2)
