"""The workloads done the way a chronik user does them: typed events, ``append``, ``load``.

Every function returns plain numbers; :mod:`benchmarks.run` turns them into the table.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import chronik
from benchmarks.common import Sizes, Target, timer
from benchmarks.model import (
    account_decider,
    account_events,
    deposited,
    registry,
    stream_name,
)

__all__ = ["append_one_by_one", "chain", "load_big", "read_log", "rebuild", "write_accounts"]

Metrics = dict[str, float]
BIG_STREAM = "account-big"


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


async def _chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    out: dict[str, Metrics] = {}
    async with await chronik.connect(target.chronik_url()) as store:
        out["W1"] = await write_accounts(store, sizes)
        out["W4"] = await rebuild(store, sizes)
        out["W6"] = await read_log(store, sizes.w1_streams * sizes.w1_events)
        out["W5"] = await load_big(store, sizes)
    return out


async def _w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    async with await chronik.connect(target.chronik_url()) as store:
        return {"W2": await append_one_by_one(store, sizes)}


def chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W1, then W4 and W6 over what W1 wrote, then W5 (in this order, one database)."""
    return asyncio.run(_chain(target, sizes))


def w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    return asyncio.run(_w2(target, sizes))


def info() -> dict[str, Any]:
    return {"version": chronik.__version__}
