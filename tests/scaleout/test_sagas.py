"""Partitioned sagas (scaleout/sagas.py): three worker processes of the funds-transfer saga,
one killed with SIGKILL mid-run: every transfer ends in exactly one terminal state, every
account command runs once, the balances are what the outcomes say, and the killed member's
partitions are taken over (new epochs)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from examples import funds_transfer as ft

import chronik
from chronik import NewEvent, RecordedEvent
from chronik.sagas import COMPENSATED, COMPLETED, TERMINAL, saga_instance
from chronik.scaleout import saga_partition_key
from chronik.store.protocol import EventStore
from tests.scaleout.cluster import Cluster, epochs, owners

GROUP = "saga:transfer"
PARTS = 6


async def test_an_instance_and_its_outcomes_share_a_partition() -> None:
    saga = ft.transfer_saga
    async with await chronik.connect("memory://") as mem:

        async def ev(stream: str, type_: str) -> RecordedEvent:
            await mem.append(stream, [NewEvent(type_, {})])
            return [e async for e in mem.read_stream(stream)][-1]

        for key in ("t1", "t2", "x-9"):
            request = saga_partition_key(saga, await ev(f"transfer-{key}", "TransferRequested"))
            outcome = saga_partition_key(
                saga, await ev(saga.stream_id(key), "SagaCommandSucceeded")
            )
            assert request == outcome == saga.stream_id(key)
        # an event no instance correlates to counts in its own stream's partition
        assert saga_partition_key(saga, await ev("account-bob", "Credited")) == "account-bob"


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


async def _until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.postgres
async def test_three_processes_one_killed_each_transfer_once(
    pg_url: str, store: EventStore
) -> None:
    accounts = chronik.CommandHandler(store, ft.account, registry=ft.registry)
    for name in ("alice", "bob", "carol"):
        await accounts.handle(f"account-{name}", {"type": "Open", "owner": name})
    await accounts.handle("account-alice", {"type": "Credit", "amount": 1_000_000})
    await accounts.handle("account-carol", {"type": "Close"})
    cluster = Cluster(pg_url, PARTS, ttl=2.0, module="tests.scaleout.saga_worker")
    members = {"w0", "w1", "w2"}
    transfers: dict[str, tuple[str, int]] = {}
    try:
        for m in sorted(members):
            cluster.start(m)

        async def balanced() -> bool:
            owned = await owners(store, GROUP)
            return len(owned) == PARTS and set(owned.values()) == members

        await _until(balanced, "3 members owning 2 partitions each")
        orphaned = {p for p, o in (await owners(store, GROUP)).items() if o == "w0"}
        before = await epochs_of(store)
        for n in range(40):
            if n == 20:
                cluster.kill("w0")  # mid-run: its steps and claims are taken over
            key = f"t{n}"
            target = "carol" if n % 4 == 0 else "bob"  # carol's account is closed
            data = {"source": "alice", "target": target, "amount": 1 + n % 5, "timeout": 300.0}
            await store.append(f"transfer-{key}", [NewEvent("TransferRequested", data)])
            transfers[key] = (target, 1 + n % 5)
            await asyncio.sleep(0.02)

        async def all_ended() -> bool:
            for key in transfers:
                inst = await saga_instance(store, ft.transfer_saga, key)
                if inst is None or inst.status not in TERMINAL:
                    return False
            return True

        await _until(all_ended, "every transfer in a terminal state")
        after = await epochs_of(store)
        assert all(after[p] > before[p] for p in orphaned), (before, after)
        owned = await owners(store, GROUP)
        assert all(owned[p] in {"w1", "w2"} for p in orphaned), owned
    finally:
        cluster.stop_all()

    statuses = {}
    for key, (target, _) in transfers.items():
        inst = await saga_instance(store, ft.transfer_saga, key)
        assert inst is not None
        ends = [e.type for e in inst.events if e.type in ("SagaCompleted", "SagaCompensated",
                                                           "SagaFailed")]  # fmt: skip
        assert len(ends) == 1, (key, inst.events)
        assert inst.status == (COMPENSATED if target == "carol" else COMPLETED), (key, inst)
        statuses[key] = inst.status
    per_command: Counter[str] = Counter()
    for name in ("alice", "bob", "carol"):
        async for ev in store.read_stream(f"account-{name}"):
            if "command_id" in ev.metadata:
                per_command[ev.metadata["command_id"]] += 1
    assert len(per_command) >= 40 and set(per_command.values()) == {1}, "a command ran twice"
    moved = sum(a for k, (_, a) in transfers.items() if statuses[k] == COMPLETED)
    balances = {n: (await accounts.load(f"account-{n}")).state.balance
                for n in ("alice", "bob", "carol")}  # fmt: skip
    assert balances == {"alice": 1_000_000 - moved, "bob": moved, "carol": 0}
    # the work was split: each partition's checkpoint moved
    checkpoints = await store.checkpoints()
    assert all(checkpoints.get(f"{GROUP}/p{p}of{PARTS}", 0) > 0 for p in range(PARTS))


async def epochs_of(store: EventStore) -> dict[int, int]:
    return await epochs(store, GROUP)
