"""Outbox relay throughput (messages/s) and end-to-end latency between two services.

    python -m benchmarks.nats_relay [--store sqlite|postgres] [--events 5000] [--samples 200]

Throughput: append N events, then time one relay draining them into a fresh JetStream stream
(every publish awaits its PubAck, checkpoints per page). Latency: a live relay (service A)
and a live inbox (service B, its own SQLite store) run; one event at a time is appended in A
and the time until B's transaction with its effect has committed is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import chronik
from chronik import NewEvent
from chronik.nats import Inbox, InboxMessage, OutboxRelay, ensure_stream
from chronik.store.protocol import Tx

NATS_URL = "nats://127.0.0.1:4222"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def main(kind: str, events: int, samples: int, in_flight: int = 1) -> None:
    import nats

    tmp = Path(tempfile.mkdtemp())
    name = f"bench_{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp}/a.db"
    if kind == "postgres":
        url = f"{PG_URL}?schema={name}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, name, [f"{name}.>"])
    try:
        async with await chronik.connect(url) as store:
            batch = 100
            for i in range(0, events, batch):
                await store.append(
                    f"account-{i}", [NewEvent("Credited", {"amount": j}) for j in range(batch)]
                )
            relay = OutboxRelay(
                store, NATS_URL, name=name, stream=name, prefix=name,
                categories=["account"], batch_size=500, in_flight=in_flight,
            )  # fmt: skip
            t0 = time.perf_counter()
            while await relay.run_once():
                pass
            dt = time.perf_counter() - t0
            print(
                f"relay ({kind}, in_flight={in_flight}): {relay.published} messages in "
                f"{dt:.2f}s = {relay.published / dt:,.0f} messages/s"
            )

            seen: dict[str, float] = {}
            arrived = asyncio.Event()
            consumer = await chronik.connect(f"sqlite:///{tmp}/b.db")

            async def effect(message: InboxMessage, tx: Tx) -> None:
                await tx.execute("CREATE TABLE IF NOT EXISTS fx (id TEXT)")
                await tx.execute("INSERT INTO fx (id) VALUES (:i)", {"i": message.message_id})

            inbox = Inbox(consumer, NATS_URL, name="bench_b", stream=name,
                          subject=f"{name}.latency.>", handler=effect, fetch_timeout=0.05,
                          batch_size=10)  # fmt: skip
            live = OutboxRelay(store, NATS_URL, name=f"{name}_live", stream=name, prefix=name,
                               categories=["latency"], poll_interval=0.5)  # fmt: skip
            relay_task = asyncio.create_task(live.run())
            orig_process = inbox.process

            async def process(message: InboxMessage) -> bool:
                ok = await orig_process(message)
                seen[message.message_id] = time.perf_counter()
                arrived.set()
                return ok

            inbox.process = process  # type: ignore[method-assign]

            async def consume() -> None:
                while True:
                    try:
                        await inbox.run_once()
                    except Exception as exc:
                        print("inbox error:", repr(exc))
                        raise

            consume_task = asyncio.create_task(consume())
            await asyncio.sleep(0.5)
            lat: list[float] = []
            for i in range(samples):
                ev = NewEvent("Ping", {"i": i})
                t0 = time.perf_counter()
                await store.append(f"latency-{i}", [ev])
                while str(ev.event_id) not in seen:
                    arrived.clear()
                    await arrived.wait()
                lat.append((seen[str(ev.event_id)] - t0) * 1000)
            await live.stop()
            consume_task.cancel()
            await asyncio.gather(relay_task, consume_task, return_exceptions=True)
            await inbox.close()
            await consumer.close()
            await relay.close()
            lat.sort()
            print(f"end-to-end A append -> B effect committed ({kind} -> sqlite), "
                  f"{samples} samples: p50 {statistics.median(lat):.1f} ms, "
                  f"p95 {lat[int(0.95 * len(lat)) - 1]:.1f} ms, max {lat[-1]:.1f} ms")  # fmt: skip
    finally:
        await js.delete_stream(name)
        await nc.close()
        if kind == "postgres":
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--in-flight", type=int, default=1, help="relay publishes in flight")
    a = ap.parse_args()
    asyncio.run(main(a.store, a.events, a.samples, a.in_flight))
