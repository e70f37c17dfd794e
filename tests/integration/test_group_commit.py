"""Group commit on SQLite: appends that arrive while a commit is in flight share the next
transaction (one fsync), each with its own expected-version check and its own outcome."""

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
from chronik.store.sqlite import SqliteEventStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    s = await SqliteEventStore.open(tmp_path / "group.db")
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_appends_commit_together_each_with_its_own_outcome(
    store: SqliteEventStore,
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


async def test_one_stream_raced_inside_a_group_accepts_one_writer(
    store: SqliteEventStore,
) -> None:
    results = await asyncio.gather(
        *(store.append("hot-1", [NewEvent("Won", {"n": n})], expected_version=NO_STREAM)
          for n in range(20)),
        return_exceptions=True,
    )  # fmt: skip
    winners = [r for r in results if isinstance(r, chronik.AppendResult)]
    assert len(winners) == 1
    assert all(isinstance(r, chronik.ConcurrencyError) for r in results if r not in winners)
    assert [e.version async for e in store.read_stream("hot-1")] == [0]


async def test_a_retry_inside_the_same_group_is_idempotent(store: SqliteEventStore) -> None:
    events = [NewEvent("Paid", {"n": n}, event_id=uuid.uuid4()) for n in range(3)]
    first, again, third = await asyncio.gather(
        store.append("pay-1", events, expected_version=NO_STREAM),
        store.append("pay-1", events, expected_version=NO_STREAM),  # the same ids
        store.append("pay-2", [NewEvent("Paid", {})], expected_version=NO_STREAM),
    )
    assert first == again
    assert [e.event_id async for e in store.read_stream("pay-1")] == [e.event_id for e in events]
    assert third.version == 0


async def test_a_group_waits_for_an_open_transaction(store: SqliteEventStore) -> None:
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 3), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_any_mix_of_concurrent_appends_matches_one_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, attempts: list[Attempt]
) -> None:
    """Concurrent appends (grouped) end exactly as if each outcome were decided alone:
    every acknowledged append is stored at its result, every refused one is absent,
    versions are gapless, and a retry with the same ids returns the original result."""
    path = tmp_path_factory.mktemp("prop") / "g.db"

    async def run() -> None:
        async with await chronik.connect(f"sqlite:///{path}") as store:
            batches: list[tuple[str, int, list[NewEvent]]] = []
            for stream, kind, count, reuse in attempts:
                if reuse and batches:
                    stream_id, expected, events = batches[-1]  # a retry of the one before
                else:
                    stream_id = f"s-{stream}"
                    expected = [chronik.ANY, NO_STREAM, chronik.STREAM_EXISTS, 0][kind]
                    events = [NewEvent("E", {"i": i}, event_id=uuid.uuid4()) for i in range(count)]
                batches.append((stream_id, expected, events))
            outcomes = await asyncio.gather(
                *(store.append(s, e, expected_version=x) for s, x, e in batches),
                return_exceptions=True,
            )
            stored = [e async for e in store.read_all()]
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
                versions = [e.version for e in stored if e.stream_id == f"s-{n}"]
                assert versions == list(range(len(versions)))
            acknowledged = {
                i for (_, _, ev), o in zip(batches, outcomes, strict=True)
                if isinstance(o, chronik.AppendResult) for i in (e.event_id for e in ev)
            }  # fmt: skip
            assert acknowledged == set(by_id)  # nothing stored that was not acknowledged

    asyncio.run(run())
