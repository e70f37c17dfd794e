"""The workloads done the way a chronik user does them: typed events, ``append``, ``load``.

W5S loads through a ``CommandHandler`` given a ``SnapshotConfig(Account, policy=OnDemand())``
after ``handler.take_snapshot``; W6P and W7 run the :class:`Balances` projection (one upsert
per event, typed events through the registry) with a ``ProjectionRunner``: catch-up for W6P,
following live in the writer's process for W7. W8 runs 64 ``append`` coroutines on one store
(``asyncio.gather``) and, in the same job, one sequential writer over as many events. Every
function returns plain numbers; :mod:`benchmarks.run` turns them into the table.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import chronik
from benchmarks.common import Sizes, Target, timer
from benchmarks.model import (
    Account,
    account_decider,
    account_events,
    balance_change,
    balances_ddl,
    balances_upsert,
    deposited,
    expected_balances,
    opened,
    registry,
    stream_name,
)
from benchmarks.projection_rates import BareNotify, percentile
from chronik.projections import Projection, ProjectionRunner
from chronik.snapshots import OnDemand, SnapshotConfig
from chronik.store import SqlStore, require
from chronik.store.protocol import Tx

__all__ = [
    "Balances",
    "append_one_by_one",
    "chain",
    "live_lag",
    "load_big",
    "load_from_snapshot",
    "project",
    "read_log",
    "rebuild",
    "w7",
    "w8",
    "write_accounts",
]

Metrics = dict[str, float]
BIG_STREAM = "account-big"
NEWER_EVENTS = 100
"""W5S: events appended after the snapshot."""
LIVE_STREAM = "account-live"
WARM_UP = 10
"""W7: appends before the measured samples."""
W8_SEQUENTIAL = 800_000
"""W8: the sequential writer's first account index (its streams differ from the tasks')."""
W8_WARM_UP = 900_000
"""W8: the warm-up streams' first account index (one untimed event each)."""


class Balances(Projection):
    """Balance in cents and deposit count per account: one upsert per event (W6P, W7)."""

    name = "bench_balances"
    event_types = ["Opened", "Deposited"]

    def __init__(self) -> None:
        self.upsert = balances_upsert(self.table("balances"))

    async def setup(self, tx: Tx) -> None:
        await tx.execute(balances_ddl(self.table("balances")))

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('balances')}")

    async def handle(self, event: chronik.RecordedEvent, tx: Tx) -> None:
        cents, deposits = balance_change(registry.decode(event))
        await tx.execute(self.upsert, {"a": event.stream_id, "c": cents, "d": deposits})


async def read_balances(store: chronik.EventStore) -> dict[str, tuple[int, int]]:
    rows = await require(store, SqlStore).query(
        f"SELECT account, balance_cents, deposits FROM {Balances().table('balances')}"
    )
    return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


async def write_accounts(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W1: one append of ``w1_events`` typed events per stream, ``w1_streams`` streams."""
    to_new = registry.to_new_events
    per_stream = sizes.w1_events
    with timer() as t:
        for index in range(sizes.w1_streams):
            await store.append(
                stream_name(index),
                to_new(account_events(index, per_stream)),
                expected_version=chronik.NO_STREAM,
            )
    events = sizes.w1_streams * per_stream
    return {"events": events, "seconds": t.seconds, "events_per_s": events / t.seconds}


async def append_one_by_one(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W2: every event its own append (own transaction), with its expected version."""
    to_new = registry.to_new_event
    with timer() as t:
        for index in range(sizes.w2_streams):
            stream = stream_name(index)
            for version, ev in enumerate(account_events(index, sizes.w2_events)):
                await store.append(stream, [to_new(ev)], expected_version=version - 1)
    events = sizes.w2_streams * sizes.w2_events
    return {"events": events, "seconds": t.seconds, "events_per_s": events / t.seconds}


async def rebuild(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W4: load every W1 account into its typed state, one after the other."""
    handler = chronik.CommandHandler(store, account_decider, registry=registry)
    events = 0
    with timer() as t:
        for index in range(sizes.w1_streams):
            loaded = await handler.load(stream_name(index))
            events += loaded.version + 1
    expected = sizes.w1_streams * sizes.w1_events
    if events != expected:
        raise AssertionError(f"W4 folded {events} events, expected {expected}")
    return {
        "events": events,
        "seconds": t.seconds,
        "aggregates_per_s": sizes.w1_streams / t.seconds,
        "events_per_s": events / t.seconds,
    }


async def read_log(store: chronik.EventStore, expected: int) -> Metrics:
    """W6: the whole log through ``read_all``, each event decoded into its typed class."""
    decode = registry.decode
    count = 0
    with timer() as t:
        async for recorded in store.read_all():
            decode(recorded)
            count += 1
    if count != expected:
        raise AssertionError(f"W6 read {count} events, expected {expected}")
    return {"events": count, "seconds": t.seconds, "events_per_s": count / t.seconds}


async def load_big(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W5: write one ``w5_events`` account (untimed), then load it ``w5_loads`` times."""
    to_new = registry.to_new_events
    remaining = sizes.w5_events
    version = -1
    first = True
    while remaining > 0:
        n = min(1000, remaining)
        if first:
            batch = list(account_events(999_999, n))
            first = False
        else:
            batch = [deposited(999_999, version + 1 + k) for k in range(n)]
        result = await store.append(BIG_STREAM, to_new(batch), expected_version=version)
        version = result.version
        remaining -= n
    handler = chronik.CommandHandler(store, account_decider, registry=registry)
    times = []
    for _ in range(sizes.w5_loads):
        with timer() as t:
            loaded = await handler.load(BIG_STREAM)
        if loaded.version != sizes.w5_events - 1:
            raise AssertionError(f"W5 loaded version {loaded.version}")
        times.append(t.seconds * 1000)
    return {"events": sizes.w5_events, "ms": statistics.median(times)}


async def project(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W6P: the :class:`Balances` projection catches up from the start over the W1 events
    (``ProjectionRunner.catch_up``: batches of 500, the checkpoint in each batch's
    transaction); the read model is then checked against what W1 wrote."""
    runner = ProjectionRunner(store, [Balances()], batch_size=500)
    with timer() as t:
        applied = await runner.catch_up()
    expected = sizes.w1_streams * sizes.w1_events
    if applied != expected:
        raise AssertionError(f"W6P applied {applied} events, expected {expected}")
    rows = await read_balances(store)
    want = {
        stream_name(i): v for i, v in expected_balances(sizes.w1_streams, sizes.w1_events).items()
    }
    if rows != want:
        raise AssertionError("W6P: the read model differs from what W1 wrote")
    return {
        "events": applied,
        "seconds": t.seconds,
        "events_per_s": applied / t.seconds,
        "accounts": len(rows),
        "balance_cents_total": sum(cents for cents, _ in rows.values()),
    }


async def load_from_snapshot(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W5S: W5's account snapshotted at its last version (untimed, ``take_snapshot`` of a
    handler with ``SnapshotConfig(Account, policy=OnDemand())``), 100 more events appended,
    then ``load`` through that handler (snapshot + 100 events) ``w5_loads`` times."""
    config = SnapshotConfig(Account, policy=OnDemand())
    handler = chronik.CommandHandler(store, account_decider, registry=registry, snapshots=config)
    snapshot = await handler.take_snapshot(BIG_STREAM)
    at = sizes.w5_events - 1
    if snapshot is None or snapshot.version != at:
        raise AssertionError(f"W5S: no snapshot at version {at}: {snapshot}")
    newer = [deposited(999_999, at + 1 + k) for k in range(NEWER_EVENTS)]
    await store.append(BIG_STREAM, registry.to_new_events(newer), expected_version=at)
    last = at + NEWER_EVENTS
    times = []
    loaded = None
    for _ in range(sizes.w5_loads):
        with timer() as t:
            loaded = await handler.load(BIG_STREAM)
        if loaded.version != last or loaded.snapshot_version != at:
            raise AssertionError(
                f"W5S loaded version {loaded.version} from snapshot {loaded.snapshot_version}"
            )
        times.append(t.seconds * 1000)
    assert loaded is not None
    if loaded.state.deposits != last:
        raise AssertionError(f"W5S: {loaded.state.deposits} deposits, expected {last}")
    return {
        "events": NEWER_EVENTS,
        "events_in_snapshot": at + 1,
        "ms": statistics.median(times),
    }


async def _chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    out: dict[str, Metrics] = {}
    async with await chronik.connect(target.chronik_url()) as store:
        out["W1"] = await write_accounts(store, sizes)
        out["W4"] = await rebuild(store, sizes)
        out["W6"] = await read_log(store, sizes.w1_streams * sizes.w1_events)
        out["W6P"] = await project(store, sizes)
        out["W5"] = await load_big(store, sizes)
        out["W5S"] = await load_from_snapshot(store, sizes)
    return out


def _follow_live(url: str, ready: Any, stop: Any, out: Any) -> None:
    """W7's projection process: the :class:`Balances` projection following the store live.

    Reports, for every checkpoint advance, the position and ``time.monotonic()`` right after
    its transaction committed (``CLOCK_MONOTONIC`` is one clock for every process).
    """
    asyncio.run(_follow(url, ready, stop, out))


async def _follow(url: str, ready: Any, stop: Any, out: Any) -> None:
    advances: list[tuple[int, float]] = []
    async with await chronik.connect(url) as store:
        runner = ProjectionRunner(store, [Balances()], poll_interval=1.0)
        follower = runner.follower(Balances.name)
        advance = follower.advance  # called after each batch's COMMIT

        async def record(position: int) -> None:
            advances.append((position, time.monotonic()))
            await advance(position)

        follower.advance = record  # type: ignore[method-assign]
        async with runner:
            ready.set()
            await asyncio.to_thread(stop.wait)
    out.put(advances)


async def _checkpoint_reaches(store: chronik.EventStore, position: int) -> None:
    name = Balances().checkpoint_name
    deadline = time.monotonic() + 30
    while (await store.get_checkpoint(name) or 0) < position:
        if time.monotonic() > deadline:
            raise AssertionError(f"W7: the projection did not reach position {position}")
        await asyncio.sleep(0.005)


def _stats(values: list[float]) -> Metrics:
    return {
        "samples": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": percentile(values, 0.99),
        "max_ms": max(values),
    }


async def live_lag(target: Target, samples: int) -> dict[str, Metrics]:
    """W7 (PostgreSQL): an event committed → applied by a live projection in another process.

    The projection (:class:`Balances`, one upsert per event, checkpoint in the same
    transaction) runs in its own process, woken by LISTEN/NOTIFY (polling only every second
    as a fallback), as a projection worker would run. This process appends one event at a
    time, about 30 ms apart, and notes when ``append`` returned (committed); the projection
    process notes when the transaction that applied it committed. Between two samples one
    bare NOTIFY round trip between two plain psycopg connections is measured, so both see the
    same server at the same time. ``p50_ms``/``p99_ms`` are commit → applied; the
    ``*_from_call_ms`` figures count from the ``append`` call (adding the append's own commit).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    url = target.chronik_url()
    follower = ctx.Process(target=_follow_live, args=(url, ready, stop, out), daemon=True)
    sent: list[tuple[int, float, float]] = []  # position, append called, append returned
    bare: list[float] = []
    to_new = registry.to_new_event
    async with await chronik.connect(url) as store:
        first = await store.append(
            LIVE_STREAM, [to_new(opened(7))], expected_version=chronik.NO_STREAM
        )
        follower.start()
        try:
            if not await asyncio.to_thread(ready.wait, 120):
                raise AssertionError("W7: the projection process did not start")
            await _checkpoint_reaches(store, first.position)
            async with BareNotify(target.pg_url) as notify:
                # warm-up, not recorded: the writer learns that a listener is there (it
                # checks at most every 0.1 s while nobody listens) and both sides prepare
                # their statements
                for seq in range(1, WARM_UP + 1):
                    await store.append(
                        LIVE_STREAM, [to_new(deposited(7, seq))], expected_version=seq - 1
                    )
                    await asyncio.sleep(0.03)
                for seq in range(WARM_UP + 1, WARM_UP + samples + 1):
                    called = time.monotonic()
                    result = await store.append(
                        LIVE_STREAM, [to_new(deposited(7, seq))], expected_version=seq - 1
                    )
                    sent.append((result.position, called, time.monotonic()))
                    await asyncio.sleep(0.02)
                    bare.append(await notify.round_trip())
                    await asyncio.sleep(0.01)
            await _checkpoint_reaches(store, sent[-1][0])
        finally:
            stop.set()
        advances: list[tuple[int, float]] = await asyncio.to_thread(out.get, True, 60)
        await asyncio.to_thread(follower.join, 30)
        rows = await read_balances(store)
    if rows.get(LIVE_STREAM, (0, 0))[1] != WARM_UP + samples:
        raise AssertionError(f"W7: the projection counted {rows.get(LIVE_STREAM)} deposits")
    from_commit: list[float] = []
    from_call: list[float] = []
    for position, called, committed in sent:
        applied = min(t for reached, t in advances if reached >= position)
        from_commit.append((applied - committed) * 1000)
        from_call.append((applied - called) * 1000)
    call = _stats(from_call)
    chronik_metrics = {
        **_stats(from_commit),
        "p50_from_call_ms": call["p50_ms"],
        "p99_from_call_ms": call["p99_ms"],
    }
    return {"chronik": chronik_metrics, "raw": _stats(bare)}


async def _append_stream(store: chronik.EventStore, index: int, events: int) -> int:
    """Append the first ``events`` events of account ``index`` one by one (each its own
    append, with its expected version); returns the stream's last version."""
    to_new = registry.to_new_event
    stream = stream_name(index)
    last = -1
    for version, ev in enumerate(account_events(index, events)):
        result = await store.append(stream, [to_new(ev)], expected_version=version - 1)
        last = result.version
    return last


async def concurrent_appenders(store: chronik.EventStore, sizes: Sizes) -> Metrics:
    """W8: a server's pattern. ``w8_tasks`` coroutines (``asyncio.gather``) each appending
    ``w8_events`` single events to its own stream through this one store; and, in the same
    job and store, one coroutine appending the same number of events to as many other
    streams one after the other (chronik's own sequential single-writer rate).

    Untimed first: one event on each of ``w8_tasks`` warm-up streams, appended concurrently,
    so the pool (PostgreSQL) and the statements are as warm as in a running server. Then the
    sequential writer, then the concurrent tasks (the latter on the larger table).
    """
    tasks, per = sizes.w8_tasks, sizes.w8_events
    to_new = registry.to_new_event
    await asyncio.gather(
        *(
            store.append(
                stream_name(W8_WARM_UP + i),
                [to_new(opened(W8_WARM_UP + i))],
                expected_version=chronik.NO_STREAM,
            )
            for i in range(tasks)
        )
    )
    with timer() as sequential:
        for i in range(tasks):
            await _append_stream(store, W8_SEQUENTIAL + i, per)
    with timer() as t:
        lasts = await asyncio.gather(*(_append_stream(store, i, per) for i in range(tasks)))
    if lasts != [per - 1] * tasks:
        raise AssertionError(f"W8: the streams ended at versions {sorted(set(lasts))}")
    events = tasks * per
    rate = events / t.seconds
    sequential_rate = events / sequential.seconds
    return {
        "events": events,
        "tasks": tasks,
        "seconds": t.seconds,
        "events_per_s": rate,
        "sequential_seconds": sequential.seconds,
        "sequential_events_per_s": sequential_rate,
        "vs_sequential": rate / sequential_rate,
    }


async def _w8(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    async with await chronik.connect(target.chronik_url()) as store:
        return {"W8": await concurrent_appenders(store, sizes)}


async def _w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    async with await chronik.connect(target.chronik_url()) as store:
        return {"W2": await append_one_by_one(store, sizes)}


def chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W1, then W4, W6 and W6P over what W1 wrote, then W5 and W5S (in this order, one
    database)."""
    return asyncio.run(_chain(target, sizes))


def w7(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W7's chronik and bare-NOTIFY numbers (``{"chronik": ..., "raw": ...}``)."""
    if target.backend != "postgres":
        raise ValueError("W7 measures LISTEN/NOTIFY: PostgreSQL only")
    return asyncio.run(live_lag(target, sizes.w7_samples))


def w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    return asyncio.run(_w2(target, sizes))


def w8(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W8: concurrent appenders through one store, and the sequential writer (same job)."""
    return asyncio.run(_w8(target, sizes))


def info() -> dict[str, Any]:
    return {"version": chronik.__version__}
