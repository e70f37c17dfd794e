"""Scale-out: workers split into partitions across processes and machines, owned through
fenced leases (docs/scale-out.md).

- :mod:`~chronik.scaleout.partitions`: the stable hash of a stream id to a partition.
- :mod:`~chronik.scaleout.leases`: leases with epochs (fencing tokens) in the database.
- :mod:`~chronik.scaleout.runner`: a partitioned projection runner (one per process).
- :mod:`~chronik.scaleout.reader`: one read of the log per process, shared by its partitions.
- :mod:`~chronik.scaleout.sagas`: a partitioned saga runner (by saga instance).
- :mod:`~chronik.scaleout.snapshots`: a partitioned snapshotter (by stream).
- :mod:`~chronik.scaleout.status`: owners, epochs and lag per partition.
- :mod:`~chronik.scaleout.rebuild`: a rebuild across partitions while runners run.
- :mod:`~chronik.scaleout.groups`: consumer groups for external consumers (ack / nack,
  parked messages, round robin or pinned by stream).
- :func:`~chronik.scaleout.leases.resize`: change the partition count online (drain and
  switch at a barrier position).

A package of its own (not part of ``workers.py``): it is a worker *layer* above the
follower (it runs followers), and nothing below it imports it.
"""

from __future__ import annotations

from chronik.scaleout.groups import ConsumerGroup, GroupMessage
from chronik.scaleout.leases import Group, Lease, Leases, new_member_id, resize
from chronik.scaleout.partitions import partition_checkpoint, partition_of
from chronik.scaleout.reader import SharedLog
from chronik.scaleout.rebuild import reset_partitioned
from chronik.scaleout.runner import (
    PartitionedFollower,
    PartitionedProjectionRunner,
    PartitionedRunner,
    PartitionFollower,
    fair_share,
    group_name,
)
from chronik.scaleout.sagas import PartitionedSagaRunner, saga_partition_key
from chronik.scaleout.snapshots import PartitionedSnapshotter
from chronik.scaleout.status import GroupStatus, PartitionStatus, workers_status

__all__ = [
    "ConsumerGroup",
    "Group",
    "GroupMessage",
    "GroupStatus",
    "Lease",
    "Leases",
    "PartitionFollower",
    "PartitionStatus",
    "PartitionedFollower",
    "PartitionedProjectionRunner",
    "PartitionedRunner",
    "PartitionedSagaRunner",
    "PartitionedSnapshotter",
    "SharedLog",
    "fair_share",
    "group_name",
    "new_member_id",
    "partition_checkpoint",
    "partition_of",
    "reset_partitioned",
    "resize",
    "saga_partition_key",
    "workers_status",
]
