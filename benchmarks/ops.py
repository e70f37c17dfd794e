"""Backup, verify and restore rates of ``chronik backup`` / ``restore``, in events/s.

Not a test and not part of ``benchmarks.run``: one command that prints what backing up and
restoring N events costs on this machine::

    python -m benchmarks.ops --events 1000000 [--backend sqlite|postgresql|both] [--json PATH]
    python -m benchmarks.ops --quick                 # 20,000 events: a smoke run

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.events
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    rows = asyncio.run(run(n, backends))
    if args.json:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}
        args.json.write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
