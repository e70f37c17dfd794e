"""Load time of one long stream with and without a snapshot (issue 5), on SQLite and PostgreSQL.

``python -m benchmarks.snapshots`` (defaults: 10,000 and 100,000 events, both backends, the
median of 5 loads). For each backend and size, in a fresh database: write one bank account
of N events (untimed; the events of :mod:`benchmarks.model`), then

- **full replay**: ``CommandHandler(store, decider).load(stream)`` folds all N events;
- **take**: ``take_snapshot`` once (a full replay plus one write);
- **save**: writing that snapshot again (what a policy adds to a request every N events);
- **at head**: the same load with ``snapshots=SnapshotConfig(Account)``: the snapshot is at
  the last event, nothing is folded;
- **100 behind**: 100 more events appended, the same load folds those 100 after the
  snapshot (the worst case of ``EveryN(100)``).

Loads alternate (replay, snapshot, replay, ...) after one untimed warm-up each. The ratio is
full-replay milliseconds divided by snapshot milliseconds. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

import chronik
from benchmarks.common import Backend, create_target, drop_target, pg_reachable, timer
from benchmarks.model import Account, account_decider, account_events, deposited, registry
from chronik.snapshots import OnDemand, SnapshotConfig, snapshot_store, take_snapshot

__all__ = ["main", "measure"]

STREAM = "account-000042"


async def _write(store: chronik.EventStore, start: int, count: int) -> int:
    version = start - 1
    done = 0
    while done < count:
        n = min(1000, count - done)
        if version < 0:
            batch: list[Any] = list(account_events(42, n))
        else:
            batch = [deposited(42, version + 1 + k) for k in range(n)]
        result = await store.append(STREAM, registry.to_new_events(batch), expected_version=version)
        version = result.version
        done += n
    return version


async def _load_ms(handler: chronik.CommandHandler[Any, Any, Account], expect: int) -> float:
    with timer() as t:
        loaded = await handler.load(STREAM)
    if loaded.version != expect:
        raise AssertionError(f"loaded version {loaded.version}, expected {expect}")
    return t.seconds * 1000


async def measure(url: str, events: int, loads: int) -> dict[str, Any]:
    """Everything measured for one stream of ``events`` events in the store at ``url``."""
    config = SnapshotConfig(Account, policy=OnDemand())
    async with await chronik.connect(url) as store:
        last = await _write(store, 0, events)
        plain = chronik.CommandHandler(store, account_decider, registry=registry)
        snap = chronik.CommandHandler(store, account_decider, registry=registry, snapshots=config)
        with timer() as take:
            snapshot = await take_snapshot(
                store,
                STREAM,
                evolve=account_decider.evolve,
                initial_state=account_decider.initial_state,
                config=config,
                registry=registry,
            )
        if snapshot is None or snapshot.version != last:
            raise AssertionError(f"snapshot not taken at version {last}: {snapshot}")
        saves: list[float] = []
        for _ in range(loads):
            with timer() as t:
                await snapshot_store(store).save(snapshot, keep=config.keep)
            saves.append(t.seconds * 1000)
        replay: list[float] = []
        head: list[float] = []
        await _load_ms(plain, last)
        await _load_ms(snap, last)
        for _ in range(loads):
            replay.append(await _load_ms(plain, last))
            head.append(await _load_ms(snap, last))
        if (await snap.load(STREAM)).state != (await plain.load(STREAM)).state:
            raise AssertionError("state with a snapshot differs from the full replay")
        last = await _write(store, last + 1, 100)
        behind: list[float] = []
        await _load_ms(snap, last)
        for _ in range(loads):
            behind.append(await _load_ms(snap, last))
    full = statistics.median(replay)
    at_head = statistics.median(head)
    at_100 = statistics.median(behind)
    return {
        "events": events,
        "full_replay_ms": full,
        "take_ms": take.seconds * 1000,
        "save_ms": statistics.median(saves),
        "snapshot_at_head_ms": at_head,
        "snapshot_100_behind_ms": at_100,
        "ratio_at_head": full / at_head,
        "ratio_100_behind": full / at_100,
        "snapshot_bytes": len(snapshot.state),
    }


def _run(backend: Backend, events: int, loads: int, workdir: str | None) -> dict[str, Any]:
    target = create_target(backend, "snap", workdir)
    try:
        result = asyncio.run(measure(target.chronik_url(), events, loads))
    finally:
        drop_target(target)
    return {"backend": backend, **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="stream lengths, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--loads", type=int, default=5, help="timed loads per variant (median)")
    parser.add_argument("--workdir", default=None, help="folder for SQLite files")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[dict[str, Any]] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
        if backend == "postgres" and not pg_reachable():
            print("postgres: skipped (not reachable; set CHRONIK_BENCH_PG)")
            continue
        for events in sizes:
            rows.append(_run(backend, events, args.loads, args.workdir))
    header = (
        f"{'backend':<9}{'events':>9}{'full replay':>13}{'take':>10}{'save':>9}{'at head':>10}"
        f"{'ratio':>9}{'100 behind':>12}{'ratio':>9}{'bytes':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['backend']:<9}{r['events']:>9,}{r['full_replay_ms']:>10.1f} ms"
            f"{r['take_ms']:>7.1f} ms{r['save_ms']:>6.2f} ms{r['snapshot_at_head_ms']:>7.2f} ms"
            f"{r['ratio_at_head']:>8.0f}x{r['snapshot_100_behind_ms']:>9.2f} ms"
            f"{r['ratio_100_behind']:>8.0f}x{r['snapshot_bytes']:>7}"
        )
    if args.json:
        with open(args.json, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
