"""Leases with epochs (fencing tokens): who owns which partition of a worker group.

A *worker group* (one projection version, say ``projection:totals:v1``) is split into
``partitions``; each partition is a row of ``worker_leases`` (migration 0011) with an owner,
an ``epoch`` and an expiry on the database's clock. A process of the group is a *member*
(a row of ``worker_members``, renewed by its heartbeat).

- :meth:`Leases.acquire` takes a partition that is free or whose lease expired and adds 1
  to its epoch; the new epoch is the owner's fencing token.
- :meth:`Leases.heartbeat` renews the member and every lease it still owns, and says which
  it lost (another member took them over after they expired).
- :meth:`Leases.check` runs first in every transaction of the owner's batch: it takes the
  partition's advisory lock shared (PostgreSQL; SQLite's write lock serialises all) and
  fails the transaction with :class:`~chronik.errors.LeaseLost` when the epoch is no longer
  the owner's, so a stale owner's (a paused process woken up) writes and checkpoint roll
  back whole. A takeover takes the lock exclusively: it waits for a batch in flight, and
  ends the session of an owner that stopped in the middle of one after its lease expired.
- :meth:`Leases.release` hands a partition back on a graceful stop or a rebalance, so the
  next owner need not wait for expiry.

On SQLite one process runs a group: :meth:`Leases.join` raises
:class:`~chronik.errors.WorkOwned` while another live member exists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from chronik.errors import InvalidArgument, LeaseLost, WorkOwned
from chronik.scaleout.partitions import check_partitions, partition_checkpoint
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx

__all__ = ["Group", "Lease", "Leases", "new_member_id", "resize"]


def new_member_id() -> str:
    """A member id unique across machines: ``host:pid:random``."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# What differs per dialect, looked up rather than branched on (tests/test_capabilities.py):
# PostgreSQL runs the lease checks in server functions (migration 0011), so a batch's check
# is pipelined with its writes; SQLite has one writer at a time, so one owner per group.
# Leases could become a store capability like Fencing; see docs/scale-out.md.
_SERVER_FUNCTIONS = {"postgresql": True}
_SINGLE_OWNER = {"sqlite": True}
_ROW_LOCK = {"postgresql": " FOR UPDATE"}


@dataclass(frozen=True, slots=True)
class Group:
    """A worker group's partition count (and a resize in progress)."""

    name: str
    partitions: int
    generation: int
    resize_to: int | None
    barrier: int | None
    """The old partitions run up to this position, the new ones start after it."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One partition's lease as stored."""

    name: str
    partitions: int
    partition: int
    owner: str | None
    epoch: int
    expires_in: float
    """Seconds until it expires (negative: expired), on the database's clock."""
    acquired_ago: float | None = None
    """Seconds since its owner took it (the partition's last rebalance; ``None``: never)."""


def _now(tx: Tx) -> str:
    return f"CAST(({tx.clock_sql}) * 1000000 AS BIGINT)"


class Leases:
    """The leases of one worker group, as seen by one member.

    Args:
        store: a store that runs SQL (SQLite or PostgreSQL).
        name: the worker group (``projection:totals:v1``).
        partitions: how many partitions the group has.
        member: this process's member id (default: :func:`new_member_id`).
        ttl: seconds a lease (and the membership) lasts without a heartbeat.
    """

    def __init__(
        self,
        store: object,
        name: str,
        partitions: int,
        *,
        member: str | None = None,
        ttl: float = 10.0,
    ) -> None:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidArgument("name", f"must be a non-empty str without NUL, got {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument("name", "holds a lone surrogate (not UTF-8)") from None
        if not isinstance(ttl, int | float) or not 0.1 <= ttl <= 3600:
            raise InvalidArgument("ttl", f"must be from 0.1 to 3600 seconds, got {ttl!r}")
        self.sql = require(store, SqlStore)
        self.name = name
        self.partitions = check_partitions(partitions)
        self.member = member or new_member_id()
        self.ttl = float(ttl)
        self._ttl_us = int(self.ttl * 1_000_000)

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"name": self.name, "n": self.partitions, "member": self.member, **more}

    def checkpoint(self, checkpoint_name: str, partition: int) -> str:
        return partition_checkpoint(checkpoint_name, partition, self.partitions)

    async def join(self) -> None:
        """Create the group's lease rows (once) and register this member.

        Raises:
            WorkOwned: SQLite, and another live member runs the group.
        """
        async with self.sql.transaction() as tx:
            await tx.execute(
                "INSERT INTO worker_groups (name, partitions) VALUES (:name, :n) "
                "ON CONFLICT DO NOTHING",
                self._params(),
            )
            row = await tx.fetchone(
                "SELECT partitions FROM worker_groups WHERE name = :name", self._params()
            )
            assert row is not None
            self.partitions = int(row[0])  # the group's count wins (a resize may have run)
            for p in range(self.partitions):
                await tx.execute(
                    "INSERT INTO worker_leases (name, partitions, partition) "
                    "VALUES (:name, :n, :p) ON CONFLICT DO NOTHING",
                    {"name": self.name, "n": self.partitions, "p": p},
                )
            await self._beat(tx)

    async def _beat(self, tx: Tx) -> None:
        now = _now(tx)
        if _SINGLE_OWNER.get(tx.dialect, False):
            other = await tx.fetchone(
                "SELECT member FROM worker_members WHERE name = :name AND member <> :member "
                f"AND expires_at > {now}",
                self._params(),
            )
            if other is not None:
                raise WorkOwned(self.name, str(other[0]))
        await tx.execute(
            "INSERT INTO worker_members (name, member, started_at, expires_at) "
            f"VALUES (:name, :member, {now}, {now} + :ttl) "
            "ON CONFLICT (name, member) DO UPDATE SET expires_at = excluded.expires_at",
            self._params(ttl=self._ttl_us),
        )

    async def heartbeat(self) -> tuple[list[str], dict[int, int]]:
        """Renew this member and its leases; returns the live members (sorted, this one
        included) and the partitions this member still owns, with their epochs."""
        async with self.sql.transaction() as tx:
            await self._beat(tx)
            now = _now(tx)
            rows = await tx.fetchall(
                f"UPDATE worker_leases SET expires_at = {now} + :ttl "
                "WHERE name = :name AND partitions = :n AND owner = :member "
                "RETURNING partition, epoch",
                self._params(ttl=self._ttl_us),
            )
            await tx.execute(
                f"DELETE FROM worker_members WHERE name = :name AND expires_at < {now} - :ttl",
                self._params(ttl=self._ttl_us),
            )
            members = await tx.fetchall(
                "SELECT member FROM worker_members "
                f"WHERE name = :name AND expires_at > {now} ORDER BY member",
                self._params(),
            )
        return [str(m[0]) for m in members], {int(p): int(e) for p, e in rows}

    async def acquire(self, partition: int) -> int | None:
        """Take ``partition`` if it is free, its lease expired or this member id holds it
        already (a restarted process: the new epoch fences the old one out); returns the
        new epoch (``None``: someone else owns it). Never waits: on PostgreSQL, when a
        batch of the previous owner still holds the partition although its lease expired,
        that session is ended and ``None`` returned (the next heartbeat takes it)."""
        params = self._params(p=partition, ttl=self._ttl_us)
        async with self.sql.transaction() as tx:
            if _SERVER_FUNCTIONS.get(tx.dialect, False):
                row = await tx.fetchone(
                    "SELECT chronik_acquire_lease(:name, :n, :p, :member, :ttl)", params
                )
                return None if row is None or row[0] is None else int(row[0])
            now = _now(tx)
            row = await tx.fetchone(
                f"UPDATE worker_leases SET owner = :member, epoch = epoch + 1, "
                f"expires_at = {now} + :ttl, acquired_at = {now} "
                "WHERE name = :name AND partitions = :n AND partition = :p "
                f"AND (owner IS NULL OR owner = :member OR expires_at < {now}) "
                "AND EXISTS (SELECT 1 FROM worker_groups AS g WHERE g.name = :name "
                "AND g.partitions = :n) RETURNING epoch",
                params,
            )
        return None if row is None else int(row[0])

    async def release(self, partition: int, epoch: int) -> bool:
        """Hand ``partition`` back (graceful stop, rebalance); ``False``: no longer ours."""
        async with self.sql.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE worker_leases SET owner = NULL, expires_at = 0 "
                "WHERE name = :name AND partitions = :n AND partition = :p "
                "AND owner = :member AND epoch = :epoch RETURNING partition",
                self._params(p=partition, epoch=epoch),
            )
        return row is not None

    async def leave(self) -> None:
        """Release every lease of this member and end its membership."""
        async with self.sql.transaction() as tx:
            await tx.execute(
                "UPDATE worker_leases SET owner = NULL, expires_at = 0 "
                "WHERE name = :name AND owner = :member",
                self._params(),
            )
            await tx.execute(
                "DELETE FROM worker_members WHERE name = :name AND member = :member",
                self._params(),
            )

    async def check(self, tx: Tx, partition: int, epoch: int, position: int = 0) -> None:
        """In a batch's transaction that moves the checkpoint to ``position``: fail it with
        :class:`LeaseLost` unless this member still owns ``partition`` at ``epoch``, the
        group still has this partition count, and no resize's barrier is below
        ``position`` (see the module docstring)."""
        params = self._params(p=partition, epoch=epoch, pos=position)
        if _SERVER_FUNCTIONS.get(tx.dialect, False):
            # pipelined: the outcome arrives with the batch's COMMIT (no extra round trip)
            await tx.execute(
                "SELECT chronik_check_lease(:name, :n, :p, :member, :epoch, :pos)", params
            )
            return
        lease = f"{self.name}/p{partition}of{self.partitions}"
        group = await tx.fetchone(
            "SELECT partitions, resize_to, barrier FROM worker_groups WHERE name = :name", params
        )
        if (
            group is None
            or int(group[0]) != self.partitions
            or (group[1] is not None and position > int(group[2]))
        ):
            raise LeaseLost(lease, "the group is resizing or has another partition count")
        row = await tx.fetchone(
            "SELECT owner, epoch FROM worker_leases "
            "WHERE name = :name AND partitions = :n AND partition = :p",
            params,
        )
        if row is None or row[0] != self.member or int(row[1]) != epoch:
            owner, found = (row[0], row[1]) if row is not None else (None, 0)
            raise LeaseLost(
                lease, f"held epoch {epoch}; now owned by {owner or 'nobody'} at epoch {found}"
            )

    async def group(self) -> Group:
        """The group's partition count and the resize in progress, if any."""
        rows = await self.sql.query(
            "SELECT partitions, generation, resize_to, barrier FROM worker_groups "
            "WHERE name = :name",
            {"name": self.name},
        )
        if not rows:
            return Group(self.name, self.partitions, 1, None, None)
        n, generation, to, barrier = rows[0]
        return Group(self.name, int(n), int(generation), to, barrier)

    async def switch(self, checkpoint_base: str) -> bool:
        """Finish a resize once every old partition's checkpoint reached the barrier: the
        group gets the new count, each new partition's checkpoint starts at the barrier
        (one transaction). ``False``: nothing to switch yet."""
        async with self.sql.transaction() as tx:
            lock = _ROW_LOCK.get(tx.dialect, "")
            row = await tx.fetchone(
                "SELECT partitions, resize_to, barrier FROM worker_groups "
                f"WHERE name = :name{lock}",
                self._params(),
            )
            if row is None or row[1] is None:
                return False
            old, new, barrier = int(row[0]), int(row[1]), int(row[2])
            for p in range(old):
                done = await tx.get_checkpoint(partition_checkpoint(checkpoint_base, p, old))
                if (done or 0) < barrier:
                    return False
            for q in range(new):
                await tx.execute(
                    "INSERT INTO worker_leases (name, partitions, partition) "
                    "VALUES (:name, :n, :p) ON CONFLICT DO NOTHING",
                    {"name": self.name, "n": new, "p": q},
                )
                await tx.set_checkpoint(partition_checkpoint(checkpoint_base, q, new), barrier)
            await tx.execute(
                "UPDATE worker_groups SET partitions = :n, generation = generation + 1, "
                "resize_to = NULL, barrier = NULL WHERE name = :name",
                {"name": self.name, "n": new},
            )
        return True

    async def leases(self) -> list[Lease]:
        """Every lease of the group (any partition count), for status."""
        return await group_leases(self.sql, self.name)


async def group_leases(sql: SqlStore, name: str) -> list[Lease]:
    """The stored leases of group ``name``."""
    async with sql.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT name, partitions, partition, owner, epoch, "
            f"(expires_at - {_now(tx)}) / 1000000.0, "
            f"({_now(tx)} - acquired_at) / 1000000.0 FROM worker_leases "
            "WHERE name = :name ORDER BY partitions, partition",
            {"name": name},
        )
    return [
        Lease(str(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]), float(r[5]),
              None if r[6] is None else float(r[6]))
        for r in rows
    ]  # fmt: skip


async def resize(store: EventStore, name: str, partitions: int) -> Group:
    """Ask worker group ``name`` to change to ``partitions`` partitions, online.

    Drain and switch: the barrier is the head of the log now; the old partitions' owners
    apply up to it and stop, then a member switches the group to the new count, each new
    partition starting after the barrier. Nothing is lost or applied twice, and one stream's
    events stay in order (before the barrier in its old partition, after it in its new one).

    Raises:
        InvalidArgument: a bad count, an unknown group, an inbox's group, or a resize
            already in progress.
    """
    check_partitions(partitions)
    if name.startswith("inbox:"):
        raise InvalidArgument(
            "name",
            f"{name!r} is an inbox: its partitions are the partition tokens its publisher puts "
            "in the subjects (subject_partitions); change both and start a new inbox name",
        )
    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        # the row locked first (batches hold it shared): no batch is in flight while the
        # barrier is read, and every later one sees it
        lock = _ROW_LOCK.get(tx.dialect, "")
        row = await tx.fetchone(
            f"SELECT partitions, generation, resize_to FROM worker_groups WHERE name = :name{lock}",
            {"name": name},
        )
        head_row = await tx.fetchone("SELECT COALESCE(MAX(position), 0) FROM events")
        head = int(head_row[0]) if head_row is not None else 0
        if row is None:
            raise InvalidArgument("name", f"no worker group {name!r} in this store")
        if row[2] is not None:
            raise InvalidArgument("partitions", f"a resize to {row[2]} is in progress")
        if int(row[0]) == partitions:
            return Group(name, partitions, int(row[1]), None, None)
        await tx.execute(
            "UPDATE worker_groups SET resize_to = :n, barrier = :b WHERE name = :name",
            {"name": name, "n": partitions, "b": head},
        )
    return Group(name, int(row[0]), int(row[1]), partitions, head)
