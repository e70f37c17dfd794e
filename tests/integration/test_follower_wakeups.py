"""No lost wake-ups, read-your-writes across processes, poison in the follower, and saga
deadlines on the database's clock."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik import EventStore, NewEvent, RecordedEvent
from chronik.projections import (
    ExternalProjection,
    Pending,
    ProjectionRunner,
    fresh_or_pending,
    wait_for_projection,
)
from chronik.sagas import Deadline, DeadlineWorker, Reaction, Saga, SagaRunner
from chronik.store import SqlStore, require
from chronik.subscriptions import Page
from chronik.workers import Follower

HOPS = 100


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/wake.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(url) as s:
        yield s


class Relay(Follower):
    """Handles hop n by appending hop n+1, which it must handle next: the append lands while
    this follower is busy with its page, the case a wake-up armed too late misses."""

    def __init__(self, store: EventStore, done: asyncio.Event) -> None:
        super().__init__(store, checkpoint_name="hops", categories=["hop"], poll_interval=30.0)
        self.done = done
        self.seen: list[int] = []

    async def handle_page(self, page: Page) -> int:
        for event in page.events:
            n = int(event.data["n"])
            self.seen.append(n)
            if n + 1 < HOPS:
                await self.store.append(f"hop-{n + 1}", [NewEvent("Hop", {"n": n + 1})])
            else:
                self.done.set()
        return len(page.events)


async def test_an_append_during_a_page_wakes_the_follower(store: EventStore) -> None:
    done = asyncio.Event()
    relay = Relay(store, done)
    await relay.start()
    try:
        await store.append("hop-0", [NewEvent("Hop", {"n": 0})])
        # with the 30 s poll interval, one lost wake-up would take longer than this bound
        await asyncio.wait_for(done.wait(), 25)
    finally:
        await relay.stop()
    assert relay.seen == list(range(HOPS))
    assert relay.subscription is not None
    assert relay.subscription.poll_expiries == 0


class Upcasting(Follower):
    def __init__(self, store: EventStore, registry: chronik.EventRegistry) -> None:
        super().__init__(store, checkpoint_name="upcasting", categories=["acct"], registry=registry)
        self.got: list[int] = []

    async def handle_page(self, page: Page) -> int:
        self.got.extend(int(e.data["cents"]) for e in page.events)
        return len(page.events)


async def test_an_event_that_cannot_be_upcast_is_dead_lettered_not_a_stop(
    url: str, tmp_path: Path
) -> None:
    if url == "memory://":
        url = f"sqlite:///{tmp_path}/poison.db"  # dead letters need SQL
    registry = chronik.EventRegistry()

    @registry.event("Deposited", version=2)
    @dataclass(frozen=True)
    class Deposited:
        cents: int

    @registry.upcaster("Deposited", from_version=1)
    def up(data: dict[str, Any]) -> dict[str, Any]:
        if data["cents"] == 13:
            raise ValueError("cursed amount")
        return data

    async with await chronik.connect(url) as store:
        for cents in (1, 13, 2):
            await store.append("acct-1", [NewEvent("Deposited", {"cents": cents})])
        follower = Upcasting(store, registry)
        assert await follower.catch_up() == 2  # the dead letter is not counted as handled
        assert follower.got == [1, 2]
        assert follower.dead_lettered == 1
        (letter,) = await store.dead_letters("upcasting")
        assert letter.version == 1 and "cursed amount" in letter.error
        assert await follower.catch_up() == 0  # not stuck on that page, nothing twice
        assert await store.get_checkpoint("upcasting") == await store.head_position()


_WORKER = """
import asyncio, sys
import chronik
from tests.integration.crash_app import Totals
from chronik.projections import ProjectionRunner

async def main(url):
    async with await chronik.connect(url) as store:
        runner = ProjectionRunner(store, [Totals()], poll_interval=0.05)
        async with runner:
            print("running", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that two processes can open."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return str(request.getfixturevalue("pg_url"))


async def test_a_web_process_waits_for_a_projection_run_elsewhere(shared_url: str) -> None:
    url = shared_url
    async with await chronik.connect(url) as store:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        assert worker.stdin is not None and worker.stdout is not None

        async def read() -> int:
            return int(
                (await require(store, SqlStore).query("SELECT count(*) FROM applied_v1"))[0][0]
            )

        try:
            assert (await worker.stdout.readline()).strip() == b"running"
            for n in range(20):
                result = await store.append(f"acct-{n % 3}", [NewEvent("Added", {"n": n})])
                await wait_for_projection(store, "totals", result.position, timeout=20)
                assert await read() == n + 1  # fresh as soon as the checkpoint passed it
            fresh = await fresh_or_pending(store, result.position, read, projection="totals")
            assert fresh == 20
        finally:
            worker.stdin.close()
            assert await asyncio.wait_for(worker.wait(), 20) == 0
        # stopped: a new event stays pending, named by position
        later = await store.append("acct-9", [NewEvent("Added", {"n": 99})])
        pending = await fresh_or_pending(
            store, later.position, read, projection="totals", timeout=0.05
        )
        assert pending == Pending(later.position, "totals")


def _deadline_saga() -> Saga[None]:
    def react(state: None, event: RecordedEvent) -> Reaction:
        if event.type == "Started":
            return Reaction(schedule=[Deadline("soon", 1.0)])
        return Reaction(complete=event.type == "SagaDeadlineExpired")

    return Saga(
        name="timer",
        categories=["job"],
        correlate=lambda e: e.stream_id.partition("-")[2],
        react=react,
        initial_state=lambda: None,
    )


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
async def test_saga_deadlines_use_the_database_clock(
    url: str, tmp_path: Path, skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    if url == "memory://":
        url = f"sqlite:///{tmp_path}/timer.db"
    saga = _deadline_saga()
    async with await chronik.connect(url) as store:
        await store.append("job-1", [NewEvent("Started", {})])
        assert await SagaRunner(store, saga).catch_up() == 1  # schedules "soon" (1 s)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + skew)  # this worker's clock is off
        deadlines = DeadlineWorker(store, [saga])
        # ahead by an hour: not fired early (it was fired at once before)
        assert skew < 0 or await deadlines.run_once() == 0
        fired = 0
        for _ in range(200):  # behind by an hour: still fired about a second later
            fired = await deadlines.run_once()
            if fired:
                break
            await asyncio.sleep(0.05)
        assert fired == 1


class Slow(Follower):
    def __init__(self, store: EventStore) -> None:
        super().__init__(store, checkpoint_name="slow", categories=["flood"], batch_size=5)
        self.seen = 0

    async def handle_page(self, page: Page) -> int:
        self.seen += len(page.events)
        return len(page.events)


async def test_catch_up_returns_while_events_keep_arriving(store: EventStore) -> None:
    """A writer faster than the follower: catch_up() stops at the head as of its call."""
    for n in range(40):
        await store.append(f"flood-{n}", [NewEvent("F", {"n": n})])
    before = await store.head_position()
    stop = asyncio.Event()

    async def flood() -> int:
        appended = 0
        while not stop.is_set() and appended < 400:  # bounded: 400 appends of 20 at most
            await store.append("flood-x", [NewEvent("F", {}) for _ in range(20)])
            appended += 1
            await asyncio.sleep(0)  # let the follower run between appends
        return appended

    writer = asyncio.ensure_future(flood())
    follower = Slow(store)
    try:
        handled = await asyncio.wait_for(follower.catch_up(), 120)
    finally:
        stop.set()
        appended = await writer
    assert handled >= 40
    assert follower.checkpoint >= before
    assert appended < 400  # it returned while the writer was still writing


class Seen(Follower):
    def __init__(self, store: EventStore) -> None:
        super().__init__(store, checkpoint_name="seen", categories=["ping"], poll_interval=30.0)
        self.arrived = asyncio.Event()

    async def handle_page(self, page: Page) -> int:
        if page.events:
            self.arrived.set()
        return len(page.events)


@pytest.mark.postgres
async def test_an_event_held_back_by_an_older_transaction_is_read_when_it_ends(
    pg_url: str, raw: Any
) -> None:
    """PostgreSQL readers see only what lies below the oldest open transaction, and that
    transaction's end sends no NOTIFY: the follower must look again soon by itself, not
    after its poll interval (30 s here; before the fix a hop took the whole interval)."""
    async with await chronik.connect(pg_url) as store, await chronik.connect(pg_url) as writer:
        follower = Seen(store)
        await follower.start()
        try:
            async with raw.transaction():
                await raw.execute("SELECT pg_current_xact_id()")  # older than the append
                await writer.append("ping-1", [NewEvent("Ping", {})])
                await asyncio.sleep(0.05)
                assert not follower.arrived.is_set()  # not readable while it is open
            await asyncio.wait_for(follower.arrived.wait(), 20)
        finally:
            await follower.stop()
        assert follower.subscription is not None
        assert follower.subscription.poll_expiries == 0


_APPENDER = """
import asyncio, sys
import chronik

async def main(url):
    async with await chronik.connect(url) as store:
        await store.append("ping-2", [chronik.NewEvent("Ping", {})])

asyncio.run(main(sys.argv[1]))
"""


async def test_an_append_in_another_process_wakes_the_follower(shared_url: str) -> None:
    """On SQLite by the data_version watcher, on PostgreSQL by NOTIFY: not the 30 s poll."""
    async with await chronik.connect(shared_url) as store:
        follower = Seen(store)
        await follower.start()
        try:
            await asyncio.sleep(0.05)  # idle, waiting
            appender = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _APPENDER, shared_url
            )
            assert await asyncio.wait_for(appender.wait(), 30) == 0
            await asyncio.wait_for(follower.arrived.wait(), 20)
        finally:
            await follower.stop()
        assert follower.subscription is not None
        assert follower.subscription.poll_expiries == 0


async def test_an_idle_follower_reports_a_lost_store_and_its_return() -> None:
    async with await chronik.connect("memory://") as store:
        follower = Seen(store)
        follower.poll_interval = 0.05
        read_page = store.read_page
        failures = [3]
        states: list[str] = []

        async def flaky(**kwargs: Any) -> Any:
            if failures[0] > 0:
                failures[0] -= 1
                raise chronik.StoreUnavailable("the database restarts")
            return await read_page(**kwargs)

        await follower.start()
        try:
            store.read_page = flaky  # type: ignore[method-assign]
            await store.append("ping-3", [NewEvent("Ping", {})])
            async with follower.progress:
                while not follower.arrived.is_set():
                    states.append(follower.state)
                    await asyncio.wait_for(follower.progress.wait(), 20)
        finally:
            await follower.stop()
    assert "retrying" in states
    assert follower.resumed == 1
    assert follower.last_error is not None and "restarts" in follower.last_error


class Mailer(ExternalProjection):
    name = "mailer"

    async def handle(self, event: RecordedEvent) -> None:
        pass


async def test_waiting_through_the_store_for_an_external_or_unknown_projection(
    store: EventStore,
) -> None:
    result = await store.append("acct-1", [NewEvent("Opened", {})])

    async def read() -> str:
        return "fresh"

    # never set up: not fresh, and not an error for a web handler
    assert await fresh_or_pending(store, result.position, read, projection="nobody") == Pending(
        result.position, "nobody"
    )
    runner = ProjectionRunner(store, [Mailer()])
    assert await runner.catch_up() == 1
    await wait_for_projection(store, "mailer", result.position, timeout=5)
    assert await fresh_or_pending(store, result.position, read, projection="mailer") == "fresh"


async def test_stop_twice_at_once_then_start_again(store: EventStore) -> None:
    follower = Seen(store)
    follower.poll_interval = 0.05
    await follower.start()
    await asyncio.gather(follower.stop(), follower.stop())  # both wait for the one stop
    assert follower.state == "stopped"
    await follower.start()
    await store.append("ping-5", [NewEvent("Ping", {})])
    await asyncio.wait_for(follower.arrived.wait(), 20)
    await follower.stop()
    assert follower.state == "stopped" and follower.handled == 1


class Sloppy(Follower):
    async def handle_page(self, page: Page) -> int:
        return None  # type: ignore[return-value]


async def test_a_handle_page_that_returns_no_count_fails_the_worker_clearly(
    store: EventStore,
) -> None:
    await store.append("ping-6", [NewEvent("Ping", {})])
    sloppy = Sloppy(store, checkpoint_name="sloppy", poll_interval=0.05)
    await sloppy.start()
    with pytest.raises(TypeError, match="must return an int"):
        await sloppy.wait()  # the worker's error reaches whoever waits for it
    assert sloppy.state == "failed"
    assert sloppy.failure() is not None and "must return an int" in str(sloppy.failure())
    await sloppy.stop()


async def test_catch_up_on_a_running_follower_waits_for_it(store: EventStore) -> None:
    follower = Seen(store)
    follower.poll_interval = 0.05
    await follower.start()
    try:
        for n in range(30):
            await store.append(f"ping-{n}", [NewEvent("Ping", {})])
        handled = await asyncio.wait_for(follower.catch_up(), 20)  # no second reader racing
        assert follower.caught_up_to >= await store.head_position()
        assert follower.handled == 30 and handled <= 30
    finally:
        await follower.stop()
