"""Scale-out of a partitioned projection on PostgreSQL (issue 17).

``python -m benchmarks.scaleout [--quick]``:

- **throughput**: the projection of ``tests.scaleout.app`` whose handler spends 1 ms per
  event on I/O, 8 partitions, run by 1, 2 and 4 worker processes, in two modes: the 1 ms
  **blocks** the process (``time.sleep``: synchronous I/O, one event at a time per process;
  what the issue's goals were set for) or is **awaited** (``asyncio.sleep``: a process's
  partitions overlap their waits). ``--runs`` rounds, the process counts interleaved in
  each round; median and min-max per count
  (``tests.scaleout.worker``). The workers start on an empty store and split the partitions
  first; the clock runs from the first append of E events (S streams) until the read model
  holds all of them. Also the same projection with the plain (unpartitioned)
  ``ProjectionRunner`` in one process, for reference. Goals: 2 processes at least 1.8x,
  4 at least 3.4x of one.
- **rebalance**: 4 workers (lease TTL 2 s); one is killed with SIGKILL; the time until its
  partitions are owned by the others.
- **lease check**: the cost of the fence per batch: a transaction moving a checkpoint, with
  and without ``Leases.check`` (median of N).

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

from tests.scaleout.app import StreamOrder, model
from tests.scaleout.cluster import Cluster, owners

import chronik
from benchmarks.common import create_target, drop_target, pg_reachable
from chronik.projections import ProjectionRunner
from chronik.scaleout import Leases, partition_of
from chronik.store.protocol import EventStore

__all__ = ["main"]


async def _append(store: EventStore, streams: int, events: int) -> None:
    per = events // streams
    for s in range(streams):
        await store.append(f"tick-{s}", [chronik.NewEvent("Ticked", {"n": s}) for _ in range(per)])


async def _applied(store: EventStore) -> int:
    try:
        return sum(e for _, e, _ in (await model(store)).values())
    except Exception:
        return 0


async def _wait(check: object, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish")
        await asyncio.sleep(0.02)


def busiest_share(owned: dict[int, str | None], streams: int, partitions: int = 8) -> float:
    """The largest share of the streams one member owns (by ``partition_of``): with one
    event at a time per process, ``1 / share`` bounds the speed-up over one process."""
    from collections import Counter

    load = Counter(owned.get(partition_of(f"tick-{s}", partitions)) for s in range(streams))
    return max(load.values()) / streams


async def throughput(
    procs: int,
    events: int,
    streams: int,
    *,
    blocking: bool = True,
    shared: bool = True,
    partitions: int = 8,
) -> tuple[float, float]:
    """Events per second with ``procs`` worker processes, and the busiest member's share."""
    target = create_target("postgres", f"so{procs}")
    url = target.chronik_url()
    cluster = Cluster(
        url, partitions, ttl=5.0, batch=100, handler_ms=1, blocking=blocking, shared=shared
    )
    try:
        async with await chronik.connect(url) as store:
            members = {f"w{i}" for i in range(procs)}
            for m in sorted(members):
                cluster.start(m)

            async def balanced() -> bool:  # the rebalance is done: partitions / procs each
                owned = list((await owners(store)).values())
                even = partitions // procs
                return len(owned) == partitions and all(
                    even <= owned.count(m) <= even + 1 for m in members
                )

            await _wait(balanced)
            share = busiest_share(await owners(store), streams, partitions)
            started = time.monotonic()
            await _append(store, streams, events)

            async def done() -> bool:
                return await _applied(store) >= events

            await _wait(done)
            return events / (time.monotonic() - started), share
    finally:
        cluster.stop_all()
        drop_target(target)


async def plain(events: int, streams: int) -> float:
    """Events per second of the unpartitioned runner in one process (same handler)."""
    import tests.scaleout.app as app

    app.HANDLER_SECONDS, app.BLOCKING = 0.001, True
    target = create_target("postgres", "soplain")
    try:
        async with await chronik.connect(target.chronik_url()) as store:
            runner = ProjectionRunner(store, [StreamOrder()], batch_size=100)
            await runner.setup()
            await _append(store, streams, events)
            started = time.monotonic()
            await runner.catch_up()
            return events / (time.monotonic() - started)
    finally:
        app.HANDLER_SECONDS, app.BLOCKING = 0.0, False
        drop_target(target)


async def rebalance(ttl: float) -> float:
    """Seconds from SIGKILL of one of 4 workers until its partitions are owned again."""
    target = create_target("postgres", "soreb")
    url = target.chronik_url()
    cluster = Cluster(url, 8, ttl=ttl, batch=100)
    try:
        async with await chronik.connect(url) as store:
            members = {f"w{i}" for i in range(4)}
            for m in sorted(members):
                cluster.start(m)

            async def balanced() -> bool:  # the rebalance is done: 2 each
                owned = list((await owners(store)).values())
                return len(owned) == 8 and all(owned.count(m) == 2 for m in members)

            await _wait(balanced)
            orphaned = {p for p, o in (await owners(store)).items() if o == "w0"}
            cluster.kill("w0")
            killed = time.monotonic()

            async def reowned() -> bool:
                owned = await owners(store)
                return all(owned[p] not in (None, "w0") for p in orphaned)

            await _wait(reowned)
            return time.monotonic() - killed
    finally:
        cluster.stop_all()
        drop_target(target)


async def lease_check(samples: int) -> tuple[float, float]:
    """Median milliseconds of a checkpoint transaction without and with the lease check."""
    target = create_target("postgres", "socheck")
    try:
        async with await chronik.connect(target.chronik_url()) as store:
            leases = Leases(store, "bench", 1, member="m", ttl=60)
            await leases.join()
            epoch = await leases.acquire(0)
            assert epoch is not None
            without: list[float] = []
            with_check: list[float] = []
            for i in range(samples):
                for fenced, into in ((False, without), (True, with_check)):
                    t0 = time.perf_counter()
                    async with store.transaction() as tx:
                        if fenced:
                            await leases.check(tx, 0, epoch)
                        await tx.set_checkpoint("bench", i)
                    into.append((time.perf_counter() - t0) * 1000)
            return statistics.median(without), statistics.median(with_check)
    finally:
        drop_target(target)


async def profile(blocking: bool, shared: bool, events: int = 3000) -> None:
    """cProfile of one process running all 8 partitions in-process on ``events`` events
    already appended: wall and CPU time, store reads, and the top functions by own time."""
    import cProfile
    import pstats

    import tests.scaleout.app as app

    from chronik.scaleout import PartitionedProjectionRunner

    app.HANDLER_SECONDS, app.BLOCKING = 0.001, blocking
    target = create_target("postgres", "soprof")
    try:
        async with await chronik.connect(target.chronik_url()) as store:
            await _append(store, 200, events)
            runner = PartitionedProjectionRunner(
                store, StreamOrder(), partitions=8, member="p", lease_ttl=30, batch_size=100,
                poll_interval=0.1, shared_reader=shared,
            )  # fmt: skip
            prof = cProfile.Profile()
            started, cpu = time.monotonic(), time.process_time()
            prof.enable()
            async with runner:
                await _wait(lambda: _done(store, events))
            prof.disable()
            wall, cpu = time.monotonic() - started, time.process_time() - cpu
            reads = runner.shared.store_reads if runner.shared is not None else "one per partition"
            print(f"profile: {'blocking' if blocking else 'awaited'} handler, "
                  f"{'one reader' if shared else 'a reader per partition'}: {events} events "
                  f"in {wall:.2f}s wall, {cpu:.2f}s CPU of this process "
                  f"({events / wall:,.0f} events/s), store reads: {reads}")  # fmt: skip
            pstats.Stats(prof).sort_stats("tottime").print_stats(8)
    finally:
        app.HANDLER_SECONDS, app.BLOCKING = 0.0, False
        drop_target(target)


async def _done(store: EventStore, events: int) -> bool:
    return await _applied(store) >= events


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


async def run(
    quick: bool, runs: int, streams: int | None, modes_wanted: set[str], partitions: int = 8
) -> None:
    events, streams = (2000, streams or 200) if quick else (6000, streams or 300)
    print(f"throughput: {events} events on {streams} streams, 1 ms handler I/O, "
          f"{partitions} partitions, {runs} interleaved rounds")  # fmt: skip
    base = await plain(events, streams)
    print(f"  unpartitioned ProjectionRunner, 1 process, blocking: {base:,.0f} events/s",
          flush=True)  # fmt: skip
    modes = [(True, True, "blocking"), (False, True, "awaited"),
             (True, False, "blocking, a reader per partition (before)")]  # fmt: skip
    for blocking, shared, mode in modes:
        if mode not in modes_wanted:
            continue
        rates: dict[int, list[float]] = {1: [], 2: [], 4: []}
        ratios: dict[int, list[float]] = {2: [], 4: []}
        shares: dict[int, list[float]] = {1: [], 2: [], 4: []}
        for r in range(runs):
            for procs in (1, 2, 4):
                rate, share = await throughput(
                    procs, events, streams, blocking=blocking, shared=shared,
                    partitions=partitions,
                )  # fmt: skip
                rates[procs].append(rate)
                shares[procs].append(share)
                print(f"    {mode} round {r + 1}, {procs} process(es): {rate:,.0f} events/s; "
                      f"busiest process owns {share:.0%} of the streams "
                      f"(speed-up bound {1 / share:.2f}x)", flush=True)  # fmt: skip
            for procs in (2, 4):
                ratios[procs].append(rates[procs][-1] / rates[1][-1])
        print(f"  {mode} 1 ms I/O:")
        print(f"    1 process: {_spread(rates[1])} events/s")
        for procs in (2, 4):
            rs = ratios[procs]
            print(
                f"    {procs} processes: {_spread(rates[procs])} events/s; "
                f"{statistics.median(rs):.2f}x of one in the same round "
                f"(min {min(rs):.2f}, max {max(rs):.2f}); hash-balance bound "
                f"{statistics.median([1 / x for x in shares[procs]]):.2f}x",
                flush=True,
            )
    ttl = 2.0
    took = await rebalance(ttl)
    print(f"rebalance: partitions of a killed worker owned again after {took:.2f}s (TTL {ttl}s)")
    plain_ms, fenced_ms = await lease_check(50 if quick else 500)
    print(f"lease check: checkpoint transaction {plain_ms:.3f} ms, with the check "
          f"{fenced_ms:.3f} ms (+{fenced_ms - plain_ms:.3f} ms per batch)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--streams",
        type=int,
        default=None,
        help="streams the events are spread over (default 300; --quick 200)",
    )
    parser.add_argument(
        "--modes",
        default="blocking,awaited,before",
        help="comma list of blocking, awaited, before (default: all)",
    )
    parser.add_argument("--partitions", type=int, default=8,
                        help="partitions of the projection (default 8)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="only cProfile one in-process runner (blocking/awaited handler, "
                        "one reader/a reader per partition)")  # fmt: skip
    args = parser.parse_args(argv)
    if not pg_reachable():
        print("PostgreSQL is not reachable: nothing measured", file=sys.stderr)
        return 1
    if args.profile:
        for blocking, shared in ((True, True), (True, False), (False, True), (False, False)):
            asyncio.run(profile(blocking, shared))
        return 0
    wanted = {"blocking, a reader per partition (before)" if m == "before" else m
              for m in args.modes.split(",")}  # fmt: skip
    asyncio.run(run(args.quick, args.runs, args.streams, wanted, args.partitions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
