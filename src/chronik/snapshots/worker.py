"""The background snapshotter, and the checker that compares snapshots with a replay.

:class:`Snapshotter` follows the store with a :class:`~chronik.subscriptions.Subscription`
(committed events only, never past a transaction still running) and, for each stream whose
events it read, asks the category's policy whether a snapshot is due. It takes it at the
highest version it read, by loading the state from the store up to that version: so a
snapshot's version is always a committed version, and its state a replay to it. It keeps a
checkpoint (``snapshotter:NAME``) like a projection; killed and restarted it goes on from
there, and snapshotting the same version twice only replaces a row with an equal one.

Example::

    snapshotter = Snapshotter(store, {"device": (device_decider, device_snapshots)})
    async with snapshotter:          # start ... stop gracefully
        ...
    # or: Snapshotter.from_app(store, app), chronik snapshots run MODULE:OBJECT
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chronik.app import App
from chronik.codec import EventRegistry, default_registry
from chronik.decider import Decider
from chronik.errors import ChronikError, StoreUnavailable, StreamNotFound
from chronik.events import category_of
from chronik.snapshots.config import SnapshotConfig
from chronik.snapshots.load import stream_status, take_snapshot
from chronik.snapshots.store import snapshot_store
from chronik.store.protocol import EventStore
from chronik.subscriptions import Page, Subscription
from chronik.workers import Worker

__all__ = ["SnapshotProblem", "Snapshotter", "Targets", "snapshot_targets", "verify_snapshots"]

logger = logging.getLogger("chronik.snapshots")

Targets = Mapping[str, tuple[Decider[Any, Any, Any], SnapshotConfig]]
"""Stream category → the decider that folds its streams and its snapshot configuration."""


def snapshot_targets(app: App) -> dict[str, tuple[Decider[Any, Any, Any], SnapshotConfig]]:
    """The snapshot targets of an :class:`~chronik.App`: ``app.extras["snapshots"]`` maps
    categories to :class:`SnapshotConfig`, each folded by ``app.deciders[category]``.

    Raises:
        ChronikError: the app configures no snapshots, or a category has no decider.
    """
    configs = app.extras.get("snapshots")
    if not configs:
        raise ChronikError(
            'the app configures no snapshots: set App(extras={"snapshots": '
            "{category: SnapshotConfig(...)}})"
        )
    targets: dict[str, tuple[Decider[Any, Any, Any], SnapshotConfig]] = {}
    for category, config in configs.items():
        if not isinstance(config, SnapshotConfig):
            raise ChronikError(f"snapshots of {category!r}: {config!r} is not a SnapshotConfig")
        decider = app.deciders.get(category)
        if decider is None:
            raise ChronikError(f"snapshots of {category!r}: the app has no decider for it")
        targets[category] = (decider, config)
    return targets


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class Snapshotter(Worker):
    """Takes snapshots per policy off the request path, from committed events only.

    Args:
        store: the event store (snapshots go to its :func:`snapshot_store`).
        targets: category → ``(decider, SnapshotConfig)``; other categories are not read.
        registry: decodes the events.
        name: names the checkpoint (``snapshotter:NAME``); run one snapshotter per name.
        batch_size, poll_interval: as for a :class:`~chronik.subscriptions.Subscription`.
    """

    def __init__(
        self,
        store: EventStore,
        targets: Targets,
        *,
        registry: EventRegistry = default_registry,
        name: str = "default",
        batch_size: int = 500,
        poll_interval: float = 0.5,
    ) -> None:
        if not targets:
            raise ValueError("a Snapshotter needs at least one category to snapshot")
        self.store = store
        self.targets = dict(targets)
        self.registry = registry
        self.name = name
        self.checkpoint_name = f"snapshotter:{name}"
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.checkpoint = 0
        self.taken = 0
        """Snapshots written by this object."""
        self.failed = 0
        """Snapshots that failed (logged, the stream skipped until its next events)."""
        self.last_error: str | None = None
        self.state = "idle"
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._stopping = asyncio.Event()

    @classmethod
    def from_app(cls, store: EventStore, app: App, **options: Any) -> Snapshotter:
        """A snapshotter for every category ``app.extras["snapshots"]`` configures."""
        return cls(store, snapshot_targets(app), registry=app.registry, **options)

    def _subscribe(self) -> Subscription:
        sub = Subscription(
            self.store,
            after=self.checkpoint,
            categories=sorted(self.targets),
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
        )
        self._subscription = sub
        return sub

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the checkpoint and start following the store (returns at once)."""
        self.checkpoint = await self.store.get_checkpoint(self.checkpoint_name) or 0
        self._stopping.clear()
        self.state = "running"
        self._task = asyncio.create_task(self._loop(), name=f"snapshotter-{self.name}")

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop after the current page (its snapshots and checkpoint are written or not at
        all); after ``grace`` seconds the task is cancelled."""
        self._stopping.set()
        if self._subscription is not None:
            self._subscription.stop()
        if self._task is not None:
            _, late = await asyncio.wait({self._task}, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.state == "running":
            self.state = "stopped"

    # -- work -------------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Handle everything committed now (no waiting); returns the snapshots written."""
        self.checkpoint = await self.store.get_checkpoint(self.checkpoint_name) or 0
        sub = self._subscribe()
        before = self.taken
        while True:
            page = await sub.read_page()
            await self._handle(page)
            sub.advance(self.checkpoint)
            if len(page.events) < self.batch_size:
                return self.taken - before

    async def _loop(self) -> None:
        sub = self._subscribe()
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                page = await sub.read_page()
                await self._handle(page)
                sub.advance(self.checkpoint)
                backoff = 0.1
                if len(page.events) < self.batch_size:
                    await sub._wait()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                self.last_error = _describe(exc)
                logger.warning("snapshotter %s: store unavailable (%s); retrying", self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _handle(self, page: Page) -> None:
        highest: dict[str, int] = {}
        for event in page.events:
            if event.version > highest.get(event.stream_id, -1):
                highest[event.stream_id] = event.version
        snapshots = snapshot_store(self.store)
        for stream_id, version in highest.items():
            target = self.targets.get(category_of(stream_id))
            if target is None:
                continue
            decider, config = target
            try:
                status = await stream_status(snapshots, config, stream_id, version)
                if not config.policy.due(status):
                    continue
                taken = await take_snapshot(
                    self.store,
                    stream_id,
                    evolve=decider.evolve,
                    initial_state=decider.initial_state,
                    config=config,
                    registry=self.registry,
                    upto=version,
                )
            except (StoreUnavailable, asyncio.CancelledError):
                raise
            except Exception as exc:
                self.failed += 1
                self.last_error = f"{stream_id}@{version}: {_describe(exc)}"
                logger.warning("snapshotter %s: %s", self.name, self.last_error)
                continue
            if taken is not None and taken.version == version:
                self.taken += 1
        new_checkpoint = max(page.caught_up_to, self.checkpoint)
        if new_checkpoint > self.checkpoint:
            async with self.store.transaction() as tx:
                await tx.set_checkpoint(self.checkpoint_name, new_checkpoint)
            self.checkpoint = new_checkpoint

    async def lag(self) -> int:
        """Events of the configured categories not looked at yet."""
        return await self.store.count_events(after=self.checkpoint, categories=sorted(self.targets))


# -- checking -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotProblem:
    """A stored snapshot that a loader must not trust."""

    stream_id: str
    version: int
    state_version: str
    reason: str


async def verify_snapshots(
    store: EventStore, targets: Targets, *, registry: EventRegistry = default_registry
) -> list[SnapshotProblem]:
    """Check every snapshot of the targets' categories against the events.

    A snapshot of the current state version must be at a committed version of its stream
    and hold exactly the state a replay of the stream up to that version gives. Snapshots of
    other state versions are not checked (no loader uses them). Reads each stream once.
    """
    problems: list[SnapshotProblem] = []
    by_stream: dict[str, list[Any]] = {}
    for snap in await snapshot_store(store).find():
        target = targets.get(snap.category)
        if target is not None and snap.state_version == target[1].state_version:
            by_stream.setdefault(snap.stream_id, []).append(snap)
    for stream_id, snaps in sorted(by_stream.items()):
        decider, config = targets[category_of(stream_id)]
        snaps.sort(key=lambda s: s.version)
        committed = await store.stream_version(stream_id)
        wanted: dict[int, list[Any]] = {}
        for snap in snaps:
            if committed is None or snap.version > committed:
                problems.append(
                    SnapshotProblem(
                        stream_id,
                        snap.version,
                        snap.state_version,
                        f"ahead of the committed stream (version {committed})",
                    )
                )
            else:
                wanted.setdefault(snap.version, []).append(snap)
        if not wanted:
            continue
        state = decider.initial_state()
        last = max(wanted)
        try:
            async for recorded in store.read_stream(stream_id, limit=last + 1):
                for event in registry.decode_many(recorded):  # upcast: may split or drop
                    state = decider.evolve(state, event)
                for snap in wanted.get(recorded.version, []):
                    problem = _compare(config, snap, state)
                    if problem is not None:
                        problems.append(
                            SnapshotProblem(stream_id, snap.version, snap.state_version, problem)
                        )
        except StreamNotFound:
            pass
    return problems


def _compare(config: SnapshotConfig, snap: Any, state: Any) -> str | None:
    try:
        stored = config.decode_record(snap.state)
    except Exception as exc:
        return f"cannot be decoded: {_describe(exc)}"
    if stored != config.record(state):
        return "differs from a replay of the stream to its version"
    return None
