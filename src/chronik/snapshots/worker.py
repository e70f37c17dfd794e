"""The background snapshotter, and the checker that compares snapshots with a replay.

:class:`Snapshotter` is a :class:`~chronik.workers.Follower` of the store (committed
events only, never past a transaction still running) and, for each stream whose
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
from collections.abc import Callable, Mapping
from typing import Any

from chronik.app import App
from chronik.codec import EventRegistry, default_registry
from chronik.decider import Decider
from chronik.errors import ChronikError, StoreUnavailable, StreamNotFound
from chronik.events import category_of
from chronik.snapshots.config import SnapshotConfig
from chronik.snapshots.load import stream_status, take_snapshot
from chronik.snapshots.store import Snapshot, SnapshotProblem, snapshot_store
from chronik.store.protocol import EventStore
from chronik.subscriptions import Page, describe
from chronik.workers import Follower

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


class Snapshotter(Follower):
    """Takes snapshots per policy off the request path, from committed events only.

    Args:
        store: the event store (snapshots go to its :func:`snapshot_store`).
        targets: category → ``(decider, SnapshotConfig)``; other categories are not read.
        registry: decodes the events.
        name: names the checkpoint (``snapshotter:NAME``); run one snapshotter per name.
        batch_size, poll_interval: as for a :class:`~chronik.workers.Follower`.
    """

    kind = "snapshotter"

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
        super().__init__(
            store,
            checkpoint_name=f"snapshotter:{name}",
            categories=sorted(targets),
            batch_size=batch_size,
            poll_interval=poll_interval,
        )
        self.targets = dict(targets)
        self.event_registry = registry
        self.name = name
        self.failed = 0
        """Snapshots that failed (logged, the stream skipped until its next events)."""

    @property
    def taken(self) -> int:
        """Snapshots written by this object."""
        return self.handled

    @classmethod
    def from_app(cls, store: EventStore, app: App, **options: Any) -> Snapshotter:
        """A snapshotter for every category ``app.extras["snapshots"]`` configures."""
        return cls(store, snapshot_targets(app), registry=app.registry, **options)

    async def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Handle everything committed now (no waiting); returns the snapshots written."""
        return await super().catch_up(progress)

    async def handle_page(self, page: Page) -> int:
        """Take the snapshots due for the streams of this page; returns how many."""
        highest: dict[str, int] = {}
        for event in page.events:
            if event.version > highest.get(event.stream_id, -1):
                highest[event.stream_id] = event.version
        snapshots = snapshot_store(self.store)
        taken_now = 0
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
                    registry=self.event_registry,
                    upto=version,
                )
            except (StoreUnavailable, asyncio.CancelledError):
                raise
            except Exception as exc:
                self.failed += 1
                self.last_error = f"{stream_id}@{version}: {describe(exc)}"
                logger.warning("snapshotter %s: %s", self.name, self.last_error)
                continue
            if taken is not None and taken.version == version:
                taken_now += 1
        return taken_now

    async def lag(self) -> int:
        """Events of the configured categories not looked at yet."""
        return await self.store.count_events(after=self.checkpoint, categories=sorted(self.targets))


# -- checking -------------------------------------------------------------------------------


async def verify_snapshots(
    store: EventStore, targets: Targets, *, registry: EventRegistry = default_registry
) -> list[SnapshotProblem]:
    """Every stored snapshot a loader must not trust, by stream id and version.

    First those that do not match their stream, of any category and state version
    (:meth:`~chronik.snapshots.SnapshotStore.invalid`: ahead of it, or another event at
    their version). Then each other snapshot of a target category and its current state
    version must decode and hold exactly the state a replay of its stream up to its version
    gives (``"undecodable"``, ``"differs"``). Snapshots of other state versions are not
    decoded (no loader uses them; ``prune --stale`` deletes them). Reads each stream once.
    """
    snapshots = snapshot_store(store)
    problems = await snapshots.invalid()
    unusable = {(p.stream_id, p.state_version, p.version) for p in problems}
    by_stream: dict[str, list[Snapshot]] = {}
    for snap in await snapshots.find():
        target = targets.get(snap.category)
        if (snap.stream_id, snap.state_version, snap.version) in unusable:
            continue
        if target is not None and snap.state_version == target[1].state_version:
            by_stream.setdefault(snap.stream_id, []).append(snap)
    for stream_id, snaps in sorted(by_stream.items()):
        decider, config = targets[category_of(stream_id)]
        wanted: dict[int, list[Snapshot]] = {}
        for snap in snaps:
            wanted.setdefault(snap.version, []).append(snap)
        state = decider.initial_state()
        try:
            async for recorded in store.read_stream(stream_id, limit=max(wanted) + 1):
                for event in registry.decode_many(recorded):  # upcast: may split or drop
                    state = decider.evolve(state, event)
                for snap in wanted.get(recorded.version, []):
                    problem = _compare(config, snap, state)
                    if problem is not None:
                        problems.append(problem)
        except StreamNotFound:
            pass
    problems.sort(key=lambda p: (p.stream_id, p.version, p.state_version))
    return problems


def _compare(config: SnapshotConfig, snap: Snapshot, state: Any) -> SnapshotProblem | None:
    try:
        stored = config.decode_record(snap.state)
    except Exception as exc:
        return SnapshotProblem(
            snap.stream_id,
            snap.version,
            snap.state_version,
            f"cannot be decoded: {describe(exc)}",
            "undecodable",
        )
    if stored != config.record(state):
        return SnapshotProblem(
            snap.stream_id,
            snap.version,
            snap.state_version,
            "differs from a replay of the stream to its version",
            "differs",
        )
    return None
