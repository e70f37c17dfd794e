"""W3: concurrent writer processes on PostgreSQL, each on its own stream, one event an append.

All writers connect and create their stream first, wait at a barrier, then append for the
same number of seconds. The rate is the sum of each writer's events over its own elapsed
time. Both raw baselines are *unprotected* plain ``INSERT`` statements (an identity column
for the position, the stream's unique key for the version check, no global-order protection
at all): unsafe for readers, the ceiling of the write. ``raw`` inserts into the plain
baseline's table (:func:`benchmarks.raw.create_plain_schema`: primary key and position
index only); ``raw-chronik-sql`` (the W3 baseline before issue 13) into a copy of chronik's
table with its event id, category and indexes (:func:`create_plain_table`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from multiprocessing.synchronize import Barrier
from queue import Empty

import chronik
from benchmarks.common import System, Target
from benchmarks.model import Opened, account_events, deposited, registry
from benchmarks.raw import create_plain_schema, plain_insert

__all__ = ["PLAIN_TABLE", "create_plain_table", "run"]

Metrics = dict[str, float]
PLAIN_TABLE = "events_plain"


def create_plain_table(target: Target) -> None:
    """The ``raw-chronik-sql`` W3 baseline's table: chronik's columns and indexes, an
    identity for the position."""
    import psycopg

    s = f'"{target.schema}"'
    with psycopg.connect(target.pg_url, autocommit=True) as conn:
        conn.execute(
            f"""
CREATE TABLE {s}.{PLAIN_TABLE} (
    position       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      text        NOT NULL,
    category       text        NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    version        integer     NOT NULL CHECK (version >= 0),
    event_id       uuid        NOT NULL UNIQUE,
    type           text        NOT NULL,
    schema_version integer     NOT NULL DEFAULT 1,
    data           json        NOT NULL,
    metadata       json        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
)"""
        )
        conn.execute(
            f"CREATE INDEX ON {s}.{PLAIN_TABLE} (category, position)",
        )


def _stream(writer: int) -> str:
    return f"account-w{writer:03d}"


async def _chronik_writer(target: Target, writer: int, seconds: float, barrier: Barrier) -> Metrics:
    to_new = registry.to_new_event
    stream = _stream(writer)
    async with await chronik.connect(target.chronik_url()) as store:
        (first,) = account_events(writer, 1)
        await store.append(stream, [to_new(first)], expected_version=chronik.NO_STREAM)
        version = 0
        await asyncio.to_thread(barrier.wait)
        start = time.perf_counter()
        deadline = start + seconds
        count = 0
        while time.perf_counter() < deadline:
            ev = deposited(writer, version + 1)
            await store.append(stream, [to_new(ev)], expected_version=version)
            version += 1
            count += 1
        elapsed = time.perf_counter() - start
    return {"events": count, "seconds": elapsed}


def _peer_writer(target: Target, writer: int, seconds: float, barrier: Barrier) -> Metrics:
    from benchmarks.peer import BankAccount, make_app

    app = make_app(target, create_table=False)
    try:
        (o,) = account_events(writer, 1)
        assert isinstance(o, Opened)
        account = BankAccount(o.owner, o.currency, o.branch, o.overdraft_limit)
        app.save(account)
        barrier.wait()
        start = time.perf_counter()
        deadline = start + seconds
        count = 0
        seq = 1
        while time.perf_counter() < deadline:
            d = deposited(writer, seq)
            account.deposit(d.amount, d.reference, d.teller, d.seq)
            app.save(account)
            seq += 1
            count += 1
        elapsed = time.perf_counter() - start
    finally:
        app.close()
    return {"events": count, "seconds": elapsed}


def _raw_writer(
    target: Target, writer: int, seconds: float, barrier: Barrier, chronik_shape: bool
) -> Metrics:
    import msgspec
    import psycopg

    encode = msgspec.json.encode
    stream = _stream(writer)
    if chronik_shape:
        sql = (
            f'INSERT INTO "{target.schema}".{PLAIN_TABLE} '
            "(stream_id, version, event_id, type, schema_version, data, metadata) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
    else:
        sql = plain_insert(target)

    def row(version: int, type_name: str, event: object) -> tuple[object, ...]:
        meta = encode({"correlation_id": str(uuid.uuid4())}).decode()
        data = encode(event).decode()
        if chronik_shape:
            return (stream, version, uuid.uuid4(), type_name, 1, data, meta)
        return (stream, version, type_name, data, meta)

    with psycopg.connect(target.pg_url, autocommit=True) as conn:
        (first,) = account_events(writer, 1)
        conn.execute(sql, row(0, "Opened", first))
        version = 0
        barrier.wait()
        start = time.perf_counter()
        deadline = start + seconds
        count = 0
        while time.perf_counter() < deadline:
            version += 1
            conn.execute(sql, row(version, "Deposited", deposited(writer, version)))
            count += 1
        elapsed = time.perf_counter() - start
    return {"events": count, "seconds": elapsed}


def _writer_main(
    system: System,
    target: Target,
    writer: int,
    seconds: float,
    barrier: Barrier,
    results: multiprocessing.Queue[tuple[int, Metrics | str]],
) -> None:
    try:
        if system == "chronik":
            out = asyncio.run(_chronik_writer(target, writer, seconds, barrier))
        elif system == "eventsourcing":
            out = _peer_writer(target, writer, seconds, barrier)
        else:
            out = _raw_writer(target, writer, seconds, barrier, system == "raw-chronik-sql")
        results.put((writer, out))
    except BaseException as exc:
        barrier.abort()
        results.put((writer, f"{type(exc).__name__}: {exc}"))
        raise


def _count_rows(target: Target, system: System) -> int:
    import psycopg

    s = f'"{target.schema}"'
    sql = {
        "chronik": f"SELECT count(*) FROM {s}.events",
        "eventsourcing": f"SELECT count(*) FROM {s}.bank_events",  # {app name}_events
        "raw": f"SELECT count(*) FROM {s}.events",
        "raw-chronik-sql": f"SELECT count(*) FROM {s}.{PLAIN_TABLE}",
    }[system]
    with psycopg.connect(target.pg_url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def run(system: System, target: Target, writers: int, seconds: float) -> Metrics:
    """Start ``writers`` processes, let them append for ``seconds``, return the total rate."""
    if system == "chronik":
        asyncio.run(_create_chronik_schema(target))
    elif system == "raw":
        create_plain_schema(target)
    elif system == "raw-chronik-sql":
        create_plain_table(target)
    else:  # its tables, once: writers creating them at the same time would collide
        from benchmarks.peer import make_app

        make_app(target).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers + 1)
    results: multiprocessing.Queue[tuple[int, Metrics | str]] = ctx.Queue()
    procs = [
        ctx.Process(
            target=_writer_main,
            args=(system, target, i, seconds, barrier, results),
            daemon=True,
        )
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)
        outs: dict[int, Metrics] = {}
        while len(outs) < writers:
            try:
                writer, out = results.get(timeout=seconds + 120)
            except Empty as exc:
                raise RuntimeError(f"W3 {system}: a writer did not report") from exc
            if isinstance(out, str):
                raise RuntimeError(f"W3 {system} writer {writer} failed: {out}")
            outs[writer] = out
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    events = sum(int(o["events"]) for o in outs.values())
    rate = sum(o["events"] / o["seconds"] for o in outs.values())
    stored = _count_rows(target, system)
    if stored != events + writers:
        raise AssertionError(f"W3 {system}: {stored} rows stored, {events + writers} appended")
    return {"events": events, "writers": writers, "events_per_s": rate}


async def _create_chronik_schema(target: Target) -> None:
    store = await chronik.connect(target.chronik_url())
    await store.close()
