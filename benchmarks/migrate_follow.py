"""Zero-downtime migration figures: the follow lag under a steady write rate, the write
pause at cut-over, and what the fence costs an append.

Not a test and not part of ``benchmarks.run``::

    python -m benchmarks.migrate_follow [--quick] [--rate 1000] [--seconds 10]
        [--cutovers 20] [--json PATH]

- **lag**: a writer process appends single events to the source at ``--rate`` appends/s
  for ``--seconds``, while a :class:`~chronik.migrate.CopyFollower` copies them (upcast,
  in this process); each copied batch reports how long its oldest event waited, from its
  append to the source to the commit of its copy. p50/p99/max over batches, and the
  largest backlog counted (events).
- **pause**: ``--cutovers`` times, a fresh source (``--prefill`` events) and target, the
  follower running, a writer appending through :class:`~chronik.migrate.MigratingStore`
  every 2 ms, then :func:`~chronik.migrate.cutover` (with the full verification). The
  pause is the writer's: from the fence to its first append accepted by the target.
  Also the cut-over's own part (fence → complete).
- **fence cost**: appends of one event with the fence trigger present and dropped,
  interleaved (the trigger is what every append pays); SQLite with ``synchronous=OFF`` so
  that the fsync of each commit does not hide it.

Both directions: SQLite → PostgreSQL and PostgreSQL → SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import chronik
from chronik import NewEvent
from chronik.migrate import CopyFollower, CopyProgress, MigratingStore, cutover
from chronik.store import SqlStore, require

PG = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _tx(n: int) -> NewEvent:
    """A v1 ledger event (upcast to v2 by the copy)."""
    data = {"account_id": str(n % 200), "amount_cents": n % 5000, "description": f"tx {n}"}
    return NewEvent("TransactionRecorded", data)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


WRITER_TASKS = 4
"""Concurrent appenders in the writer process (one alone cannot do 1,000 appends/s with a
commit, or an fsync, each)."""


def _writer(url: str, rate: float, seconds: float) -> None:
    async def task(store: chronik.EventStore, k: int, began: float) -> None:
        n = k
        while (now := time.monotonic() - began) < seconds:
            due = n / rate
            if due > now:
                await asyncio.sleep(due - now)
            await store.append(f"account-{n % 200}", [_tx(n)])
            n += WRITER_TASKS

    async def go() -> None:
        async with await chronik.connect(url) as store:
            began = time.monotonic()
            await asyncio.gather(*(task(store, k, began) for k in range(WRITER_TASKS)))

    asyncio.run(go())


def _urls(tmp: Path, direction: str, tag: str) -> tuple[str, str, str]:
    schema = f"bench_follow_{tag}_{uuid.uuid4().hex[:8]}"
    pg = f"{PG}?schema={schema}"
    sqlite = f"sqlite:///{tmp}/{tag}-{uuid.uuid4().hex[:6]}.db"
    source, target = (sqlite, pg) if direction == "sqlite->postgres" else (pg, sqlite)
    return source, target, schema


async def follow_lag(tmp: Path, direction: str, rate: float, seconds: float) -> dict[str, Any]:
    from examples.financial_transactions import registry

    source_url, target_url, schema = _urls(tmp, direction, "lag")
    async with await chronik.connect(source_url):
        pass  # created before the writer starts
    lags: list[float] = []
    backlog: list[int] = []

    def progress(p: CopyProgress) -> None:
        if p.lag_seconds is not None:
            lags.append(p.lag_seconds)
        if p.lag_events is not None:
            backlog.append(p.lag_events)

    async with (
        await chronik.connect(source_url) as source,
        await chronik.connect(target_url) as target,
    ):
        follower = CopyFollower(
            source, target, registry=registry, upcast=True, poll_interval=0.5, progress=progress
        )
        async with follower:
            writer = multiprocessing.get_context("spawn").Process(
                target=_writer, args=(source_url, rate, seconds)
            )
            writer.start()
            await asyncio.to_thread(writer.join)
            head = await source.head_position()
            while follower.checkpoint < head:  # noqa: ASYNC110 - the follower's own state
                await asyncio.sleep(0.01)
        copied = follower.copied
    return {
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": round(copied / seconds),
        "copied": copied,
        "batches": len(lags),
        "lag_p50_ms": round(_pct(lags, 0.5) * 1000, 1),
        "lag_p99_ms": round(_pct(lags, 0.99) * 1000, 1),
        "lag_max_ms": round(max(lags, default=float("nan")) * 1000, 1),
        "backlog_max_events": max(backlog, default=0),
        "_schema": schema,
    }


async def one_cutover(
    tmp: Path, direction: str, prefill: int, verify: bool = True
) -> tuple[float, float, str]:
    from examples.financial_transactions import registry

    source_url, target_url, schema = _urls(tmp, direction, "cut")
    async with (
        await chronik.connect(source_url) as source,
        await chronik.connect(target_url) as target,
    ):
        for begin in range(0, prefill, 500):
            await asyncio.gather(
                *(
                    source.append(f"account-{i % 50}", [_tx(i)])
                    for i in range(begin, min(begin + 500, prefill))
                )
            )
        store = MigratingStore(source, target, switch_timeout=60)
        stop = asyncio.Event()

        async def write() -> None:
            n = 0
            while not stop.is_set():
                await store.append(f"live-{n % 10}", [_tx(n)])
                n += 1
                await asyncio.sleep(0.002)

        async with CopyFollower(source, target, registry=registry, upcast=True):
            writing = asyncio.ensure_future(write())
            await asyncio.sleep(0.3)
            report = await cutover(
                source, target, moved_to=target_url, registry=registry, upcast=True, verify=verify
            )
            while store.switch is None or store.switch.first_write_at is None:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            stop.set()
            await writing
        pause = store.switch.pause_seconds
        assert pause is not None
    return pause, report.fenced_seconds, schema


async def fence_cost(tmp: Path, backend: str, appends: int, rounds: int) -> dict[str, Any]:
    """Appends/s with the fence trigger and without it, interleaved rounds."""
    schema = f"bench_fence_{uuid.uuid4().hex[:8]}"
    # SQLite without fsync: what the trigger costs is CPU, which an fsync per commit hides
    sqlite = f"sqlite:///{tmp}/fence-{schema}.db?synchronous=OFF"
    url = f"{PG}?schema={schema}" if backend == "postgres" else sqlite
    rates: dict[str, list[float]] = {"with": [], "without": []}
    async with await chronik.connect(url) as store:
        sql = require(store, SqlStore)
        if backend == "postgres":
            drop = "DROP TRIGGER events_fence ON events"
            make = (
                "CREATE TRIGGER events_fence BEFORE INSERT ON events "
                "FOR EACH STATEMENT EXECUTE FUNCTION events_fenced()"
            )
        else:
            drop = "DROP TRIGGER events_fence"
            make = (
                "CREATE TRIGGER events_fence BEFORE INSERT ON events "
                "WHEN EXISTS (SELECT 1 FROM store_fence) "
                "BEGIN SELECT RAISE(ABORT, 'chronik store fenced'); END"
            )
        n = 0
        for _ in range(rounds):
            for mode in ("with", "without"):
                if mode == "without":
                    async with sql.transaction() as tx:
                        await tx.execute(drop)
                began = time.perf_counter()
                for _ in range(appends):
                    await store.append(f"s-{n % 100}", [NewEvent("E", {"n": n})])
                    n += 1
                rates[mode].append(appends / (time.perf_counter() - began))
                if mode == "without":
                    async with sql.transaction() as tx:
                        await tx.execute(make)
        trigger_us = None
        if backend == "postgres":  # the trigger's own time, as PostgreSQL measures it
            trigger_us = await _trigger_time_us(sql, 200)
    with_, without = statistics.median(rates["with"]), statistics.median(rates["without"])
    return {
        "appends_per_s_with_fence": round(with_),
        "appends_per_s_without": round(without),
        "cost_percent": round((without - with_) / without * 100, 1),
        "trigger_us_per_insert_median": trigger_us,
        "_schema": schema if backend == "postgres" else None,
    }


async def _trigger_time_us(sql: Any, statements: int) -> float:
    """The median time of the ``events_fence`` trigger per INSERT statement (EXPLAIN
    ANALYZE on one connection, after its first call compiled the function), rolled back."""
    times: list[float] = []

    class _Rollback(Exception):
        pass

    try:
        async with sql.transaction() as tx:
            for n in range(statements):
                rows = await tx.fetchall(
                    "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO events (position, stream_id, "
                    "version, event_id, type, schema_version, data, metadata) SELECT "
                    "(SELECT coalesce(max(position), 0) FROM events) + 1, :s, 0, "
                    "gen_random_uuid(), 'E', 1, '{}', '{}'",
                    {"s": f"probe-{n}"},
                )
                plan = rows[0][0]
                plan = json.loads(plan) if isinstance(plan, str) else plan
                for trigger in plan[0].get("Triggers", []):
                    if trigger["Trigger Name"] == "events_fence" and n > 0:
                        times.append(trigger["Time"] * 1000)
            raise _Rollback
    except _Rollback:
        pass
    return round(statistics.median(times), 1) if times else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"lag": {}, "pause": {}, "fence": {}}
    schemas: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for direction in ("sqlite->postgres", "postgres->sqlite"):
            if args.only in (None, "lag"):
                lag = await follow_lag(tmp, direction, args.rate, args.seconds)
                schemas.append(lag.pop("_schema"))
                results["lag"][direction] = lag
                print(f"lag   {direction:17} {json.dumps(lag)}", flush=True)
            if args.only not in (None, "pause"):
                continue
            pauses, fenced = [], []
            for _ in range(args.cutovers):
                pause, own, schema = await one_cutover(
                    tmp, direction, args.prefill, verify=not args.no_verify
                )
                schemas.append(schema)
                pauses.append(pause)
                fenced.append(own)
            row = {
                "verify": not args.no_verify,
                "cutovers": args.cutovers,
                "prefill_events": args.prefill,
                "pause_p50_ms": round(_pct(pauses, 0.5) * 1000, 1),
                "pause_p99_ms": round(_pct(pauses, 0.99) * 1000, 1),
                "pause_max_ms": round(max(pauses) * 1000, 1),
                "fence_to_complete_p50_ms": round(_pct(fenced, 0.5) * 1000, 1),
            }
            results["pause"][direction] = row
            print(f"pause {direction:17} {json.dumps(row)}", flush=True)
        for backend in ("sqlite", "postgres") if args.only in (None, "fence") else ():
            cost = await fence_cost(tmp, backend, args.fence_appends, 5)
            if made := cost.pop("_schema"):
                schemas.append(made)
            results["fence"][backend] = cost
            print(f"fence {backend:17} {json.dumps(cost)}", flush=True)
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 1),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s of lag, 5 cut-overs")
    parser.add_argument("--rate", type=float, default=1000.0, help="source appends/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cutovers", type=int, default=20)
    parser.add_argument("--prefill", type=int, default=2000, help="source events per cut-over")
    parser.add_argument("--fence-appends", type=int, default=1000)
    parser.add_argument(
        "--no-verify", action="store_true", help="cut over without the verification"
    )
    parser.add_argument("--only", choices=["lag", "pause", "fence"], help="one part only")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.cutovers, args.fence_appends = 3.0, 5, 300
    results = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
