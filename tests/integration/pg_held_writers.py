"""Writer processes whose PostgreSQL transactions stay open for random times (some roll back).

Used by test_pg_subscriptions.py; a module of its own so ``spawn`` can import it.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import chronik
from chronik import NewEvent
from chronik.store.postgres import PostgresEventStore


class Rollback(Exception):
    """Raised by the before-commit hook to roll an append back."""


def held_writer(url: str, writer: int, appends: int, out: str, seed: int) -> None:
    asyncio.run(_held_writer(url, writer, appends, out, seed))


async def _held_writer(url: str, writer: int, appends: int, out: str, seed: int) -> None:
    rng = random.Random(seed * 100 + writer)
    ok: list[str] = []
    rolled_back: list[str] = []
    unknown: list[str] = []
    store = await chronik.connect(url)
    assert isinstance(store, PostgresEventStore)
    async with store:
        for counter in range(appends):
            roll_back = rng.random() < 0.05
            delay = rng.uniform(0.0, 0.03) if rng.random() < 0.9 else rng.uniform(0.1, 0.3)

            async def hold(delay: float = delay, roll_back: bool = roll_back) -> None:
                await asyncio.sleep(delay)
                if roll_back:
                    raise Rollback()

            store._before_commit = hold
            events = [
                NewEvent("Held", {"writer": writer, "counter": counter, "part": p})
                for p in range(rng.randint(1, 3))
            ]
            ids = [str(e.event_id) for e in events]
            try:
                await store.append(f"held-{rng.randrange(20)}", events)
            except Rollback:
                rolled_back.extend(ids)
            except chronik.StoreUnavailable:
                unknown.extend(ids)
            else:
                ok.extend(ids)
    Path(out).write_text(json.dumps({"ok": ok, "rolled_back": rolled_back, "unknown": unknown}))
