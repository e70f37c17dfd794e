"""Rebuild a partitioned projection from position 0, while its runners keep running.

One transaction drops and creates the read model and sets every partition's checkpoint to
0. A runner's batch in flight finishes first (the DDL waits for it); every later batch
finds its checkpoint moved (``CheckpointMoved``: the compare-and-set of
``advance_checkpoint``), rolls back, reads the checkpoint again and replays from 0. Nothing
is applied twice: a batch commits only from the checkpoint it read.
"""

from __future__ import annotations

from chronik.errors import InvalidArgument
from chronik.projections.kinds import AnyProjection, Projection
from chronik.scaleout.partitions import check_partitions, partition_checkpoint
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore

__all__ = ["reset_partitioned"]


async def reset_partitioned(store: EventStore, projection: AnyProjection, partitions: int) -> None:
    """Empty ``projection``'s read model and set its ``partitions`` checkpoints to 0 (its
    runners, wherever they run, then rebuild it). In-database projections only.

    Raises:
        InvalidArgument: an external projection (its read model is outside the database),
            or a bad partition count.
    """
    check_partitions(partitions)
    if not isinstance(projection, Projection):
        raise InvalidArgument(
            "projection", "a partitioned rebuild resets in-database projections only"
        )
    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        await projection.teardown(tx)
        await projection.setup(tx)
        for p in range(partitions):
            await tx.set_checkpoint(
                partition_checkpoint(projection.checkpoint_name, p, partitions), 0
            )
