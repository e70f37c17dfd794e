"""Loading from a snapshot, taking one, and evaluating the policy around commands."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chronik.codec import EventRegistry, default_registry
from chronik.errors import StreamNotFound
from chronik.snapshots.config import SnapshotConfig
from chronik.snapshots.policies import StreamStatus
from chronik.snapshots.store import Snapshot, SnapshotStore, _Track, snapshot_store
from chronik.store.protocol import EventStore
from chronik.store.truncations import stream_truncated_through

__all__ = [
    "load_from_snapshot",
    "snapshot_after_append",
    "snapshot_loaded",
    "stream_status",
    "take_snapshot",
]

logger = logging.getLogger("chronik.snapshots")


async def load_from_snapshot(
    store: EventStore,
    stream_id: str,
    evolve: Callable[[Any, Any], Any],
    initial_state: Callable[[], Any],
    config: SnapshotConfig,
    *,
    registry: EventRegistry = default_registry,
    upto: int | None = None,
    reading: bool = True,
) -> tuple[Any, int, Snapshot | None]:
    """The state of ``stream_id`` from its newest usable snapshot plus the later events.

    Returns ``(state, version, snapshot used or None)``; ``version`` is ``-1`` for a stream
    without events. ``upto`` stops at that version. ``reading`` counts a full load as a read
    of the stream for the policies (:attr:`StreamStatus.reads`); the load a command makes
    before it writes passes ``False``.

    A snapshot is used only if it decodes and its stream still has, at the snapshot's
    version, the event it was taken after (read in the same query as the events after it).
    One that fails is skipped with a warning (once per stream and process, then at DEBUG) and
    the next older snapshot of the state version is tried, down to the first event. A
    snapshot of another state version is ignored (logged at INFO once).
    """
    snapshots = snapshot_store(store)
    track = snapshots._tracks.get(config.state_version, stream_id)
    found = await snapshots.newest(stream_id, config.state_version, max_version=upto)
    if found is not None and found.state_version != config.state_version:
        log = logger.debug if track.warned else logger.info
        track.warned = True
        log(
            "ignoring snapshot of %s at version %d: state version %s, the code has %s; "
            "replaying from events",
            stream_id,
            found.version,
            found.state_version,
            config.state_version,
        )
        found = None
    for _ in range(_MAX_SKIPPED):
        if found is None:
            break
        try:
            state = config.decode(found.state, initial_state)
        except Exception as exc:
            reason = f"cannot decode it ({type(exc).__name__}: {exc})"
        else:
            folded = await _fold(store, stream_id, state, found, evolve, registry, upto)
            if not isinstance(folded, str):
                return _loaded(track, folded, found, upto, reading)
            reason = folded
        _skip(track, found, reason)
        found = await snapshots.load_latest(
            stream_id, config.state_version, max_version=found.version - 1
        )
    folded = await _fold(store, stream_id, initial_state(), None, evolve, registry, upto)
    assert not isinstance(folded, str)  # nothing to match without a snapshot
    return _loaded(track, folded, None, upto, reading)


_MAX_SKIPPED = 8
"""Unusable snapshots tried per load before it folds from the first event."""


def _skip(track: _Track, snapshot: Snapshot, reason: str) -> None:
    key = (snapshot.version, reason)
    log = logger.debug if key in track.rejected else logger.warning
    if len(track.rejected) < 16:
        track.rejected.add(key)
    log(
        "ignoring snapshot of %s at version %d (state version %s): %s; loading without it "
        "(chronik snapshots prune --invalid deletes such rows)",
        snapshot.stream_id,
        snapshot.version,
        snapshot.state_version,
        reason,
    )


async def _fold(
    store: EventStore,
    stream_id: str,
    state: Any,
    snapshot: Snapshot | None,
    evolve: Callable[[Any, Any], Any],
    registry: EventRegistry,
    upto: int | None,
) -> tuple[Any, int, int, float] | str:
    """Fold the events after ``snapshot`` (all, without one) into ``state``: returns
    ``(state, version, events folded, ms per event)``, or why the snapshot does not match
    the stream. The read starts *at* the snapshot's version: its first row is the event the
    snapshot was taken after, checked, not folded."""
    start = 0 if snapshot is None else snapshot.version
    version = -1 if snapshot is None else snapshot.version
    limit = None if upto is None else upto - start + 1
    decode = registry.decode
    many = registry.decode_many if registry.has_upcasters else None  # may split or drop
    folded = 0
    first: float | None = None
    why: str | None = None if snapshot is None else snapshot.mismatch(None)  # until read
    reading = store.read_stream(stream_id, from_version=start, limit=limit)
    try:
        async for recorded in reading:
            if first is None:
                first = time.perf_counter()
                if snapshot is not None:
                    if recorded.version == start + 1 and await _anchor_removed(
                        store, stream_id, start
                    ):  # retention removed the event it was taken after, nothing later
                        why = None
                    else:
                        why = snapshot.mismatch(
                            recorded.event_id if recorded.version == start else None
                        )
                        if why is not None:
                            break
                        continue
            if many is None:
                state = evolve(state, decode(recorded))
            else:
                for event in many(recorded):
                    state = evolve(state, event)
            version = recorded.version
            folded += 1
    except StreamNotFound:
        pass
    finally:
        closing = getattr(reading, "aclose", None)
        if closing is not None:  # stopped early: give its connection back
            await closing()
    if why is not None:
        return why
    # time from the first row on: the per-event cost, without the query's fixed cost (which
    # a snapshot does not save)
    ms = 0.0 if first is None or not folded else (time.perf_counter() - first) * 1000 / folded
    return state, version, folded, ms


async def _anchor_removed(store: EventStore, stream_id: str, version: int) -> bool:
    """Whether retention removed ``stream_id``'s events up to ``version`` (recorded)."""
    return await stream_truncated_through(store, stream_id) >= version


def _loaded(
    track: _Track,
    folded: tuple[Any, int, int, float],
    used: Snapshot | None,
    upto: int | None,
    reading: bool,
) -> tuple[Any, int, Snapshot | None]:
    state, version, count, ms_per_event = folded
    if count:
        track.ms_per_event = ms_per_event
    if upto is None:  # a full load: what policies see of this stream
        track.known = True
        track.snapshot_version = used.version if used is not None else -1
        track.snapshot_at = used.created_at.timestamp() if used is not None else None
        if reading:
            track.reads += 1
    return state, version, used


async def stream_status(
    snapshots: SnapshotStore, config: SnapshotConfig, stream_id: str, version: int
) -> StreamStatus:
    """What the policy sees of ``stream_id`` at ``version`` (the newest snapshot is looked up
    once per stream and process; later this process's loads and saves keep it current)."""
    track = snapshots._tracks.get(config.state_version, stream_id)
    if not track.known or track.snapshot_version > version:
        # one above ``version`` is ahead of the stream (a restore): no load can use it
        found = await snapshots.load_latest(stream_id, config.state_version, max_version=version)
        track.known = True
        track.snapshot_version = found.version if found is not None else -1
        track.snapshot_at = found.created_at.timestamp() if found is not None else None
    events_since = version - track.snapshot_version
    return StreamStatus(
        stream_id=stream_id,
        version=version,
        snapshot_version=track.snapshot_version,
        snapshot_age=None
        if track.snapshot_at is None
        else max(config.clock() - track.snapshot_at, 0.0),
        replay_ms=track.ms_per_event * max(events_since, 0),
        reads=track.reads,
        writes=track.writes,
    )


async def _save_state(
    store: EventStore, config: SnapshotConfig, stream_id: str, version: int, state: Any
) -> Snapshot | None:
    raw = config.encode(state)
    try:
        same = config.decode_record(raw) == config.record(state)
    except Exception as exc:
        same, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "the decoded state is not equal to it"
    if not same:
        logger.warning(
            "not snapshotting %s at version %d: its state does not survive a JSON round trip "
            "(%s); loads replay from events",
            stream_id,
            version,
            why,
        )
        return None
    created = datetime.fromtimestamp(config.clock(), UTC)
    snapshot = Snapshot(stream_id, version, config.state_version, raw, created)
    snapshots = snapshot_store(store)
    snapshot = await snapshots.save(snapshot, keep=config.keep)
    track = snapshots._tracks.get(config.state_version, stream_id)
    track.known = True
    track.snapshot_version = version
    track.snapshot_at = created.timestamp()
    track.reads = track.writes = 0
    return snapshot


async def take_snapshot(
    store: EventStore,
    stream_id: str,
    *,
    evolve: Callable[[Any, Any], Any],
    initial_state: Callable[[], Any],
    config: SnapshotConfig,
    registry: EventRegistry = default_registry,
    upto: int | None = None,
) -> Snapshot | None:
    """Snapshot ``stream_id`` now (at its committed version, or at ``upto``).

    The state is loaded from the store (the newest usable snapshot plus the committed events
    after it), never taken from memory, so the snapshot equals a replay to its version.
    Returns the snapshot (an existing one when it is already at that version), or ``None``
    when the state does not survive the JSON round trip.

    Raises:
        StreamNotFound: the stream has no events.
    """
    state, version, used = await load_from_snapshot(
        store,
        stream_id,
        evolve,
        initial_state,
        config,
        registry=registry,
        upto=upto,
        reading=False,
    )
    if version < 0:
        raise StreamNotFound(stream_id)
    if used is not None and used.version == version:
        return used
    return await _save_state(store, config, stream_id, version, state)


async def snapshot_loaded(
    store: EventStore, config: SnapshotConfig, stream_id: str, version: int, state: Any
) -> Snapshot | None:
    """After a load: save the loaded state if the policy says a snapshot is due.

    The loaded state was folded from committed events, so it is saved as it is. Never
    raises: a failure is logged and the caller goes on without a snapshot.
    """
    if not config.inline or version < 0:
        return None
    try:
        snapshots = snapshot_store(store)
        if not config.policy.due(await stream_status(snapshots, config, stream_id, version)):
            return None
        return await _save_state(store, config, stream_id, version, state)
    except Exception as exc:
        logger.warning("snapshot of %s at version %d failed: %s", stream_id, version, exc)
        return None


async def snapshot_after_append(
    store: EventStore,
    config: SnapshotConfig,
    stream_id: str,
    version: int,
    *,
    evolve: Callable[[Any, Any], Any],
    initial_state: Callable[[], Any],
    registry: EventRegistry = default_registry,
) -> Snapshot | None:
    """After an append: if the policy says a snapshot is due, take one from the store.

    Counts the command as a write of the stream (:attr:`StreamStatus.writes`). The state is
    loaded again (snapshot + the few events after it) rather than taken from the command's
    in-memory result, so only what was committed and reads back is snapshotted. Never
    raises: a failure is logged and the command's result stands.
    """
    snapshots = snapshot_store(store)
    snapshots._tracks.get(config.state_version, stream_id).writes += 1
    if not config.inline:
        return None
    try:
        if not config.policy.due(await stream_status(snapshots, config, stream_id, version)):
            return None
        return await take_snapshot(
            store,
            stream_id,
            evolve=evolve,
            initial_state=initial_state,
            config=config,
            registry=registry,
        )
    except Exception as exc:
        logger.warning("snapshot of %s after version %d failed: %s", stream_id, version, exc)
        return None
