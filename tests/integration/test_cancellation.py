"""Cancellation safety of every backend (issue 13): a cancelled caller never wedges the store.

Each operation is started as a task and cancelled after ``k`` steps; ``k`` grows until an
operation finishes before its cancellation. A step is either

* ``loop``: one turn of the event loop (``asyncio.sleep(0)``), so on SQLite the writer
  thread's job is caught at every stage the loop can see (queued, running, done); or
* ``awaits``: one suspension of the operation's task (counted by wrapping its coroutine),
  so the cancellation lands at each of its await points exactly once, however slow the
  threads or the server are.

A third flavour (``loop-again``) keeps cancelling at every further loop step, so cleanup
code that itself awaits is cancelled too; and a randomized one uses ``asyncio.wait_for``
with tiny timeouts.

After every cancellation:

* the cancelled task ended with ``CancelledError`` or its normal result, nothing else;
* retrying the same append (same event ids, same expected version) either returns the
  original result (it had committed) or writes it now, and exactly one copy is stored;
* a transaction's writes are all there or none (checkpoint and read-model row together);
* a new append, and reads, work; on SQLite ANOTHER PROCESS can append to and read the same
  file (no "database is locked"); on PostgreSQL every pooled connection is usable (the pool
  has 2 connections, both are taken at once, so a leaked or broken one fails the check).

At the end, set algebra over all attempted event ids against a full read: nothing lost,
nothing duplicated, nothing unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import uuid
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from chronik.errors import StreamNotFound
from chronik.events import NO_STREAM, AppendResult, NewEvent, RecordedEvent
from chronik.store import SqlStore, require
from chronik.store.memory import MemoryEventStore
from chronik.store.protocol import READ_PAGE_SIZE, EventStore, Tx
from chronik.store.sqlite import SqliteEventStore

MAX_STEPS = 20_000
"""More loop steps than any operation here needs; reaching it fails the test."""
POOL_MAX = 2
BIG = 1_200
"""Events read by the read tests: more than two pages, so the read-ahead is used."""

# A second process on the same SQLite file: for each stream name on stdin, append one event
# and read the stream back; one JSON line per request on stdout.
_OTHER_PROCESS = r"""
import asyncio, json, sys
from chronik.events import NewEvent
from chronik.store.sqlite import SqliteEventStore

async def main(path):
    store = await SqliteEventStore.open(path, busy_timeout_ms=10_000, migrate=False)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            stream = line.strip()
            try:
                result = await store.append(stream, [NewEvent("FromOtherProcess")])
                read = [e.position async for e in store.read_stream(stream)]
                reply = {"ok": read == [result.position]}
            except Exception as exc:
                reply = {"ok": False, "error": repr(exc)}
            print(json.dumps(reply), flush=True)
    finally:
        await store.close()

asyncio.run(main(sys.argv[1]))
"""


class OtherProcess:
    """A long-lived helper process that appends to and reads the same SQLite file."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, path: Path) -> OtherProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _OTHER_PROCESS,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def append_and_read(self, stream: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{stream}\n".encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        assert line, f"the other process exited (code {await self.proc.wait()})"
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


@dataclass
class Env:
    backend: str
    store: EventStore
    other: OtherProcess | None = None
    tag: str = field(default_factory=lambda: f"cx{uuid.uuid4().hex[:8]}")
    attempted: set[uuid.UUID] = field(default_factory=set)
    streams: set[str] = field(default_factory=set)
    checks: int = 0

    @property
    def sql(self) -> bool:
        return self.backend != "memory"

    def stream(self, name: str) -> str:
        stream = f"{self.tag}-{name}"
        self.streams.add(stream)
        return stream


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    backend: str = request.param
    other = None
    store: EventStore
    if backend == "memory":
        store = MemoryEventStore()
    elif backend == "sqlite":
        path = tmp_path / "events.db"
        store = await SqliteEventStore.open(path)
        other = await OtherProcess.start(path)
    else:
        from chronik.store.postgres import PostgresEventStore

        pg_url: str = request.getfixturevalue("pg_url")
        store = await PostgresEventStore.open(
            pg_url, pool_min=POOL_MAX, pool_max=POOL_MAX, pool_timeout=10
        )
    try:
        if backend != "memory":
            async with store.transaction() as tx:
                await tx.execute(
                    "CREATE TABLE IF NOT EXISTS cx_model (key TEXT NOT NULL, note TEXT NOT NULL)"
                )
        yield Env(backend, store, other)
    finally:
        if other is not None:
            await other.stop()
        await store.close()


# -- the cancelling driver ------------------------------------------------------------------


Op = Callable[[], Coroutine[Any, Any, Any]]
MODES = ["loop", "awaits", "loop-again"]


@dataclass
class Outcome:
    finished_first: bool
    """The operation had ended before it was cancelled (the last iteration)."""
    result: Any = None
    cancelled: bool = False


class CountingAwaits:
    """Awaits a coroutine on its behalf, counting how often it suspends its task."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.suspended = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = self.coro.send(value) if error is None else self.coro.throw(error)
            except StopIteration as stop:
                return stop.value
            self.suspended += 1
            try:
                value, error = (yield step), None  # the task waits on what the coroutine awaits
            except BaseException as exc:
                value, error = None, exc


async def cancel_after(op: Op, steps: int, mode: str) -> Outcome:
    """Run ``op`` as a task, cancel it after ``steps`` steps of ``mode`` (with
    ``loop-again``: at every further loop step too, until it ends), wait for its end."""
    if mode == "awaits":
        counter = CountingAwaits(op())

        async def counted() -> Any:
            return await counter

        task = asyncio.ensure_future(counted())
        while counter.suspended < steps and not task.done():
            await asyncio.sleep(0)
    else:
        task = asyncio.ensure_future(op())
        for _ in range(steps):
            await asyncio.sleep(0)
    finished_first = task.done()
    task.cancel()
    while mode == "loop-again" and not task.done():
        await asyncio.sleep(0)
        task.cancel()
    await asyncio.wait([task])
    if mode == "awaits":
        counter.coro.close()  # cancelled before it started: never awaited, and that is fine
    if task.cancelled():
        return Outcome(finished_first, cancelled=True)
    error = task.exception()
    if error is not None:  # a cancellation must end as CancelledError, not as another error
        raise AssertionError(f"cancelled at step {steps}, the operation raised {error!r}") from (
            error
        )
    return Outcome(finished_first, task.result())


async def every_step(
    body: Callable[[int], Awaitable[tuple[Op, Any]]],
    check: Callable[[int, Any, Outcome], Awaitable[None]],
    mode: str,
) -> int:
    """For k = 0, 1, 2, ...: prepare (``body(k)`` returns the operation and a context),
    cancel the operation after k steps, then ``check(k, context, outcome)``; stop after the
    first operation that finished before being cancelled. Returns how many were cancelled."""
    for k in range(MAX_STEPS):
        op, context = await body(k)
        outcome = await cancel_after(op, k, mode)
        await check(k, context, outcome)
        if outcome.finished_first:
            return k
    raise AssertionError(f"the operation did not finish within {MAX_STEPS} loop steps")


# -- what must hold after every cancellation ------------------------------------------------


async def collect(it: AsyncIterator[RecordedEvent]) -> list[RecordedEvent]:
    return [e async for e in it]


async def assert_usable(env: Env) -> None:
    """A new append and reads work; the store is not wedged or short of connections."""
    store = env.store
    env.checks += 1
    stream = env.stream(f"probe-{env.checks}")
    event = NewEvent("Probe", {"n": env.checks})
    env.attempted.add(event.event_id)
    result = await store.append(stream, [event], expected_version=NO_STREAM)
    assert result.version == 0
    (got,) = await collect(store.read_stream(stream))
    assert (got.event_id, got.position) == (event.event_id, result.position)
    if env.backend != "postgres":  # (PostgreSQL's read_all may trail behind the horizon)
        (seen,) = await collect(store.read_all(after=result.position - 1, limit=1))
        assert seen.event_id == event.event_id
    if env.other is not None:
        other = env.stream(f"other-{env.checks}")
        reply = await env.other.append_and_read(other)
        assert reply == {"ok": True}, f"another process cannot use the file: {reply}"
        (theirs,) = await collect(store.read_stream(other))
        env.attempted.add(theirs.event_id)
    if env.backend == "postgres":
        await _all_connections_work(env.store)


async def _all_connections_work(store: EventStore) -> None:
    """Hold every pooled connection at once, each in a transaction that runs a statement: a
    connection leaked by a cancelled caller leaves one of them waiting (pool timeout)."""
    barrier = asyncio.Barrier(POOL_MAX)

    async def hold() -> None:
        async with store.transaction() as tx:
            assert await tx.fetchone("SELECT 1") == (1,)
            await barrier.wait()

    await asyncio.gather(*(hold() for _ in range(POOL_MAX)))


async def assert_set_algebra(env: Env) -> None:
    """Every attempted event stored exactly once, nothing else stored, over a full read of
    every stream the test touched (the committed set)."""
    stored: Counter[uuid.UUID] = Counter()
    for stream in sorted(env.streams):
        with contextlib.suppress(StreamNotFound):  # never written (cancelled, no retry)
            for ev in await collect(env.store.read_stream(stream)):
                stored[ev.event_id] += 1
    duplicated = {i for i, n in stored.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} events stored twice"
    assert set(stored) - env.attempted == set(), "events stored that nobody appended"
    assert env.attempted - set(stored) == set(), "appended events lost"


# -- appends ---------------------------------------------------------------------------------


class ModelProjection:
    """An inline projection: a checkpoint per event (every backend) and, on SQL backends, a
    read-model row; with an await between, so the transaction spans more than one step."""

    def __init__(self, sql: bool) -> None:
        self.sql = sql

    def accepts(self, event: RecordedEvent) -> bool:
        return True

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        if self.sql:
            await tx.execute(
                "INSERT INTO cx_model (key, note) VALUES (:key, 'inline')",
                {"key": str(event.event_id)},
            )
        await asyncio.sleep(0)
        await tx.set_checkpoint(f"inline-{event.event_id}", event.position)


async def _model_rows(env: Env, keys: Sequence[str]) -> Counter[str]:
    if not env.sql:
        return Counter()
    rows = await require(env.store, SqlStore).query(
        "SELECT key FROM cx_model WHERE note IN ('inline', 'tx')"
    )
    wanted = set(keys)
    return Counter(str(r[0]) for r in rows if r[0] in wanted)


def _batch(size: int) -> list[NewEvent]:
    return [NewEvent("Cancelled", {"part": i, "nonce": uuid.uuid4().hex}) for i in range(size)]


async def _check_append(
    env: Env,
    stream: str,
    prefix: list[uuid.UUID],
    events: list[NewEvent],
    expected: int,
    result: AppendResult | None,
    inline: bool,
) -> None:
    store = env.store
    retry = await store.append(stream, events, expected_version=expected)
    if result is not None:  # it finished: the retry returns the original result
        assert retry == result
    stored = await collect(store.read_stream(stream))
    assert [e.event_id for e in stored] == [*prefix, *(e.event_id for e in events)]
    assert (retry.position, retry.version) == (stored[-1].position, stored[-1].version)
    if inline:  # the projection committed with the events, once
        checkpoints = await store.checkpoints()
        for ev in stored[len(prefix) :]:
            assert checkpoints.get(f"inline-{ev.event_id}") == ev.position
        if env.sql:
            keys = [str(e.event_id) for e in events]
            assert await _model_rows(env, keys) == Counter(keys)
    await assert_usable(env)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline-projection"])
@pytest.mark.parametrize("size", [1, 3], ids=["single", "multi"])
async def test_append_cancelled_at_every_step(env: Env, size: int, inline: bool, mode: str) -> None:
    if inline:
        env.store.inline_projections.append(ModelProjection(env.sql))

    async def body(k: int) -> tuple[Op, Any]:
        stream = env.stream(f"append-{k}")
        prefix: list[uuid.UUID] = []
        expected: int = NO_STREAM
        if size > 1:  # into an existing stream, at an expected version
            first = NewEvent("First")
            env.attempted.add(first.event_id)
            await env.store.append(stream, [first], expected_version=NO_STREAM)
            prefix, expected = [first.event_id], 0
        events = _batch(size)
        env.attempted.update(e.event_id for e in events)

        async def op() -> AppendResult:
            return await env.store.append(stream, events, expected_version=expected)

        return op, (stream, prefix, events, expected)

    async def check(k: int, context: Any, outcome: Outcome) -> None:
        stream, prefix, events, expected = context
        await _check_append(env, stream, prefix, events, expected, outcome.result, inline)

    cancelled = await every_step(body, check, mode)
    assert cancelled >= 1
    await assert_set_algebra(env)


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline-projection"])
async def test_append_under_wait_for_random_timeouts(env: Env, inline: bool) -> None:
    if inline:
        env.store.inline_projections.append(ModelProjection(env.sql))
    rng = random.Random(1301)
    timeouts = [0.0, 1e-6, 1e-5, 5e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    for n in range(60):
        stream = env.stream(f"wait-for-{n}")
        events = _batch(rng.choice([1, 1, 2, 5]))
        env.attempted.update(e.event_id for e in events)
        result = None
        with contextlib.suppress(TimeoutError):
            result = await asyncio.wait_for(
                env.store.append(stream, events, expected_version=NO_STREAM),
                rng.choice(timeouts),
            )
        await _check_append(env, stream, [], events, NO_STREAM, result, inline)
    await assert_set_algebra(env)


# -- transactions ----------------------------------------------------------------------------


async def _transaction(env: Env, key: str, steps: int) -> None:
    """A couple of statements, a caller's own await, then a checkpoint."""
    async with env.store.transaction() as tx:
        if env.sql:
            await tx.execute("INSERT INTO cx_model (key, note) VALUES (:key, 'tx')", {"key": key})
        await asyncio.sleep(0)
        if env.sql:
            row = await tx.fetchone("SELECT count(*) FROM cx_model WHERE key = :key", {"key": key})
            assert row == (1,)
        await tx.set_checkpoint(f"tx-{key}", steps + 1)


async def _check_transaction(env: Env, key: str, steps: int, outcome: Outcome) -> None:
    checkpoint = (await env.store.checkpoints()).get(f"tx-{key}")
    rows = (await _model_rows(env, [key]))[key]
    if not outcome.cancelled:
        assert checkpoint == steps + 1
    assert checkpoint in (None, steps + 1)
    if env.sql:  # all or nothing
        assert rows == (0 if checkpoint is None else 1), (checkpoint, rows)
    # the store takes the next transaction, and the same work again
    await _transaction(env, f"{key}-again", steps)
    assert (await env.store.checkpoints())[f"tx-{key}-again"] == steps + 1
    await assert_usable(env)


@pytest.mark.parametrize("mode", MODES)
async def test_transaction_cancelled_at_every_step(env: Env, mode: str) -> None:
    async def body(k: int) -> tuple[Op, Any]:
        key = f"{env.tag}-{k}-{mode}"
        return (lambda: _transaction(env, key, k)), key

    async def check(k: int, key: Any, outcome: Outcome) -> None:
        await _check_transaction(env, key, k, outcome)

    cancelled = await every_step(body, check, mode)
    assert cancelled >= 1
    await assert_set_algebra(env)


async def test_transaction_under_wait_for_random_timeouts(env: Env) -> None:
    rng = random.Random(1302)
    timeouts = [0.0, 1e-6, 1e-5, 5e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    for n in range(60):
        key = f"{env.tag}-wait-for-{n}"
        cancelled = False
        try:
            await asyncio.wait_for(_transaction(env, key, n), rng.choice(timeouts))
        except TimeoutError:
            cancelled = True
        await _check_transaction(env, key, n, Outcome(False, cancelled=cancelled))
    await assert_set_algebra(env)


# -- reads -----------------------------------------------------------------------------------


async def _fill(env: Env) -> tuple[str, list[uuid.UUID]]:
    stream = env.stream("big")
    ids: list[uuid.UUID] = []
    for start in range(0, BIG, 200):
        events = [NewEvent("Big", {"n": start + i}) for i in range(200)]
        await env.store.append(stream, events)
        ids.extend(e.event_id for e in events)
    env.attempted.update(ids)
    if env.backend == "postgres":  # wait until read_all may return them all: a transaction
        # open elsewhere on the shared server holds the horizon back for a while
        last = (await collect(env.store.read_stream(stream, backwards=True, limit=1)))[0]
        for _ in range(6000):
            if await env.store.head_position() >= last.position:
                break
            await asyncio.sleep(0.01)
    return stream, ids


READS: dict[str, Callable[[EventStore, str], AsyncIterator[RecordedEvent]]] = {
    "read_all": lambda store, stream: store.read_all(limit=BIG),
    "read_stream": lambda store, stream: store.read_stream(stream),
    "read_stream_backwards": lambda store, stream: store.read_stream(stream, backwards=True),
}


def _expected_read(name: str, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return ids[::-1] if name == "read_stream_backwards" else ids


@pytest.mark.parametrize("name", sorted(READS))
async def test_read_cancelled_at_every_await(env: Env, name: str) -> None:
    """Reads take many loop steps (rows are decoded on a thread or arrive from the server),
    so they are cancelled at each of their await points, and at random times below."""
    stream, ids = await _fill(env)
    read = READS[name]

    async def run() -> list[uuid.UUID]:
        return [e.event_id async for e in read(env.store, stream)]

    async def body(k: int) -> tuple[Op, Any]:
        return run, None

    async def check(k: int, context: Any, outcome: Outcome) -> None:
        if not outcome.cancelled:
            assert outcome.result == _expected_read(name, ids)
        assert await run() == _expected_read(name, ids)
        await assert_usable(env)

    cancelled = await every_step(body, check, "awaits")
    assert cancelled >= 3  # before it started, and at least twice while it was reading
    await assert_set_algebra(env)


@pytest.mark.parametrize("name", sorted(READS))
async def test_read_under_wait_for_random_timeouts(env: Env, name: str) -> None:
    stream, ids = await _fill(env)
    read = READS[name]
    rng = random.Random(1303)

    async def run() -> list[uuid.UUID]:
        return [e.event_id async for e in read(env.store, stream)]

    for _ in range(20):
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(run(), rng.choice([1e-5, 1e-4, 5e-4, 1e-3, 3e-3]))
            assert got == _expected_read(name, ids)
        assert await run() == _expected_read(name, ids)
        await assert_usable(env)
    await assert_set_algebra(env)


@pytest.mark.parametrize("closed", [True, False], ids=["aclosing", "abandoned"])
@pytest.mark.parametrize("name", sorted(READS))
async def test_read_stopped_early(env: Env, name: str, closed: bool) -> None:
    stream, ids = await _fill(env)
    read = READS[name]
    page = READ_PAGE_SIZE
    for stop in (1, page - 1, page, page + 1, 2 * page, 2 * page + 1, BIG - 1):
        got: list[uuid.UUID] = []
        events = read(env.store, stream)
        if closed:
            async with contextlib.aclosing(cast(AsyncGenerator[RecordedEvent, None], events)):
                async for ev in events:
                    got.append(ev.event_id)
                    if len(got) == stop:
                        break
        else:  # the caller just stops; the generator is finalised when collected
            async for ev in events:
                got.append(ev.event_id)
                if len(got) == stop:
                    break
            del events
        assert got == _expected_read(name, ids)[:stop]
        assert [e.event_id async for e in read(env.store, stream)] == _expected_read(name, ids)
        await assert_usable(env)
    await assert_set_algebra(env)
