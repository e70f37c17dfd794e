"""A saga split into partitions, run by any number of processes against one store.

The partition of an event is the hash of the *instance stream* it concerns
(``saga.stream_id(saga.correlate(event))``; for the saga's own outcome events, their stream):
every event of one saga instance goes to one partition, so one owner applies them, in
position order, as the unpartitioned :class:`~chronik.sagas.SagaRunner` does. An event
that correlates to no instance counts in the partition of its own stream (it only moves
that partition's checkpoint; one whose ``correlate`` raises is dead-lettered there, once).

Each step's transaction (instance state, outbox commands, deadlines, checkpoint) first
checks the partition's lease (:meth:`~chronik.sagas.SagaRunner.fence`): a stale owner's
step rolls back whole, so a command is written to the outbox once. Commands are then
executed by :class:`~chronik.sagas.CommandDispatcher` workers, which may run in every
process: they claim each command before running it (at most once).
"""

from __future__ import annotations

from typing import Any

from chronik.events import RecordedEvent, category_of
from chronik.sagas.model import OUTCOME_TYPES, Saga
from chronik.sagas.runner import SagaRunner
from chronik.scaleout.leases import Leases
from chronik.scaleout.reader import SharedLog
from chronik.scaleout.runner import PartitionedFollower, PartitionedRunner, retried
from chronik.store.protocol import EventStore, Tx

__all__ = ["PartitionedSagaRunner", "SagaPartitionFollower", "saga_group", "saga_partition_key"]


def saga_group(saga: Saga[Any]) -> str:
    """The worker group (and checkpoint base) of a saga: ``saga:NAME``."""
    return f"saga:{saga.name}"


def saga_partition_key(saga: Saga[Any], event: RecordedEvent) -> str:
    """What decides an event's partition for ``saga``: its instance's stream id (the
    event's own stream when it correlates to no instance or ``correlate`` fails)."""
    if category_of(event.stream_id) == saga.stream_category:
        return event.stream_id
    try:
        key = saga.correlate(event)
    except Exception:  # dead-lettered by the partition of its stream
        return event.stream_id
    if not isinstance(key, str) or not key:
        return event.stream_id
    return saga.stream_id(key)


class SagaPartitionFollower(PartitionedFollower, SagaRunner):
    """Runs one partition of a saga, every step fenced by the partition's lease."""

    kind = "saga-partition"

    def __init__(
        self,
        store: EventStore,
        saga: Saga[Any],
        *,
        leases: Leases,
        partition: int,
        epoch: int,
        batch_size: int,
        poll_interval: float,
        shared: SharedLog | None = None,
    ) -> None:
        super().__init__(store, saga, batch_size=batch_size, poll_interval=poll_interval)
        self._as_partition(saga_group(saga), leases, partition, epoch, shared)

    def partition_key(self, event: RecordedEvent) -> str:
        return saga_partition_key(self.saga, event)

    async def fence(self, tx: Tx, position: int) -> None:
        await self._fence(tx, position)

    async def commit(self, position: int) -> None:
        """Move the checkpoint past other partitions' events, fenced too."""
        await self._fenced_commit(position)


class PartitionedSagaRunner(PartitionedRunner):
    """Runs the partitions of one saga that this process owns (module docstring).

    Args:
        store: a SQL store (PostgreSQL for several processes; SQLite allows one).
        saga: the saga.
        partitions, member, lease_ttl, heartbeat, batch_size, poll_interval, shared_reader:
            see :class:`~chronik.scaleout.runner.PartitionedRunner`.
    """

    def __init__(
        self,
        store: EventStore,
        saga: Saga[Any],
        *,
        partitions: int = 8,
        member: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        batch_size: int = 100,
        poll_interval: float = 0.2,
        shared_reader: bool = True,
    ) -> None:
        types = None if saga.types is None else [*saga.types, *sorted(OUTCOME_TYPES)]
        super().__init__(
            store, group=saga_group(saga), base=saga_group(saga),
            categories=[*saga.categories, saga.stream_category], types=types,
            key=lambda event: saga_partition_key(saga, event),
            partitions=partitions, member=member, lease_ttl=lease_ttl, heartbeat=heartbeat,
            batch_size=batch_size, poll_interval=poll_interval, shared_reader=shared_reader,
        )  # fmt: skip
        self.saga = saga

    def _follower(self, partition: int, epoch: int) -> PartitionedFollower:
        return SagaPartitionFollower(
            self.store, self.saga, leases=self.leases, partition=partition, epoch=epoch,
            batch_size=self.batch_size, poll_interval=self.poll_interval, shared=self.shared,
        )  # fmt: skip

    async def _prepare(self) -> None:
        """Move a pre-0.2 store's saga rows into streams once (as the plain runner does)."""
        await retried(SagaRunner(self.store, self.saga).prepare)
