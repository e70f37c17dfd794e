"""Group commit: appends that arrive while commits are in flight share the next transaction
(one fsync; on PostgreSQL also one statement), each with its own expected-version check and
its own outcome. SQLite and PostgreSQL run the same tests, plus each backend's own cases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chronik
from chronik import NO_STREAM, NewEvent
from chronik.store.postgres import PostgresEventStore
from chronik.store.sqlite import SqliteEventStore

Store = SqliteEventStore | PostgresEventStore


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = await SqliteEventStore.open(tmp_path / "group.db")
    else:
        s = await PostgresEventStore.open(request.getfixturevalue("pg_url"))
        s.appends_in_flight = 1  # everything behind the first append groups
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    async with await SqliteEventStore.open(tmp_path / "group.db") as s:
        yield s


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresEventStore]:
    async with await PostgresEventStore.open(pg_url) as s:
        s.appends_in_flight = 1
        yield s


async def test_concurrent_appends_commit_together_each_with_its_own_outcome(
    store: Store,
) -> None:
    await store.append("acct-7", [NewEvent("Opened", {})])  # version 0: "expect -1" conflicts

    async def one(n: int) -> chronik.AppendResult | BaseException:
        expected = 5 if n == 7 else NO_STREAM  # n == 7: a stale expected version
        try:
            return await store.append(f"acct-{n}", [NewEvent("Deposited", {"n": n})],
                                      expected_version=expected)  # fmt: skip
        except chronik.ConcurrencyError as exc:
            return exc

    outcomes = await asyncio.gather(*(one(n) for n in range(64)))
    assert store.largest_group > 1  # they shared transactions
    failed = [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [7]  # one conflict fails only its own append
    positions = [o.position for o in outcomes if isinstance(o, chronik.AppendResult)]
    assert len(set(positions)) == 63
    stored = {e.stream_id: e for e in [e async for e in store.read_all()]}
    assert len(stored) == 64  # 63 new streams + acct-7's first event
    for n, o in enumerate(outcomes):
        if isinstance(o, chronik.AppendResult):
            assert stored[f"acct-{n}"].position == o.position
    assert [e.version async for e in store.read_stream("acct-7")] == [0]


async def test_one_stream_raced_inside_a_group_accepts_one_writer(store: Store) -> None:
    results = await asyncio.gather(
        *(store.append("hot-1", [NewEvent("Won", {"n": n})], expected_version=NO_STREAM)
          for n in range(20)),
        return_exceptions=True,
    )  # fmt: skip
    winners = [r for r in results if isinstance(r, chronik.AppendResult)]
    assert len(winners) == 1
    assert all(isinstance(r, chronik.ConcurrencyError) for r in results if r not in winners)
    assert [e.version async for e in store.read_stream("hot-1")] == [0]


async def test_a_retry_inside_the_same_group_is_idempotent(store: Store) -> None:
    events = [NewEvent("Paid", {"n": n}, event_id=uuid.uuid4()) for n in range(3)]
    first, again, third = await asyncio.gather(
        store.append("pay-1", events, expected_version=NO_STREAM),
        store.append("pay-1", events, expected_version=NO_STREAM),  # the same ids
        store.append("pay-2", [NewEvent("Paid", {})], expected_version=NO_STREAM),
    )
    assert first == again
    assert [e.event_id async for e in store.read_stream("pay-1")] == [e.event_id for e in events]
    assert third.version == 0


async def test_a_group_waits_for_an_open_transaction(sqlite_store: SqliteEventStore) -> None:
    store = sqlite_store
    async with store.transaction() as tx:
        await tx.set_checkpoint("c", 1)
        pending = [
            asyncio.ensure_future(store.append(f"w-{n}", [NewEvent("E", {})])) for n in range(8)
        ]
        await asyncio.sleep(0.01)
        assert not any(p.done() for p in pending)  # not inside this transaction
    await asyncio.gather(*pending)
    assert await store.get_checkpoint("c") == 1
    assert len([e async for e in store.read_all()]) == 8


Attempt = tuple[int, int, int, bool]
"""(stream 0-3, expected kind 0-3, events 1-3, reuse the previous attempt's ids)."""


async def _matches_one_at_a_time(store: Store, attempts: list[Attempt], prefix: str) -> None:
    """Concurrent appends (grouped) end exactly as if each outcome were decided alone:
    every acknowledged append is stored at its result, every refused one is absent,
    versions are gapless, and a retry with the same ids returns the original result."""
    batches: list[tuple[str, int, list[NewEvent]]] = []
    for stream, kind, count, reuse in attempts:
        if reuse and batches:
            stream_id, expected, events = batches[-1]  # a retry of the one before
        else:
            stream_id = f"{prefix}-{stream}"
            expected = [chronik.ANY, NO_STREAM, chronik.STREAM_EXISTS, 0][kind]
            events = [NewEvent("E", {"i": i}, event_id=uuid.uuid4()) for i in range(count)]
        batches.append((stream_id, expected, events))
    outcomes = await asyncio.gather(
        *(store.append(s, e, expected_version=x) for s, x, e in batches),
        return_exceptions=True,
    )
    stored = [e async for e in store.read_all(categories=[prefix])]
    by_id = {e.event_id: e for e in stored}
    assert len(by_id) == len(stored)  # nothing twice
    for (stream_id, _, events), outcome in zip(batches, outcomes, strict=True):
        ids = [e.event_id for e in events]
        if isinstance(outcome, chronik.AppendResult):
            got = [by_id[i] for i in ids]  # acknowledged: all stored, in order
            assert [g.stream_id for g in got] == [stream_id] * len(ids)
            assert got[-1].version == outcome.version
            assert got[-1].position == outcome.position
        else:  # refused with a typed error (its ids are checked below)
            assert isinstance(outcome, chronik.ConcurrencyError | chronik.DuplicateEventId)
    for n in range(4):  # gapless versions per stream
        versions = [e.version for e in stored if e.stream_id == f"{prefix}-{n}"]
        assert versions == list(range(len(versions)))
    acknowledged = {
        i for (_, _, ev), o in zip(batches, outcomes, strict=True)
        if isinstance(o, chronik.AppendResult) for i in (e.event_id for e in ev)
    }  # fmt: skip
    assert acknowledged == set(by_id)  # nothing stored that was not acknowledged


_attempts = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 3), st.booleans()),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_attempts)
def test_any_mix_of_concurrent_appends_matches_one_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, attempts: list[Attempt]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "g.db"

    async def run() -> None:
        async with await chronik.connect(f"sqlite:///{path}") as store:
            assert isinstance(store, SqliteEventStore)
            await _matches_one_at_a_time(store, attempts, "s")

    asyncio.run(run())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_attempts)
def test_any_mix_of_concurrent_appends_matches_one_at_a_time_postgres(
    pg_url: str, attempts: list[Attempt]
) -> None:
    prefix = f"s{uuid.uuid4().hex[:12]}"  # one schema for all examples, a category each

    async def run() -> None:
        async with await PostgresEventStore.open(pg_url) as store:
            store.appends_in_flight = 1
            await _matches_one_at_a_time(store, attempts, prefix)

    asyncio.run(run())


# -- PostgreSQL: a group statement that fails as a whole ---------------------------------------


async def test_a_stored_event_id_in_a_group_fails_only_its_own_append(
    pg_store: PostgresEventStore,
) -> None:
    """An event id already stored makes the group's INSERT fail as a whole; every append
    then runs alone, so the retry gets its original result and the others commit."""
    paid = NewEvent("Paid", {}, event_id=uuid.uuid4())
    original = await pg_store.append("pay-1", [paid], expected_version=NO_STREAM)
    other = NewEvent("Paid", {}, event_id=paid.event_id)
    results = await asyncio.gather(
        pg_store.append("first-1", [NewEvent("E", {})]),  # runs alone; the rest queue
        *(pg_store.append(f"new-{n}", [NewEvent("E", {"n": n})]) for n in range(10)),
        pg_store.append("pay-1", [paid], expected_version=NO_STREAM),  # a retry
        pg_store.append("dup-1", [other], expected_version=NO_STREAM),  # a stored id elsewhere
        return_exceptions=True,
    )
    assert results[11] == original
    assert isinstance(results[12], chronik.DuplicateEventId)
    assert all(isinstance(r, chronik.AppendResult) for r in results[:11])
    assert pg_store.largest_group > 1
    stored = sorted([e.stream_id async for e in pg_store.read_all(categories=["new"])])
    assert stored == sorted(f"new-{n}" for n in range(10))  # run alone: in any order
    assert await pg_store.stream_version("dup-1") is None


async def test_a_version_taken_by_another_process_fails_only_the_raced_append(
    pg_url: str, pg_store: PostgresEventStore
) -> None:
    """Another process's transaction holds version 0 of ``race-1`` while a group inserts
    it: the group's INSERT waits, then fails as a whole when the other commits; each append
    runs alone, and only the raced one gets its ConcurrencyError."""
    release = asyncio.Event()
    inserted = asyncio.Event()

    async def hold() -> None:
        inserted.set()
        await release.wait()

    async with await PostgresEventStore.open(pg_url) as other:
        other._before_commit = hold
        theirs = asyncio.ensure_future(
            other.append("race-1", [NewEvent("Theirs", {})], expected_version=NO_STREAM)
        )
        await inserted.wait()
        ours = asyncio.gather(
            pg_store.append("first-1", [NewEvent("E", {})]),
            pg_store.append("race-1", [NewEvent("Ours", {})], expected_version=NO_STREAM),
            *(pg_store.append(f"calm-{n}", [NewEvent("E", {})]) for n in range(5)),
            return_exceptions=True,
        )
        await asyncio.sleep(0.2)  # the group is blocked on race-1's index entry
        release.set()
        await theirs
        results = await ours
    assert isinstance(results[1], chronik.ConcurrencyError)
    assert all(isinstance(r, chronik.AppendResult) for i, r in enumerate(results) if i != 1)
    assert [e.type async for e in pg_store.read_stream("race-1")] == ["Theirs"]
    assert len([e async for e in pg_store.read_all(categories=["calm"])]) == 5


async def test_cancelled_grouped_appends_committed_or_not_and_a_retry_tells(
    pg_store: PostgresEventStore,
) -> None:
    """Callers cancelled while queued or while their group runs: each append is stored
    once or not at all, and the retry with the same ids returns the stored result."""
    for round_ in range(5):
        events = {n: NewEvent("E", {"n": n}, event_id=uuid.uuid4()) for n in range(40)}
        tasks = [
            asyncio.ensure_future(
                pg_store.append(f"c{round_}-{n}", [ev], expected_version=NO_STREAM)
            )
            for n, ev in events.items()
        ]
        await asyncio.sleep(0.001 * round_)
        for task in tasks[1::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        retried = await asyncio.gather(
            *(pg_store.append(f"c{round_}-{n}", [ev], expected_version=NO_STREAM)
              for n, ev in events.items())
        )  # fmt: skip
        stored = [e async for e in pg_store.read_all(categories=[f"c{round_}"])]
        assert sorted(e.event_id for e in stored) == sorted(e.event_id for e in events.values())
        for n, result in enumerate(retried):
            (event,) = [e for e in stored if e.stream_id == f"c{round_}-{n}"]
            assert (result.position, result.version) == (event.position, 0)


async def test_closing_with_appends_queued_answers_every_caller(pg_url: str) -> None:
    store = await PostgresEventStore.open(pg_url)
    store.appends_in_flight = 1
    tasks = [asyncio.ensure_future(store.append(f"q-{n}", [NewEvent("E", {})])) for n in range(50)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    for r in results:
        assert isinstance(r, chronik.AppendResult | chronik.StoreUnavailable), r
