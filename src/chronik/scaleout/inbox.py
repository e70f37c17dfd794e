"""An inbox split into partitions by subject, run by any number of processes (needs
``pip install chronik[nats]``).

The publisher puts a partition token after the subject prefix: ``orders.3.order.Placed``
(:class:`~chronik.nats.OutboxRelay` with ``subject_partitions=8`` puts
``partition_of(stream_id, 8)`` there, so one stream's messages share a token; another
publisher can use NATS's own ``partition()`` subject mapping). Partition ``p`` of the
inbox is a JetStream durable consumer ``NAME_p3of8`` filtered on ``orders.3.>``, owned by
one process at a time through the same leases and epochs as every partitioned worker
(group ``inbox:NAME``):

- each message's transaction (processed id, the handler's effects) checks the partition's
  lease first: a stale owner (paused past its lease) has its effects rolled back, hands
  its fetched messages back and stops; the ``processed_messages`` row keyed by ``NAME``
  makes a message's effects happen once whichever partition or process delivered it;
- ordered (the default): a partition's consumer has ``max_ack_pending=1``: JetStream hands
  out the partition's next message only once the one before it was acked (or
  dead-lettered), so a killed owner's message, one whose ack was lost when nats-server
  restarted, and one being retried after a failure all come again *before* any later
  message of the partition. (With more in flight, a new owner would get later messages
  while the killed owner's were still waiting out ``ack_wait``: the kill test finds
  streams applied out of order.) Throughput comes from partitions and processes, not from
  batches (each message is one fetch, one transaction, one ack); ``ordered=False``
  fetches ``batch_size`` at once and keeps no order.
- a graceful stop or a rebalance hands fetched messages back at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from chronik.errors import InvalidArgument, LeaseLost
from chronik.nats import (
    STREAM_NOT_FOUND,
    AppendingHandler,
    Inbox,
    InboxHandler,
    StreamMissing,
    validate_subject_token,
)
from chronik.scaleout.leases import Leases
from chronik.scaleout.partitions import check_partitions, partition_checkpoint
from chronik.scaleout.runner import PartitionedRunner, PartitionWorker
from chronik.store.protocol import EventStore, Tx

__all__ = ["InboxPartition", "PartitionedInbox", "inbox_group", "inbox_pending"]

logger = logging.getLogger("chronik.scaleout")


UNORDERED_IN_FLIGHT = 1000
"""Messages in flight per partition of an unordered inbox (JetStream's default)."""


def inbox_group(name: str) -> str:
    """The worker group of an inbox: ``inbox:NAME``."""
    return f"inbox:{name}"


class InboxPartition(Inbox):
    """One partition of an inbox: its own durable consumer, every message fenced."""

    kind = "inbox-partition"

    def __init__(
        self,
        store: EventStore,
        servers: str | Sequence[str],
        *,
        name: str,
        stream: str,
        prefix: str,
        leases: Leases,
        partition: int,
        epoch: int,
        **options: Any,
    ) -> None:
        n = leases.partitions
        super().__init__(
            store, servers, name=name, stream=stream, subject=f"{prefix}.{partition}.>",
            durable=f"{name}_p{partition}of{n}", **options,
        )  # fmt: skip
        self.leases = leases
        self.partition = partition
        self.partitions = n
        self.epoch = epoch
        self.checkpoint_name = partition_checkpoint(inbox_group(name), partition, n)
        self.lease_lost: str | None = None
        self.barrier: int | None = None  # an inbox is never resized (see resize())

    async def fence(self, tx: Tx) -> None:
        await self.leases.check(tx, self.partition, self.epoch)

    async def run_once(self) -> int:
        try:
            return await super().run_once()
        except LeaseLost as exc:
            self.lease_lost = str(exc)
            logger.warning("%s: %s; stopped handling it", self.checkpoint_name, exc)
            self._request_stop()
            return 0


class PartitionedInbox(PartitionedRunner):
    """Runs the partitions of an inbox that this process owns (module docstring).

    Args:
        store: a SQL store (PostgreSQL for several processes; SQLite allows one).
        servers: NATS server URL(s).
        name: the inbox (group ``inbox:NAME``, dedupe key, consumer names ``NAME_pIofN``).
        stream: the JetStream stream.
        prefix: the subject prefix before the partition token (``orders`` for
            ``orders.3.order.Placed``).
        partitions: how many partition tokens the publisher uses (the relay's
            ``subject_partitions``); the same in every process.
        ordered: one message in flight per partition, so each partition's messages take
            effect in stream order, through kills, restarts and retries (module docstring).
        handler / append_handler, max_deliver, ack_wait, batch_size, fetch_timeout: as for
            :class:`~chronik.nats.Inbox`. ``ack_wait`` also bounds how long a killed
            owner's message waits before the next owner gets it.
        member, lease_ttl, heartbeat: see :class:`~chronik.scaleout.runner.PartitionedRunner`.
    """

    def __init__(
        self,
        store: EventStore,
        servers: str | Sequence[str],
        *,
        name: str,
        stream: str,
        prefix: str,
        partitions: int = 8,
        handler: InboxHandler | None = None,
        append_handler: AppendingHandler | None = None,
        member: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        batch_size: int = 100,
        ordered: bool = True,
        **options: Any,
    ) -> None:
        validate_subject_token(name)
        for part in prefix.split("."):
            validate_subject_token(part)
        check_partitions(partitions)
        if (handler is None) == (append_handler is None):
            raise InvalidArgument("handler", "give either handler or append_handler")
        group = inbox_group(name)
        super().__init__(
            store, group=group, base=group, categories=None, types=None,
            partitions=partitions, member=member, lease_ttl=lease_ttl, heartbeat=heartbeat,
            batch_size=batch_size, shared_reader=False,
        )  # fmt: skip
        self.servers = servers
        self._checked = time.monotonic()
        self._unreachable_subjects: str | None = None
        self.inbox_name = name
        self.stream = stream
        self.prefix = prefix
        self.options: dict[str, Any] = dict(
            handler=handler, append_handler=append_handler,
            # ordered: one in flight, so a fetch asks for one (a fetch of more would wait out
            # its timeout for messages JetStream holds back until the first is acked)
            # unordered: an explicit limit, so that a consumer an ordered run made (one in
            # flight) is brought back to many
            batch_size=1 if ordered else batch_size,
            max_ack_pending=1 if ordered else max(UNORDERED_IN_FLIGHT, batch_size),
            **options,
        )  # fmt: skip

    recheck_every = 60.0
    """Seconds between checks, while running, for subjects no partition takes."""

    async def tick(self) -> None:
        await super().tick()
        if time.monotonic() - self._checked < self.recheck_every:
            return
        self._checked = time.monotonic()
        try:
            await check_subject_partitions(self.servers, self.stream, self.prefix, self.partitions)
        except InvalidArgument as exc:  # published since start: logged, the rest goes on
            self.last_error = self._unreachable_subjects = exc.reason
            logger.error("%s: %s", self.name, exc.reason)
        except Exception:  # the broker is down: the partitions say so themselves
            pass
        else:  # gone (purged, say): the report goes too
            if self._unreachable_subjects is not None:
                if self.last_error == self._unreachable_subjects:
                    self.last_error = None
                self._unreachable_subjects = None
                logger.info("%s: every subject under the prefix is taken again", self.name)

    def _follower(self, partition: int, epoch: int) -> PartitionWorker:
        return InboxPartition(
            self.store, self.servers, name=self.inbox_name, stream=self.stream,
            prefix=self.prefix, leases=self.leases, partition=partition, epoch=epoch,
            **self.options,
        )  # fmt: skip

    async def _starting(self) -> None:
        wanted = self.partitions
        await super()._starting()
        if self.partitions != wanted:  # join() took the group's stored count
            with contextlib.suppress(Exception):
                await self.leases.leave()
            raise InvalidArgument(
                "partitions",
                f"inbox {self.inbox_name!r} was created with {self.partitions} partitions, "
                f"not {wanted}: the subjects' partition count cannot change under one name "
                "(see docs/scale-out.md, changing the partition count of an inbox)",
            )

    async def _prepare(self) -> None:
        """Refuse to start when the stream holds messages this inbox would never take: a
        subject under the prefix without a partition token below ``partitions`` (the
        publisher uses another count, or none). A broker that cannot be reached now is not
        a reason to refuse: the partitions connect (and retry) on their own."""
        try:
            await check_subject_partitions(self.servers, self.stream, self.prefix, self.partitions)
        except InvalidArgument:
            raise
        except StreamMissing as exc:  # it may be created later (a relay's --create-stream)
            logger.warning("%s: %s", self.name, exc)
        except Exception as exc:  # the broker is down: the partitions retry on their own
            logger.warning(
                "%s: could not check the stream's subjects (%r); starting without", self.name, exc
            )


async def _connect_once(servers: str | Sequence[str]) -> Any:
    """A NATS connection for one question: one quick attempt per server (nats-py's
    ``max_reconnect_attempts=0`` would mean "retry forever"), its errors left to the
    caller to report once."""
    import nats

    async def quiet(exc: Exception) -> None:
        pass

    urls = [servers] if isinstance(servers, str) else list(servers)
    return await nats.connect(
        urls, connect_timeout=2, max_reconnect_attempts=1, reconnect_time_wait=0.2,
        allow_reconnect=False, error_cb=quiet,
    )  # fmt: skip


def overlaps(a: str, b: str) -> bool:
    """Whether two NATS subject filters (``*`` one token, ``>`` the rest) can match one
    subject."""
    x, y = a.split("."), b.split(".")
    for i in range(max(len(x), len(y))):
        if i == len(x) or i == len(y):
            return False
        if x[i] == ">" or y[i] == ">":
            return True
        if x[i] != y[i] and "*" not in (x[i], y[i]):
            return False
    return True


async def check_subject_partitions(
    servers: str | Sequence[str], stream: str, prefix: str, partitions: int
) -> None:
    """:class:`InvalidArgument` naming a subject under ``prefix`` in ``stream`` whose
    partition token is not ``0 .. partitions-1``."""
    import nats.js.errors

    nc = await _connect_once(servers)
    try:
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=f"{prefix}.>")
        except nats.js.errors.NotFoundError as exc:
            raise StreamMissing(stream) from exc
        subjects = dict(info.state.subjects or {})
    finally:
        await nc.close()
    taken = list(info.config.subjects or [])
    if taken and not any(overlaps(f, f"{prefix}.*.>") for f in taken):
        raise InvalidArgument(
            "prefix",
            f"stream {stream} takes subjects {taken}, none under {prefix}.<p>.>: this inbox "
            "would never receive a message (a typo in the prefix, or the wrong stream?)",
        )
    depth = len(prefix.split("."))
    for subject, count in sorted(subjects.items()):
        token = subject.split(".")[depth] if subject.count(".") > depth else ""
        canonical = token.isascii() and token.isdigit() and token == str(int(token))
        if not (canonical and int(token) < partitions):
            raise InvalidArgument(
                "partitions",
                f"stream {stream} holds {count} message(s) on {subject!r}, which no partition "
                f"of {partitions} takes (a partitioned inbox consumes {prefix}.<0..."
                f"{partitions - 1}>.>; publish with subject_partitions={partitions})",
            )


async def inbox_pending(
    servers: str | Sequence[str], stream: str, name: str, partitions: int
) -> dict[int, int]:
    """Per partition of inbox ``name``, the messages JetStream holds for it that are not
    acked yet (not delivered, plus delivered and unacked): the inbox's lag. A partition
    whose consumer does not exist yet is left out."""
    import nats.js.errors

    nc = await _connect_once(servers)
    pending: dict[int, int] = {}
    try:
        js = nc.jetstream()
        for p in range(partitions):
            try:
                info = await js.consumer_info(stream, f"{name}_p{p}of{partitions}")
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == STREAM_NOT_FOUND:
                    raise StreamMissing(stream) from exc
                continue
            pending[p] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await nc.close()
    return pending
