"""Projections on SQLite and PostgreSQL: exactly-once, wait_for, poison, rebuilds, inline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik import NewEvent, RecordedEvent
from chronik.projections import (
    ExternalProjection,
    Pending,
    Progress,
    Projection,
    ProjectionRunner,
    WaitTimeout,
    fresh_or_pending,
    rebuild_blue_green,
    register_inline,
)
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx
from chronik.subscriptions import Subscription


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/p.db"
    else:
        url = request.getfixturevalue("pg_url")
    async with await chronik.connect(url) as s:
        yield s


class Balances(Projection):
    """Balance per stream, plus how many times each event was applied."""

    name = "balances"
    event_types = ["Deposited"]
    retry_backoff = 0.001

    def __init__(self, *, version: int = 1, poison: set[int] | None = None) -> None:
        self.version = version
        self.poison = poison or set()

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('balance')} "
            "(account TEXT PRIMARY KEY, amount INTEGER NOT NULL)"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('applied')} "
            "(event_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('balance')}")
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('applied')}")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        if event.data["n"] in self.poison:
            raise ValueError(f"poison {event.data['n']}")
        t = self.table("balance")
        await tx.execute(
            f"INSERT INTO {t} (account, amount) VALUES (:a, :n) "
            f"ON CONFLICT (account) DO UPDATE SET amount = {t}.amount + excluded.amount",
            {"a": event.stream_id, "n": event.data["n"]},
        )
        a = self.table("applied")
        await tx.execute(
            f"INSERT INTO {a} (event_id, n) VALUES (:id, 1) "
            f"ON CONFLICT (event_id) DO UPDATE SET n = {a}.n + 1",
            {"id": str(event.event_id)},
        )


async def read_model(store: EventStore, p: Balances) -> dict[str, int]:
    rows = await require(store, SqlStore).query(f"SELECT account, amount FROM {p.table('balance')}")
    return {str(a): int(n) for a, n in rows}


async def applied_counts(store: EventStore, p: Balances) -> list[int]:
    rows = await require(store, SqlStore).query(f"SELECT n FROM {p.table('applied')}")
    return [int(r[0]) for r in rows]


async def deposit(store: EventStore, stream: str, n: int) -> chronik.AppendResult:
    return await store.append(stream, [NewEvent("Deposited", {"n": n})])


def expected_balances(
    deposits: list[tuple[str, int]], skip: frozenset[int] | set[int] = frozenset()
) -> dict[str, int]:
    out: dict[str, int] = {}
    for stream, n in deposits:
        if n not in skip:
            out[stream] = out.get(stream, 0) + n
    return out


async def test_catch_up_then_live_exactly_once(store: EventStore) -> None:
    deposits = [(f"acct-{n % 7}", n) for n in range(1, 1201)]
    for stream, n in deposits[:1000]:
        await deposit(store, stream, n)
    await store.append("noise-1", [NewEvent("Noise", {"n": 0})])
    p = Balances()
    runner = ProjectionRunner(store, [p], batch_size=100, poll_interval=0.05)
    async with runner:
        for stream, n in deposits[1000:]:
            result = await deposit(store, stream, n)
        await runner.wait_for(result.position, timeout=20)
        assert await read_model(store, p) == expected_balances(deposits)
        noise = await store.append("noise-1", [NewEvent("Noise", {"n": 0})])
        await runner.wait_for(noise.position, timeout=5)  # not handled, still reached
        (status,) = await runner.status()
        assert status.state == "running" and status.lag_events == 0
        assert status.checkpoint >= noise.position
    assert sorted(set(await applied_counts(store, p))) == [1]
    assert await store.get_checkpoint("balances:v1") == status.checkpoint
    # a new runner resumes from the stored checkpoint and applies nothing twice
    await deposit(store, "acct-x", 5)
    again = ProjectionRunner(store, [Balances()], batch_size=100)
    assert await again.catch_up() == 1
    assert sorted(set(await applied_counts(store, p))) == [1]
    metrics = await again.metrics_text()
    assert 'chronik_projection_lag_events{projection="balances",version="1"} 0' in metrics


async def test_wait_for_times_out_cleanly(store: EventStore) -> None:
    p = Balances()
    runner = ProjectionRunner(store, [p])
    await runner.setup()
    result = await deposit(store, "acct-1", 1)
    with pytest.raises(WaitTimeout) as info:
        await runner.wait_for(result.position, timeout=0.2)
    assert info.value.position == result.position and info.value.reached == 0
    assert isinstance(info.value, TimeoutError)
    await runner.catch_up()
    await runner.wait_for(result.position, timeout=0.1)


async def test_fresh_or_pending(store: EventStore) -> None:
    p = Balances()
    runner = ProjectionRunner(store, [p], poll_interval=0.05)
    await runner.setup()
    result = await deposit(store, "acct-1", 3)

    async def read() -> dict[str, int]:
        return await read_model(store, p)

    pending = await fresh_or_pending(runner, result.position, read, timeout=0.05)
    assert pending == Pending(result.position)
    async with runner:
        assert await fresh_or_pending(runner, result.position, read, timeout=5) == {"acct-1": 3}


async def test_poison_events_go_to_dead_letters_and_retry_fixes_them(store: EventStore) -> None:
    deposits = [(f"acct-{n % 3}", n) for n in range(1, 301)]
    poison = {7, 150, 151, 299}
    for stream, n in deposits:
        await deposit(store, stream, n)
    p = Balances(poison=poison)
    runner = ProjectionRunner(store, [p], batch_size=50)
    await runner.catch_up()
    letters = await store.dead_letters("balances:v1")
    assert sorted(d.position for d in letters) == sorted(
        [e.position async for e in store.read_all() if e.data["n"] in poison]
    )
    assert all(d.attempts == p.max_attempts and "poison" in d.error for d in letters)
    assert await read_model(store, p) == expected_balances(deposits, poison)
    (status,) = await runner.status()
    assert status.dead_letters == len(poison) and status.lag_events == 0
    # still failing: letters stay
    assert await runner.retry_dead_letters() == (0, len(poison))
    p.poison = set()
    assert await runner.retry_dead_letters() == (len(poison), 0)
    assert await store.dead_letters() == []
    fixed = await read_model(store, p)
    await runner.rebuild("balances")
    assert await read_model(store, p) == fixed == expected_balances(deposits)
    assert sorted(set(await applied_counts(store, p))) == [1]


async def test_stop_policy_fails_the_projection(store: EventStore) -> None:
    for n in range(1, 11):
        await deposit(store, "acct-1", n)
    p = Balances(poison={5})
    p.on_poison = "stop"
    runner = ProjectionRunner(store, [p], batch_size=3, poll_interval=0.05)
    async with runner:
        with pytest.raises(WaitTimeout):
            await runner.wait_for(await store.head_position(), timeout=5)
        (status,) = await runner.status()
    assert status.state == "failed" and "poison 5" in (status.last_error or "")
    assert await read_model(store, p) == {"acct-1": 1 + 2 + 3 + 4}
    assert await store.dead_letters() == []


async def test_rebuild_in_place_reports_progress(store: EventStore) -> None:
    for n in range(1, 251):
        await deposit(store, f"acct-{n % 5}", n)
    p = Balances()
    runner = ProjectionRunner(store, [p], batch_size=100)
    await runner.catch_up()
    before = await read_model(store, p)
    seen: list[Progress] = []
    assert await runner.rebuild("balances", progress=seen.append) == 250
    assert await read_model(store, p) == before
    assert [s.done for s in seen] == [100, 200, 250]
    assert seen[-1].total == 250 and seen[-1].rate > 0 and seen[-1].eta_seconds == 0


async def test_rebuild_while_another_runner_runs_it_applies_each_event_once(
    store: EventStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What the console does: rebuild in place in one process while the projection's runner
    keeps running in another (here: another store connection). Both commit batches through
    the checkpoint's compare-and-set, so each event lands once in the rebuilt read model."""
    deposits = [(f"acct-{n % 5}", n) for n in range(1, 801)]
    for stream, n in deposits[:400]:
        await deposit(store, stream, n)
    backend = request.node.callspec.params["store"]
    url = f"sqlite:///{tmp_path}/p.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    async with await chronik.connect(url) as other:
        running = ProjectionRunner(other, [Balances()], batch_size=20, poll_interval=0.01)
        async with running:
            await running.wait_for(await store.head_position(), timeout=30)
            rebuilder = ProjectionRunner(store, [Balances()], batch_size=20)

            async def write_more() -> None:
                for stream, n in deposits[400:]:
                    await deposit(store, stream, n)

            await asyncio.gather(rebuilder.rebuild("balances"), write_more())
            await running.wait_for(await store.head_position(), timeout=30)
    p = Balances()
    assert await read_model(store, p) == expected_balances(deposits)
    assert sorted(set(await applied_counts(store, p))) == [1]
    assert len(await applied_counts(store, p)) == len(deposits)


async def test_blue_green_keeps_serving_the_old_version_until_the_switch(
    store: EventStore,
) -> None:
    for n in range(1, 101):
        await deposit(store, "acct-1", n)
    old = Balances(version=1)
    old_runner = ProjectionRunner(store, [old], poll_interval=0.05)
    await old_runner.catch_up()
    assert await store.get_active_version("balances") == 1
    served: list[int] = []

    def on_progress(progress: Progress) -> None:
        served.append(progress.done)

    class SlowNew(Balances):
        async def handle(self, event: RecordedEvent, tx: Tx) -> None:
            if event.data["n"] == 50:
                # halfway through the new build, the old read model still answers
                assert await store.get_active_version("balances") == 1
                assert (await read_model(store, old))["acct-1"] >= sum(range(1, 101))
                halfway.append(event.position)
            await super().handle(event, tx)

    halfway: list[int] = []
    new = SlowNew(version=2)
    async with old_runner:
        await deposit(store, "acct-1", 1000)
        applied = await rebuild_blue_green(store, old, new, batch_size=30, progress=on_progress)
        assert applied == 101 and len(halfway) == 1
        assert await store.dead_letters() == []
        assert await store.get_active_version("balances") == 2
        assert await read_model(store, new) == {"acct-1": sum(range(1, 101)) + 1000}
        for _ in range(100):
            if (await old_runner.status())[0].state == "retired":
                break
            await asyncio.sleep(0.02)
        assert (await old_runner.status())[0].state == "retired"
    with pytest.raises(Exception):  # noqa: B017 - the old table is gone
        await read_model(store, old)


class Recorder(ExternalProjection):
    name = "recorder"

    def __init__(self, fail_once: set[int] | None = None) -> None:
        self.seen: list[tuple[int, str]] = []
        self.fail_once = fail_once or set()
        self.retry_backoff = 0.001

    async def handle(self, event: RecordedEvent) -> None:
        n = event.data.get("n", 0)
        if n in self.fail_once:
            self.fail_once.discard(n)
            raise RuntimeError("flaky")
        self.seen.append((event.position, str(event.event_id)))


async def test_external_projection_is_at_least_once_with_positions(store: EventStore) -> None:
    for n in range(1, 21):
        await deposit(store, "acct-1", n)
    rec = Recorder(fail_once={10})
    runner = ProjectionRunner(store, [rec], batch_size=8)
    await runner.catch_up()
    positions = [pos for pos, _ in rec.seen]
    # the batch with the flaky event was retried event by event: its earlier events twice
    assert set(positions) == {e.position async for e in store.read_all()}
    assert len(positions) > 20
    assert await store.get_checkpoint("recorder:v1") == max(positions)
    assert await store.dead_letters() == []


async def test_inline_projection_commits_with_the_append(store: EventStore) -> None:
    p = Balances()
    p.name = "inline_balances"
    await register_inline(store, p)
    await deposit(store, "acct-1", 5)
    await store.append("acct-1", [NewEvent("Deposited", {"n": 6}), NewEvent("Other", {})])
    assert await read_model(store, p) == {"acct-1": 11}
    p.poison = {99}
    with pytest.raises(ValueError, match="poison 99"):
        await deposit(store, "acct-2", 99)
    assert await store.stream_version("acct-2") is None
    assert await read_model(store, p) == {"acct-1": 11}
    await deposit(store, "acct-2", 1)
    assert await read_model(store, p) == {"acct-1": 11, "acct-2": 1}


async def test_subscription_catch_up_then_live_with_named_checkpoint(store: EventStore) -> None:
    for n in range(5):
        await store.append(f"order-{n}", [NewEvent("Placed", {"n": n})])
    await store.append("user-1", [NewEvent("Joined", {})])
    sub = Subscription(store, name="mailer", categories=["order"], batch_size=2, poll_interval=0.05)
    got: list[int] = []

    async def consume() -> None:
        async for event in sub:
            got.append(event.data["n"])
            await sub.save_checkpoint(event.position)
            if len(got) == 7:
                sub.stop()

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    await store.append("order-9", [NewEvent("Placed", {"n": 5}), NewEvent("Placed", {"n": 6})])
    await asyncio.wait_for(task, 10)
    assert got == [0, 1, 2, 3, 4, 5, 6]
    resumed = Subscription(store, name="mailer")
    assert await resumed.start_position() == (await store.head_position())
    assert await store.get_checkpoint("mailer") == await store.head_position()


async def test_runner_rejects_bad_configuration(store: EventStore) -> None:
    with pytest.raises(ValueError):
        ProjectionRunner(store, [Balances(), Balances()])
    nameless = Balances()
    nameless.name = ""
    with pytest.raises(ValueError):
        ProjectionRunner(store, [nameless])
    with pytest.raises(chronik.ChronikError, match="no projection named"):
        await ProjectionRunner(store, [Balances()]).rebuild("nope")


def _unused(*_: Any) -> None:
    pass


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_runners_of_one_projection_racing_apply_each_event_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Three runners of the same projection, each with its own store (own connections),
    # catching up while events arrive: a batch whose checkpoint another runner moved must
    # roll back whole (Tx.advance_checkpoint), so no event is applied twice or skipped.
    from tests.integration.crash_app import Totals

    url = (
        f"sqlite:///{tmp_path}/race.db"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    stores = [await chronik.connect(url) for _ in range(3)]
    try:
        store = stores[0]
        runners = [
            ProjectionRunner(s, [Totals()], batch_size=7, poll_interval=0.02) for s in stores
        ]
        await runners[0].setup()
        for runner in runners:
            await runner.start()
        for n in range(60):
            await store.append(f"acct-{n % 5}", [NewEvent("Added", {"n": k}) for k in range(3)])
            if n % 10 == 0:
                await asyncio.sleep(0.01)
        head = await store.head_position()
        for runner in runners:
            await runner.wait_for(head, timeout=30)
        for runner in runners:
            await runner.stop()
        applied = await require(store, SqlStore).query(f"SELECT n FROM {Totals().table('applied')}")
    finally:
        for s in stores:
            await s.close()
    assert len(applied) == 180
    assert {row[0] for row in applied} == {1}


class BrokenSql(Balances):
    """Balances whose handler runs SQL the database rejects for some events."""

    name = "broken_sql"

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        if event.data["n"] in self.poison:
            await tx.execute(f"INSERT INTO {self.table('missing')} VALUES (1)")
        await super().handle(event, tx)


async def test_a_handler_sql_error_is_a_poison_event_not_a_lost_connection(
    store: EventStore,
) -> None:
    # The database rejecting a handler's SQL is the handler's fault: dead-lettered after its
    # retries (as a Python exception is), not retried forever as "store unavailable".
    deposits = [(f"acct-{n % 3}", n) for n in range(1, 41)]
    for stream, n in deposits:
        await deposit(store, stream, n)
    p = BrokenSql(poison={5, 30})
    runner = ProjectionRunner(store, [p], batch_size=10)
    await asyncio.wait_for(runner.catch_up(), 30)
    letters = await store.dead_letters(p.checkpoint_name)
    assert sorted(d.version for d in letters) == [1, 9]  # n=5 → acct-2 v1; n=30 → acct-0 v9
    assert await read_model(store, p) == expected_balances(deposits, {5, 30})
