"""The projection runner: one :class:`~chronik.workers.Follower` per projection.

It adds to the follower what projections need: batches applied by the projection kind's
:class:`~chronik.projections.kinds.Applier`, retries and dead letters for poison events,
``wait_for`` (read-your-writes in the same process), status and rebuilds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chronik.errors import (
    CheckpointMoved,
    ChronikError,
    LeaseLost,
    ProjectionPaused,
    StoreUnavailable,
    WaitTimeout,
)
from chronik.events import RecordedEvent
from chronik.projections.control import is_paused
from chronik.projections.kinds import AnyProjection, Applier
from chronik.projections.status import ProjectionStatus, projection_status, render_metrics
from chronik.store.protocol import EventStore
from chronik.store.truncations import truncation_summary
from chronik.subscriptions import Page, describe
from chronik.telemetry import event_log_fields, projection_batch
from chronik.workers import Follower, FollowerFailed, Worker

__all__ = ["ProjectionRunner", "Progress", "WaitTimeout"]

logger = logging.getLogger("chronik.projections")

_NOT_POISON = (
    StoreUnavailable,
    CheckpointMoved,
    ProjectionPaused,
    LeaseLost,
    asyncio.CancelledError,
)
"""Errors that say nothing about the events of a batch: passed on, never retried one by one."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Reported while catching up or rebuilding."""

    projection: str
    done: int
    total: int
    rate: float
    """events per second so far"""

    @property
    def eta_seconds(self) -> float | None:
        if self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


class ProjectionFollower(Follower):
    """Follows the log for one projection and applies it through the kind's applier."""

    kind = "projection"

    def __init__(
        self, store: EventStore, projection: AnyProjection, *, batch_size: int, poll_interval: float
    ) -> None:
        super().__init__(
            store,
            checkpoint_name=projection.checkpoint_name,
            categories=projection.categories,
            types=projection.stored_types,
            batch_size=batch_size,
            poll_interval=poll_interval,
        )
        self.projection = projection
        self.applier: Applier = projection.applier(store, projection)
        self._retired_checked = float("-inf")

    async def prepare(self) -> None:
        await self.applier.prepare()

    async def retired(self) -> bool:
        """Whether a blue/green switch made another version active (asked at most four
        times a second, before going idle: never between a wake-up and its read)."""
        now = time.monotonic()
        if now - self._retired_checked < 0.25:
            return False
        self._retired_checked = now
        active = await self.applier.active_version()
        return active is not None and active != self.projection.version

    async def commit(self, position: int) -> None:
        if position > self.checkpoint:
            await self.applier.apply([], self.checkpoint, position)
            await self.advance(position)

    async def handle_page(self, page: Page) -> int:
        # in the running task an operator's pause holds the page (checked in the batch's
        # transaction: no batch commits after the pause did); direct calls (catch_up,
        # rebuilds) are operator actions and are not held
        self.applier.honour_pause = self._task is not None and asyncio.current_task() is self._task
        while True:
            try:
                with projection_batch(self.projection.name, page.events):
                    return await self._apply(page)
            except ProjectionPaused:
                await self._hold_while_paused()

    async def _hold_while_paused(self) -> None:
        """Wait for resume (the flag asked four times a second); then the page is tried
        again, unless the checkpoint moved meanwhile (a rebuild, another runner)."""
        held_from = self.checkpoint
        await self._set_state("paused")
        logger.info("%s: paused by an operator; waiting for resume", self.projection.name)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.25)
            if self._stopping.is_set():
                # stop while paused: leave the page unapplied (the loop ends on the stop)
                raise CheckpointMoved(self.checkpoint_name, held_from)
            if not await is_paused(self.store, self.projection.name):
                break
        await self._set_state("running")
        logger.info("%s: resumed", self.projection.name)
        if await self.load_checkpoint() != held_from:
            raise CheckpointMoved(self.checkpoint_name, held_from, self.checkpoint)

    async def _apply(self, page: Page) -> int:
        events = page.events
        expected = self.checkpoint
        position = max(page.caught_up_to, events[-1].position if events else 0, expected)
        try:
            await self.applier.apply(events, expected, position)
        except _NOT_POISON:
            raise
        except Exception:
            # one event at a time, each with its retries, to isolate the poison
            applied = 0
            for event in events:
                if event.position > self.checkpoint:
                    applied += await self._apply_one(event)
            await self.commit(position)
            return applied
        await self.advance(position)
        return len(events)

    async def _apply_one(self, event: RecordedEvent) -> int:
        p = self.projection
        error: BaseException | None = None
        for attempt in range(1, p.max_attempts + 1):
            try:
                await self.applier.apply([event], self.checkpoint, event.position)
            except _NOT_POISON:
                raise
            except Exception as exc:
                error = exc
                self.last_error = describe(exc)
                if attempt < p.max_attempts:
                    await asyncio.sleep(p.retry_backoff * 2 ** (attempt - 1))
                continue
            await self.advance(event.position)
            return 1
        assert error is not None
        reason = (
            f"{event.stream_id}@{event.version} (position {event.position}, {event.type}): "
            f"{describe(error)}"
        )
        if p.on_poison == "stop":
            raise FollowerFailed(reason)
        logger.warning(
            "projection %s: dead letter after %d attempts: %s",
            p.name, p.max_attempts, reason, extra=event_log_fields(event),
        )  # fmt: skip
        async with self.store.transaction() as tx:
            await self.applier.check_fence(tx, event.position)
            name = self.applier.checkpoint_name
            await tx.add_dead_letter(name, event, describe(error), p.max_attempts)
            await tx.advance_checkpoint(name, self.checkpoint, event.position)
        self.dead_lettered += 1
        await self.advance(event.position)
        return 0


class ProjectionRunner(Worker):
    """Runs projections against a store: catch-up, live, retries, dead letters, lag."""

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[AnyProjection],
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
    ) -> None:
        names = [p.name for p in projections]
        if any(not n for n in names):
            raise ValueError("every projection needs a name")
        if len(set(names)) != len(names):
            raise ValueError(f"projection names must be unique: {names}")
        super().__init__()
        self.store = store
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._followers = {
            p.name: ProjectionFollower(store, p, batch_size=batch_size, poll_interval=poll_interval)
            for p in projections
        }

    # -- life cycle ---------------------------------------------------------------------

    def projection(self, name: str) -> AnyProjection:
        return self.follower(name).projection

    def follower(self, name: str) -> ProjectionFollower:
        """The follower that runs projection ``name``."""
        try:
            return self._followers[name]
        except KeyError:
            raise ChronikError(
                f"no projection named {name!r}; known: {sorted(self._followers)}"
            ) from None

    async def setup(self) -> None:
        """Create every projection's tables and load its checkpoint."""
        for follower in self._followers.values():
            await follower._ready()

    async def start(self) -> None:
        """Set up and start one task per projection (returns at once)."""
        for follower in self._followers.values():
            await follower.start()

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop gracefully: each task finishes its current batch (it commits or rolls back
        whole, never half); after ``grace`` seconds the stragglers are cancelled, which rolls
        their open transaction back."""
        await asyncio.gather(*(f.stop(grace=grace) for f in self._followers.values()))

    async def wait(self) -> None:
        await asyncio.gather(*(f.wait() for f in self._followers.values()))

    def failure(self) -> str | None:
        """Why projections stopped for good (a poison event with ``on_poison = "stop"``)."""
        reasons = [f"{name}: {why}" for name, f in self._followers.items() if (why := f.failure())]
        return "; ".join(reasons) or None

    async def catch_up(
        self, name: str | None = None, *, progress: Callable[[Progress], None] | None = None
    ) -> int:
        """Apply everything there is now (no waiting); returns how many events were applied
        (dead-lettered events are not counted: see ``follower(name).dead_lettered``)."""
        total = 0
        for follower in [self.follower(name)] if name else list(self._followers.values()):
            total += await self._catch_up(follower, progress)
        return total

    async def _catch_up(
        self, follower: ProjectionFollower, progress: Callable[[Progress], None] | None
    ) -> int:
        if progress is None:
            return await follower.catch_up()
        p = follower.projection
        todo = await self.store.count_events(
            after=follower.checkpoint, categories=p.categories, types=p.stored_types
        )
        started = time.monotonic()

        def report(done: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress(Progress(p.name, done, max(todo, done), done / elapsed))

        return await follower.catch_up(report)

    # -- read-your-writes ---------------------------------------------------------------

    async def wait_for(
        self, position: int, *, projection: str | None = None, timeout: float = 5.0
    ) -> None:
        """Return once the projection (or every projection) has applied ``position``.

        For a process that does not run the projection, see
        :func:`chronik.projections.wait_for_projection`.

        Raises:
            WaitTimeout: not reached within ``timeout`` seconds (nothing else changes).
        """
        followers = [self.follower(projection)] if projection else list(self._followers.values())
        deadline = time.monotonic() + timeout
        for f in followers:
            async with f.progress:
                while f.caught_up_to < position:
                    remaining = deadline - time.monotonic()
                    if f.state == "failed" or remaining <= 0:
                        raise WaitTimeout(f.projection.name, position, f.caught_up_to, timeout)
                    try:
                        await asyncio.wait_for(f.progress.wait(), remaining)
                    except TimeoutError:
                        raise WaitTimeout(
                            f.projection.name, position, f.caught_up_to, timeout
                        ) from None

    # -- status -------------------------------------------------------------------------

    async def status(self) -> list[ProjectionStatus]:
        """Checkpoint, head, lag and state of every projection."""
        return [
            await projection_status(self.store, f.projection, None if f.state == "idle" else f)
            for f in self._followers.values()
        ]

    async def metrics_text(self) -> str:
        """Prometheus text exposition of :meth:`status` (see docs/projections.md)."""
        return render_metrics(await self.status())

    # -- rebuild and dead letters ---------------------------------------------------------

    async def rebuild(
        self, name: str, *, progress: Callable[[Progress], None] | None = None
    ) -> int:
        """Drop and rebuild one projection's read model from position 0, in place.

        Its task (if running) is paused; readers see the read model fill up again. For a
        rebuild that keeps serving the old read model, use
        :func:`~chronik.projections.rebuild_blue_green`.
        """
        follower = self.follower(name)
        was_running = follower.state in ("running", "retrying")
        removed = await truncation_summary(self.store)
        if removed.events:
            logger.warning("rebuilding %s from the retained events: %s", name, removed.describe())
        await follower.stop()
        follower.state = "rebuilding"
        await follower.applier.reset()
        follower.checkpoint = follower.caught_up_to = 0
        try:
            applied = await self._catch_up(follower, progress)
        finally:
            follower.state = "idle"
        if was_running:
            await follower.start()
        return applied

    async def retry_dead_letters(self, name: str | None = None) -> tuple[int, int]:
        """Run dead-lettered events through their handlers again.

        Returns ``(fixed, still_failing)``. A fixed event's dead letter is deleted in the same
        transaction as its read-model writes (in-database projections); a failing one stays.
        """
        fixed = failing = 0
        for f in [self.follower(name)] if name else list(self._followers.values()):
            for letter in await self.store.dead_letters(f.checkpoint_name):
                event = await _event_at(self.store, letter.stream_id, letter.version)
                try:
                    await f.applier.redo(event, letter.id)
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    failing += 1
                    f.last_error = describe(exc)
                else:
                    fixed += 1
        return fixed, failing


async def _event_at(store: EventStore, stream_id: str, version: int) -> RecordedEvent:
    async for event in store.read_stream(stream_id, from_version=version, limit=1):
        if event.version == version:
            return event
    raise ChronikError(f"event {stream_id}@{version} of a dead letter is gone")
