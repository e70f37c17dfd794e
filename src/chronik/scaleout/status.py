"""What ``chronik workers status`` shows: per worker group, its live members and, per
partition, the owner, the epoch, the lease's remaining time, the checkpoint and the lag."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from chronik.scaleout.leases import group_leases
from chronik.scaleout.partitions import partition_checkpoint
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore

__all__ = ["GroupStatus", "PartitionStatus", "workers_status"]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    partitions: int
    owner: str | None
    epoch: int
    expires_in: float | None
    """Seconds left on the lease (negative: expired, up for takeover; ``None``: free)."""
    checkpoint: str
    position: int
    lag: int | None
    """Positions between the partition's checkpoint and the head of the log (``None`` for
    an inbox: it follows a JetStream stream, not the log; ``chronik workers status --nats
    URL --stream S`` fills in its consumers' unacked messages,
    :func:`chronik.scaleout.inbox.inbox_pending`)."""
    acquired_ago: float | None = None
    """Seconds since the owner took the partition (its last rebalance)."""


@dataclass(frozen=True, slots=True)
class GroupStatus:
    name: str
    members: list[str]
    partitions: list[PartitionStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def workers_status(store: EventStore, name: str | None = None) -> list[GroupStatus]:
    """The status of every worker group (or of group ``name``)."""
    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        where = "WHERE name = :name" if name is not None else ""
        groups = await tx.fetchall(
            f"SELECT DISTINCT name FROM worker_leases {where} ORDER BY name", {"name": name}
        )
        now = f"CAST(({tx.clock_sql}) * 1000000 AS BIGINT)"
        member_rows = await tx.fetchall(
            f"SELECT name, member FROM worker_members WHERE expires_at > {now} "
            "ORDER BY name, member"
        )
    checkpoints = await store.checkpoints()
    head = await store.head_position()
    result = []
    for (group,) in groups:
        # a projection's checkpoints are named after its version (totals:v1/p0of8); other
        # kinds' after the group itself (saga:orders/p0of8)
        kind, _, rest = str(group).partition(":")
        base = rest if kind == "projection" else str(group)
        parts = []
        for lease in await group_leases(sql, str(group)):
            cp = partition_checkpoint(base, lease.partition, lease.partitions)
            position = checkpoints.get(cp, 0)
            parts.append(
                PartitionStatus(
                    lease.partition,
                    lease.partitions,
                    lease.owner,
                    lease.epoch,
                    round(lease.expires_in, 3) if lease.owner is not None else None,
                    cp,
                    position,
                    None if kind == "inbox" else max(head - position, 0),
                    None if lease.acquired_ago is None else round(lease.acquired_ago, 3),
                )
            )
        members = [str(m) for g, m in member_rows if g == group]
        result.append(GroupStatus(str(group), members, parts))
    return result
