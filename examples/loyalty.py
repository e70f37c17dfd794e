"""The seed's e-commerce loyalty points: eventual consistency shown to the user.

The order service appends ``OrderPlaced``; the loyalty projection credits points
asynchronously. The caller answers "points updating" until ``wait_for`` says the projection
has applied the order, then shows the fresh balance.

Run it::

    python examples/loyalty.py --store sqlite:///loyalty.db
    chronik --store sqlite:///loyalty.db projections run examples.loyalty:projections
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import chronik
from chronik import NewEvent, RecordedEvent
from chronik.projections import Pending, Projection, ProjectionRunner, fresh_or_pending
from chronik.store import SqlStore, require
from chronik.store.protocol import Tx

POINTS_PER_EURO = 10


class LoyaltyPoints(Projection):
    """Points per customer: 10 per euro spent, credited when an order is placed."""

    name = "loyalty_points"
    event_types = ["OrderPlaced"]
    categories = ["order"]

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('points')} "
            "(customer TEXT PRIMARY KEY, points INTEGER NOT NULL)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('points')}")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        t = self.table("points")
        await tx.execute(
            f"INSERT INTO {t} (customer, points) VALUES (:c, :p) "
            f"ON CONFLICT (customer) DO UPDATE SET points = {t}.points + excluded.points",
            {"c": event.data["customer"], "p": int(event.data["total_eur"] * POINTS_PER_EURO)},
        )


def projections() -> list[Projection]:
    return [LoyaltyPoints()]


async def points_of(store: chronik.EventStore, customer: str) -> int:
    version = await store.get_active_version("loyalty_points") or 1
    rows = await require(store, SqlStore).query(
        f"SELECT points FROM points_v{version} WHERE customer = :c", {"c": customer}
    )
    return int(rows[0][0]) if rows else 0


async def place_order(
    store: chronik.EventStore, runner: ProjectionRunner, order_id: str, customer: str, total: float
) -> str:
    """What a web handler would answer right after the customer pays."""
    result = await store.append(
        f"order-{order_id}",
        [NewEvent("OrderPlaced", {"customer": customer, "total_eur": total})],
        expected_version=chronik.NO_STREAM,
    )
    answer = await fresh_or_pending(
        runner, result.position, lambda: points_of(store, customer), timeout=0.0
    )
    if isinstance(answer, Pending):
        return f"order {order_id} placed; points updating (waiting for position {answer.position})"
    return f"order {order_id} placed; {answer} points"


async def run(url: str, say: Any = print) -> dict[str, Any]:
    async with await chronik.connect(url) as store:
        runner = ProjectionRunner(store, projections(), poll_interval=0.1)
        await runner.setup()
        say(await place_order(store, runner, "1001", "carol", 42.5))
        async with runner:
            result = await store.append(
                "order-1002", [NewEvent("OrderPlaced", {"customer": "carol", "total_eur": 10.0})]
            )
            await runner.wait_for(result.position, timeout=10)
            points = await points_of(store, "carol")
            say(f"after wait_for: carol has {points} points")
            (status,) = await runner.status()
            say(
                f"projection {status.name}: checkpoint {status.checkpoint}, lag {status.lag_events}"
            )
        return {"points": points}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///loyalty.db")
    args = parser.parse_args(argv)
    asyncio.run(run(args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
