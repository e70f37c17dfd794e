from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from examples.bank_account import (
    Account,
    AccountError,
    AccountOpened,
    Deposit,
    Deposited,
    InsufficientFunds,
    OpenAccount,
    Withdraw,
    Withdrawn,
    account,
    registry,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chronik
from chronik import Aggregate, CommandHandler, Repository
from chronik.store.memory import MemoryEventStore
from chronik.testing import DeciderSpecification

spec = DeciderSpecification(account)
OPENED = AccountOpened("alice", "EUR", "main", Decimal("50"))


def test_given_when_then() -> None:
    spec.given([]).when(OpenAccount("alice", overdraft_limit=Decimal("50"))).then([OPENED])
    spec.given([OPENED]).when(Deposit(Decimal("10"), "r")).then([Deposited(Decimal("10"), "r")])
    spec.given([OPENED, Deposited(Decimal("10"), "r")]).when(Withdraw(Decimal("60"), "w")).then(
        [Withdrawn(Decimal("60"), "w")]
    )
    spec.given([OPENED]).when(Withdraw(Decimal("51"), "w")).then_raises(InsufficientFunds)
    spec.given([OPENED]).when(OpenAccount("bob")).then_raises(AccountError)


def test_given_when_then_reports_mismatches() -> None:
    with pytest.raises(AssertionError, match="expected events"):
        spec.given([OPENED]).when(Deposit(Decimal("1"), "r")).then([])
    with pytest.raises(AssertionError, match="expected InsufficientFunds"):
        spec.given([OPENED]).when(Deposit(Decimal("1"), "r")).then_raises(InsufficientFunds)
    with pytest.raises(AssertionError, match="expected state"):
        spec.given([OPENED]).when(Deposit(Decimal("1"), "r")).then_state(Account())


async def test_handler_appends_and_reloads() -> None:
    async with MemoryEventStore() as store:
        handler = CommandHandler(store, account, registry=registry)
        r = await handler.handle("account-1", OpenAccount("alice"))
        assert (r.version, r.attempts) == (0, 1) and r.position is not None
        r = await handler.handle("account-1", Deposit(Decimal("7.5"), "x"))
        assert r.state.balance == Decimal("7.5")
        with pytest.raises(InsufficientFunds):
            await handler.handle("account-1", Withdraw(Decimal("100"), "y"))
        assert await store.stream_version("account-1") == 1
        loaded = await handler.load("account-1")
        assert loaded.state == r.state and loaded.version == 1
        assert (await handler.load("account-404")).version == -1


class ConflictingStore:
    """Lets ``conflicts`` appends lose a race to another writer first."""

    def __init__(self, store: MemoryEventStore, conflicts: int) -> None:
        self.store = store
        self.conflicts = conflicts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append(self, stream_id: str, events: Sequence[Any], **kw: Any) -> Any:
        if self.conflicts > 0:
            self.conflicts -= 1
            new = registry.to_new_event(Deposited(Decimal("1"), "other"))
            await self.store.append(stream_id, [new])
        return await self.store.append(stream_id, events, **kw)


async def test_handler_retries_conflicts_then_gives_up() -> None:
    async with MemoryEventStore() as mem:
        await CommandHandler(mem, account, registry=registry).handle("a-1", OpenAccount("a"))
        racing = CommandHandler(ConflictingStore(mem, 2), account, registry=registry)
        r = await racing.handle("a-1", Deposit(Decimal("10"), "mine"))
        assert r.attempts == 3
        assert r.state.balance == Decimal("12")  # both other deposits were seen
        hopeless = CommandHandler(
            ConflictingStore(mem, 99),
            account,
            registry=registry,
            max_attempts=3,
        )
        with pytest.raises(chronik.ConcurrencyError):
            await hopeless.handle("a-1", Deposit(Decimal("10"), "mine"))
        events = [e.data["reference"] async for e in mem.read_stream("a-1", from_version=1)]
        assert events == ["other", "other", "mine", "other", "other", "other"]


async def test_concurrent_handlers_lose_nothing() -> None:
    async with MemoryEventStore() as store:
        handler = CommandHandler(store, account, registry=registry, max_attempts=50)
        await handler.handle("a-1", OpenAccount("a"))

        async def deposit(n: int) -> None:
            await asyncio.sleep(0)
            await handler.handle("a-1", Deposit(Decimal(n), f"d{n}"))

        await asyncio.gather(*(deposit(n) for n in range(1, 21)))
        assert (await handler.load("a-1")).state.balance == sum(range(1, 21))


commands = st.lists(
    st.one_of(
        st.builds(OpenAccount, st.sampled_from(["a", "b"]), overdraft_limit=st.just(Decimal(5))),
        st.builds(Deposit, st.decimals(min_value=-1, max_value=20, places=1), st.just("d")),
        st.builds(Withdraw, st.decimals(min_value=0, max_value=20, places=1), st.just("w")),
    ),
    max_size=15,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=commands)
def test_fold_of_stored_events_equals_the_state_the_handler_returned(cmds: list[Any]) -> None:
    async def scenario() -> None:
        async with MemoryEventStore() as store:
            handler = CommandHandler(store, account, registry=registry)
            last_state = account.initial_state()
            for cmd in cmds:
                with contextlib.suppress(AccountError):
                    last_state = (await handler.handle("acc-1", cmd)).state
            try:
                stored = [registry.decode(e) async for e in store.read_stream("acc-1")]
            except chronik.StreamNotFound:
                stored = []
            assert account.fold(stored) == last_state

    asyncio.run(scenario())


class Counter(Aggregate):
    def __init__(self) -> None:
        super().__init__()
        self.total = Decimal(0)
        self.applied = 0

    def apply(self, event: Any) -> None:
        self.applied += 1
        if isinstance(event, Deposited):
            self.total += event.amount

    def add(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("positive only")
        self.record(Deposited(Decimal(amount), "agg"))


async def test_aggregate_sugar_uses_the_same_write_path() -> None:
    async with MemoryEventStore() as mem:
        repo = Repository(mem, Counter, registry=registry)

        def add_twice(c: Counter) -> None:
            c.add(2)
            c.add(3)

        r = await repo.execute("counter-1", add_twice)
        assert r.state.total == 5 and r.version == 1
        assert r.state.applied == 2  # each new event applied once, not twice
        racing = Repository(ConflictingStore(mem, 1), Counter, registry=registry)
        r = await racing.execute("counter-1", lambda c: c.add(10))
        assert r.attempts == 2 and r.state.total == 16
        loaded = await repo.load("counter-1")
        assert loaded.state.total == 16 and loaded.version == 3
        with pytest.raises(ValueError):
            await repo.execute("counter-1", lambda c: c.add(-1))
        assert await mem.stream_version("counter-1") == 3


def test_aggregate_without_apply_says_so() -> None:
    with pytest.raises(NotImplementedError, match="apply"):
        Aggregate().record(object())
