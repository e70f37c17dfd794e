"""A projection split into partitions, run by any number of processes against one store.

Each process runs a :class:`PartitionedProjectionRunner`: it joins the projection's worker
group, takes the partitions a rebalance gives it (leases with epochs, see
:mod:`chronik.scaleout.leases`) and runs one :class:`PartitionFollower` per partition it
owns. The process reads the log once for all of them (:class:`~chronik.scaleout.reader.
SharedLog`: a window of the filtered log each follower takes *its* events from; a partition
behind the window reads on its own until it reaches it). A partition follower applies its
events (:func:`~chronik.scaleout.partitions.partition_of` of the stream id) with its own
checkpoint (``totals:v1/p3of8``) in a transaction that first checks its lease: a stale
owner's batch rolls back whole and it stops.

Rebalance: every heartbeat (a third of the lease TTL by default) a member renews its leases
and computes its share from the sorted list of live members: ``partitions // members``,
plus one for the first ``partitions % members`` of them. Above its share it stops and
releases partitions; below it, it takes free or expired ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from chronik.errors import (
    CheckpointMoved,
    ChronikError,
    FollowerFailed,
    LeaseLost,
    StoreUnavailable,
)
from chronik.events import RecordedEvent
from chronik.projections.kinds import AnyProjection
from chronik.projections.runner import ProjectionFollower
from chronik.scaleout.leases import Leases
from chronik.scaleout.partitions import partition_checkpoint, stream_hash
from chronik.scaleout.reader import SharedLog, SharedSubscription
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx
from chronik.subscriptions import Backoff, Page, Subscription, describe
from chronik.workers import Follower, Worker

__all__ = [
    "PartitionFollower",
    "PartitionWorker",
    "PartitionedFollower",
    "PartitionedProjectionRunner",
    "PartitionedRunner",
    "fair_share",
    "group_name",
    "retried",
]

logger = logging.getLogger("chronik.scaleout")


def group_name(projection: AnyProjection) -> str:
    """The worker group of a projection version: ``projection:totals:v1``."""
    return f"projection:{projection.checkpoint_name}"


def fair_share(partitions: int, members: list[str], member: str) -> int:
    """How many partitions ``member`` should own among ``members`` (sorted)."""
    if member not in members:
        return 0
    base, extra = divmod(partitions, len(members))
    return base + (1 if members.index(member) < extra else 0)


class PartitionWorker(Protocol):
    """What :class:`PartitionedRunner` needs of a partition's worker (a
    :class:`PartitionedFollower` of the log, or an inbox partition of a broker)."""

    epoch: int
    lease_lost: str | None
    barrier: int | None
    checkpoint_name: str

    @property
    def state(self) -> str: ...

    def failure(self) -> str | None: ...

    async def start(self) -> None: ...

    async def stop(self, *, grace: float = 10.0) -> None: ...


class _Drained(Exception):
    """A partition reached its resize barrier: its follower ends (state ``retired``)."""


class PartitionedFollower(Follower):
    """What a partition adds to a kind's follower (projection, saga): its lease fences
    every batch, it keeps only its partition's events (by :meth:`partition_key`), reads
    from the process's :class:`~chronik.scaleout.reader.SharedLog`, drains to a resize's
    barrier and stops when its lease is lost. A kind's partition follower inherits from this
    first, then from its follower, and calls :meth:`_as_partition` in ``__init__``."""

    partition: int
    partitions: int
    epoch: int
    leases: Leases
    shared: SharedLog | None
    lease_lost: str | None
    barrier: int | None
    _moved_checked: float

    def _as_partition(
        self, base: str, leases: Leases, partition: int, epoch: int, shared: SharedLog | None
    ) -> None:
        self.shared = shared
        """The process's one reader of the log (``None``: this follower reads on its own)."""
        self.partition = partition
        self.partitions = leases.partitions
        self.epoch = epoch
        self.leases = leases
        self.name = self.checkpoint_name = partition_checkpoint(base, partition, leases.partitions)
        self.lease_lost: str | None = None
        """Why the lease was lost (``None``: it was not)."""
        self._moved_checked = float("-inf")
        self.barrier = None
        """Set during a resize: apply up to this position, then retire."""

    def partition_key(self, event: RecordedEvent) -> str:
        """What decides an event's partition (the stream id; a saga's instance stream)."""
        return event.stream_id

    async def _fence(self, tx: Tx, position: int) -> None:
        await self.leases.check(tx, self.partition, self.epoch, position)

    async def _fenced_commit(self, position: int) -> None:
        """Save ``position`` as the checkpoint in a transaction that checks the lease first
        (a kind whose follower commits the checkpoint on its own uses it as ``commit``)."""
        if position > self.checkpoint:
            async with self.store.transaction() as tx:
                await self._fence(tx, position)
                await tx.set_checkpoint(self.checkpoint_name, position)
            await self.advance(position)

    def _subscribe(self) -> Subscription:
        if self.shared is None:
            return super()._subscribe()
        return SharedSubscription(
            self.shared, self.partition, self.partitions,
            name=self.checkpoint_name, on_unavailable=self._store_lost, after=self.checkpoint,
            categories=self.categories, types=self.types, batch_size=self.batch_size,
            poll_interval=self.poll_interval, registry=self.registry, tolerant=self.tolerant,
        )  # fmt: skip

    async def prepare(self) -> None:
        """Nothing: the runner prepared once for all partitions."""

    def mine(self, page: Page) -> Page:
        """The page with only this partition's events (``caught_up_to`` kept: the
        checkpoint moves past the others' events too)."""
        n, p, cap = self.partitions, self.partition, self.barrier
        if cap is None:
            cap = page.caught_up_to + max((e.position for e in page.events), default=0) + 1

        def keep(event: RecordedEvent) -> bool:
            return event.position <= cap and stream_hash(self.partition_key(event)) % n == p

        return dataclasses.replace(
            page,
            events=[e for e in page.events if keep(e)],
            poison=tuple(x for x in page.poison if keep(x.event)),
            caught_up_to=min(page.caught_up_to, cap),
        )

    async def _take(self, page: Page) -> int:
        handled = await super()._take(self.mine(page))
        if self.barrier is not None and self.checkpoint >= self.barrier:
            raise _Drained  # also under load, when the loop never idles
        return handled

    async def retired(self) -> bool:
        """Also (at most four times a second, before going idle): whether the stored
        checkpoint moved without this follower (a rebuild across partitions reset it):
        then :class:`CheckpointMoved` makes the loop go on from the stored one."""
        if self.barrier is not None and self.checkpoint >= self.barrier:
            return True  # drained up to a resize's barrier: this partition count is done
        now = time.monotonic()
        if now - self._moved_checked >= 0.25:
            self._moved_checked = now
            stored = await self.store.get_checkpoint(self.checkpoint_name) or 0
            if stored != self.checkpoint:
                raise CheckpointMoved(self.checkpoint_name, self.checkpoint, stored)
        return await super().retired()

    async def _main(self) -> None:
        try:
            await super()._main()
        except _Drained:
            await self._set_state("retired")
        except LeaseLost as exc:
            self.lease_lost = str(exc)
            logger.warning("%s: %s; stopped handling it", self.checkpoint_name, exc)
            await self._set_state("stopped")
        finally:
            if self.shared is not None:
                self.shared.forget(self.partition)


class PartitionFollower(PartitionedFollower, ProjectionFollower):
    """Follows the log for one partition of a projection, fenced by its lease."""

    kind = "projection-partition"

    def __init__(
        self,
        store: EventStore,
        projection: AnyProjection,
        *,
        leases: Leases,
        partition: int,
        epoch: int,
        batch_size: int,
        poll_interval: float,
        shared: SharedLog | None = None,
    ) -> None:
        super().__init__(store, projection, batch_size=batch_size, poll_interval=poll_interval)
        self._as_partition(projection.checkpoint_name, leases, partition, epoch, shared)
        self.applier.checkpoint_name = self.checkpoint_name
        self.applier.fence = self._fence


class PartitionedRunner(Worker):
    """Runs the partitions of one worker group that this process owns (the module
    docstring). A kind (projection, saga) gives :meth:`_follower` and :meth:`_prepare`.

    Args:
        store: a SQL store (PostgreSQL for several processes; SQLite allows one).
        group: the worker group (``projection:totals:v1``, ``saga:orders``).
        base: the checkpoint name partitions are named after (``totals:v1``).
        categories, types, key: what the process's shared reader reads, and what decides
            an event's partition (default: its stream id).
        partitions: how many partitions (the same in every process of the group).
        member: this process's id in the group (default: host, pid and a random part).
        lease_ttl: seconds a lease lasts without a heartbeat; a killed process's partitions
            are taken over within about this long.
        heartbeat: seconds between heartbeats (default ``lease_ttl / 3``).
        shared_reader: read the log once for every partition run here (``False``: each
            partition reads it on its own, as before; for comparison).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        group: str,
        base: str,
        categories: Sequence[str] | None,
        types: Sequence[str] | None,
        key: Callable[[RecordedEvent], str] | None = None,
        partitions: int = 8,
        member: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        shared_reader: bool = True,
    ) -> None:
        super().__init__()
        require(store, SqlStore)
        self.store = store
        self.base = base
        self.leases = Leases(store, group, partitions, member=member, ttl=lease_ttl)
        self.name = f"{group}@{self.leases.member}"
        self.heartbeat_interval = heartbeat if heartbeat is not None else lease_ttl / 3
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.shared = (
            SharedLog(store, categories=categories, types=types, batch_size=batch_size, key=key)
            if shared_reader
            else None
        )
        """The one reader of the log for every partition run here (reader.py)."""
        self.followers: dict[int, PartitionWorker] = {}
        """The partitions this process runs now."""
        self.members: list[str] = []
        """The live members at the last heartbeat."""
        self.rebalances = 0
        """Times this member took or gave up partitions."""
        self.lost = 0
        """Leases this member lost to a takeover (it was too slow to renew)."""

    def _follower(self, partition: int, epoch: int) -> PartitionWorker:
        raise NotImplementedError

    async def _prepare(self) -> None:
        """Once per process before joining (tables, say)."""

    @property
    def member(self) -> str:
        return self.leases.member

    @property
    def partitions(self) -> int:
        return self.leases.partitions

    def owned(self) -> dict[int, int]:
        """The partitions run here, with their epochs."""
        return {p: f.epoch for p, f in sorted(self.followers.items())}

    async def _starting(self) -> None:
        await self._prepare()
        await self.leases.join()

    async def _main(self) -> None:
        backoff = Backoff(first=0.1)
        while not self._stopping.is_set():
            try:
                await self.tick()
            except StoreUnavailable as exc:
                self.last_error = describe(exc)
                logger.warning("%s: store unavailable (%s); retrying", self.name, exc)
                await self._set_state("retrying")
                await backoff.sleep(self._stopping)
                continue
            if backoff.failures:
                backoff.reset()
                self.resumed += 1
                await self._set_state("running")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.heartbeat_interval)

    async def tick(self) -> None:
        """One heartbeat: renew, drop what was lost, then take or give up partitions."""
        group = await self.leases.group()
        if group.partitions != self.leases.partitions:
            await self._switch_to(group.partitions)
        barrier = group.barrier if group.resize_to is not None else None
        members, renewed = await self.leases.heartbeat()
        self.members = members
        for p, follower in list(self.followers.items()):
            failed = follower.failure()
            if failed is not None:  # a poison event with on_poison="stop": all stop
                raise FollowerFailed(f"{follower.checkpoint_name}: {failed}")
            follower.barrier = barrier
            if follower.state == "retired" and barrier is not None:
                del self.followers[p]  # drained to the barrier: hand it back
                await follower.stop()
                await self.leases.release(p, follower.epoch)
                continue
            if renewed.get(p) != follower.epoch or follower.lease_lost is not None:
                self.lost += 1
                logger.warning(
                    "%s: lease of partition %d (epoch %d) lost to a takeover; stopped it",
                    self.name, p, follower.epoch,
                )  # fmt: skip
                del self.followers[p]
                await follower.stop(grace=self.leases.ttl)
        if barrier is not None and await self.leases.switch(self.base):
            logger.info("%s: switched the group to %s partitions", self.name, group.resize_to)
            return  # the next heartbeat runs the new count
        share = fair_share(self.partitions, members, self.member)
        for p in sorted(set(renewed) - set(self.followers)):
            # held under this member id but not run here (a restart with the same id): take
            # it again with a new epoch while under the share, else hand it back
            if len(self.followers) < share and not await self._drained(p, barrier):
                await self._take(p, barrier)
            else:
                await self.leases.release(p, renewed[p])
        extra = len(self.followers) - share
        if extra > 0:
            self.rebalances += 1
            for p in sorted(self.followers, reverse=True)[:extra]:
                follower = self.followers.pop(p)
                await follower.stop(grace=self.leases.ttl)
                await self.leases.release(p, follower.epoch)
            return
        if extra == 0:
            return
        start = members.index(self.member) * self.partitions // max(len(members), 1)
        for i in range(self.partitions):
            if len(self.followers) >= share or self._stopping.is_set():
                break
            p = (start + i) % self.partitions
            if p in self.followers or await self._drained(p, barrier):
                continue
            await self._take(p, barrier)

    async def _drained(self, p: int, barrier: int | None) -> bool:
        if barrier is None:
            return False
        done = await self.store.get_checkpoint(self.leases.checkpoint(self.base, p))
        return (done or 0) >= barrier

    async def _switch_to(self, partitions: int) -> None:
        """The group was resized: stop every partition of the old count, then join the
        group again with the new one."""
        followers, self.followers = self.followers, {}
        await asyncio.gather(*(f.stop() for f in followers.values()))
        for p, f in followers.items():
            await self.leases.release(p, f.epoch)
        self.leases = Leases(self.store, self.leases.name, partitions, member=self.member,
                             ttl=self.leases.ttl)  # fmt: skip
        await self.leases.join()
        self.rebalances += 1
        logger.info("%s: now %d partitions", self.name, partitions)

    async def _take(self, p: int, barrier: int | None) -> bool:
        """Acquire partition ``p`` and start its follower (``False``: someone owns it)."""
        epoch = await self.leases.acquire(p)
        if epoch is None:
            return False
        self.rebalances += 1
        follower = self._follower(p, epoch)
        follower.barrier = barrier
        self.followers[p] = follower
        await follower.start()
        logger.info("%s: owns partition %d at epoch %d", self.name, p, epoch)
        return True

    async def _stopped(self) -> None:
        """Graceful: finish each partition's batch, then release every lease at once (the
        next owner need not wait for them to expire)."""
        followers, self.followers = self.followers, {}
        await asyncio.gather(*(f.stop() for f in followers.values()))
        with contextlib.suppress(StoreUnavailable, ChronikError):
            await self.leases.leave()

    def failure(self) -> str | None:
        return super().failure()


class PartitionedProjectionRunner(PartitionedRunner):
    """Runs one projection's partitions that this process owns (see the module docstring).

    Args:
        store: a SQL store (PostgreSQL for several processes; SQLite allows one).
        projection: the projection (in-database for exactly-once).
        partitions, member, lease_ttl, heartbeat, batch_size, poll_interval, shared_reader:
            see :class:`PartitionedRunner`.
    """

    def __init__(
        self,
        store: EventStore,
        projection: AnyProjection,
        *,
        partitions: int = 8,
        member: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        shared_reader: bool = True,
    ) -> None:
        super().__init__(
            store, group=group_name(projection), base=projection.checkpoint_name,
            categories=projection.categories, types=projection.stored_types,
            partitions=partitions, member=member, lease_ttl=lease_ttl, heartbeat=heartbeat,
            batch_size=batch_size, poll_interval=poll_interval, shared_reader=shared_reader,
        )  # fmt: skip
        self.projection = projection

    def _follower(self, partition: int, epoch: int) -> PartitionedFollower:
        return PartitionFollower(
            self.store, self.projection, leases=self.leases, partition=partition, epoch=epoch,
            batch_size=self.batch_size, poll_interval=self.poll_interval, shared=self.shared,
        )  # fmt: skip

    async def _prepare(self) -> None:
        """Create the read model's tables once (several processes may race: retried)."""
        applier = self.projection.applier(self.store, self.projection)
        await retried(applier.prepare)


async def retried(prepare: Callable[[], Awaitable[None]]) -> None:
    """``prepare()``, tried again a few times when it fails (two processes creating one
    table race); a lost store is not retried here."""
    for attempt in range(5):
        try:
            await prepare()
            return
        except StoreUnavailable:
            raise
        except Exception:
            if attempt == 4:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
