"""The snapshotter split into partitions (by stream id), run by any number of processes.

Each partition follower takes the snapshots due for its streams and moves its checkpoint
(``snapshotter:NAME/p3of8``) in a transaction that checks its lease first. A snapshot is
idempotent (the same version twice replaces a row with an equal one), so a stale owner that
writes one more snapshot before it learns it lost its lease does no harm; its checkpoint
commit is refused, and it stops.
"""

from __future__ import annotations

from typing import Any

from chronik.app import App
from chronik.codec import EventRegistry, default_registry
from chronik.scaleout.leases import Leases
from chronik.scaleout.reader import SharedLog
from chronik.scaleout.runner import PartitionedFollower, PartitionedRunner
from chronik.snapshots.worker import Snapshotter, Targets, snapshot_targets
from chronik.store.protocol import EventStore

__all__ = ["PartitionedSnapshotter", "SnapshotPartitionFollower"]


class SnapshotPartitionFollower(PartitionedFollower, Snapshotter):
    """Takes the snapshots of one partition's streams, its checkpoint fenced by its lease."""

    kind = "snapshotter-partition"

    def __init__(
        self,
        store: EventStore,
        targets: Targets,
        *,
        registry: EventRegistry,
        name: str,
        leases: Leases,
        partition: int,
        epoch: int,
        batch_size: int,
        poll_interval: float,
        shared: SharedLog | None = None,
    ) -> None:
        super().__init__(store, targets, registry=registry, name=name, batch_size=batch_size,
                         poll_interval=poll_interval)  # fmt: skip
        self._as_partition(f"snapshotter:{name}", leases, partition, epoch, shared)

    async def commit(self, position: int) -> None:
        await self._fenced_commit(position)


class PartitionedSnapshotter(PartitionedRunner):
    """Runs the partitions of a snapshotter that this process owns.

    Args:
        store, targets, registry, name: as for :class:`~chronik.snapshots.Snapshotter`
            (the group is ``snapshotter:NAME``).
        partitions, member, lease_ttl, heartbeat, batch_size, poll_interval, shared_reader:
            see :class:`~chronik.scaleout.runner.PartitionedRunner`.
    """

    def __init__(
        self,
        store: EventStore,
        targets: Targets,
        *,
        registry: EventRegistry = default_registry,
        name: str = "default",
        partitions: int = 8,
        member: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        shared_reader: bool = True,
    ) -> None:
        if not targets:
            raise ValueError("a snapshotter needs at least one category to snapshot")
        group = f"snapshotter:{name}"
        super().__init__(
            store, group=group, base=group, categories=sorted(targets), types=None,
            partitions=partitions, member=member, lease_ttl=lease_ttl, heartbeat=heartbeat,
            batch_size=batch_size, poll_interval=poll_interval, shared_reader=shared_reader,
        )  # fmt: skip
        self.targets = dict(targets)
        self.registry = registry
        self.snapshotter_name = name

    @classmethod
    def from_app(cls, store: EventStore, app: App, **options: Any) -> PartitionedSnapshotter:
        """For every category ``app.extras["snapshots"]`` configures."""
        return cls(store, snapshot_targets(app), registry=app.registry, **options)

    def _follower(self, partition: int, epoch: int) -> PartitionedFollower:
        return SnapshotPartitionFollower(
            self.store, self.targets, registry=self.registry, name=self.snapshotter_name,
            leases=self.leases, partition=partition, epoch=epoch, batch_size=self.batch_size,
            poll_interval=self.poll_interval, shared=self.shared,
        )  # fmt: skip
