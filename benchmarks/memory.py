"""M1: peak memory of reading the whole log through ``read_all``, at two log lengths.

Each measurement runs in a fresh interpreter (see :mod:`benchmarks.worker`): the store is
opened, then the log is read and every event decoded into its typed class, as a projection's
catch-up does. Two numbers: the ``tracemalloc`` peak of Python allocations during the read,
and the growth of the process's peak RSS (``ru_maxrss``) during the read (in a separate run,
without tracemalloc). Flat means both stay the same when the log is ten times longer.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import tracemalloc

import chronik
from benchmarks.common import Target, timer
from benchmarks.model import account_events, deposited, registry

__all__ = ["fill", "read"]

Metrics = dict[str, float]
STREAM_EVENTS = 1000


async def _fill(target: Target, total: int) -> Metrics:
    to_new = registry.to_new_events
    async with await chronik.connect(target.chronik_url()) as store:
        have = 0
        async for _ in store.streams(category="m1"):
            have += STREAM_EVENTS
        with timer() as t:
            index = have // STREAM_EVENTS
            while have < total:
                events = list(account_events(index, 1)) + [
                    deposited(index, seq) for seq in range(1, STREAM_EVENTS)
                ]
                await store.append(
                    f"m1-{index:07d}", to_new(events), expected_version=chronik.NO_STREAM
                )
                have += STREAM_EVENTS
                index += 1
    return {"events": have, "seconds": t.seconds}


def fill(target: Target, total: int) -> Metrics:
    """Grow the log to ``total`` events (streams of 1,000 events, one append each)."""
    return asyncio.run(_fill(target, total))


async def _read(target: Target, trace: bool) -> Metrics:
    decode = registry.decode
    async with await chronik.connect(target.chronik_url()) as store:
        await store.head_position()
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if trace:
            tracemalloc.start()
        count = 0
        with timer() as t:
            async for recorded in store.read_all():
                decode(recorded)
                count += 1
        peak = 0
        if trace:
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: Metrics = {"events": count, "seconds": t.seconds}
    if trace:
        out["tracemalloc_peak_mib"] = peak / 2**20
    else:
        out["rss_growth_mib"] = (after - before) / 1024
        out["rss_peak_mib"] = after / 1024
    return out


def read(target: Target, trace: bool) -> Metrics:
    """Read and decode the whole log once; memory numbers as described in the module doc."""
    return asyncio.run(_read(target, trace))
