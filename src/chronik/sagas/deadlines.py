"""The deadline worker: fires due deadlines as ``SagaDeadlineExpired`` in the instance's stream
(event id derived from the deadline id, so firing twice appends once), then deletes them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import chronik.sagas.sql as sql
from chronik.context import context
from chronik.events import NewEvent
from chronik.sagas.model import DEADLINE_TYPE, Saga, dec
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore
from chronik.workers import Poller

__all__ = ["DeadlineWorker"]


class DeadlineWorker(Poller):
    """Fires due deadlines as ``SagaDeadlineExpired`` events in the instance's stream.

    "Due" is decided on the database's clock, the clock the runner scheduled them on, so a
    worker whose own clock is off fires them neither early nor late. ``clock`` is for
    tests only.
    """

    def __init__(
        self,
        store: EventStore,
        sagas: Sequence[Saga[Any]],
        *,
        poll_interval: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        require(store, SqlStore)  # MissingCapability without SQL (memory://)
        super().__init__(name="deadlines:" + ",".join(s.name for s in sagas),
                         poll_interval=poll_interval)  # fmt: skip
        self.store = store
        self.sagas = {s.name: s for s in sagas}
        self.clock = clock

    async def run_once(self, limit: int = 100) -> int:
        """Fire the deadlines due now; returns how many fired."""
        async with self.store.transaction() as tx:
            now = f"{float(self.clock())!r}" if self.clock is not None else tx.clock_sql
            rows = await tx.fetchall(sql.DUE_DEADLINES.format(now=now, limit=int(limit)))
        fired = 0
        for did, saga_name, key, name, data, correlation in rows:
            saga = self.sagas.get(saga_name)
            if saga is None:
                continue
            event = NewEvent(
                type=DEADLINE_TYPE,
                data={"name": name, "deadline_id": did, "data": dec(data)},
                event_id=uuid.uuid5(uuid.UUID(str(did)), "expired"),
            )
            with context(correlation_id=correlation, causation_id=str(did)):
                await self.store.append(saga.stream_id(key), [event])
            async with self.store.transaction() as tx:
                await tx.execute(sql.DELETE_DEADLINE, {"did": str(did)})
            fired += 1
        return fired
