"""Projection catch-up rate and append-to-projection latency (issue 3's note figures).

    python -m benchmarks.projection_rates [--store URL] [--events 20000] [--samples 200]

Catch-up: an in-database projection (one upsert per event, checkpoint in the same
transaction, batches of 500) over ``--events`` stored events. Latency: a live runner in the
same process as the writer; each sample appends one event and waits until the projection
has applied it (``wait_for``), appends spaced 20 ms apart. Next to it, the round trip of a
bare LISTEN/NOTIFY on the same PostgreSQL server (writer connection NOTIFY → listener).

:class:`BareNotify` and :func:`percentile` are also what ``python -m benchmarks.run`` uses for
W7 (:func:`benchmarks.chronik_side.w7`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid

import chronik
from chronik import NewEvent, RecordedEvent
from chronik.projections import Projection, ProjectionRunner
from chronik.store.protocol import Tx

__all__ = ["BareNotify", "bare_notify_rtt", "measure", "percentile"]


class Totals(Projection):
    name = "bench_totals"
    event_types = ["Added"]

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('totals')} "
            "(stream TEXT PRIMARY KEY, total BIGINT NOT NULL)"
        )

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        t = self.table("totals")
        await tx.execute(
            f"INSERT INTO {t} (stream, total) VALUES (:s, :n) "
            f"ON CONFLICT (stream) DO UPDATE SET total = {t}.total + excluded.total",
            {"s": event.stream_id, "n": event.data["n"]},
        )


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction ``q`` of ``values`` lies (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class BareNotify:
    """A bare LISTEN/NOTIFY round trip between two psycopg connections (no chronik).

    ``async with BareNotify(url) as bare: ms = await bare.round_trip()``: the sender
    connection NOTIFYs, the listener connection's reader task sees it. The baseline of W7.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.channel = f"chronik_bench_rtt_{uuid.uuid4().hex[:8]}"
        self._arrived = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> BareNotify:
        import psycopg

        stack = self._stack
        listener = await stack.enter_async_context(
            await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        )
        self._sender = await stack.enter_async_context(
            await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        )
        await listener.execute(f"LISTEN {self.channel}")

        async def pump() -> None:  # always awaiting the generator: it reads the socket
            async for _ in listener.notifies():
                self._arrived.set()

        reader = asyncio.create_task(pump())

        async def stop_reader() -> None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

        stack.push_async_callback(stop_reader)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def round_trip(self) -> float:
        """Milliseconds from sending one NOTIFY to the listener having received it."""
        self._arrived.clear()
        started = time.perf_counter()
        await self._sender.execute(f"NOTIFY {self.channel}")
        await asyncio.wait_for(self._arrived.wait(), 5)
        return (time.perf_counter() - started) * 1000


async def bare_notify_rtt(conninfo: str, samples: int) -> list[float]:
    out: list[float] = []
    async with BareNotify(conninfo) as bare:
        for _ in range(samples):
            await asyncio.sleep(0.005)
            out.append(await bare.round_trip())
    return out


async def measure(url: str, events: int, samples: int) -> dict[str, float]:
    async with await chronik.connect(url) as store:
        batch = [NewEvent("Added", {"n": 1}) for _ in range(100)]
        for i in range(events // 100):
            await store.append(f"acct-{i % 50}", [NewEvent(e.type, e.data) for e in batch])
        runner = ProjectionRunner(store, [Totals()], batch_size=500)
        started = time.perf_counter()
        applied = await runner.catch_up()
        catch_up_s = time.perf_counter() - started
        latencies: list[float] = []
        async with ProjectionRunner(store, [Totals()], poll_interval=1.0) as live:
            for i in range(samples):
                begun = time.perf_counter()
                result = await store.append(f"acct-{i % 50}", [NewEvent("Added", {"n": 1})])
                await live.wait_for(result.position, timeout=10)
                latencies.append((time.perf_counter() - begun) * 1000)
                await asyncio.sleep(0.02)
    return {
        "catch_up_events_per_s": applied / catch_up_s,
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": percentile(latencies, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None, help="default: a fresh PostgreSQL schema")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    schema = f"bench_proj_{uuid.uuid4().hex[:8]}"
    base = "postgresql://postgres@127.0.0.1:5432/test"
    url = args.store or f"{base}?schema={schema}"
    if url == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/p.db"
    try:
        result = asyncio.run(measure(url, args.events, args.samples))
        print(
            f"{url}: catch-up {result['catch_up_events_per_s']:,.0f} events/s; "
            f"append→applied p50 {result['latency_p50_ms']:.2f} ms, "
            f"p99 {result['latency_p99_ms']:.2f} ms",
            flush=True,
        )
        if url.startswith("postgresql"):
            rtt = asyncio.run(bare_notify_rtt(base, args.samples))
            print(
                f"bare LISTEN/NOTIFY round trip: p50 {statistics.median(rtt):.2f} ms, "
                f"p99 {percentile(rtt, 0.99):.2f} ms"
            )
    finally:
        if url.startswith("postgresql") and args.store is None:
            import psycopg

            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    main()
