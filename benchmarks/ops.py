"""Backup, verify and restore rates of ``chronik backup`` / ``restore``, in events/s.

Not a test and not part of ``benchmarks.run``: one command that prints what backing up and
restoring N events costs on this machine::

    python -m benchmarks.ops --events 1000000 [--backend sqlite|postgresql|both] [--json PATH]
    python -m benchmarks.ops --quick                 # 20,000 events: a smoke run
    python -m benchmarks.ops --archive --events 200000 --rounds 3   # retention and archive

The source is filled with ledger events (1,000 accounts, ~150 bytes of data each, like
``benchmarks.migrate_copy``'s); each backend then takes a full backup, verifies it,
and restores it into a fresh empty store of the same backend (one transaction of up to
500,000 events at a time). PostgreSQL schemas are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

import chronik
from chronik.ops.backup import backup_store, verify_backup
from chronik.ops.restore import restore_backup
from chronik.store.protocol import ImportedEvent

PG = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def ledger_slice(start: int, end: int, accounts: int = 1000) -> list[ImportedEvent]:
    """Events ``start..end-1`` of the ledger: round-robin over the accounts, so event ``i``
    is version ``i // accounts`` of ``account-(i % accounts)``."""
    first = datetime(2023, 1, 1, tzinfo=UTC)
    return [
        ImportedEvent(
            uuid.UUID(int=(1 << 120) + i),
            f"account-{i % accounts}",
            i // accounts,
            "TransactionRecorded",
            1,
            msgspec.json.encode(
                {
                    "account_id": str(i % accounts),
                    "amount_cents": (i * 7919) % 100_000 - 50_000,
                    "description": f"transaction {i} booked by the nightly batch run",
                }
            ),
            msgspec.json.encode({"correlation_id": f"batch-{i // 100}"}),
            first + timedelta(seconds=i),
        )
        for i in range(start, end)
    ]


async def fill(url: str, n: int) -> None:
    async with await chronik.connect(url) as store:
        for start in range(0, n, 100_000):
            async with store.transaction() as tx:
                for at in range(start, min(n, start + 100_000), 10_000):
                    await tx.import_events(ledger_slice(at, min(n, at + 10_000)))


def _drop(url: str) -> None:
    import psycopg

    from chronik.store.pg_support import split_schema

    conninfo, schema = split_schema(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def measure(backend: str, n: int, folder: Path) -> dict[str, Any]:
    if backend == "sqlite":
        source, target = f"sqlite:///{folder}/source.db", f"sqlite:///{folder}/target.db"
    else:
        tag = uuid.uuid4().hex[:8]
        source = f"{PG}?schema=bench_ops_src_{tag}"
        target = f"{PG}?schema=bench_ops_dst_{tag}"
    try:
        started = time.perf_counter()
        await fill(source, n)
        filled = time.perf_counter() - started
        out = folder / f"backup-{backend}"
        started = time.perf_counter()
        manifest = await asyncio.to_thread(backup_store, source, out)
        backup_s = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.to_thread(verify_backup, out)
        verify_s = time.perf_counter() - started
        async with await chronik.connect(target) as store:
            started = time.perf_counter()
            report = await restore_backup(out, store)
            restore_s = time.perf_counter() - started
        row = {
            "backend": backend,
            "events": manifest.events,
            "fill_s": round(filled, 1),
            "backup_s": round(backup_s, 2),
            "backup_events_per_s": round(n / backup_s),
            "verify_s": round(verify_s, 2),
            "verify_events_per_s": round(n / verify_s),
            "restore_s": round(restore_s, 2),
            "restore_events_per_s": round(n / restore_s),
            "ndjson_mib": round(manifest.bytes / 2**20, 1),
            "zstd_mib": round(manifest.compressed_bytes / 2**20, 1),
            "restored": report.restored,
        }
        shutil.rmtree(out, ignore_errors=True)
        return row
    finally:
        if backend == "postgresql":
            _drop(source)
            _drop(target)


async def run(n: int, backends: list[str]) -> list[dict[str, Any]]:
    rows = []
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="chronik-bench-ops-") as folder:
            row = await measure(backend, n, Path(folder))
        print(
            f"{backend:10} {row['events']:>9,} events: backup {row['backup_events_per_s']:>8,}/s "
            f"({row['backup_s']} s), verify {row['verify_events_per_s']:>8,}/s, restore "
            f"{row['restore_events_per_s']:>8,}/s ({row['restore_s']} s); "
            f"{row['ndjson_mib']} MiB NDJSON -> {row['zstd_mib']} MiB zstd",
            flush=True,
        )
        rows.append(row)
    return rows


def _sqlite_size(path: str) -> int:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    return os.path.getsize(path)


async def _size(url: str, backend: str, full: bool = False) -> int:
    """The store's size after VACUUM: the SQLite file, or the events table with its indexes
    and TOAST (``full``: after VACUUM FULL, which gives the space back to the OS)."""
    if backend == "sqlite":
        return await asyncio.to_thread(_sqlite_size, url.removeprefix("sqlite:///"))
    import psycopg

    from chronik.store.pg_support import split_schema

    conninfo, schema = split_schema(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'VACUUM {"FULL " if full else ""}"{schema}".events')
        row = conn.execute(f"SELECT pg_total_relation_size('\"{schema}\".events')").fetchone()
        assert row is not None
        return int(row[0])


async def _read_all(url: str) -> tuple[float, int]:
    async with await chronik.connect(url) as store:
        started = time.perf_counter()
        n = 0
        async for _ in store.read_all():
            n += 1
        return time.perf_counter() - started, n


async def _read_streams(url: str, streams: int) -> tuple[float, float]:
    """Seconds for the first ``read_stream`` (it reads the archive's files, when there are
    some), then for ``streams`` more (warm)."""
    async with await chronik.connect(url) as store:
        started = time.perf_counter()
        async for _ in store.read_stream("account-999"):
            pass
        first = time.perf_counter() - started
        started = time.perf_counter()
        for a in range(streams):
            async for _ in store.read_stream(f"account-{a}"):
                pass
        return first, time.perf_counter() - started


async def measure_archive(backend: str, n: int, folder: Path) -> dict[str, Any]:
    """One round: scavenge rate on one store; on another, reads before (the baseline),
    archive rate, reads through the archive, sizes."""
    from chronik.ops import archive, retention

    if backend == "sqlite":
        urls = [f"sqlite:///{folder}/scavenge.db", f"sqlite:///{folder}/archive.db"]
    else:
        tag = uuid.uuid4().hex[:8]
        urls = [f"{PG}?schema=bench_ret_{tag}", f"{PG}?schema=bench_arc_{tag}"]
    try:
        for url in urls:
            await fill(url, n)
        keep = 10  # of n / 1000 events per account
        async with await chronik.connect(urls[0]) as store:
            await retention.set_policy(store, "account", max_count=keep)
            started = time.perf_counter()
            scavenged = await retention.scavenge(store)
            scavenge_s = time.perf_counter() - started
        url = urls[1]
        size_before = await _size(url, backend)
        base_all_s, base_n = await _read_all(url)
        base_first_s, base_streams_s = await _read_streams(url, 200)
        async with await chronik.connect(url) as store:
            positions = [e.position async for e in store.read_all()]
            before = positions[int(len(positions) * 0.9)]
            started = time.perf_counter()
            report = await archive.archive_category(store, "account", folder / "arc", before=before)
            archive_s = time.perf_counter() - started
        through_all_s, through_n = await _read_all(url)
        through_first_s, through_streams_s = await _read_streams(url, 200)
        assert through_n == base_n, "the archive lost or added events"
        size_after = await _size(url, backend)
        size_after_full = (
            await _size(url, backend, full=True) if backend != "sqlite" else size_after
        )
        files = sum(f.stat().st_size for f in (folder / "arc").glob("*.ndjson.zst"))
        return {
            "backend": backend,
            "events": n,
            "scavenged": scavenged.events,
            "scavenge_events_per_s": round(scavenged.events / scavenge_s),
            "archived": report.events,
            "archive_events_per_s": round(report.events / archive_s),
            "read_all_ratio": round(through_all_s / base_all_s, 2),
            "read_stream_ratio": round(through_streams_s / base_streams_s, 2),
            "first_read_stream_s": round(through_first_s, 3),
            "first_read_stream_baseline_s": round(base_first_s, 4),
            "size_before": size_before,
            "size_after": size_after,
            "size_after_full": size_after_full,
            "archive_files": files,
        }
    finally:
        if backend == "postgresql":
            for url in urls:
                _drop(url)


async def run_archive(n: int, backends: list[str], rounds: int) -> list[dict[str, Any]]:
    import statistics

    by_backend: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    for _ in range(rounds):  # interleaved: one round of each backend at a time
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="chronik-bench-arc-") as folder:
                row = await measure_archive(backend, n, Path(folder))
            print(json.dumps(row), flush=True)
            by_backend[backend].append(row)
    summary = []
    for backend, rows in by_backend.items():
        out: dict[str, Any] = {"backend": backend, "events": n, "rounds": len(rows)}
        for k in ("scavenge_events_per_s", "archive_events_per_s", "read_all_ratio",
                  "read_stream_ratio", "first_read_stream_s"):  # fmt: skip
            values = [r[k] for r in rows]
            out[k] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        last = rows[-1]
        out["size"] = {k: last[k] for k in ("size_before", "size_after", "size_after_full",
                                            "archive_files", "archived")}  # fmt: skip
        print(json.dumps(out), flush=True)
        summary.append(out)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--archive", action="store_true",
                        help="scavenge and archive rates, read-through cost, sizes")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = 20_000 if args.quick else args.events
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if args.archive:
        rows = asyncio.run(run_archive(n, backends, args.rounds))
    else:
        rows = asyncio.run(run(n, backends))
    if args.json:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}
        args.json.write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
