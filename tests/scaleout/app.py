"""The projection the scale-out tests and benchmark run in several processes.

Per stream it keeps the last version applied and counts order violations (a version that is
not the previous one + 1), and per event how many times it was applied (must end at 1): the
checks need no read inside the handler (PostgreSQL's pipelined batch stays one round trip).
``CHRONIK_SO_HANDLER_MS`` makes each event wait that long (simulated I/O, the benchmark),
blocking the process with ``CHRONIK_SO_BLOCKING=1``.
"""

from __future__ import annotations

import asyncio
import os
import time

from chronik import NewEvent, RecordedEvent
from chronik.projections import Projection
from chronik.store.protocol import EventStore, Tx

HANDLER_SECONDS = float(os.environ.get("CHRONIK_SO_HANDLER_MS", "0")) / 1000
BLOCKING = os.environ.get("CHRONIK_SO_BLOCKING") == "1"
"""The handler's wait blocks the process (synchronous I/O) instead of awaiting."""


class StreamOrder(Projection):
    name = "so"
    event_types = ["Ticked"]

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('so_streams')} (stream TEXT PRIMARY KEY, "
            "last_version BIGINT NOT NULL, events BIGINT NOT NULL, violations BIGINT NOT NULL)"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('so_applied')} "
            "(event_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('so_streams')}")
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('so_applied')}")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        if HANDLER_SECONDS and BLOCKING:
            time.sleep(HANDLER_SECONDS)
        elif HANDLER_SECONDS:
            await asyncio.sleep(HANDLER_SECONDS)
        s, a = self.table("so_streams"), self.table("so_applied")
        await tx.execute(
            f"INSERT INTO {s} (stream, last_version, events, violations) "
            "VALUES (:s, :v, 1, CASE WHEN :v = 0 THEN 0 ELSE 1 END) "
            f"ON CONFLICT (stream) DO UPDATE SET events = {s}.events + 1, "
            f"violations = {s}.violations + CASE WHEN excluded.last_version = "
            f"{s}.last_version + 1 THEN 0 ELSE 1 END, last_version = excluded.last_version",
            {"s": event.stream_id, "v": event.version},
        )
        await tx.execute(
            f"INSERT INTO {a} (event_id, n) VALUES (:id, 1) "
            f"ON CONFLICT (event_id) DO UPDATE SET n = {a}.n + 1",
            {"id": str(event.event_id)},
        )


def projections() -> list[Projection]:
    return [StreamOrder()]


async def append_ticks(store: EventStore, streams: int, per_stream: int, *, start: int = 0) -> None:
    """``per_stream`` events on each of ``streams`` streams ``tick-N``, interleaved."""
    for _ in range(per_stream):
        for n in range(start, start + streams):
            await store.append(f"tick-{n}", [NewEvent("Ticked", {"n": n})])


async def model(store: EventStore) -> dict[str, tuple[int, int, int]]:
    """stream -> (last_version, events, violations), as the read model has it."""
    p = StreamOrder()
    rows = await store.query(  # type: ignore[attr-defined]
        f"SELECT stream, last_version, events, violations FROM {p.table('so_streams')}"
    )
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


async def applied_twice(store: EventStore) -> int:
    p = StreamOrder()
    rows = await store.query(  # type: ignore[attr-defined]
        f"SELECT count(*) FROM {p.table('so_applied')} WHERE n <> 1"
    )
    return int(rows[0][0])


async def expected_model(store: EventStore) -> dict[str, tuple[int, int, int]]:
    """What a from-scratch rebuild gives: every stream fully applied, in order."""
    out: dict[str, tuple[int, int, int]] = {}
    async for info in store.streams(category="tick"):
        out[info.stream_id] = (info.version, info.version + 1, 0)
    return out
