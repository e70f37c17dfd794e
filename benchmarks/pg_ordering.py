"""What chronik's ordering technique costs on PostgreSQL: W writer processes, one event each.

Every variant runs the same process layout: W writer processes (8 by default), each with one
connection, appending single-event transactions for N seconds (~150-byte JSON payload, 100
streams per writer, UNIQUE(stream_id, version), UNIQUE(event_id)), with one reader process
polling every 5 ms with the variant's read rule. Variants:

* ``chronik``         PostgresEventStore.append / read_all (positions from the transaction id,
                      readers below the snapshot's xmin) — the whole library path;
* ``chronik-sql``     the same append statement through the raw driver (no chronik Python);
* ``chronik-notify``  that statement plus ``pg_notify`` (why chronik polls instead of NOTIFY);
* ``sequence-sql``    that statement with ``nextval()`` for the position instead of the
                      transaction id, on the ``plain`` table: what the technique itself costs,
                      everything else equal (UNSAFE: its naive reader skips);
* ``plain``           an unprotected plain INSERT ... VALUES into a similar table with a
                      bigserial position (version computed by the writer), and a naive
                      ``position > last`` reader: UNSAFE, the baseline.

Run::

    .venv/bin/python -m benchmarks.pg_ordering --seconds 8 --runs 3

It prints events/s per variant (median of the runs), the ratio to ``plain``, reader lag
(p50/p99, from the event's transaction start to its delivery) and WAL bytes per event.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg

from chronik.events import NewEvent
from chronik.store.postgres import PostgresEventStore, split_schema
from chronik.store.postgres_statements import PostgresStatements

DSN = os.environ.get("CHRONIK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
VARIANTS = ("chronik", "chronik-sql", "chronik-notify", "sequence-sql", "plain")
UNSAFE = ("sequence-sql", "plain")  # bigserial positions, naive reader
STREAMS_PER_WRITER = 100

PLAIN_DDL = """
CREATE TABLE {s}.events (
    position       bigserial   PRIMARY KEY,
    stream_id      text        COLLATE "C" NOT NULL,
    category       text        COLLATE "C" NOT NULL
                   GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    version        integer     NOT NULL,
    event_id       uuid        NOT NULL UNIQUE,
    type           text        NOT NULL,
    schema_version integer     NOT NULL DEFAULT 1,
    data           json        NOT NULL,
    metadata       json        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);
CREATE INDEX ON {s}.events (category, position);
"""


def payload(writer: int, n: int) -> dict[str, Any]:
    return {
        "amount": "125.50",
        "currency": "EUR",
        "reference": f"INV-{writer:02d}-{n:08d}",
        "teller": "branch-042/teller-7",
        "note": "monthly settlement, batch 7 of 12",
        "seq": n,
    }


def conninfo() -> str:
    return split_schema(DSN)[0]


# -- writers ----------------------------------------------------------------------------------


async def _write_chronik(schema: str, writer: int, start_at: float, stop_at: float) -> int:
    store = await PostgresEventStore.open(conninfo(), schema=schema, pool_min=1, pool_max=1)
    n = 0
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            stream = f"bench-w{writer}s{n % STREAMS_PER_WRITER}"
            await store.append(stream, [NewEvent("Deposited", payload(writer, n))])
            n += 1
    finally:
        await store.close()
    return n


async def _write_sql(
    schema: str, writer: int, start_at: float, stop_at: float, variant: str
) -> int:
    sql = PostgresStatements(schema).append_one
    notify = variant == "chronik-notify"
    if variant == "sequence-sql":
        sql = sql.replace("SELECT base.p,", f"SELECT nextval('\"{schema}\".events_position_seq'),")
        assert "nextval" in sql
    if notify:
        sql = sql.replace(
            "FROM cur, base\n",
            "FROM cur, base, (SELECT pg_notify('chronik_bench', '')) AS n\n",
        )
        assert "pg_notify" in sql
    meta = msgspec.json.encode({"correlation_id": str(uuid.uuid4())}).decode()
    async with await psycopg.AsyncConnection.connect(conninfo(), autocommit=True) as conn:
        n = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            params = {
                "stream_id": f"bench-w{writer}s{n % STREAMS_PER_WRITER}",
                "expected": -2,
                "event_id": uuid.uuid4(),
                "type": "Deposited",
                "schema_version": 1,
                "data": msgspec.json.encode(payload(writer, n)).decode(),
                "metadata": meta,
            }
            await conn.execute(sql, params)
            n += 1
    return n


async def _write_plain(schema: str, writer: int, start_at: float, stop_at: float) -> int:
    sql = (
        f'INSERT INTO "{schema}".events '
        f"(stream_id, version, event_id, type, schema_version, data, metadata) "
        f"VALUES (%s, %s, %s, %s, 1, %s::json, %s::json)"
    )
    meta = msgspec.json.encode({"correlation_id": str(uuid.uuid4())}).decode()
    versions = [0] * STREAMS_PER_WRITER
    async with await psycopg.AsyncConnection.connect(conninfo(), autocommit=True) as conn:
        n = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            k = n % STREAMS_PER_WRITER
            await conn.execute(
                sql,
                (
                    f"bench-w{writer}s{k}",
                    versions[k],
                    uuid.uuid4(),
                    "Deposited",
                    msgspec.json.encode(payload(writer, n)).decode(),
                    meta,
                ),
            )
            versions[k] += 1
            n += 1
    return n


def writer_main(
    variant: str, schema: str, writer: int, start_at: float, stop_at: float, out: Any
) -> None:
    if variant == "chronik":
        coro = _write_chronik(schema, writer, start_at, stop_at)
    elif variant in ("chronik-sql", "chronik-notify", "sequence-sql"):
        coro = _write_sql(schema, writer, start_at, stop_at, variant)
    else:
        coro = _write_plain(schema, writer, start_at, stop_at)
    out.put(("writer", asyncio.run(coro)))


# -- reader -----------------------------------------------------------------------------------


async def _read(variant: str, schema: str, start_at: float, stop_at: float) -> list[float]:
    lags: list[float] = []
    last = 0
    if variant in UNSAFE:
        sql = (
            f'SELECT position, recorded_at FROM "{schema}".events '
            f"WHERE position > %s ORDER BY position LIMIT 500"
        )
        async with await psycopg.AsyncConnection.connect(conninfo(), autocommit=True) as conn:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            while time.time() < stop_at:
                rows = await (await conn.execute(sql, (last,))).fetchall()
                now = time.time()
                for position, recorded_at in rows:
                    lags.append(now - recorded_at.timestamp())
                    last = position
                if len(rows) < 500:
                    await asyncio.sleep(0.005)
        return lags
    store = await PostgresEventStore.open(conninfo(), schema=schema, pool_min=1, pool_max=1)
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            got = 0
            async for ev in store.read_all(after=last, limit=500):
                lags.append(time.time() - ev.recorded_at.timestamp())
                last = ev.position
                got += 1
            if got < 500:
                await asyncio.sleep(0.005)
    finally:
        await store.close()
    return lags


def reader_main(variant: str, schema: str, start_at: float, stop_at: float, out: Any) -> None:
    out.put(("reader", asyncio.run(_read(variant, schema, start_at, stop_at))))


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Result:
    variant: str
    events_per_s: float
    lag_p50_ms: float
    lag_p99_ms: float
    wal_bytes_per_event: float


def _setup(variant: str, schema: str) -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if variant in UNSAFE:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(PLAIN_DDL.replace("{s}", f'"{schema}"'))
            conn.execute(
                f'CREATE TABLE "{schema}".position_base (xid_offset bigint NOT NULL); '
                f'INSERT INTO "{schema}".position_base VALUES (0)'
            )
    if variant not in UNSAFE:

        async def create() -> None:
            store = await PostgresEventStore.open(conninfo(), schema=schema)
            await store.close()

        asyncio.run(create())


def _wal_lsn() -> int:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


def run_once(variant: str, writers: int, seconds: float, reader: bool) -> Result:
    schema = f"chronik_bench_{os.getpid()}"
    _setup(variant, schema)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # processes start and connect before the clock runs
    stop_at = start_at + seconds
    procs = [
        ctx.Process(target=writer_main, args=(variant, schema, w, start_at, stop_at, out))
        for w in range(writers)
    ]
    if reader:
        procs.append(
            ctx.Process(target=reader_main, args=(variant, schema, start_at, stop_at, out))
        )
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time() - 0.2))
    lsn0 = _wal_lsn()
    results: list[tuple[str, Any]] = []
    deadline = stop_at + 120
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.time() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"{variant}: a benchmark process failed") from None
    lsn1 = _wal_lsn()
    for p in procs:
        p.join()
    total = sum(n for kind, n in results if kind == "writer")
    lags = sorted(x for kind, xs in results if kind == "reader" for x in xs)
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def pct(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] * 1000 if lags else float("nan")

    return Result(
        variant,
        total / seconds,
        pct(0.50),
        pct(0.99),
        (lsn1 - lsn0) / total if total else float("nan"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-reader", action="store_true")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    print(
        f"{args.writers} writer processes x single-event appends, {args.seconds:g} s, "
        f"{args.runs} run(s) each, reader={'no' if args.no_reader else 'yes'}; "
        f"PostgreSQL at {conninfo()}",
        flush=True,
    )
    by_variant: dict[str, list[Result]] = {v: [] for v in variants}
    for run in range(args.runs):
        for variant in variants:  # interleaved, so drift hits every variant alike
            load = os.getloadavg()[0]  # other work on the machine makes a run noisy
            r = run_once(variant, args.writers, args.seconds, not args.no_reader)
            by_variant[variant].append(r)
            print(
                f"  run {run + 1} {variant:15s} {r.events_per_s:8.0f} events/s  "
                f"lag p50 {r.lag_p50_ms:6.1f} ms p99 {r.lag_p99_ms:6.1f} ms  "
                f"WAL {r.wal_bytes_per_event:6.0f} B/event  "
                f"(load avg before {load:.1f})",
                flush=True,
            )

    def med(rs: list[Result], field: str) -> float:
        return float(statistics.median(float(getattr(r, field)) for r in rs))

    base = med(by_variant["plain"], "events_per_s") if "plain" in by_variant else None
    print()
    print(
        f"| variant | events/s (median of {args.runs}) | min-max | vs plain | "
        f"reader lag p50 / p99 | WAL bytes/event |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for variant, rs in by_variant.items():
        eps = med(rs, "events_per_s")
        ratio = f"{eps / base:.2f}x" if base else "-"
        low = min(r.events_per_s for r in rs)
        high = max(r.events_per_s for r in rs)
        print(
            f"| {variant} | {eps:,.0f} | {low:,.0f}-{high:,.0f} | {ratio} | "
            f"{med(rs, 'lag_p50_ms'):.1f} / "
            f"{med(rs, 'lag_p99_ms'):.1f} ms | {med(rs, 'wal_bytes_per_event'):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
