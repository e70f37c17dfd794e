"""Projections: read models kept up to date from the event log.

Three kinds, one runner:

- :class:`Projection` (in-database): ``handle(event, tx)`` writes read-model tables through
  the same transaction that saves the checkpoint, so each event is applied exactly once,
  also across crashes (SQLite and PostgreSQL).
- :class:`ExternalProjection`: ``handle(event)`` talks to something outside the database;
  the checkpoint is saved after the handler returns, so delivery is at-least-once and the
  handler uses ``event.event_id``/``event.position`` to be idempotent.
- inline: a :class:`Projection` passed to :func:`register_inline` runs inside every append's
  transaction: strongly consistent, and an append fails if it fails.

:class:`ProjectionRunner` runs one :class:`~chronik.workers.Follower` per projection
(catch-up, live, retries when the store is lost) and adds batching, poison retries, dead
letters, lag, ``wait_for`` (read-your-writes), rebuilds and shutdown.

Modules: ``kinds`` (the kinds and how each applies events), ``runner``, ``status``,
``rebuild`` (blue/green, inline), ``pending`` (read-your-writes for a UI).

Example::

    class OrderCount(Projection):
        name = "order_count"
        event_types = ["OrderPlaced"]

        async def setup(self, tx: Tx) -> None:
            await tx.execute(f"CREATE TABLE IF NOT EXISTS {self.table('orders')} (n INTEGER)")

        async def handle(self, event: RecordedEvent, tx: Tx) -> None:
            await tx.execute(f"UPDATE {self.table('orders')} SET n = n + 1")

    runner = ProjectionRunner(store, [OrderCount()])
    await runner.start()
    result = await store.append(...)
    await runner.wait_for(result.position, timeout=2)
"""

from chronik.projections.kinds import Applier, ExternalProjection, Projection
from chronik.projections.pending import Pending, fresh_or_pending, wait_for_projection
from chronik.projections.rebuild import rebuild_blue_green, register_inline
from chronik.projections.runner import (
    Progress,
    ProjectionFollower,
    ProjectionRunner,
    WaitTimeout,
)
from chronik.projections.status import ProjectionStatus, render_metrics

__all__ = [
    "Applier",
    "ExternalProjection",
    "Pending",
    "Projection",
    "ProjectionFollower",
    "ProjectionRunner",
    "ProjectionStatus",
    "Progress",
    "WaitTimeout",
    "fresh_or_pending",
    "rebuild_blue_green",
    "register_inline",
    "render_metrics",
    "wait_for_projection",
]
