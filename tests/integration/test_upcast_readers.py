"""Upcasting on every read path: aggregate loading, snapshot loading, subscriptions,
projections (with their poison policy), on memory and SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik import EventRegistry, EventStore, NewEvent, RecordedEvent
from chronik.projections import ExternalProjection, ProjectionRunner
from chronik.subscriptions import Subscription
from chronik.upcasting import Upcast

registry = EventRegistry()


@registry.event("Deposited", version=2)
@dataclass(frozen=True)
class Deposited:
    cents: int
    currency: str


@registry.event("Withdrawn")
@dataclass(frozen=True)
class Withdrawn:
    cents: int
    currency: str


@registry.upcaster("Deposited", from_version=1)
def euros(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("cents") == 666:
        raise ValueError("cursed amount")
    return {**data, "currency": "EUR"}


@registry.upcaster("Transferred", from_version=1, to=[("Withdrawn", 1), ("Deposited", 2)])
def transfer(data: dict[str, Any]) -> list[Upcast]:
    """An old event that did two things, split into the two current events."""
    return [
        Upcast("Withdrawn", {"cents": data["fee"], "currency": "EUR"}),
        Upcast("Deposited", {"cents": data["cents"], "currency": "EUR"}),
    ]


@registry.upcaster("Audited", from_version=1, to=[])
def drop(data: dict[str, Any]) -> None:
    return None  # the current model has no use for it


@dataclass(frozen=True)
class Balance:
    cents: int = 0
    events: int = 0


def evolve(state: Balance, event: Deposited | Withdrawn) -> Balance:
    sign = 1 if isinstance(event, Deposited) else -1
    return replace(state, cents=state.cents + sign * event.cents, events=state.events + 1)


def decide(command: int, state: Balance) -> list[Deposited]:
    return [Deposited(command, "EUR")]


account = chronik.Decider(decide=decide, evolve=evolve, initial_state=Balance)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/up.db"
    async with await chronik.connect(url) as s:
        yield s


async def old_history(store: EventStore, stream: str = "acc-1") -> None:
    await store.append(
        stream,
        [
            NewEvent("Deposited", {"cents": 1000}, schema_version=1),
            NewEvent("Audited", {"by": "bob"}, schema_version=1),
            NewEvent("Transferred", {"cents": 500, "fee": 20}, schema_version=1),
            NewEvent("Deposited", {"cents": 7, "currency": "SEK"}, schema_version=2),
        ],
    )


async def test_aggregate_loading_upcasts_splits_and_drops(store: EventStore) -> None:
    await old_history(store)
    handler = chronik.CommandHandler(store, account, registry=registry)
    loaded = await handler.load("acc-1")
    assert loaded.state == Balance(cents=1000 - 20 + 500 + 7, events=4)
    assert loaded.version == 3
    result = await handler.handle("acc-1", 5)
    assert result.version == 4 and result.state.cents == 1492


async def test_aggregate_loading_fails_closed(store: EventStore) -> None:
    await old_history(store)
    await store.append("acc-1", [NewEvent("Mystery", {}, schema_version=3)])
    handler = chronik.CommandHandler(store, account, registry=registry)
    with pytest.raises(chronik.UnknownEventType) as unknown:
        await handler.load("acc-1")
    assert (unknown.value.stream_id, unknown.value.version) == ("acc-1", 4)
    assert "schema version 3" in str(unknown.value)
    await store.append("acc-2", [NewEvent("Deposited", {"cents": 1}, schema_version=9)])
    with pytest.raises(chronik.UpcastError, match="newer"):
        await handler.load("acc-2")
    await store.append("acc-3", [NewEvent("Deposited", {"cents": 666}, schema_version=1)])
    with pytest.raises(chronik.UpcastError, match="cursed amount") as failing:
        await handler.handle("acc-3", 1)
    assert failing.value.stream_id == "acc-3"
    assert await store.stream_version("acc-3") == 0  # nothing appended


async def test_snapshot_loading_upcasts(store: EventStore) -> None:
    await old_history(store)
    config = chronik.SnapshotConfig(Balance, policy=chronik.EveryN(2))
    handler = chronik.CommandHandler(store, account, registry=registry, snapshots=config)
    first = await handler.load("acc-1")
    assert first.state.cents == 1487
    await handler.handle("acc-1", 13)
    again = await handler.load("acc-1")
    assert again.state == Balance(cents=1500, events=5)
    assert again.snapshot_version is not None


async def test_subscription_with_a_registry_reads_upcast_events(store: EventStore) -> None:
    await old_history(store)
    await store.append("acc-2", [NewEvent("Mystery", {"x": 1}, schema_version=1)])
    raw = Subscription(store, after=0)
    assert [e.type for e in (await raw.read_page()).events] == [
        "Deposited",
        "Audited",
        "Transferred",
        "Deposited",
        "Mystery",
    ]
    strict = Subscription(store, after=0, registry=registry, types=["Deposited"])
    page = await strict.read_page()  # Mystery is filtered out by type: never upcast
    assert [(e.type, e.schema_version, e.data) for e in page.events] == [
        ("Deposited", 2, {"cents": 1000, "currency": "EUR"}),
        ("Deposited", 2, {"cents": 500, "currency": "EUR"}),
        ("Deposited", 2, {"cents": 7, "currency": "SEK"}),
    ]
    assert page.caught_up_to == await store.head_position()
    everything = Subscription(store, after=0, registry=registry)
    page = await everything.read_page()  # the bad event does not hold up the good ones
    assert [e.type for e in page.events] == ["Deposited", "Withdrawn", "Deposited", "Deposited"]
    (poison,) = page.poison
    assert poison.event.type == "Mystery"
    assert "UnknownEventType" in poison.error
    tolerant = Subscription(store, after=0, registry=registry, tolerant=True)
    types = [e.type for e in (await tolerant.read_page()).events]
    assert types == ["Deposited", "Withdrawn", "Deposited", "Deposited", "Mystery"]


class Ledger(ExternalProjection):
    name = "ledger"
    event_types = ["Deposited", "Withdrawn"]
    registry = registry
    max_attempts = 2
    retry_backoff = 0.0

    def __init__(self) -> None:
        self.applied: dict[tuple[object, str], tuple[str, int, str]] = {}

    @property
    def seen(self) -> list[tuple[str, int, str]]:
        return list(self.applied.values())

    async def handle(self, event: RecordedEvent) -> None:
        # at-least-once: idempotent by event id (the parts of a split have their own ids)
        value = (event.type, event.data["cents"], event.data["currency"])
        self.applied[(event.event_id, event.type)] = value


async def test_projection_gets_upcast_events_and_dead_letters_a_failing_upcast(
    store: EventStore,
) -> None:
    await old_history(store)
    await store.append("acc-9", [NewEvent("Deposited", {"cents": 666}, schema_version=1)])
    await store.append("acc-9", [NewEvent("Deposited", {"cents": 1, "currency": "EUR"})])
    await store.append("acc-9", [NewEvent("Deposited", {"cents": 1}, schema_version=2)])
    ledger = Ledger()
    runner = ProjectionRunner(store, [ledger])
    await runner.catch_up()
    assert ledger.seen == [
        ("Deposited", 1000, "EUR"),
        ("Withdrawn", 20, "EUR"),  # the split, in order
        ("Deposited", 500, "EUR"),
        ("Deposited", 7, "SEK"),
        ("Deposited", 1, "EUR"),  # the cursed event is skipped, the rest goes on
    ]
    cursed, misfit = await store.dead_letters("ledger:v1")
    assert (cursed.stream_id, cursed.version, cursed.type) == ("acc-9", 0, "Deposited")
    assert "cursed amount" in cursed.error and "UpcastError" in cursed.error
    # the third acc-9 event says v2 but lacks the currency: a poison event of the handler
    assert (misfit.version, "KeyError" in misfit.error) == (2, True)


async def test_projection_stop_policy_stops_on_a_failing_upcast(store: EventStore) -> None:
    await store.append("acc-1", [NewEvent("Deposited", {"cents": 666}, schema_version=1)])

    class Strict(Ledger):
        name = "strict"
        on_poison = "stop"

    runner = ProjectionRunner(store, [Strict()], poll_interval=0.01)
    await runner.start()
    try:
        for _ in range(200):
            (status,) = await runner.status()
            if status.state == "failed":
                break
            await asyncio.sleep(0.01)
        assert status.state == "failed"
        assert status.last_error is not None and "cursed amount" in status.last_error
    finally:
        await runner.stop()
    assert await store.get_checkpoint("strict:v1") is None


async def test_renamed_types_are_read_by_their_old_names(store: EventStore) -> None:
    reg = EventRegistry()

    @reg.event("OrderSubmitted")
    @dataclass(frozen=True)
    class OrderSubmitted:
        total: int

    @reg.upcaster("OrderPlaced", from_version=1, to="OrderSubmitted")
    def renamed(data: dict[str, Any]) -> Upcast:
        return Upcast("OrderSubmitted", data)

    await store.append("order-1", [NewEvent("OrderPlaced", {"total": 3})])
    await store.append("order-2", [reg.to_new_event(OrderSubmitted(4))])
    await store.append("order-3", [NewEvent("Unrelated", {})])

    class Orders(ExternalProjection):
        name = "orders"
        event_types = ["OrderSubmitted"]
        registry = reg

        def __init__(self) -> None:
            self.totals: list[int] = []

        async def handle(self, event: RecordedEvent) -> None:
            assert event.type == "OrderSubmitted"
            self.totals.append(event.data["total"])

    orders = Orders()
    assert sorted(orders.stored_types or []) == ["OrderPlaced", "OrderSubmitted"]
    runner = ProjectionRunner(store, [orders])
    await runner.catch_up()
    assert orders.totals == [3, 4]
    (status,) = await runner.status()
    assert status.lag_events == 0
