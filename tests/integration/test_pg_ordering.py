"""T3: a reader of ``read_all`` never skips, never reorders, under out-of-order commits.

Appends hold their transactions open for a while (through the store's ``_before_commit``
testing hook), some roll back, so transactions commit in another order than they began. A
reader pages ``read_all(after=last_seen)`` meanwhile. Checked against a full table scan at the
end: the reader got every committed event, once, in strictly increasing position order.

Each scenario also runs a deliberately naive reader over an insertion-order key (a bigserial
filled at insert time, read with ``> last`` and no visibility rule) which the same check must
catch skipping: so these tests are known to be able to fail.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from chronik.events import NewEvent
from chronik.store.postgres import PostgresEventStore, split_schema

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

WRITERS = 16
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class Rollback(Exception):
    """Raised by the failpoint to roll an append back."""


@dataclass
class Hold:
    """Holds one append's transaction open after its INSERT until released."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    rollback: bool = False


_hold: contextvars.ContextVar[Hold | None] = contextvars.ContextVar("hold", default=None)
_plan: contextvars.ContextVar[tuple[float, bool] | None] = contextvars.ContextVar(
    "plan", default=None
)


async def _failpoint() -> None:
    """The store's ``_before_commit``: what to do is set per task in context variables."""
    hold = _hold.get()
    if hold is not None:
        hold.entered.set()
        await hold.release.wait()
        if hold.rollback:
            raise Rollback
    plan = _plan.get()
    if plan is not None:
        delay, rollback = plan
        await asyncio.sleep(delay)
        if rollback:
            raise Rollback


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(pg_url, pool_min=2, pool_max=WRITERS + 4)
    s._before_commit = _failpoint
    try:
        yield s
    finally:
        await s.close()


class OurReader:
    """Pages ``read_all(after=last)`` and records what it was given."""

    def __init__(self, store: PostgresEventStore, limit: int | None = None) -> None:
        self.store = store
        self.limit = limit
        self.last = 0
        self.positions: list[int] = []
        self.ids: list[uuid.UUID] = []

    async def poll(self) -> list[uuid.UUID]:
        got = []
        async for ev in self.store.read_all(after=self.last, limit=self.limit):
            self.positions.append(ev.position)
            self.ids.append(ev.event_id)
            got.append(ev.event_id)
            self.last = ev.position
        return got


class NaiveReader:
    """The negative control: ``naive_seq > last`` over a bigserial, no visibility rule."""

    def __init__(self, conn: Conn, schema: str) -> None:
        self.conn = conn
        self.sql = (
            f'SELECT naive_seq, event_id FROM "{schema}".events '
            f"WHERE naive_seq > %s ORDER BY naive_seq"
        )
        self.last = 0
        self.ids: list[uuid.UUID] = []

    @staticmethod
    async def install(conn: Conn, schema: str) -> None:
        await conn.execute(f'ALTER TABLE "{schema}".events ADD COLUMN naive_seq bigserial')

    async def poll(self) -> list[uuid.UUID]:
        cur = await self.conn.execute(self.sql, (self.last,))
        got = []
        for seq, event_id in await cur.fetchall():
            assert isinstance(seq, int) and isinstance(event_id, uuid.UUID)
            self.ids.append(event_id)
            got.append(event_id)
            self.last = seq
        return got


async def committed(conn: Conn, schema: str) -> list[tuple[int, uuid.UUID]]:
    """Every stored event, by a full table scan (no visibility rule)."""
    cur = await conn.execute(f'SELECT position, event_id FROM "{schema}".events ORDER BY position')
    rows = await cur.fetchall()
    return [(int(p), e) for p, e in rows]


def schema_of(pg_url: str) -> str:
    _, schema = split_schema(pg_url)
    assert schema is not None
    return schema


async def start_held(
    store: PostgresEventStore, stream_id: str, events: list[NewEvent], *, rollback: bool = False
) -> tuple[Hold, asyncio.Task[object]]:
    """Start an append and return once its INSERT ran (its xid is taken) and it is held."""
    hold = Hold(rollback=rollback)

    async def run() -> object:
        _hold.set(hold)
        return await store.append(stream_id, events)

    task: asyncio.Task[object] = asyncio.create_task(run())
    await asyncio.wait_for(hold.entered.wait(), 10)
    return hold, task


def check_reader(reader: OurReader, stored: list[tuple[int, uuid.UUID]]) -> None:
    """Set and sequence equality with the table, strictly increasing, no duplicates."""
    assert reader.positions == sorted(set(reader.positions)), "out of order or duplicated"
    assert [(p, e) for p, e in zip(reader.positions, reader.ids, strict=True)] == stored


# -- deterministic cases ------------------------------------------------------------------


async def test_held_low_xid_blocks_reader_then_is_delivered_once_naive_skips_it(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    schema = schema_of(pg_url)
    await NaiveReader.install(raw, schema)
    ours, naive = OurReader(store), NaiveReader(raw, schema)
    seed = await store.append("seed-1", [NewEvent("Seeded")])
    assert await ours.poll() != [] and await naive.poll() != []

    a = NewEvent("A")
    hold, task_a = await start_held(store, "a-1", [a])  # xid A taken, uncommitted
    b = NewEvent("B")
    res_b = await store.append("b-1", [b])  # later xid, commits first
    assert res_b.position > seed.position

    assert await ours.poll() == [], "reader passed a transaction that is still open"
    assert await store.head_position() == seed.position
    assert await naive.poll() == [b.event_id]  # naive sees B and moves past A's seq

    hold.release.set()
    res_a = await task_a
    assert await ours.poll() == [a.event_id, b.event_id]  # A's xid is lower: A first
    assert await naive.poll() == []  # ... and naive never sees A: the skip it must show
    assert a.event_id not in naive.ids

    stored = await committed(raw, schema)
    check_reader(ours, stored)
    assert {e for _, e in stored} - set(naive.ids) == {a.event_id}
    assert res_a is not None and await store.head_position() == res_b.position


async def test_rolled_back_held_transaction_lets_reader_proceed(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    ours = OurReader(store)
    a = NewEvent("A")
    hold, task_a = await start_held(store, "a-1", [a], rollback=True)
    b = NewEvent("B")
    await store.append("b-1", [b])
    assert await ours.poll() == []
    hold.release.set()
    with pytest.raises(Rollback):
        await task_a
    assert await ours.poll() == [b.event_id]  # at once: nothing is left below the horizon
    stored = await committed(raw, schema_of(pg_url))
    check_reader(ours, stored)
    assert a.event_id not in {e for _, e in stored}


async def test_multi_event_held_transaction_is_delivered_whole_and_in_order(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    ours = OurReader(store)
    batch = [NewEvent("A", {"i": i}) for i in range(3)]
    hold, task_a = await start_held(store, "a-1", batch)
    b = NewEvent("B")
    await store.append("b-1", [b])
    assert await ours.poll() == []
    hold.release.set()
    await task_a
    assert await ours.poll() == [*(e.event_id for e in batch), b.event_id]
    check_reader(ours, await committed(raw, schema_of(pg_url)))


async def test_several_held_transactions_released_in_reverse(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    schema = schema_of(pg_url)
    await NaiveReader.install(raw, schema)
    ours, naive = OurReader(store), NaiveReader(raw, schema)
    held = []
    for i in range(3):
        ev = NewEvent("Slow", {"i": i})
        hold, task = await start_held(store, f"slow-{i}", [ev])
        held.append((ev, hold, task))
    fast = NewEvent("Fast")
    await store.append("fast-1", [fast])
    await naive.poll()
    for _ev, hold, task in reversed(held):
        assert await ours.poll() == [], "reader passed the lowest open transaction"
        hold.release.set()
        await task
        await naive.poll()
        # Whatever the naive reader sees now is after the newest seq it saw: it skips.
    assert await ours.poll() == [*(ev.event_id for ev, _, _ in held), fast.event_id]
    stored = await committed(raw, schema)
    check_reader(ours, stored)
    assert len({e for _, e in stored} - set(naive.ids)) == 3


async def test_open_write_transaction_elsewhere_stalls_the_horizon_until_it_ends(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    """The documented caveat: any transaction holding an xid stalls readers (not skips)."""
    conninfo, _ = split_schema(pg_url)
    ours = OurReader(store)
    async with await psycopg.AsyncConnection.connect(conninfo) as other:
        await other.execute("SELECT pg_current_xact_id()")  # takes an xid, stays open
        ev = NewEvent("AfterTheOpenOne")
        await store.append("x-1", [ev])
        assert await ours.poll() == []
        await other.rollback()
    assert await ours.poll() == [ev.event_id]
    check_reader(ours, await committed(raw, schema_of(pg_url)))


async def test_open_read_only_transaction_elsewhere_does_not_stall(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    """A long report or pg_dump holds no transaction id, so readers keep moving."""
    conninfo, _ = split_schema(pg_url)
    ours = OurReader(store)
    async with await psycopg.AsyncConnection.connect(conninfo) as report:
        await report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await report.execute(f'SELECT count(*) FROM "{schema_of(pg_url)}".events')
        ev = NewEvent("DuringTheReport")
        await store.append("x-1", [ev])
        assert await ours.poll() == [ev.event_id]
        await report.rollback()
    check_reader(ours, await committed(raw, schema_of(pg_url)))


# -- randomised out-of-order commits --------------------------------------------------------


@dataclass
class History:
    ok: dict[uuid.UUID, int] = field(default_factory=dict)  # event id -> acked position
    rolled_back: set[uuid.UUID] = field(default_factory=set)
    attempted: set[uuid.UUID] = field(default_factory=set)


async def _until(done: asyncio.Event, step: Callable[[], Awaitable[object]]) -> None:
    while not done.is_set():
        await step()
        await asyncio.sleep(0.001)


async def test_random_out_of_order_commits_never_skip_or_reorder(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    seed = int(os.environ.get("CHRONIK_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    schema = schema_of(pg_url)
    await NaiveReader.install(raw, schema)
    conninfo, _ = split_schema(pg_url)
    naive_conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    naive = NaiveReader(naive_conn, schema)
    # One reader per page size: whole pages, one event a call, ten a call.
    readers_ours = [OurReader(store), OurReader(store, limit=1), OurReader(store, limit=10)]
    history = History()
    per_writer = 40
    plans = [
        [(rng.uniform(0, 0.05), rng.random() < 0.05, rng.randint(1, 3)) for _ in range(per_writer)]
        for _ in range(WRITERS)
    ]

    async def writer(w: int) -> None:
        for i, (delay, rollback, size) in enumerate(plans[w]):
            batch = [NewEvent("Wrote", {"w": w, "i": i, "k": k}) for k in range(size)]
            history.attempted.update(e.event_id for e in batch)
            _plan.set((delay, rollback))
            try:
                res = await store.append(f"w{w}-{i % 5}", batch)
            except Rollback:
                history.rolled_back.update(e.event_id for e in batch)
            else:
                history.ok[batch[-1].event_id] = res.position
                history.ok.update((e.event_id, 0) for e in batch[:-1])

    done = asyncio.Event()
    readers = [asyncio.create_task(_until(done, r.poll)) for r in readers_ours]
    readers.append(asyncio.create_task(_until(done, naive.poll)))
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))), 60)
    finally:
        done.set()
        await asyncio.gather(*readers)
    stored = await committed(raw, schema)
    # Drain: other sessions in the cluster may hold the horizon back for a moment.
    for _ in range(200):
        for r in readers_ours:
            while await r.poll():
                pass
        await naive.poll()
        if all(r.positions and r.positions[-1] >= stored[-1][0] for r in readers_ours):
            break
        await asyncio.sleep(0.05)
    await naive_conn.close()

    stored_ids = {e for _, e in stored}
    assert len(stored) == len(stored_ids)
    assert set(history.ok) == stored_ids, f"seed {seed}: acked != stored"
    assert not (history.rolled_back & stored_ids), f"seed {seed}: a rolled-back event is stored"
    assert stored_ids <= history.attempted
    for ours in readers_ours:
        assert not (history.rolled_back & set(ours.ids))
        assert len(ours.ids) == len(set(ours.ids)), f"seed {seed}: duplicate delivery"
        check_reader(ours, stored)  # every committed event, in position order, none skipped
    # The negative control: the same check catches the naive reader skipping.
    skipped = stored_ids - set(naive.ids)
    assert len(naive.ids) == len(set(naive.ids))
    assert skipped, f"seed {seed}: the naive reader skipped nothing; the test cannot fail"
    print(
        f"seed {seed}: {len(stored)} events committed, {len(history.rolled_back)} rolled back, "
        f"naive reader skipped {len(skipped)}, ours (3 page sizes) skipped 0"
    )
