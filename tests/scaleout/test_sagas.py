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
from chronik.errors import LeaseLost
from chronik.sagas import COMPENSATED, COMPLETED, TERMINAL, saga_instance
from chronik.scaleout import Leases, resize, saga_partition_key
from chronik.scaleout.sagas import SagaPartitionFollower
from chronik.store.protocol import EventStore, Tx
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


OPENING = 1_000_000
"""alice's balance before the transfers; bob's and carol's are 0 (carol's account closed)."""
_COMPLETED = [("TransferStarted", None), ("SagaCommandSucceeded", "debit"),
              ("TransferDebited", None), ("SagaCommandSucceeded", "credit"),
              ("TransferCredited", None), ("SagaCompleted", None)]  # fmt: skip
_COMPENSATED = [("TransferStarted", None), ("SagaCommandSucceeded", "debit"),
                ("TransferDebited", None), ("SagaCommandRejected", "credit"),
                ("SagaCompensating", None), ("SagaCommandSucceeded", "refund"),
                ("SagaCompensated", None)]  # fmt: skip
"""Each transfer's instance stream, in version order: to bob, and to carol (refunded)."""


async def open_accounts(store: EventStore) -> None:
    """alice's account (with OPENING), bob's, and carol's, closed."""
    accounts = chronik.CommandHandler(store, ft.account, registry=ft.registry)
    for name in ("alice", "bob", "carol"):
        await accounts.handle(f"account-{name}", {"type": "Open", "owner": name})
    await accounts.handle("account-alice", {"type": "Credit", "amount": OPENING})
    await accounts.handle("account-carol", {"type": "Close"})


async def request(store: EventStore, transfers: dict[str, tuple[str, int]], n: int) -> None:
    """Transfer ``t{n}``: every 4th to carol (closed: refunded), the others to bob."""
    key, target, amount = f"t{n}", "carol" if n % 4 == 0 else "bob", 1 + n % 5
    data = {"source": "alice", "target": target, "amount": amount, "timeout": 300.0}
    await store.append(f"transfer-{key}", [NewEvent("TransferRequested", data)])
    transfers[key] = (target, amount)


async def all_ended(store: EventStore, transfers: dict[str, tuple[str, int]]) -> bool:
    for key in transfers:
        inst = await saga_instance(store, ft.transfer_saga, key)
        if inst is None or inst.status not in TERMINAL:
            return False
    return True


async def check_transfers(store: EventStore, transfers: dict[str, tuple[str, int]]) -> None:
    """The checker, over the final store only: every transfer there, its instance's events
    complete and in order, ending once; each command in the outbox once and run once; the
    balances what the outcomes say."""
    moved = 0
    for key, (target, amount) in sorted(transfers.items()):
        inst = await saga_instance(store, ft.transfer_saga, key)
        assert inst is not None, f"transfer {key} lost"
        stream = ft.transfer_saga.stream_id(key)
        seen = [(e.type, e.data.get("step")) async for e in store.read_stream(stream)]
        want = _COMPENSATED if target == "carol" else _COMPLETED
        assert seen == want, f"transfer {key}: events out of order or not once: {seen}"
        assert inst.status == (COMPENSATED if target == "carol" else COMPLETED), (key, inst)
        moved += amount if inst.status == COMPLETED else 0
    twice = await store.query(  # type: ignore[attr-defined]
        "SELECT saga_key, step, count(*) FROM saga_commands WHERE saga = 'transfer' "
        "GROUP BY saga_key, step, is_compensation HAVING count(*) > 1"
    )
    assert not twice, f"a command written twice to the outbox: {twice}"
    issued = await store.query(  # type: ignore[attr-defined]
        "SELECT command_id FROM saga_commands WHERE saga = 'transfer'"
    )
    per_command: Counter[str] = Counter()
    for name in ("alice", "bob", "carol"):
        async for ev in store.read_stream(f"account-{name}"):
            if "command_id" in ev.metadata:
                per_command[ev.metadata["command_id"]] += 1
    ran_twice = {c for c, k in per_command.items() if k > 1}
    assert not ran_twice, f"a command ran twice: {ran_twice}"
    assert set(per_command) <= {str(r[0]) for r in issued}, "an account change no command made"
    accounts = chronik.CommandHandler(store, ft.account, registry=ft.registry)
    balances = {n: (await accounts.load(f"account-{n}")).state.balance
                for n in ("alice", "bob", "carol")}  # fmt: skip
    assert balances == {"alice": OPENING - moved, "bob": moved, "carol": 0}, balances


@pytest.mark.postgres
async def test_three_processes_one_killed_each_transfer_once(
    pg_url: str, store: EventStore
) -> None:
    await open_accounts(store)
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
            await request(store, transfers, n)
            await asyncio.sleep(0.02)

        await _until(lambda: all_ended(store, transfers), "every transfer in a terminal state")
        after = await epochs_of(store)
        assert all(after[p] > before[p] for p in orphaned), (before, after)
        owned = await owners(store, GROUP)
        assert all(owned[p] in {"w1", "w2"} for p in orphaned), owned
    finally:
        cluster.stop_all()
    await check_transfers(store, transfers)
    # the work was split: each partition's checkpoint moved
    checkpoints = await store.checkpoints()
    assert all(checkpoints.get(f"{GROUP}/p{p}of{PARTS}", 0) > 0 for p in range(PARTS))


async def epochs_of(store: EventStore) -> dict[int, int]:
    return await epochs(store, GROUP)


_TAMPER = {
    "written twice": (
        "INSERT INTO saga_commands (command_id, saga, saga_key, step, stream_id, type, data, "
        "compensation, is_compensation, correlation_id, causation_id, status, attempts) "
        "SELECT 'again-' || command_id, saga, saga_key, step, stream_id, type, data, "
        "compensation, is_compensation, correlation_id, causation_id, status, attempts "
        "FROM saga_commands WHERE saga_key = 't1' AND step = 'debit'"
    ),
    "lost": "DELETE FROM saga_instances WHERE saga = 'transfer' AND saga_key = 't2'",
    "out of order": (  # swap versions 1 and 2 of t1's stream (events are immutable: the
        # trigger is bypassed as a superuser would)
        "SET LOCAL session_replication_role = replica; "
        "UPDATE events SET version = 999999 WHERE stream_id = 'saga_transfer-t1' AND version = 1; "
        "UPDATE events SET version = 1 WHERE stream_id = 'saga_transfer-t1' AND version = 2; "
        "UPDATE events SET version = 2 WHERE stream_id = 'saga_transfer-t1' AND version = 999999"
    ),
}


@pytest.mark.postgres
@pytest.mark.parametrize("tamper", [*_TAMPER, "ran twice"])
async def test_the_checker_catches_what_it_checks(store: EventStore, tamper: str) -> None:
    """Negative control for check_transfers: a command written twice to the outbox, one run
    twice, a lost transfer and an instance's events out of order, each injected into the
    store of a correct run, fail it."""
    await open_accounts(store)
    workers = ft.workers(store)
    transfers: dict[str, tuple[str, int]] = {}
    for w in workers:
        w.poll_interval = 0.05
        await w.start()
    try:
        for n in range(4):
            await request(store, transfers, n)
        await _until(lambda: all_ended(store, transfers), "every transfer in a terminal state")
    finally:
        for w in workers:
            await w.stop()
    await check_transfers(store, transfers)  # correct as run
    assert ft.transfer_saga.stream_id("t1") == "saga_transfer-t1"
    if tamper == "ran twice":  # the credit of t1 appended a second time
        (cid,) = await store.query(  # type: ignore[attr-defined]
            "SELECT command_id FROM saga_commands WHERE saga_key = 't1' AND step = 'credit'"
        )
        again = NewEvent("Credited", {"amount": 2, "transfer_id": "t1"}, {"command_id": cid[0]})
        await store.append("account-bob", [again])
    else:
        async with store.transaction() as tx:
            for statement in _TAMPER[tamper].split("; "):
                await tx.execute(statement)
    with pytest.raises(AssertionError, match=tamper):
        await check_transfers(store, transfers)


@pytest.mark.postgres
async def test_a_step_the_fence_refuses_stops_the_partition_at_once(store: EventStore) -> None:
    """A step past a resize's barrier (or of a stale owner) is refused by the lease check:
    the partition stops with LeaseLost on the first attempt. It is not an event's failure:
    not retried, no dead letter, and with on_poison="stop" not the whole runner's failure
    (it was, before: SagaRunner.handle treated LeaseLost as poison)."""
    leases = Leases(store, GROUP, 2, member="m", ttl=30)
    await leases.join()
    follower = SagaPartitionFollower(
        store, ft.transfer_saga, leases=leases, partition=0, epoch=0, batch_size=10,
        poll_interval=0.05,
    )  # fmt: skip
    follower.epoch = await leases.acquire(0) or 0
    follower.on_poison = "stop"
    fenced = 0
    fence = follower.fence

    async def counting(tx: Tx, position: int) -> None:
        nonlocal fenced
        fenced += 1
        await fence(tx, position)

    follower.fence = counting  # type: ignore[method-assign]
    await resize(store, GROUP, 4)  # the barrier: the head now
    await open_accounts(store)
    await request(store, {}, 1)
    (event,) = [e async for e in store.read_stream("transfer-t1")]
    with pytest.raises(LeaseLost, match="resizing"):
        await follower.handle(event)
    assert fenced == 1 and follower.last_error is None
    assert await store.query("SELECT count(*) FROM dead_letters") == [(0,)]  # type: ignore[attr-defined]
    assert await saga_instance(store, ft.transfer_saga, "t1") is None


@pytest.mark.postgres
@pytest.mark.parametrize("fenced", [True, False])
async def test_a_stale_owner_stepping_one_instance_again(store: EventStore, fenced: bool) -> None:
    """Control for the fence: owner a's lease expired and b took the partition over and
    stepped two transfers; a (paused, say) steps the first one again. With the fence a's
    step is refused and rolls back whole. With the fence patched away it commits: the
    partition's checkpoint moves back (what b handled would be handed out again). The
    command is in the outbox once either way: its id is derived from the event and the step,
    so the outbox itself refuses a second copy; the fence guards the checkpoint."""
    a, b = (Leases(store, GROUP, 2, member=m, ttl=0.1) for m in ("a", "b"))
    await a.join()
    epoch_a = await a.acquire(0)
    await asyncio.sleep(0.3)  # a's lease expires: b takes the partition at a newer epoch
    await b.join()
    epoch_b = await b.acquire(0)
    assert epoch_a is not None and epoch_b is not None and epoch_b > epoch_a
    owner_a, owner_b = (
        SagaPartitionFollower(store, ft.transfer_saga, leases=leases, partition=0, epoch=epoch,
                              batch_size=10, poll_interval=0.05)
        for leases, epoch in ((a, epoch_a), (b, epoch_b))
    )  # fmt: skip
    if not fenced:
        owner_a.fence = _no_fence  # type: ignore[method-assign]
    await open_accounts(store)
    transfers: dict[str, tuple[str, int]] = {}
    for n in (1, 2):
        await request(store, transfers, n)
    (t1,) = [e async for e in store.read_stream("transfer-t1")]
    (t2,) = [e async for e in store.read_stream("transfer-t2")]
    await owner_b.handle(t1)
    await owner_b.handle(t2)
    name = owner_b.checkpoint_name
    assert await store.get_checkpoint(name) == t2.position
    if fenced:
        with pytest.raises(LeaseLost, match="now owned by b"):
            await owner_a.handle(t1)
        assert await store.get_checkpoint(name) == t2.position
    else:
        await owner_a.handle(t1)
        assert await store.get_checkpoint(name) == t1.position  # moved back
    rows = await store.query(  # type: ignore[attr-defined]
        "SELECT count(*) FROM saga_commands WHERE saga_key = 't1'"
    )
    assert rows == [(1,)]


async def _no_fence(tx: Tx, position: int) -> None:
    """The lease check patched away."""
