"""The copy rate of ``chronik migrate copy``: SQLite → PostgreSQL (and back), in events/s.

Not a test and not part of ``benchmarks.run``: one command that prints what a migration of
N events costs on this machine::

    python -m benchmarks.migrate_copy --events 100000 [--batch-size 5000] [--json PATH]

The source is a fresh SQLite file of ledger events (half stored as v1, half as v2, 1,000
accounts, ~150 bytes of data each); the target a fresh PostgreSQL schema (dropped after).
It measures a plain copy and a copy with ``--upcast``, then copies PostgreSQL back into a
fresh SQLite file; each run verifies at the end (timed apart from the copy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

import chronik
from chronik.migrate import copy_store
from chronik.store.protocol import ImportedEvent

PG = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def ledger_events(n: int, accounts: int = 1000) -> list[ImportedEvent]:
    start = datetime(2023, 1, 1, tzinfo=UTC)
    versions: dict[str, int] = {}
    out = []
    for i in range(n):
        account = str(i % accounts)
        stream = f"account-{account}"
        version = versions[stream] = versions.get(stream, -1) + 1
        data: dict[str, Any] = {
            "account_id": account,
            "amount_cents": (i * 7919) % 100_000 - 50_000,
            "description": f"transaction {i} booked by the nightly batch run",
        }
        if i >= n // 2:
            data["currency"] = "EUR"
        out.append(
            ImportedEvent(
                uuid.UUID(int=(1 << 120) + i),
                stream,
                version,
                "TransactionRecorded",
                1 if i < n // 2 else 2,
                msgspec.json.encode(data),
                msgspec.json.encode({"correlation_id": f"batch-{i // 100}"}),
                start + timedelta(milliseconds=i),
            )
        )
    return out


async def run(events: int, batch_size: int) -> dict[str, Any]:
    from examples.financial_transactions import registry

    results: dict[str, Any] = {"events": events, "batch_size": batch_size}
    schemas: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source_url = f"sqlite:///{Path(tmp)}/source.db"
        async with await chronik.connect(source_url) as source:
            made = ledger_events(events)
            for begin in range(0, len(made), 10_000):
                async with source.transaction() as tx:
                    await tx.import_events(made[begin : begin + 10_000])
            for name, upcast in (
                ("sqlite_to_postgres", False),
                ("sqlite_to_postgres_upcast", True),
            ):
                schema = f"bench_copy_{uuid.uuid4().hex[:8]}"
                schemas.append(schema)
                async with await chronik.connect(f"{PG}?schema={schema}") as target:
                    began = time.monotonic()
                    report = await copy_store(
                        source, target, registry=registry, upcast=upcast, batch_size=batch_size
                    )
                    total = time.monotonic() - began
                assert report.verification is not None and report.verification.ok
                results[name] = {
                    "events_per_second": round(report.rate),
                    "copy_seconds": round(report.seconds, 2),
                    "verify_seconds": round(total - report.seconds, 2),
                }
        async with (
            await chronik.connect(f"{PG}?schema={schemas[0]}") as pg,
            await chronik.connect(f"sqlite:///{Path(tmp)}/back.db") as back,
        ):
            began = time.monotonic()
            report = await copy_store(pg, back, batch_size=batch_size)
            total = time.monotonic() - began
            assert report.verification is not None and report.verification.ok
            results["postgres_to_sqlite"] = {
                "events_per_second": round(report.rate),
                "copy_seconds": round(report.seconds, 2),
                "verify_seconds": round(total - report.seconds, 2),
            }
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(run(args.events, args.batch_size))
    for name in ("sqlite_to_postgres", "sqlite_to_postgres_upcast", "postgres_to_sqlite"):
        r = results[name]
        print(
            f"{name:28} {r['events_per_second']:>8,} events/s  "
            f"(copy {r['copy_seconds']} s, verify {r['verify_seconds']} s)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
