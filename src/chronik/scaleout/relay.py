"""The outbox relay split into partitions (by stream id), run by any number of processes
(needs ``pip install chronik[nats]``).

One partition's owner publishes its streams' events in store order, so each stream's
messages reach JetStream in version order (with ``in_flight=1``, the default). Its
checkpoint (``relay:NAME/p3of8``) moves in a transaction that checks its lease first. After
a takeover the new owner publishes again from the checkpoint: what the old owner published
past it carries the same ``Nats-Msg-Id`` (the event id), so JetStream drops it inside its
duplicate window, and a consumer that deduplicates by message id (the
:class:`~chronik.nats.Inbox` does) drops it after: exactly-once effects, as with one relay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chronik.nats import OutboxRelay
from chronik.scaleout.leases import Leases
from chronik.scaleout.reader import SharedLog
from chronik.scaleout.runner import PartitionedFollower, PartitionedRunner
from chronik.store.protocol import EventStore

__all__ = ["PartitionedRelay", "RelayPartitionFollower"]


class RelayPartitionFollower(PartitionedFollower, OutboxRelay):
    """Publishes one partition's events, its checkpoint fenced by its lease."""

    kind = "relay-partition"

    def __init__(
        self,
        store: EventStore,
        servers: str | Sequence[str],
        *,
        name: str,
        leases: Leases,
        partition: int,
        epoch: int,
        shared: SharedLog | None = None,
        **options: Any,
    ) -> None:
        super().__init__(store, servers, name=name, **options)
        self._as_partition(f"relay:{name}", leases, partition, epoch, shared)

    async def commit(self, position: int) -> None:
        await self._fenced_commit(position)


class PartitionedRelay(PartitionedRunner):
    """Runs the partitions of an outbox relay that this process owns.

    Args:
        store, servers, name, stream, prefix, categories, types: as for
            :class:`~chronik.nats.OutboxRelay` (the group is ``relay:NAME``).
        options: the relay's other options (``mapper``, ``ack_timeout``, ``in_flight``...).
        partitions, member, lease_ttl, heartbeat, batch_size, poll_interval, shared_reader:
            see :class:`~chronik.scaleout.runner.PartitionedRunner`.
    """

    def __init__(
        self,
        store: EventStore,
        servers: str | Sequence[str],
        *,
        name: str,
        stream: str,
        prefix: str,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        partitions: int = 8,
        member: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        shared_reader: bool = True,
        **options: Any,
    ) -> None:
        group = f"relay:{name}"
        super().__init__(
            store, group=group, base=group, categories=categories, types=types,
            partitions=partitions, member=member, lease_ttl=lease_ttl, heartbeat=heartbeat,
            batch_size=batch_size, poll_interval=poll_interval, shared_reader=shared_reader,
        )  # fmt: skip
        self.servers = servers
        self.relay_name = name
        self.options: dict[str, Any] = dict(
            stream=stream, prefix=prefix, categories=categories, types=types, **options
        )

    def _follower(self, partition: int, epoch: int) -> PartitionedFollower:
        return RelayPartitionFollower(
            self.store, self.servers, name=self.relay_name, leases=self.leases,
            partition=partition, epoch=epoch, shared=self.shared, batch_size=self.batch_size,
            poll_interval=self.poll_interval, **self.options,
        )  # fmt: skip
