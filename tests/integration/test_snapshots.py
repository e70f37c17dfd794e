"""Snapshots on every backend: a load with snapshots always equals a full replay.

- property: random event sequences, snapshot points and policies (Hypothesis);
- a changed state type or a corrupt row is ignored, logged, and the state replayed;
- the snapshotter under concurrent writer PROCESSES never writes a snapshot ahead of the
  committed stream nor one that differs from a replay; its checker is shown to catch
  snapshots built from uncommitted events (the negative control);
- retention, stats, pruning, the CLI and the benchmark's smoke run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chronik
from chronik.integrity import check
from chronik.snapshots import (
    Adaptive,
    AnyOf,
    EveryN,
    OnDemand,
    Periodic,
    Snapshot,
    SnapshotConfig,
    SnapshotPolicy,
    Snapshotter,
    load_from_snapshot,
    snapshot_store,
    take_snapshot,
    verify_snapshots,
)
from chronik.store.protocol import EventStore
from tests.integration.writers import run_writers

registry = chronik.EventRegistry()


@registry.event("Added")
@dataclass(frozen=True)
class Added:
    n: int


@registry.event("Named")
@dataclass(frozen=True)
class Named:
    name: str


@registry.event("Reset")
@dataclass(frozen=True)
class Reset:
    pass


@registry.event("Wrote")
@dataclass(frozen=True)
class Wrote:
    """What tests/integration/writers.py appends."""

    writer: int
    counter: int
    part: int
    nonce: float


@dataclass(frozen=True)
class Tally:
    total: int = 0
    count: int = 0
    names: tuple[str, ...] = ()
    last: str | None = None
    digest: int = 0
    """Order-sensitive: any missing, extra or reordered event changes it."""


_MOD = 2**61 - 1


def _mix(digest: int, value: int) -> int:
    return (digest * 1_000_003 + value) % _MOD


def evolve(s: Tally, e: object) -> Tally:
    if isinstance(e, Added):
        return dataclasses.replace(
            s, total=s.total + e.n, count=s.count + 1, digest=_mix(s.digest, e.n)
        )
    if isinstance(e, Named):
        return dataclasses.replace(s, count=s.count + 1, names=(*s.names, e.name)[-5:], last=e.name)
    if isinstance(e, Reset):
        return dataclasses.replace(s, total=0, count=s.count + 1, digest=_mix(s.digest, -1))
    if isinstance(e, Wrote):
        key = e.writer * 10_000_000 + e.counter * 10 + e.part
        return dataclasses.replace(
            s, total=s.total + e.part, count=s.count + 1, digest=_mix(s.digest, key)
        )
    raise TypeError(e)


@dataclass(frozen=True)
class Do:
    events: tuple[object, ...]


decider: chronik.Decider[Do, object, Tally] = chronik.Decider(
    decide=lambda cmd, s: list(cmd.events), evolve=evolve, initial_state=Tally
)


def _now() -> datetime:
    return datetime.now(UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def replay_states(store: EventStore, stream_id: str) -> list[Tally]:
    """The state after each version, folded from the events alone (no snapshots)."""
    states: list[Tally] = []
    state = Tally()
    async for recorded in store.read_stream(stream_id):
        state = evolve(state, registry.decode(recorded))
        states.append(state)
    return states


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/snapshots.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(url) as s:
        yield s


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/snapshots.db"
    return str(request.getfixturevalue("pg_url"))


# -- the property -----------------------------------------------------------------------------

events_st = st.one_of(
    st.builds(Added, st.integers(-1000, 1000)),
    st.builds(Named, st.text(max_size=8)),
    st.just(Reset()),
)
policies_st: st.SearchStrategy[SnapshotPolicy] = st.one_of(
    st.builds(EveryN, st.integers(1, 6)),
    st.builds(Periodic, st.floats(1, 120)),
    st.just(OnDemand()),
    st.builds(
        Adaptive,
        budget_events=st.integers(1, 12),
        read_weight=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    ),
    st.builds(Adaptive, budget_ms=st.sampled_from([1e-6, 0.05, 5.0])),
    st.builds(lambda n, s: AnyOf(EveryN(n), Periodic(s)), st.integers(2, 8), st.floats(1, 60)),
)
steps_st = st.lists(
    st.tuples(
        st.lists(events_st, min_size=1, max_size=4),  # one command's events
        st.integers(0, 2),  # loads after it
        st.floats(0, 60),  # seconds passing
    ),
    min_size=1,
    max_size=14,
)


async def _property(
    url: str,
    steps: list[tuple[list[object], int, float]],
    policy: SnapshotPolicy,
    keep: int,
    take_at: list[int],
) -> None:
    clock = Clock()
    config = SnapshotConfig(Tally, policy=policy, keep=keep, clock=clock)
    stream_id = f"tally-{uuid.uuid4().hex[:12]}"
    async with await chronik.connect(url) as store:
        handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
        for events, loads, seconds in steps:
            clock.now += seconds
            result = await handler.handle(stream_id, Do(tuple(events)))
            for _ in range(loads):
                loaded = await handler.load(stream_id)
                assert loaded.version == result.version
        states = await replay_states(store, stream_id)
        last = len(states) - 1
        for point in take_at:  # on demand, at any version
            snap = await take_snapshot(
                store,
                stream_id,
                evolve=evolve,
                initial_state=Tally,
                config=config,
                registry=registry,
                upto=point % (last + 1),
            )
            assert snap is not None and snap.version == point % (last + 1)
        loaded = await handler.load(stream_id)
        assert (loaded.state, loaded.version) == (states[-1], last)
        for version in range(last + 1):  # from the best snapshot at or below each version
            state, at, _ = await load_from_snapshot(
                store, stream_id, evolve, Tally, config, registry=registry, upto=version
            )
            assert (state, at) == (states[version], version)
        assert await verify_snapshots(store, {"tally": (decider, config)}, registry=registry) == []
        kept = await snapshot_store(store).find(stream_id)
        assert len(kept) <= keep
        assert all(0 <= s.version <= last for s in kept)


@pytest.mark.parametrize(
    "backend,examples",
    [
        ("memory", 60),
        ("sqlite", 25),
        pytest.param("postgres", 12, marks=pytest.mark.postgres),
    ],
)
def test_state_with_snapshots_equals_a_full_replay(
    backend: str, examples: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = str(request.getfixturevalue("pg_url")) if backend == "postgres" else ""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        steps=steps_st,
        policy=policies_st,
        keep=st.integers(1, 4),
        take_at=st.lists(st.integers(0, 100), max_size=3),
    )
    def check(
        steps: list[tuple[list[object], int, float]],
        policy: SnapshotPolicy,
        keep: int,
        take_at: list[int],
    ) -> None:
        if backend == "memory":
            url = "memory://"
        elif backend == "sqlite":
            url = f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"
        else:
            url = pg
        asyncio.run(_property(url, steps, policy, keep, take_at))

    check()


async def test_adaptive_counts_reads_and_writes_apart(store: EventStore) -> None:
    """A stream only written gets a snapshot when one load would fold more than the budget.
    Before, each command's own load counted as a read, and the weighted cost grew with the
    square of the writes: 40 snapshots per 400 writes with budget_events=100, 57-86 with
    budget_ms=1 on SQLite."""
    config = SnapshotConfig(Tally, policy=Adaptive(budget_events=25), keep=1000)
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
    for i in range(100):
        await handler.handle("tally-w", Do((Added(i),)))
    written = await snapshot_store(store).find("tally-w")
    assert sorted(s.version for s in written) == [24, 49, 74, 99]
    # read three times after each write: reads pay for snapshots, so they come sooner
    read = SnapshotConfig(Tally, policy=Adaptive(budget_events=100), keep=1000)
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=read)
    for i in range(60):
        await handler.handle("tally-rw", Do((Added(i),)))
        for _ in range(3):
            await handler.load("tally-rw")
    taken = sorted(s.version for s in await snapshot_store(store).find("tally-rw"))
    assert taken == list(range(5, 60, 6))  # 6 events x 17 reads >= 100


# -- aggregates -------------------------------------------------------------------------------


class Account(chronik.Aggregate):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.names: list[str] = []
        self.loaded_at: object = None  # transient: not part of the snapshot

    def apply(self, event: object) -> None:
        if isinstance(event, Added):
            self.total += event.n
        elif isinstance(event, Named):
            self.names.append(event.name)

    def add(self, n: int) -> None:
        self.record(Added(n))


@dataclass
class AccountFields:
    total: int = 0
    names: list[str] = field(default_factory=list)


async def test_repository_snapshots_an_aggregates_attributes(store: EventStore) -> None:
    config = SnapshotConfig(AccountFields, policy=EveryN(4))
    repo = chronik.Repository(store, Account, registry=registry, snapshots=config)
    plain = chronik.Repository(store, Account, registry=registry)
    for n in range(10):
        await repo.execute("account-1", lambda a, n=n: a.add(n))  # type: ignore[misc]
    loaded = await repo.load("account-1")
    assert loaded.snapshot_version == 7
    full = await plain.load("account-1")
    assert (loaded.state.total, loaded.state.names, loaded.version) == (45, [], 9)
    assert (full.state.total, full.version) == (45, 9)
    snap = await repo.take_snapshot("account-1")
    assert snap is not None and snap.version == 9
    again = await repo.load("account-1")
    assert again.snapshot_version == 9 and again.state.total == 45


# -- invalidation and corruption ------------------------------------------------------------


async def _fill(store: EventStore, stream_id: str, n: int, config: SnapshotConfig) -> None:
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
    for i in range(n):
        await handler.handle(stream_id, Do((Added(i), Named(f"n{i}"))))


async def test_changing_the_state_type_invalidates_old_snapshots(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    old = SnapshotConfig(Tally, policy=EveryN(4))
    await _fill(store, "tally-1", 10, old)
    assert (
        await chronik.load_state(store, "tally-1", evolve, Tally, registry=registry, snapshots=old)
    ).snapshot_version == 19

    @dataclass(frozen=True)
    class Tally2:  # the code changed: one more field
        total: int = 0
        count: int = 0
        names: tuple[str, ...] = ()
        last: str | None = None
        digest: int = 0
        biggest: int = 0

    def evolve2(s: Tally2, e: object) -> Tally2:
        t = evolve(Tally(s.total, s.count, s.names, s.last, s.digest), e)
        biggest = max(s.biggest, e.n) if isinstance(e, Added) else s.biggest
        return Tally2(t.total, t.count, t.names, t.last, t.digest, biggest)

    new = SnapshotConfig(Tally2, policy=EveryN(1000))
    assert new.state_version != old.state_version
    with caplog.at_level(logging.INFO, logger="chronik.snapshots"):
        loaded = await chronik.load_state(
            store, "tally-1", evolve2, Tally2, registry=registry, snapshots=new
        )
    assert loaded.snapshot_version is None
    assert loaded.state.biggest == 9 and loaded.state.total == 45 and loaded.version == 19
    assert "state version" in caplog.text and old.state_version in caplog.text
    # an explicit version bump does the same for an evolve that changed meaning
    bumped = SnapshotConfig(Tally, policy=EveryN(4), version=2)
    loaded2 = await chronik.load_state(
        store, "tally-1", evolve, Tally, registry=registry, snapshots=bumped
    )
    assert loaded2.snapshot_version is None
    # the old rows are pruned as stale, the current ones kept
    deleted = await snapshot_store(store).prune(keep=5, stale={"tally": bumped.state_version})
    assert deleted >= 1
    assert await snapshot_store(store).find("tally-1") == []


async def _corrupt(store: EventStore, stream_id: str, raw: bytes) -> None:
    snapshots = snapshot_store(store)
    if isinstance(store, chronik.store.memory.MemoryEventStore):
        rows = snapshots._rows[stream_id]  # type: ignore[attr-defined]
        rows[0] = dataclasses.replace(rows[0], state=raw)
        return
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE snapshots SET state = :raw WHERE stream_id = :s AND version = "
            "(SELECT MAX(version) FROM snapshots WHERE stream_id = :s)",
            {"raw": raw, "s": stream_id},
        )


@pytest.mark.parametrize(
    "raw",
    [b"\x00\xffnot json", b'{"total": "forty-five"}', b"[1, 2, 3]", b""],
    ids=["garbage", "wrong-type", "wrong-shape", "empty"],
)
async def test_a_corrupt_snapshot_row_falls_back_to_replay(
    store: EventStore, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    config = SnapshotConfig(Tally, policy=EveryN(4))
    await _fill(store, "tally-9", 5, config)  # versions 1, 3, ..., 9
    assert [s.version for s in await snapshot_store(store).find("tally-9")] == [7, 3]
    await _corrupt(store, "tally-9", raw)  # the newest
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
    with caplog.at_level(logging.WARNING, logger="chronik.snapshots"):
        loaded = await handler.load("tally-9")
    assert loaded.snapshot_version == 3  # the corrupt one is skipped: the next older one
    assert loaded.state == (await replay_states(store, "tally-9"))[-1]
    assert "cannot decode" in caplog.text and "tally-9" in caplog.text
    problems = await verify_snapshots(store, {"tally": (decider, config)}, registry=registry)
    assert [(p.version, p.reason.split(":")[0]) for p in problems] == [(7, "cannot be decoded")]
    # it heals: that load folded 6 events after 3, so the policy wrote a good one at 9
    assert (await handler.load("tally-9")).snapshot_version == 9
    assert await snapshot_store(store).prune(keep=1) == 2
    assert await verify_snapshots(store, {"tally": (decider, config)}, registry=registry) == []


async def test_a_snapshot_ahead_of_the_committed_stream_is_refused(store: EventStore) -> None:
    config = SnapshotConfig(Tally, policy=OnDemand())
    await _fill(store, "tally-2", 2, config)
    ahead = Snapshot("tally-2", 4, config.state_version, b"{}", _now())
    with pytest.raises(chronik.ChronikError, match="committed version is 3"):
        await snapshot_store(store).save(ahead)
    with pytest.raises(chronik.ChronikError, match="committed version is None"):
        await snapshot_store(store).save(dataclasses.replace(ahead, stream_id="tally-none"))
    assert await snapshot_store(store).find("tally-2") == []


async def _truncate(store: EventStore, stream_id: str, upto: int) -> None:
    """Cut a stream back to version ``upto``, as restoring an older backup of the events (and
    not of the snapshots) does."""
    if isinstance(store, chronik.store.memory.MemoryEventStore):
        gone = store._streams[stream_id][upto + 1 :]
        store._streams[stream_id] = store._streams[stream_id][: upto + 1]
        ids = {e.event_id for e in gone}
        kept = [i for i, e in enumerate(store._log) if e.event_id not in ids]
        store._log = [store._log[i] for i in kept]
        store._positions = [store._positions[i] for i in kept]
        for event_id in ids:
            del store._by_id[event_id]
        return
    async with store.transaction() as tx:
        await tx.execute(
            "DELETE FROM events WHERE stream_id = :s AND version > :v", {"s": stream_id, "v": upto}
        )


async def test_snapshots_ahead_of_a_truncated_stream_are_skipped_and_replaced(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every command on such a stream failed: ConcurrencyError (expected version 29,
    actual 14), since the load took the snapshot's version for the stream's."""
    config = SnapshotConfig(Tally, policy=EveryN(5))
    await _fill(store, "tally-t", 15, config)  # versions 0..29
    snapshots = snapshot_store(store)
    assert [s.version for s in await snapshots.find("tally-t")] == [29, 23, 17]
    await _truncate(store, "tally-t", 13)
    assert [(p.version, p.kind) for p in await snapshots.invalid()] == [
        (17, "ahead"),
        (23, "ahead"),
        (29, "ahead"),
    ]
    report = await check(store)
    assert (report.counts["snapshot_ahead"], report.counts["snapshot_invalid"]) == (3, 0)
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
    with caplog.at_level(logging.DEBUG, logger="chronik.snapshots"):
        result = await handler.handle("tally-t", Do((Added(100),)))
    assert result.version == 14 and result.attempts == 1
    assert result.state == (await replay_states(store, "tally-t"))[-1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, "each skipped snapshot warns once, then at DEBUG"
    assert all("ahead of its stream" in r.getMessage() for r in warnings)
    assert "prune --invalid" in warnings[0].getMessage()
    # the policy's next snapshot (at 14) deleted those ahead of the stream in the same write
    assert [s.version for s in await snapshots.find("tally-t")] == [14]
    assert (await handler.load("tally-t")).snapshot_version == 14
    assert (await check(store)).ok


async def test_the_snapshotter_replaces_snapshots_ahead_of_a_truncated_stream(
    store: EventStore,
) -> None:
    await _fill(store, "tally-s", 15, SnapshotConfig(Tally, policy=EveryN(5)))
    await _truncate(store, "tally-s", 13)
    config = SnapshotConfig(Tally, policy=EveryN(5), inline=False)
    snapshotter = Snapshotter(store, {"tally": (decider, config)}, registry=registry)
    assert await snapshotter.catch_up() == 1  # its policy did not count from the one at 29
    assert [s.version for s in await snapshot_store(store).find("tally-s")] == [13]
    assert await verify_snapshots(store, {"tally": (decider, config)}, registry=registry) == []


async def test_snapshots_of_a_rewritten_stream_are_skipped_found_and_pruned(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream has events at the snapshots' versions again, but other ones (a restored
    backup written on, a stream copied anew): a loader that went by the version alone would
    return the old state."""
    await _fill(store, "tally-r", 15, SnapshotConfig(Tally, policy=EveryN(5)))
    await _truncate(store, "tally-r", 13)
    config = SnapshotConfig(Tally, policy=OnDemand())  # the same state version
    await _fill(store, "tally-r", 10, config)  # versions 14..33, other events at 17, 23, 29
    await _fill(store, "tally-ok", 3, SnapshotConfig(Tally, policy=EveryN(2)))
    snapshots = snapshot_store(store)
    problems = await snapshots.invalid()
    assert [(p.stream_id, p.version, p.kind) for p in problems] == [
        ("tally-r", 17, "mismatch"),
        ("tally-r", 23, "mismatch"),
        ("tally-r", 29, "mismatch"),
    ]
    assert all("taken after event" in p.reason for p in problems)
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
    with caplog.at_level(logging.WARNING, logger="chronik.snapshots"):
        loaded = await handler.load("tally-r")
    assert loaded.snapshot_version is None and loaded.version == 33
    assert loaded.state == (await replay_states(store, "tally-r"))[-1]
    assert "taken after event" in caplog.text
    targets = {"tally": (decider, config)}
    assert [
        (p.version, p.kind) for p in await verify_snapshots(store, targets, registry=registry)
    ] == [
        (17, "mismatch"),
        (23, "mismatch"),
        (29, "mismatch"),
    ]
    report = await check(store)
    assert (report.counts["snapshot_ahead"], report.counts["snapshot_invalid"]) == (0, 3)
    assert "tally-r: snapshot at version 17" in report.details("snapshot_invalid")[0].message
    for p in problems:  # what `chronik snapshots prune --invalid` does
        assert await snapshots.delete(p.stream_id, state_version=p.state_version, version=p.version)
    assert {s.stream_id for s in await snapshots.find()} == {"tally-ok"}
    assert (await check(store)).ok


async def test_a_snapshot_that_decodes_but_is_wrong_is_found_with_the_configs(
    store: EventStore,
) -> None:
    """Its event id matches, so loaders cannot tell: `chronik check` with the snapshot
    configurations (check(snapshots=...)) and verify_snapshots compare it with a replay."""
    config = SnapshotConfig(Tally, policy=EveryN(4))
    await _fill(store, "tally-w", 5, config)  # snapshots at 7 and 3
    await _corrupt(store, "tally-w", config.encode(Tally(total=-1)))  # the newest, at 7
    await _corrupt_older(store, "tally-w", b"not json")  # the one at 3
    assert await snapshot_store(store).invalid() == []
    assert (await check(store)).ok
    targets = {"tally": (decider, config)}
    report = await check(store, snapshots=targets, registry=registry)
    assert report.counts["snapshot_invalid"] == 2
    kinds = [(p.version, p.kind) for p in await verify_snapshots(store, targets, registry=registry)]
    assert kinds == [(3, "undecodable"), (7, "differs")]


async def _corrupt_older(store: EventStore, stream_id: str, raw: bytes) -> None:
    snapshots = snapshot_store(store)
    if isinstance(store, chronik.store.memory.MemoryEventStore):
        rows = snapshots._rows[stream_id]  # type: ignore[attr-defined]
        rows[-1] = dataclasses.replace(rows[-1], state=raw)
        return
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE snapshots SET state = :raw WHERE stream_id = :s AND version = "
            "(SELECT MIN(version) FROM snapshots WHERE stream_id = :s)",
            {"raw": raw, "s": stream_id},
        )


async def test_save_records_the_event_id_and_refuses_another(store: EventStore) -> None:
    config = SnapshotConfig(Tally, policy=OnDemand())
    await _fill(store, "tally-e", 2, config)
    events = [e async for e in store.read_stream("tally-e")]
    snap = Snapshot("tally-e", 2, config.state_version, config.encode(Tally()), _now())
    saved = await snapshot_store(store).save(snap)
    assert saved.event_id == events[2].event_id
    assert (await snapshot_store(store).find("tally-e"))[0].event_id == events[2].event_id
    assert saved.to_dict()["event_id"] == str(events[2].event_id)
    with pytest.raises(chronik.ChronikError, match="the stream has"):
        await snapshot_store(store).save(
            dataclasses.replace(snap, version=1, event_id=events[0].event_id)
        )


async def test_migration_0008_fills_in_the_event_ids_of_existing_snapshots(sql_url: str) -> None:
    config = SnapshotConfig(Tally, policy=EveryN(5))
    async with await chronik.connect(sql_url) as store:
        await _fill(store, "tally-m", 15, config)  # snapshots at 29, 23, 17
        await _truncate(store, "tally-m", 25)  # the one at 29 is ahead
        event_17 = (await anext(store.read_stream("tally-m", from_version=17))).event_id
        async with store.transaction() as tx:  # the table as chronik made it before 0008
            await tx.execute("ALTER TABLE snapshots DROP COLUMN event_id")
            await tx.execute("DELETE FROM schema_migrations WHERE version = 8")
    async with await chronik.connect(sql_url) as store:  # applies 0008 again
        rows = {s.version: s.event_id for s in await snapshot_store(store).find("tally-m")}
        assert rows[17] == event_17 and rows[23] is not None
        assert rows[29] is None  # ahead when migrated: no event to take the id from
        assert [(p.version, p.kind) for p in await snapshot_store(store).invalid()] == [
            (29, "ahead")
        ]
        loaded = await chronik.load_state(
            store, "tally-m", evolve, Tally, registry=registry, snapshots=config
        )
        assert (loaded.snapshot_version, loaded.version) == (23, 25)


async def test_a_state_that_does_not_round_trip_is_not_snapshotted(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    @dataclass(frozen=True)
    class Lossy:
        value: float = 0.0

    lossy: chronik.Decider[Do, object, Lossy] = chronik.Decider(
        decide=lambda cmd, s: list(cmd.events),
        evolve=lambda s, e: Lossy(float("nan")),
        initial_state=Lossy,
    )
    handler = chronik.CommandHandler(
        store, lossy, registry=registry, snapshots=SnapshotConfig(Lossy, policy=EveryN(1))
    )
    with caplog.at_level(logging.WARNING, logger="chronik.snapshots"):
        await handler.handle("lossy-1", Do((Added(1),)))
        assert await handler.take_snapshot("lossy-1") is None
    assert "does not survive a JSON round trip" in caplog.text
    assert await snapshot_store(store).find("lossy-1") == []


async def test_take_snapshot_of_an_empty_stream(store: EventStore) -> None:
    handler = chronik.CommandHandler(
        store, decider, registry=registry, snapshots=SnapshotConfig(Tally)
    )
    with pytest.raises(chronik.StreamNotFound):
        await handler.take_snapshot("tally-nothing")
    with pytest.raises(ValueError, match="no snapshots"):
        await chronik.CommandHandler(store, decider).take_snapshot("tally-1")


# -- retention and stats ----------------------------------------------------------------------


async def test_keep_prune_and_stats(store: EventStore) -> None:
    config = SnapshotConfig(Tally, policy=EveryN(2), keep=2)
    await _fill(store, "tally-a", 6, config)  # versions 1, 3, ..., 11: 2 kept
    await _fill(store, "other-b", 3, config)
    snapshots = snapshot_store(store)
    assert [s.version for s in await snapshots.find("tally-a")] == [11, 9]
    stats = {s.category: s for s in await snapshots.stats()}
    assert set(stats) == {"other", "tally"}
    assert (stats["tally"].snapshots, stats["tally"].streams) == (2, 1)
    assert stats["tally"].bytes == sum(len(s.state) for s in await snapshots.find("tally-a"))
    assert stats["tally"].oldest is not None and stats["tally"].newest is not None
    assert stats["tally"].oldest <= stats["tally"].newest
    assert stats["tally"].to_dict()["newest_age_seconds"] >= 0
    assert await snapshots.prune(keep=1, category="tally") == 1
    assert [s.version for s in await snapshots.find("tally-a")] == [11]
    assert len(await snapshots.find("other-b")) == 2
    assert await snapshots.prune(keep=1, stream_id="other-b") == 1
    assert await snapshots.delete("other-b") == 1
    assert await snapshots.load_latest("other-b", config.state_version) is None
    latest = await snapshots.load_latest("tally-a", config.state_version)
    assert latest is not None and latest.version == 11
    assert await snapshots.load_latest("tally-a", "another") is None


# -- the background snapshotter ---------------------------------------------------------------


async def test_snapshotter_follows_the_store_and_resumes_from_its_checkpoint(
    store: EventStore,
) -> None:
    config = SnapshotConfig(Tally, policy=EveryN(3), inline=False, keep=10)
    targets = {"tally": (decider, config)}
    handler = chronik.CommandHandler(store, decider, registry=registry, snapshots=config)
    for i in range(7):
        await handler.handle("tally-s", Do((Added(i),)))
        await handler.handle("other-s", Do((Added(i),)))  # not configured: never read
    assert await snapshot_store(store).find() == []  # inline=False: the request path never does

    snapshotter = Snapshotter(store, targets, registry=registry, name="t", batch_size=4)
    assert await snapshotter.catch_up() == 2  # pages of 4: versions 0-3, 4-6
    assert [s.version for s in await snapshot_store(store).find("tally-s")] == [6, 3]
    assert await store.get_checkpoint("snapshotter:t") == snapshotter.checkpoint > 0
    assert await snapshotter.lag() == 0

    async with Snapshotter(
        store, targets, registry=registry, name="t", poll_interval=0.02
    ) as live:  # a restart: resumes from the checkpoint
        for i in range(6):
            await handler.handle("tally-s", Do((Added(i),)))
        for _ in range(500):
            if (await store.get_checkpoint("snapshotter:t") or 0) >= await store.head_position():
                break
            await asyncio.sleep(0.01)
    assert live.state == "stopped" and live.failed == 0
    versions = [s.version for s in await snapshot_store(store).find("tally-s")]
    # where depends on how the live events fell into pages; at least 3 after 6 in any case
    assert 9 <= versions[0] <= 12 and versions[-2:] == [6, 3]
    assert await verify_snapshots(store, targets, registry=registry) == []


async def test_snapshotter_from_app_and_bad_apps(store: EventStore) -> None:
    app = chronik.App(
        registry=registry,
        deciders={"tally": decider},
        extras={"snapshots": {"tally": SnapshotConfig(Tally, policy=EveryN(1))}},
    )
    snapshotter = Snapshotter.from_app(store, app)
    assert set(snapshotter.targets) == {"tally"}
    with pytest.raises(chronik.ChronikError, match="no snapshots"):
        Snapshotter.from_app(store, chronik.App())
    with pytest.raises(chronik.ChronikError, match="no decider"):
        Snapshotter.from_app(store, chronik.App(extras={"snapshots": {"x": SnapshotConfig(Tally)}}))
    with pytest.raises(chronik.ChronikError, match="not a SnapshotConfig"):
        Snapshotter.from_app(
            store, chronik.App(deciders={"x": decider}, extras={"snapshots": {"x": 1}})
        )


# -- concurrent writer processes --------------------------------------------------------------


async def _broken_snapshots(
    store: EventStore, config: SnapshotConfig, history: list[dict[str, Any]]
) -> set[tuple[str, int]]:
    """Negative control: what a snapshotter that trusted uncommitted state would write.

    For appends that lost a conflict, fold their (never committed) events onto the committed
    state they expected and store it at the version they would have had; also one snapshot
    with an extra event, and one ahead of the stream. Written past the store's guard, as a
    naive snapshotter would.
    """
    snapshots = snapshot_store(store)
    broken: set[tuple[str, int]] = set()

    async def write(stream_id: str, version: int, state: Tally) -> None:
        # it records the id of the committed event at that version, as a real one would
        at = [e.event_id async for e in store.read_stream(stream_id, from_version=version)][:1]
        snap = Snapshot(stream_id, version, config.state_version, config.encode(state), _now(), *at)
        await snapshots._write(snap, None)
        broken.add((stream_id, version))

    conflicts = [h for h in history if h["type"] == "conflict" and h["expected"] >= 0][:5]
    for h in conflicts:
        states = await replay_states(store, h["stream"])
        state = states[h["expected"]]
        for part in range(len(h["ids"])):
            state = evolve(state, Wrote(h["writer"], h["counter"], part, 0.0))
        await write(h["stream"], h["expected"] + len(h["ids"]), state)
    stream_id = next(h["stream"] for h in history if h["type"] == "ok")
    states = await replay_states(store, stream_id)
    last = len(states) - 1
    await write(stream_id, last, evolve(states[last - 1], Wrote(99, 0, 0, 0.0)))
    await write(stream_id, last + 1, evolve(states[last], Wrote(99, 1, 0, 0.0)))
    return broken


@pytest.mark.slow
async def test_snapshotter_under_concurrent_writer_processes(sql_url: str, tmp_path: Path) -> None:
    config = SnapshotConfig(Tally, policy=EveryN(2), inline=False, keep=10_000)
    targets = {"acct": (decider, config)}
    async with await chronik.connect(sql_url) as store:
        snapshotter = Snapshotter(
            store, targets, registry=registry, batch_size=5, poll_interval=0.01
        )
        await snapshotter.start()
        history = await asyncio.to_thread(run_writers, sql_url, "spread", 4, 50, tmp_path)
        await snapshotter.stop()
        taken_live = snapshotter.taken
        await snapshotter.catch_up()
        # snapshots were written while the writers ran, not only after (typically 40-190)
        assert taken_live > 0
        assert snapshotter.failed == 0, snapshotter.last_error
        taken = await snapshot_store(store).find()
        assert len(taken) >= 20, len(taken)
        committed = {s.stream_id: s.version async for s in store.streams()}
        assert all(s.version <= committed[s.stream_id] for s in taken)
        assert await verify_snapshots(store, targets, registry=registry) == []

        broken = await _broken_snapshots(store, config, history)
        problems = await verify_snapshots(store, targets, registry=registry)
        assert {(p.stream_id, p.version) for p in problems} == broken
        assert any(p.kind == "ahead" and "ahead of its stream" in p.reason for p in problems)
        assert any(p.kind == "differs" and "differs from a replay" in p.reason for p in problems)


# -- the command line ---------------------------------------------------------------------------


def test_cli_stats_list_take_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples import player_profiles

    from chronik.cli.main import main

    url = f"sqlite:///{tmp_path}/games.db"
    asyncio.run(player_profiles.run(url, say=lambda *_: None, matches=12))
    app = "examples.player_profiles:app"

    def run(*argv: str) -> Any:
        assert main(["--store", url, *argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    stats = run("snapshots", "stats")
    assert [s["category"] for s in stats] == ["player"]
    assert stats[0]["streams"] == 3 and stats[0]["bytes"] > 0
    listed = run("snapshots", "list", "player-ada")
    assert listed and listed[0]["version"] == 12
    taken = run("snapshots", "take", "player-ada", "--app", app)
    assert taken["version"] == 12 and taken["stream_id"] == "player-ada"
    pruned = run("snapshots", "prune", "--keep", "1", "--stale", "--app", app)
    assert pruned["keep"] == 1 and pruned["deleted"] >= 0
    assert len(run("snapshots", "list", "player-ada")) == 1
    assert main(["--store", url, "snapshots", "take", "nobody-1", "--app", app]) == 1
    assert "no snapshot configuration" in capsys.readouterr().err
    assert main(["--store", url, "snapshots", "prune", "--stale"]) == 1
    assert main(["--store", url, "snapshots", "stats"]) == 0
    assert "player" in capsys.readouterr().out


def test_cli_check_and_prune_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples import player_profiles

    from chronik.cli.main import main

    url = f"sqlite:///{tmp_path}/games.db"
    asyncio.run(player_profiles.run(url, say=lambda *_: None, matches=12))
    app = "examples.player_profiles:app"

    async def damage() -> None:
        async with await chronik.connect(url) as store:
            await _truncate(store, "player-ada", 5)  # its snapshots are ahead now
            await _corrupt(store, "player-grace", b"{not json")  # the newest of grace

    asyncio.run(damage())

    def run(*argv: str, code: int = 0) -> Any:
        assert main(["--store", url, *argv, "--json"]) == code
        return json.loads(capsys.readouterr().out)

    report = run("check", code=1)
    ahead = report["summary"]["snapshot_ahead"]
    assert ahead >= 1 and report["summary"]["snapshot_invalid"] == 0
    before = len(run("snapshots", "list", "player-grace"))
    pruned = run("snapshots", "prune", "--invalid")  # no --app: what needs no state type
    assert pruned == {"deleted": ahead, "invalid": ahead, "keep": None}
    assert len(run("snapshots", "list", "player-grace")) == before  # --keep not applied
    assert run("check")["ok"] is True
    pruned = run("snapshots", "prune", "--invalid", "--app", app)  # decodes: finds grace's
    assert pruned["invalid"] == 1
    assert len(run("snapshots", "list", "player-grace")) == before - 1
    assert main(["--store", url, "snapshots", "prune", "--invalid"]) == 0
    assert "deleted 0 snapshot(s) (0 invalid)" in capsys.readouterr().out


def test_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import snapshots as bench

    assert (
        bench.main(
            ["--sizes", "300", "--backends", "sqlite", "--loads", "1", "--workdir", str(tmp_path)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "300" in out and "ratio" in out
