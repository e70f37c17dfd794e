"""Projections: read models kept up to date from the event log.

Three kinds, one runner:

- :class:`Projection` (in-database): ``handle(event, tx)`` writes read-model tables through
  the same transaction that saves the checkpoint, so each event is applied exactly once,
  also across crashes (SQLite and PostgreSQL).
- :class:`ExternalProjection`: ``handle(event)`` talks to something outside the database;
  the checkpoint is saved after the handler returns, so delivery is at-least-once and the
  handler uses ``event.event_id``/``event.position`` to be idempotent.
- inline: a :class:`Projection` passed to :func:`register_inline` runs inside every append's
  transaction: strongly consistent, and an append fails if it fails.

:class:`ProjectionRunner` owns polling, batching (many events per transaction while catching
up), retries, dead letters, lag, ``wait_for`` (read-your-writes), rebuilds and shutdown.

Example::

    class OrderCount(Projection):
        name = "order_count"
        event_types = ["OrderPlaced"]

        async def setup(self, tx: Tx) -> None:
            await tx.execute(f"CREATE TABLE IF NOT EXISTS {self.table('orders')} (n INTEGER)")

        async def handle(self, event: RecordedEvent, tx: Tx) -> None:
            await tx.execute(f"UPDATE {self.table('orders')} SET n = n + 1")

    runner = ProjectionRunner(store, [OrderCount()])
    await runner.start()
    result = await store.append(...)
    await runner.wait_for(result.position, timeout=2)
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from chronik.codec import EventRegistry
from chronik.context import context
from chronik.errors import CheckpointMoved, ChronikError, StoreUnavailable
from chronik.events import RecordedEvent, category_of
from chronik.store.protocol import EventStore, Tx
from chronik.subscriptions import Subscription
from chronik.telemetry import event_log_fields, projection_batch, projection_handler
from chronik.workers import Worker

__all__ = [
    "ExternalProjection",
    "Pending",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "Progress",
    "WaitTimeout",
    "fresh_or_pending",
    "rebuild_blue_green",
    "register_inline",
]

logger = logging.getLogger("chronik.projections")

# Crash tests only: CHRONIK_FAILPOINT="name:probability" kills this process with SIGKILL at the
# named point (before_handle, after_handle, after_commit) with that probability.
_FAILPOINT = os.environ.get("CHRONIK_FAILPOINT")


def _failpoint(name: str) -> None:
    if _FAILPOINT is None:
        return
    point, _, probability = _FAILPOINT.partition(":")
    if point == name and random.random() < float(probability or 1):
        os.kill(os.getpid(), signal.SIGKILL)


T = TypeVar("T")

State = Literal["idle", "running", "stopped", "failed", "rebuilding", "retired"]


class WaitTimeout(ChronikError, TimeoutError):
    """``wait_for`` gave up before the projection applied the position."""

    def __init__(self, projection: str, position: int, reached: int, timeout: float) -> None:
        self.projection = projection
        self.position = position
        self.reached = reached
        super().__init__(
            f"projection {projection!r} reached position {reached}, not {position}, "
            f"within {timeout}s"
        )


class _BaseProjection:
    name: str = ""
    """Stable name; the checkpoint is stored as ``name:vVERSION``."""
    version: int = 1
    """Bump it to build a new read model beside the old one (blue/green rebuild)."""
    event_types: Sequence[str] | None = None
    """The event types handled (``None``: all)."""
    categories: Sequence[str] | None = None
    """The stream categories handled (``None``: all)."""
    on_poison: Literal["skip", "stop"] = "skip"
    """After ``max_attempts`` failures: record a dead letter and go on, or stop."""
    max_attempts: int = 3
    retry_backoff: float = 0.05
    registry: EventRegistry | None = None
    """Upcast events through this registry before ``handle`` (``None``: events as stored).
    ``event_types`` then name current types (old names renamed into them are read too), and
    an event that cannot be upcast is a poison event (retried, then dead-lettered or stop)."""
    tolerant: bool = False
    """With ``registry``: hand over events of unknown types or newer versions raw."""

    @property
    def checkpoint_name(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def stored_types(self) -> Sequence[str] | None:
        """The stored types to read: ``event_types`` and the old names upcast into them."""
        if self.event_types is None or self.registry is None:
            return self.event_types
        return self.registry.stored_types(self.event_types)

    def accepts(self, event: RecordedEvent) -> bool:
        if self.event_types is not None and event.type not in self.event_types:
            return False
        return self.categories is None or category_of(event.stream_id) in self.categories

    def table(self, base: str) -> str:
        """The name of a read-model table of this version (``base_vN``)."""
        return f"{base}_v{self.version}"


class Projection(_BaseProjection):
    """An in-database read model: exactly-once through the checkpoint's transaction."""

    async def setup(self, tx: Tx) -> None:
        """Create this version's tables (must be idempotent: ``IF NOT EXISTS``)."""

    async def teardown(self, tx: Tx) -> None:
        """Drop this version's tables (used by rebuilds)."""

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement handle(event, tx)")


class ExternalProjection(_BaseProjection):
    """A read model outside the database: at-least-once, idempotent by event id."""

    async def setup(self) -> None:
        """Prepare the external side (optional)."""

    async def teardown(self) -> None:
        """Clear the external side (used by rebuilds)."""

    async def handle(self, event: RecordedEvent) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement handle(event)")


AnyProjection = Projection | ExternalProjection


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    version: int
    kind: str
    state: State
    checkpoint: int
    head: int
    lag_events: int
    lag_seconds: float
    dead_letters: int
    applied: int
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "state": self.state,
            "checkpoint": self.checkpoint,
            "head": self.head,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "dead_letters": self.dead_letters,
            "applied": self.applied,
            "last_error": self.last_error,
        }


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


@dataclass
class _Worker:
    projection: AnyProjection
    checkpoint: int = 0
    caught_up_to: int = 0
    state: State = "idle"
    applied: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None
    subscription: Subscription | None = None
    retired_checked: float = float("-inf")
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def reached(self) -> int:
        return max(self.checkpoint, self.caught_up_to)


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


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
        self.store = store
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._workers = {p.name: _Worker(p) for p in projections}
        self._stopping = asyncio.Event()

    # -- life cycle ---------------------------------------------------------------------

    def projection(self, name: str) -> AnyProjection:
        return self._worker(name).projection

    def _worker(self, name: str) -> _Worker:
        try:
            return self._workers[name]
        except KeyError:
            raise ChronikError(
                f"no projection named {name!r}; known: {sorted(self._workers)}"
            ) from None

    async def setup(self) -> None:
        """Create every projection's tables and load its checkpoint."""
        for worker in self._workers.values():
            await self._setup(worker)

    async def _setup(self, worker: _Worker) -> None:
        p = worker.projection
        if isinstance(p, Projection):
            async with self.store.transaction() as tx:
                await p.setup(tx)
                if await tx.get_active_version(p.name) is None:
                    await tx.set_active_version(p.name, p.version)
        else:
            await p.setup()
        stored = await self.store.get_checkpoint(p.checkpoint_name)
        worker.checkpoint = stored or 0
        worker.caught_up_to = worker.checkpoint

    async def start(self) -> None:
        """Set up and start one task per projection (returns at once)."""
        await self.setup()
        self._stopping.clear()
        for worker in self._workers.values():
            worker.state = "running"
            worker.task = asyncio.create_task(
                self._loop(worker), name=f"projection-{worker.projection.name}"
            )

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop gracefully: each task finishes its current batch (it commits or rolls back
        whole, never half); after ``grace`` seconds the stragglers are cancelled, which rolls
        their open transaction back."""
        self._stopping.set()
        for worker in self._workers.values():
            if worker.subscription is not None:
                worker.subscription.stop()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for worker in self._workers.values():
            worker.task = None
            if worker.state == "running":
                worker.state = "stopped"

    # -- processing ---------------------------------------------------------------------

    async def _loop(self, worker: _Worker) -> None:
        p = worker.projection
        sub = Subscription(
            self.store,
            after=worker.checkpoint,
            categories=p.categories,
            types=p.stored_types,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
        )
        worker.subscription = sub
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                if await self._retired(worker):
                    return
                page = await sub.read_page()
                if page.events or page.caught_up_to > worker.reached:
                    await self._apply_page(worker, page.events, page.caught_up_to)
                sub.advance(worker.checkpoint)
                backoff = 0.1
                if not page.more:
                    # the once-a-second retirement check before sleeping, not between a
                    # wake-up and the read: it is a round trip a live event would wait for
                    if await self._retired(worker, force=True):
                        return
                    await sub._wait()
            except asyncio.CancelledError:
                raise
            except CheckpointMoved:
                # another runner of this projection got there first: go on from its
                # checkpoint (and wake wait_for callers: that is progress too)
                moved_to = await self.store.get_checkpoint(p.checkpoint_name) or 0
                await self._advanced(worker, moved_to)
                sub = Subscription(
                    self.store,
                    after=worker.checkpoint,
                    categories=p.categories,
                    types=p.stored_types,
                    batch_size=self.batch_size,
                    poll_interval=self.poll_interval,
                )
                worker.subscription = sub
            except StoreUnavailable as exc:
                worker.last_error = _describe(exc)
                logger.warning("projection %s: store unavailable (%s); retrying", p.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except _Stop as exc:
                worker.state = "failed"
                worker.last_error = exc.reason
                logger.error("projection %s stopped: %s", p.name, exc.reason)
                async with worker.changed:
                    worker.changed.notify_all()
                return

    async def _retired(self, worker: _Worker, *, force: bool = False) -> bool:
        """Whether a blue/green switch made another version active (checked once a second
        while busy; ``force`` checks before going idle, when nothing waits on it)."""
        p = worker.projection
        if not isinstance(p, Projection):
            return False
        now = time.monotonic()
        if now - worker.retired_checked < (0.25 if force else 1.0):
            return False
        worker.retired_checked = now
        active = await self.store.get_active_version(p.name)
        if active is not None and active != p.version:
            worker.state = "retired"
            return True
        return False

    async def catch_up(
        self, name: str | None = None, *, progress: Callable[[Progress], None] | None = None
    ) -> int:
        """Apply everything available now (no waiting); returns how many events were applied."""
        total = 0
        for worker in [self._worker(name)] if name else list(self._workers.values()):
            if worker.state == "idle":
                await self._setup(worker)
            total += await self._catch_up(worker, progress)
        return total

    async def _catch_up(self, worker: _Worker, progress: Callable[[Progress], None] | None) -> int:
        p = worker.projection
        todo = await self.store.count_events(
            after=worker.checkpoint, categories=p.categories, types=p.stored_types
        )
        sub = Subscription(
            self.store,
            after=worker.checkpoint,
            categories=p.categories,
            types=p.stored_types,
            batch_size=self.batch_size,
        )
        started = time.monotonic()
        done = 0
        while True:
            page = await sub.read_page()
            if page.events or page.caught_up_to > worker.reached:
                await self._apply_page(worker, page.events, page.caught_up_to)
            sub.advance(worker.checkpoint)
            done += len(page.events)
            if progress is not None:
                elapsed = max(time.monotonic() - started, 1e-9)
                progress(Progress(p.name, done, max(todo, done), done / elapsed))
            if not page.more:
                return done

    async def _apply_page(
        self, worker: _Worker, events: list[RecordedEvent], caught_up_to: int
    ) -> None:
        with projection_batch(worker.projection.name, events):
            await self._apply_page_untraced(worker, events, caught_up_to)

    async def _apply_page_untraced(
        self, worker: _Worker, events: list[RecordedEvent], caught_up_to: int
    ) -> None:
        p = worker.projection
        expected = worker.checkpoint
        new_checkpoint = max(caught_up_to, events[-1].position if events else 0, expected)
        try:
            if isinstance(p, Projection):
                async with self.store.transaction() as tx:
                    _failpoint("before_handle")
                    for event in events:
                        with (
                            _event_scope(event),
                            projection_handler(p.name, event),
                        ):
                            for item in _upcast(p, event):
                                await p.handle(item, tx)
                    # checked with the writes: moved by another runner → all rolls back
                    await tx.advance_checkpoint(p.checkpoint_name, expected, new_checkpoint)
                    _failpoint("after_handle")
                _failpoint("after_commit")
            else:
                for event in events:
                    with (
                        _event_scope(event),
                        projection_handler(p.name, event),
                    ):
                        for item in _upcast(p, event):
                            await p.handle(item)
                async with self.store.transaction() as tx:
                    await tx.set_checkpoint(p.checkpoint_name, new_checkpoint)
        except (StoreUnavailable, CheckpointMoved, asyncio.CancelledError):
            raise
        except Exception:
            # one event at a time, each with its retries, to isolate the poison
            for event in events:
                if event.position > worker.checkpoint:
                    await self._apply_one(worker, event)
            if new_checkpoint > worker.checkpoint:
                async with self.store.transaction() as tx:
                    await tx.advance_checkpoint(
                        p.checkpoint_name, worker.checkpoint, new_checkpoint
                    )
        else:
            worker.applied += len(events)
        await self._advanced(worker, new_checkpoint)

    async def _apply_one(self, worker: _Worker, event: RecordedEvent) -> None:
        p = worker.projection
        error: BaseException | None = None
        for attempt in range(1, p.max_attempts + 1):
            try:
                with (
                    _event_scope(event),
                    projection_handler(p.name, event),
                ):
                    if isinstance(p, Projection):
                        async with self.store.transaction() as tx:
                            for item in _upcast(p, event):
                                await p.handle(item, tx)
                            await tx.advance_checkpoint(
                                p.checkpoint_name, worker.checkpoint, event.position
                            )
                    else:
                        for item in _upcast(p, event):
                            await p.handle(item)
                        async with self.store.transaction() as tx:
                            await tx.set_checkpoint(p.checkpoint_name, event.position)
            except (StoreUnavailable, CheckpointMoved, asyncio.CancelledError):
                raise
            except Exception as exc:
                error = exc
                worker.last_error = _describe(exc)
                if attempt < p.max_attempts:
                    await asyncio.sleep(p.retry_backoff * 2 ** (attempt - 1))
                continue
            worker.applied += 1
            await self._advanced(worker, event.position)
            return
        assert error is not None
        reason = (
            f"{event.stream_id}@{event.version} (position {event.position}, {event.type}): "
            f"{_describe(error)}"
        )
        if p.on_poison == "stop":
            raise _Stop(reason)
        logger.warning(
            "projection %s: dead letter after %d attempts: %s",
            p.name,
            p.max_attempts,
            reason,
            extra=event_log_fields(event),
        )
        async with self.store.transaction() as tx:
            await tx.add_dead_letter(p.checkpoint_name, event, _describe(error), p.max_attempts)
            await tx.advance_checkpoint(p.checkpoint_name, worker.checkpoint, event.position)
        await self._advanced(worker, event.position)

    async def _advanced(self, worker: _Worker, position: int) -> None:
        worker.checkpoint = max(worker.checkpoint, position)
        worker.caught_up_to = max(worker.caught_up_to, position)
        async with worker.changed:
            worker.changed.notify_all()

    # -- read-your-writes ---------------------------------------------------------------

    async def wait_for(
        self, position: int, *, projection: str | None = None, timeout: float = 5.0
    ) -> None:
        """Return once the projection (or every projection) has applied ``position``.

        Raises:
            WaitTimeout: not reached within ``timeout`` seconds (nothing else changes).
        """
        workers = [self._worker(projection)] if projection else list(self._workers.values())
        deadline = time.monotonic() + timeout
        for worker in workers:
            async with worker.changed:
                while worker.reached < position:
                    if worker.state == "failed":
                        raise WaitTimeout(worker.projection.name, position, worker.reached, timeout)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeout(worker.projection.name, position, worker.reached, timeout)
                    try:
                        await asyncio.wait_for(worker.changed.wait(), remaining)
                    except TimeoutError:
                        raise WaitTimeout(
                            worker.projection.name, position, worker.reached, timeout
                        ) from None

    # -- status -------------------------------------------------------------------------

    async def status(self) -> list[ProjectionStatus]:
        """Checkpoint, head, lag and state of every projection."""
        return [
            await _status(self.store, w.projection, None if w.state == "idle" else w)
            for w in self._workers.values()
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
        rebuild that keeps serving the old read model, use :func:`rebuild_blue_green`.
        """
        worker = self._worker(name)
        p = worker.projection
        was_running = worker.task is not None
        if worker.task is not None:
            worker.task.cancel()
            await asyncio.gather(worker.task, return_exceptions=True)
            worker.task = None
        worker.state = "rebuilding"
        if isinstance(p, Projection):
            async with self.store.transaction() as tx:
                await p.teardown(tx)
                await p.setup(tx)
                await tx.set_checkpoint(p.checkpoint_name, 0)
        else:
            await p.teardown()
            await p.setup()
            async with self.store.transaction() as tx:
                await tx.set_checkpoint(p.checkpoint_name, 0)
        worker.checkpoint = worker.caught_up_to = 0
        try:
            applied = await self._catch_up(worker, progress)
        finally:
            worker.state = "idle"
        if was_running and not self._stopping.is_set():
            worker.state = "running"
            worker.task = asyncio.create_task(self._loop(worker))
        return applied

    async def retry_dead_letters(self, name: str | None = None) -> tuple[int, int]:
        """Run dead-lettered events through their handlers again.

        Returns ``(fixed, still_failing)``. A fixed event's dead letter is deleted in the same
        transaction as its read-model writes; a failing one stays recorded.
        """
        fixed = failing = 0
        for worker in [self._worker(name)] if name else list(self._workers.values()):
            p = worker.projection
            for letter in await self.store.dead_letters(p.checkpoint_name):
                event = await _event_at(self.store, letter.stream_id, letter.version)
                try:
                    if isinstance(p, Projection):
                        async with self.store.transaction() as tx:
                            for item in _upcast(p, event):
                                await p.handle(item, tx)
                            await tx.delete_dead_letter(letter.id)
                    else:
                        for item in _upcast(p, event):
                            await p.handle(item)
                        async with self.store.transaction() as tx:
                            await tx.delete_dead_letter(letter.id)
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    failing += 1
                    worker.last_error = _describe(exc)
                else:
                    fixed += 1
        return fixed, failing


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _upcast(p: _BaseProjection, event: RecordedEvent) -> list[RecordedEvent]:
    """The events ``p`` handles for one stored event (upcast when it has a registry)."""
    if p.registry is None:
        return [event]
    return [e for e in p.registry.upcast(event, tolerant=p.tolerant) if p.accepts(e)]


def _event_scope(event: RecordedEvent) -> context:
    """The context a handler runs in: caused by ``event``, in its correlation."""
    event_id = event._event_id  # the stored text where the backend gave text: no UUID parse
    return context(
        causation_id=event_id if isinstance(event_id, str) else str(event_id),
        correlation_id=event.correlation_id or None,
    )


async def _event_at(store: EventStore, stream_id: str, version: int) -> RecordedEvent:
    async for event in store.read_stream(stream_id, from_version=version, limit=1):
        if event.version == version:
            return event
    raise ChronikError(f"event {stream_id}@{version} of a dead letter is gone")


async def _status(store: EventStore, p: AnyProjection, worker: _Worker | None) -> ProjectionStatus:
    checkpoint = (
        worker.reached
        if worker is not None
        else (await store.get_checkpoint(p.checkpoint_name) or 0)
    )
    head = await store.head_position()
    lag_events = await store.count_events(
        after=checkpoint, categories=p.categories, types=p.stored_types
    )
    lag_seconds = 0.0
    if lag_events:
        async for oldest in store.read_all(
            after=checkpoint, categories=p.categories, types=p.stored_types, limit=1
        ):
            lag_seconds = max((datetime.now(UTC) - oldest.recorded_at).total_seconds(), 0.0)
    letters = await store.dead_letters(p.checkpoint_name)
    state: State = worker.state if worker is not None else "stopped"
    return ProjectionStatus(
        name=p.name,
        version=p.version,
        kind="in-database" if isinstance(p, Projection) else "external",
        state=state,
        checkpoint=checkpoint,
        head=head,
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        dead_letters=len(letters),
        applied=worker.applied if worker is not None else 0,
        last_error=worker.last_error if worker is not None else None,
    )


def render_metrics(statuses: Sequence[ProjectionStatus]) -> str:
    """Prometheus text format; the names are documented in docs/projections.md."""
    lines: list[str] = []
    metrics = [
        ("chronik_projection_checkpoint", "gauge", "Last position applied", "checkpoint"),
        ("chronik_projection_head", "gauge", "Store head position seen", "head"),
        ("chronik_projection_lag_events", "gauge", "Matching events not applied yet", "lag_events"),
        (
            "chronik_projection_lag_seconds",
            "gauge",
            "Age of the oldest unapplied event",
            "lag_seconds",
        ),
        ("chronik_projection_dead_letters", "gauge", "Recorded dead letters", "dead_letters"),
        (
            "chronik_projection_events_applied_total",
            "counter",
            "Events applied by this process",
            "applied",
        ),
    ]
    for metric, kind, help_text, attr in metrics:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for s in statuses:
            lines.append(
                f'{metric}{{projection="{s.name}",version="{s.version}"}} {getattr(s, attr)}'
            )
    lines.append("# HELP chronik_projection_up 1 when running, 0 otherwise")
    lines.append("# TYPE chronik_projection_up gauge")
    for s in statuses:
        up = 1 if s.state == "running" else 0
        lines.append(f'chronik_projection_up{{projection="{s.name}",state="{s.state}"}} {up}')
    return "\n".join(lines) + "\n"


async def register_inline(store: EventStore, projection: Projection) -> None:
    """Update ``projection`` inside every later append's transaction on ``store``."""
    async with store.transaction() as tx:
        await projection.setup(tx)
    store.inline_projections.append(projection)


async def rebuild_blue_green(
    store: EventStore,
    old: Projection,
    new: Projection,
    *,
    batch_size: int = 500,
    progress: Callable[[Progress], None] | None = None,
) -> int:
    """Build ``new`` (same name, higher version) beside ``old``, switch, drop ``old``.

    ``old`` keeps serving while ``new`` catches up. The switch (the final events and the
    active version) is one transaction, so a reader that looks up the active version with
    ``store.get_active_version(name)`` sees either the old complete read model or the new
    complete one. A runner still running ``old`` retires itself when it sees the switch.
    """
    if new.name != old.name or new.version == old.version:
        raise ValueError("blue/green needs the same projection name and a different version")
    runner = ProjectionRunner(store, [new], batch_size=batch_size)
    worker = runner._worker(new.name)
    async with store.transaction() as tx:
        await new.setup(tx)
    worker.checkpoint = worker.caught_up_to = await store.get_checkpoint(new.checkpoint_name) or 0
    worker.state = "rebuilding"
    applied = await runner._catch_up(worker, progress)
    sub = Subscription(
        store,
        after=worker.checkpoint,
        categories=new.categories,
        types=new.stored_types,
        batch_size=batch_size,
    )
    while True:
        page = await sub.read_page()
        if page.more:  # more arrived meanwhile: keep catching up
            await runner._apply_page(worker, page.events, page.caught_up_to)
            sub.advance(worker.checkpoint)
            applied += len(page.events)
            continue
        async with store.transaction() as tx:
            for event in page.events:
                for item in _upcast(new, event):
                    await new.handle(item, tx)
            final = max(page.caught_up_to, worker.checkpoint)
            await tx.advance_checkpoint(new.checkpoint_name, worker.checkpoint, final)
            await tx.set_active_version(new.name, new.version)
        applied += len(page.events)
        break
    async with store.transaction() as tx:
        await old.teardown(tx)
    return applied


@dataclass(frozen=True, slots=True)
class Pending:
    """The read model has not caught up yet: show a pending state, retry after ``position``."""

    position: int
    projection: str | None = None


async def fresh_or_pending(
    runner: ProjectionRunner,
    position: int | None,
    read: Callable[[], Awaitable[T]],
    *,
    projection: str | None = None,
    timeout: float = 0.2,
) -> T | Pending:
    """For a web handler: the fresh read model, or :class:`Pending` if not caught up soon.

    ``position`` is what the caller's own write returned (``None``: nothing to wait for).
    """
    if position is not None:
        try:
            await runner.wait_for(position, projection=projection, timeout=timeout)
        except WaitTimeout:
            return Pending(position, projection)
    return await read()


async def _iter_statuses(
    store: EventStore, projections: Sequence[AnyProjection]
) -> AsyncIterator[ProjectionStatus]:
    for p in projections:
        yield await _status(store, p, None)
