"""The kinds of projection, each with its own way to apply events (its :class:`Applier`).

- :class:`Projection` (in-database): ``handle(event, tx)`` writes read-model tables through
  the transaction that also moves the checkpoint, so each event is applied exactly once,
  also across crashes and with several runners racing (SQLite and PostgreSQL).
- :class:`ExternalProjection`: ``handle(event)`` talks to something outside the database;
  the checkpoint is saved after the handler returns: at-least-once, so the handler uses
  ``event.event_id``/``event.position`` to be idempotent.

A new kind is one class with an ``applier`` and one :class:`Applier` subclass; the runner
asks the applier and never the kind.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from chronik.context import context
from chronik.errors import ProjectionPaused
from chronik.events import RecordedEvent, category_of
from chronik.projections.control import check_unpaused, is_paused
from chronik.telemetry import projection_handler

if TYPE_CHECKING:
    from chronik.codec import EventRegistry
    from chronik.store.protocol import EventStore, Tx

__all__ = ["Applier", "ExternalProjection", "Projection"]

# Crash tests only: CHRONIK_FAILPOINT="name:probability" kills this process with SIGKILL at the
# named point (before_handle, after_handle, after_commit) with that probability.
_FAILPOINT = os.environ.get("CHRONIK_FAILPOINT")


def failpoint(name: str) -> None:
    if _FAILPOINT is None:
        return
    point, _, probability = _FAILPOINT.partition(":")
    if point == name and random.random() < float(probability or 1):
        os.kill(os.getpid(), signal.SIGKILL)


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
    applier: ClassVar[type[Applier]]

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

    def events_to_handle(self, event: RecordedEvent) -> list[RecordedEvent]:
        """The events this projection handles for one stored event (upcast when it has a
        registry; may raise, which makes the event a poison event)."""
        if self.registry is None:
            return [event]
        return [e for e in self.registry.upcast(event, tolerant=self.tolerant) if self.accepts(e)]


class Applier:
    """How one kind of projection applies events; the runner's only view of a kind."""

    kind: ClassVar[str]
    """Shown in statuses."""
    exactly_once: ClassVar[bool]
    """Whether the read model's writes commit with the checkpoint."""

    def __init__(self, store: EventStore, projection: _BaseProjection) -> None:
        self.store = store
        self.projection = projection
        self.honour_pause = False
        """Set by the runner's task: :meth:`apply` raises
        :class:`~chronik.projections.control.ProjectionPaused` (before handling anything)
        while an operator has paused the projection."""
        self.checkpoint_name = projection.checkpoint_name
        """The checkpoint moved (a partition's own, ``name:vN/p3of8``, when partitioned)."""
        self.fence: Callable[[Tx, int], Awaitable[None]] | None = None
        """Set by a partitioned runner: checks the partition's lease first thing in every
        transaction that moves the checkpoint (a stale owner's batch rolls back whole,
        :class:`~chronik.errors.LeaseLost`); see :mod:`chronik.scaleout`."""

    async def check_fence(self, tx: Tx, position: int) -> None:
        """Run :attr:`fence` in ``tx``, which moves the checkpoint to ``position`` (nothing
        when not partitioned)."""
        if self.fence is not None:
            await self.fence(tx, position)

    async def prepare(self) -> None:
        """Create the read model's tables (idempotent)."""
        raise NotImplementedError

    async def reset(self) -> None:
        """Drop and create the read model, and set the checkpoint back to 0."""
        raise NotImplementedError

    async def apply(self, events: Sequence[RecordedEvent], expected: int, position: int) -> None:
        """Handle ``events`` and move the checkpoint from ``expected`` to ``position``."""
        raise NotImplementedError

    async def redo(self, event: RecordedEvent, dead_letter_id: int) -> None:
        """Handle a dead-lettered event again and delete its dead letter."""
        raise NotImplementedError

    async def active_version(self) -> int | None:
        """The version readers should use (``None``: the kind does not switch versions)."""
        return None

    async def _handle(self, event: RecordedEvent, tx: Tx | None) -> None:
        raise NotImplementedError

    async def _handle_all(self, events: Sequence[RecordedEvent], tx: Tx | None) -> None:
        name = self.projection.name
        for event in events:
            with event_scope(event), projection_handler(name, event):
                await self._handle(event, tx)


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


class InDatabase(Applier):
    kind = "in-database"
    exactly_once = True
    projection: Projection

    async def prepare(self) -> None:
        p = self.projection
        async with self.store.transaction() as tx:
            await p.setup(tx)
            if await tx.get_active_version(p.name) is None:
                await tx.set_active_version(p.name, p.version)

    async def reset(self) -> None:
        p = self.projection
        async with self.store.transaction() as tx:
            await p.teardown(tx)
            await p.setup(tx)
            await tx.set_checkpoint(self.checkpoint_name, 0)

    async def apply(self, events: Sequence[RecordedEvent], expected: int, position: int) -> None:
        async with self.store.transaction() as tx:
            await self.check_fence(tx, position)  # partitioned: a stale lease rolls all back
            failpoint("before_handle")
            await self._handle_all(events, tx)
            if events and self.honour_pause:  # paused: all rolls back (ProjectionPaused)
                await check_unpaused(tx, self.projection.name)
            # checked with the writes: moved by another runner → all rolls back
            await tx.advance_checkpoint(self.checkpoint_name, expected, position)
            failpoint("after_handle")
        failpoint("after_commit")

    async def redo(self, event: RecordedEvent, dead_letter_id: int) -> None:
        async with self.store.transaction() as tx:
            await self._handle_all([event], tx)
            await tx.delete_dead_letter(dead_letter_id)

    async def active_version(self) -> int | None:
        return await self.store.get_active_version(self.projection.name)

    async def _handle(self, event: RecordedEvent, tx: Tx | None) -> None:
        assert tx is not None
        for item in self.projection.events_to_handle(event):
            await self.projection.handle(item, tx)


class External(Applier):
    kind = "external"
    exactly_once = False
    projection: ExternalProjection

    async def prepare(self) -> None:
        await self.projection.setup()
        p = self.projection
        async with self.store.transaction() as tx:  # readers elsewhere wait by this
            if await tx.get_active_version(p.name) is None:
                await tx.set_active_version(p.name, p.version)

    async def active_version(self) -> int | None:
        return await self.store.get_active_version(self.projection.name)

    async def reset(self) -> None:
        await self.projection.teardown()
        await self.projection.setup()
        async with self.store.transaction() as tx:
            await tx.set_checkpoint(self.checkpoint_name, 0)

    async def apply(self, events: Sequence[RecordedEvent], expected: int, position: int) -> None:
        if events and self.honour_pause and await is_paused(self.store, self.projection.name):
            raise ProjectionPaused(self.projection.name)
        await self._handle_all(events, None)
        async with self.store.transaction() as tx:
            await self.check_fence(tx, position)
            await tx.set_checkpoint(self.checkpoint_name, position)

    async def redo(self, event: RecordedEvent, dead_letter_id: int) -> None:
        await self._handle_all([event], None)
        async with self.store.transaction() as tx:
            await tx.delete_dead_letter(dead_letter_id)

    async def _handle(self, event: RecordedEvent, tx: Tx | None) -> None:
        for item in self.projection.events_to_handle(event):
            await self.projection.handle(item)


Projection.applier = InDatabase
ExternalProjection.applier = External

AnyProjection = Projection | ExternalProjection


def event_scope(event: RecordedEvent) -> context:
    """The context a handler runs in: caused by ``event``, in its correlation."""
    event_id = event._event_id  # the stored text where the backend gave text: no UUID parse
    return context(
        causation_id=event_id if isinstance(event_id, str) else str(event_id),
        correlation_id=event.correlation_id or None,
    )
