"""The projection that the crash tests run in a separate worker process."""

from __future__ import annotations

from chronik import RecordedEvent
from chronik.projections import Projection
from chronik.store.protocol import Tx


class Totals(Projection):
    """Sum per stream, and how many times each event was applied (must end at 1)."""

    name = "totals"
    event_types = ["Added"]

    def __init__(self, version: int = 1) -> None:
        self.version = version

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('totals')} "
            "(stream TEXT PRIMARY KEY, total BIGINT NOT NULL)"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('applied')} "
            "(event_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('totals')}")
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('applied')}")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        t, a = self.table("totals"), self.table("applied")
        await tx.execute(
            f"INSERT INTO {t} (stream, total) VALUES (:s, :n) "
            f"ON CONFLICT (stream) DO UPDATE SET total = {t}.total + excluded.total",
            {"s": event.stream_id, "n": event.data["n"]},
        )
        await tx.execute(
            f"INSERT INTO {a} (event_id, n) VALUES (:id, 1) "
            f"ON CONFLICT (event_id) DO UPDATE SET n = {a}.n + 1",
            {"id": str(event.event_id)},
        )


def projections() -> list[Projection]:
    return [Totals()]
