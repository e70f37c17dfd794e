"""Zero-downtime migration: keep the copy following the source, then cut writers over.

- :class:`CopyFollower` is ``chronik migrate copy --follow``: after the catch-up it copies
  each new source event (same upcasting and transform) as the source's change signal
  wakes it, reporting the lag; a :class:`~chronik.workers.Worker`, so it starts, stops
  gracefully, retries a lost store with the one backoff, and resumes from the checkpoint
  after kill -9 as the copy does.
- :func:`cutover` fences the source (every write path there then fails with
  :class:`~chronik.errors.StoreFenced`, naming the new store), copies the last events,
  verifies, and marks the migration complete in both stores.
- :class:`MigratingStore` is the writers' side: it appends to the source until the fence,
  then waits for the completion mark and appends to the target; it measures the write
  pause (fence → first write accepted on the target).
- :func:`cancel_cutover` lifts the fence of a cut-over that did not complete;
  :func:`map_checkpoint` moves a projection's checkpoint from source to target positions.

Example::

    async with MigratingStore(old, new) as store:      # the application's writes
        await store.append("contact-1", [event], expected_version=3)

    report = await cutover(old, new, moved_to=new_url, registry=registry, upcast=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from chronik.codec import EventRegistry
from chronik.errors import MigrationError, StoreFenced, StoreUnavailable, StreamNotFound
from chronik.events import ANY, AppendResult, NewEvent, RecordedEvent
from chronik.migrate.copy import (
    COMPLETE_PREFIX,
    CUTOVER_HEAD_PREFIX,
    CopyProgress,
    Transform,
    Verification,
    _Copier,
)
from chronik.store.capabilities import require
from chronik.store.port import EventStore, Fence, Fencing
from chronik.store.urls import redact_url
from chronik.subscriptions import Backoff, describe
from chronik.workers import Worker

__all__ = [
    "CopyFollower",
    "CutoverReport",
    "MigratingStore",
    "Switch",
    "cancel_cutover",
    "cutover",
    "map_checkpoint",
]

LAG_COUNT_INTERVAL = 1.0
"""A follower counts the source events it has not copied yet at most this often (s)."""


class CopyFollower(Worker):
    """``chronik migrate copy --follow``: catch up, then copy each new source event.

    It wakes on the source's change signal (``change_marker``; at the latest after
    ``poll_interval``), copies what arrived in batches (each with the checkpoint, in one
    target transaction), and calls ``progress`` after each batch with the lag: how long
    the oldest event of the batch waited (``lag_seconds``) and how many source events are
    still to copy (``lag_events``). It ends by itself (state ``retired``) once the
    migration is cut over (:func:`cutover`, from any process), with
    :attr:`completed_at` set.

    Stopped, cancelled or killed at any moment, the target holds whole batches and their
    checkpoint: a new follower (or copy) goes on from there. A lost store is retried with
    :class:`~chronik.subscriptions.Backoff`.

    Raises (from :meth:`start`):
        MigrationComplete: the migration was cut over already.
        MigrationError: the target holds something else (see
            :func:`~chronik.migrate.copy_store`).
    """

    kind = "migrate-follow"

    def __init__(
        self,
        source: EventStore,
        target: EventStore,
        *,
        registry: EventRegistry | None = None,
        upcast: bool = False,
        transform: Transform | None = None,
        categories: Sequence[str] | None = None,
        tolerant: bool = False,
        batch_size: int = 5000,
        poll_interval: float = 1.0,
        progress: Callable[[CopyProgress], None] | None = None,
    ) -> None:
        super().__init__()
        self.name = "migrate-copy"
        self._copier = _Copier(
            source,
            target,
            registry=registry,
            upcast=upcast,
            transform=transform,
            categories=categories,
            tolerant=tolerant,
            batch_size=batch_size,
        )
        self.poll_interval = poll_interval
        self.progress = progress
        self.completed_at: int | None = None
        """The source position the migration was cut over at, once it was."""
        self.lag_events: int | None = None
        self._counted = 0.0

    @property
    def checkpoint(self) -> int:
        """The last source position copied."""
        return self._copier.after

    @property
    def copied(self) -> int:
        """Source events copied since the start."""
        return self._copier.read

    async def _starting(self) -> None:
        await self._copier.prepare()

    def _report(self, p: CopyProgress) -> None:
        if self.progress is not None:
            self.progress(dataclasses.replace(p, lag_events=self.lag_events))

    async def _main(self) -> None:
        copier = self._copier
        backoff = Backoff()
        while not self._stopping.is_set():
            marker = copier.source.change_marker()  # before the read: no change is missed
            try:
                copied = await copier.catch_up(self._report, stop=self._stopping)
                if copied == 0 and (done := await copier.complete()) is not None:
                    self.completed_at = done
                    await self._set_state("retired")
                    return
                if time.monotonic() - self._counted >= LAG_COUNT_INTERVAL:
                    self._counted = time.monotonic()
                    self.lag_events = await copier.source.count_events(
                        after=copier.after, categories=copier.cats
                    )
                    if copied or self.lag_events:
                        self._report(self._progress())
            except StoreFenced:
                raise  # the target is fenced: nothing a retry fixes
            except StoreUnavailable as exc:
                self.last_error = describe(exc)
                self.resumed += 1
                await self._set_state("retrying")
                await backoff.sleep(self._stopping)
                await self._set_state("running")
                continue
            backoff.reset()
            if copied:
                continue  # more may have arrived while writing
            await _first(marker, self._stopping, self.poll_interval)

    def _progress(self) -> CopyProgress:
        c = self._copier
        elapsed = max(time.monotonic() - c.started, 1e-9)
        return CopyProgress(
            c.read, c.read, c.read / elapsed, checkpoint=c.after, lag_events=self.lag_events
        )


async def _first(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Until ``a`` or ``b`` is set, or ``timeout`` seconds."""
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class CutoverReport:
    """What :func:`cutover` did."""

    fence: Fence
    """where and when the source was fenced"""
    checkpoint: int
    """the last source position copied (the copy is complete up to the fence)"""
    tail_read: int
    """source events copied after the fence was set"""
    tail_written: int
    fenced_seconds: float
    """from the fence to the completion mark: the shortest write pause writers can see"""
    verification: Verification | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "moved_to": self.fence.moved_to,
            "fenced_at_position": self.fence.position,
            "fenced_at": self.fence.fenced_at.isoformat(),
            "checkpoint": self.checkpoint,
            "tail_read": self.tail_read,
            "tail_written": self.tail_written,
            "fenced_seconds": round(self.fenced_seconds, 4),
            "verification": None if self.verification is None else self.verification.to_dict(),
        }


async def cutover(
    source: EventStore,
    target: EventStore,
    *,
    moved_to: str,
    registry: EventRegistry | None = None,
    upcast: bool = False,
    transform: Transform | None = None,
    categories: Sequence[str] | None = None,
    tolerant: bool = False,
    batch_size: int = 5000,
    verify: bool = True,
    progress: Callable[[CopyProgress], None] | None = None,
) -> CutoverReport:
    """Switch writers from ``source`` to ``target``: fence, copy the tail, verify, mark.

    1. Fences the source, naming ``moved_to`` (the target's URL; its password is hidden):
       from then on every append or import there fails with
       :class:`~chronik.errors.StoreFenced`, inside its own transaction (writes in flight
       finish first).
    2. Copies the events the follower had not copied yet, with the same options (a
       :class:`CopyFollower` still running interleaves safely and then retires).
    3. Verifies the target against the source (:func:`~chronik.migrate.verify_copy`).
    4. Marks the migration complete in both stores: :class:`MigratingStore` writers move to
       the target as soon as they see it.

    Run it again after a failure: it goes on (the fence stays; fencing again changes
    nothing). To give writes back to the source instead, :func:`cancel_cutover`.

    Raises:
        MigrationComplete: it was cut over already.
        MigrationError: the source is fenced towards another store, a transform failed,
            or the verification found differences (the source stays fenced; nothing is
            marked complete).
        MissingCapability: the source cannot be fenced.
    """
    fencing = require(source, Fencing)
    copier = _Copier(
        source,
        target,
        registry=registry,
        upcast=upcast,
        transform=transform,
        categories=categories,
        tolerant=tolerant,
        batch_size=batch_size,
    )
    await copier.prepare()
    moved_to = redact_url(moved_to)
    fence = await fencing.fence(moved_to)
    fenced = time.monotonic()
    if fence.moved_to != moved_to:
        raise MigrationError(
            f"the source is fenced towards {fence.moved_to}, not {moved_to}: finish or "
            f"cancel that migration first (chronik migrate unfence)"
        )
    before = copier.read, copier.written
    while await copier.catch_up(progress):
        pass
    if categories is None and copier.after < fence.position:
        raise MigrationError(
            f"the copy reached source position {copier.after}, short of the fence at "
            f"{fence.position}; the source stays fenced: run the cut-over again"
        )
    verification = await copier.verify() if verify else None
    if verification is not None and not verification.ok:
        detail = "; ".join(verification.differences[:3]) or "checksums differ"
        raise MigrationError(
            f"the copy does not match the source ({detail}); the source stays fenced and "
            f"nothing is marked complete: fix the cause and run the cut-over again, or give "
            f"writes back to the source with `chronik migrate unfence`"
        )
    head = await _copy_head(source, target, copier.after, copier.cats)
    # the source first: a cut-over that dies between the two is finished by running it again
    async with source.transaction() as tx:
        await tx.set_checkpoint(COMPLETE_PREFIX + copier.fingerprint, fence.position)
    async with target.transaction() as tx:
        await tx.set_checkpoint(CUTOVER_HEAD_PREFIX + copier.fingerprint, head)
        await tx.set_checkpoint(COMPLETE_PREFIX + copier.fingerprint, fence.position)
    return CutoverReport(
        fence,
        copier.after,
        copier.read - before[0],
        copier.written - before[1],
        time.monotonic() - fenced,
        verification,
    )


async def _copy_head(
    source: EventStore, target: EventStore, checkpoint: int, cats: list[str] | None
) -> int:
    """The target's last position written by the copy: its head, or (PostgreSQL's head
    stops at the visibility horizon, which another transaction in the cluster may hold
    back) the last event of the stream of the last source event copied, when higher."""
    head = await target.head_position()
    if checkpoint <= 0:
        return head
    last = [e async for e in source.read_all(after=checkpoint - 1, categories=cats, limit=1)]
    if last and last[0].position == checkpoint:
        with contextlib.suppress(StreamNotFound):
            async for event in target.read_stream(last[0].stream_id, backwards=True, limit=1):
                head = max(head, event.position)
    return head


async def cancel_cutover(source: EventStore, target: EventStore) -> Fence | None:
    """Lift the source's fence after a cut-over that did not complete (a failed check, a
    transform to fix first): writers go back to the source. Returns the fence lifted.

    Raises:
        MigrationError: the migration is complete: writers may have written into the
            target already, and lifting the fence would split the log in two.
    """
    fencing = require(source, Fencing)
    # the source's own mark too: a migration completed towards ANOTHER target must not be
    # undone by naming this one (the log would split in two)
    for store in (target, source):
        marks = await store.checkpoints()
        done = [v for k, v in marks.items() if k.startswith(COMPLETE_PREFIX)]
        if done:
            raise MigrationError(
                f"a migration from this source is complete (cut over at position {done[0]}): "
                "writers may have written into its target, so the source stays fenced"
            )
    fence = await fencing.fence_state()
    await fencing.unfence()
    return fence


async def _complete_mark(target: EventStore) -> int | None:
    marks = await target.checkpoints()
    return next((v for k, v in marks.items() if k.startswith(COMPLETE_PREFIX)), None)


async def map_checkpoint(
    source: EventStore,
    target: EventStore,
    position: int,
    *,
    categories: Sequence[str] | None = None,
) -> int:
    """The target position to resume a projection from, given its source checkpoint.

    Every target event copied from a source event at or below ``position`` is at or below
    the returned position, and every one copied from a later source event is above it (the
    copy writes in source order). Exact for copies that keep stream versions (a plain
    copy, or upcasting that neither splits nor drops); otherwise rebuild the projection on
    the target. ``categories``: those of the copy.

    Raises:
        MigrationError: the next source event is not in the target at its version (the
            copy is behind, or it renumbered versions).
    """
    cats = list(categories) if categories is not None else None
    following = [e async for e in source.read_all(after=position, categories=cats, limit=1)]
    if not following:
        head = await _cutover_head(target)
        return head if head is not None else await target.head_position()
    nxt = following[0]
    with contextlib.suppress(StreamNotFound):
        async for found in target.read_stream(nxt.stream_id, from_version=nxt.version, limit=1):
            if found.event_id == nxt.event_id:
                return found.position - 1
    raise MigrationError(
        f"source event {nxt.event_id} ({nxt.stream_id!r} version {nxt.version}) is not in "
        f"the target at that version: catch the copy up first, or rebuild the projection "
        f"on the target (the copy renumbered versions)"
    )


async def _cutover_head(target: EventStore) -> int | None:
    marks = await target.checkpoints()
    return next((v for k, v in marks.items() if k.startswith(CUTOVER_HEAD_PREFIX)), None)


@dataclass(frozen=True, slots=True)
class Switch:
    """When a :class:`MigratingStore` moved its writes to the target."""

    fenced_at: datetime
    """when the source was fenced (its database's clock)"""
    switched_at: datetime
    """when this wrapper saw the migration complete"""
    first_write_at: datetime | None = None
    """when its first append to the target was accepted"""

    @property
    def pause_seconds(self) -> float | None:
        """The write pause: from the fence to the first write accepted on the target."""
        if self.first_write_at is None:
            return None
        return (self.first_write_at - self.fenced_at).total_seconds()


class MigratingStore:
    """The writers' side of a migration: appends go to ``source`` until it is fenced, then
    to ``target``, at once and for good.

    An append refused by the fence (nothing of it was written) waits until the cut-over
    marks the migration complete in the target (at most ``switch_timeout`` seconds,
    checking every ``check_interval``), then runs again on the target, with the same
    event ids and expected version (the copy kept both). Reads follow the writes. If the
    cut-over does not complete in time, the append raises the
    :class:`~chronik.errors.StoreFenced` it got: retryable, nothing was written.
    :attr:`switch` says when it switched and the write pause it saw.

    A copy that renumbers versions (splits, drops) breaks expected versions taken from the
    source: the first append after the switch then fails with ``ConcurrencyError`` and the
    usual retry (load, decide, append) goes on from the target.

    Args:
        target_url: when given, the wrapper switches only if the fence names it.
    """

    def __init__(
        self,
        source: EventStore,
        target: EventStore,
        *,
        target_url: str | None = None,
        switch_timeout: float = 30.0,
        check_interval: float = 0.005,
    ) -> None:
        self.source = source
        self.target = target
        self.target_url = None if target_url is None else redact_url(target_url)
        self.switch_timeout = switch_timeout
        self.check_interval = check_interval
        self.switch: Switch | None = None
        self._switched = False
        self._lock = asyncio.Lock()
        self._owned: list[EventStore] = []

    @classmethod
    async def open(cls, source_url: str, target_url: str, **options: Any) -> MigratingStore:
        """Connect to both stores (closed with the wrapper) and find out which takes writes."""
        from chronik.store import connect

        source = await connect(source_url, create=False)
        try:
            target = await connect(target_url)
        except BaseException:
            await source.close()
            raise
        store = cls(source, target, target_url=target_url, **options)
        store._owned = [source, target]
        await store.refresh()
        return store

    async def refresh(self) -> None:
        """Switch now if the migration is complete already (a writer started after it)."""
        if not self._switched and await _complete_mark(self.target) is not None:
            fence = await require(self.source, Fencing).fence_state()
            now = datetime.now(UTC)
            self.switch = Switch(fence.fenced_at if fence else now, now)
            self._switched = True

    @property
    def switched(self) -> bool:
        return self._switched

    @property
    def current(self) -> EventStore:
        """The store that takes writes (and serves reads) now."""
        return self.target if self._switched else self.source

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int = ANY
    ) -> AppendResult:
        """Append to the store that takes writes (see the class)."""
        while not self._switched:
            try:
                return await self.source.append(
                    stream_id, events, expected_version=expected_version
                )
            except StoreFenced as fenced:
                if not await self._switch_after(fenced):
                    continue  # the fence was lifted (`migrate unfence`): the source again
        result = await self.target.append(stream_id, events, expected_version=expected_version)
        if self.switch is not None and self.switch.first_write_at is None:
            self.switch = dataclasses.replace(self.switch, first_write_at=datetime.now(UTC))
        return result

    async def _switch_after(self, fenced: StoreFenced) -> bool:
        """Wait (each caller at most ``switch_timeout``, concurrently: no lock held while
        waiting) until the migration is complete (``True``: write to the target) or the
        fence was lifted (``False``: write to the source again)."""
        if self.target_url is not None and fenced.moved_to != self.target_url:
            raise fenced  # moved elsewhere than this wrapper's target
        deadline = time.monotonic() + self.switch_timeout
        fencing = require(self.source, Fencing)
        while not self._switched and await _complete_mark(self.target) is None:
            if await fencing.fence_state() is None:
                return False
            if time.monotonic() >= deadline:
                raise fenced
            await asyncio.sleep(self.check_interval)
        async with self._lock:
            if not self._switched:
                fence = await fencing.fence_state()
                now = datetime.now(UTC)
                self.switch = Switch(fence.fenced_at if fence else now, now)
                self._switched = True
        return True

    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        return self.current.read_stream(
            stream_id, from_version=from_version, limit=limit, backwards=backwards
        )

    def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        return self.current.read_all(after=after, categories=categories, types=types, limit=limit)

    async def stream_version(self, stream_id: str) -> int | None:
        return await self.current.stream_version(stream_id)

    async def head_position(self) -> int:
        return await self.current.head_position()

    async def close(self) -> None:
        """Close the stores :meth:`open` connected."""
        owned, self._owned = self._owned, []
        for store in owned:
            with contextlib.suppress(Exception):
                await store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
