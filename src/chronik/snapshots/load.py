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
from chronik.snapshots.store import Snapshot, SnapshotStore, snapshot_store
from chronik.store.protocol import EventStore

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
) -> tuple[Any, int, Snapshot | None]:
    """The state of ``stream_id`` from its newest usable snapshot plus the later events.

    Returns ``(state, version, snapshot used or None)``; ``version`` is ``-1`` for a stream
    without events. ``upto`` stops at that version. A snapshot of another state version, or
    one that does not decode, is ignored (logged with the reason): the state is then folded
    from the first event.
    """
    snapshots = snapshot_store(store)
    track = snapshots._tracks.get(config.state_version, stream_id)
    found = await snapshots.newest(stream_id, config.state_version, max_version=upto)
    used: Snapshot | None = None
    state: Any = None
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
    elif found is not None:
        try:
            state = config.decode(found.state, initial_state)
            used = found
        except Exception as exc:
            logger.warning(
                "ignoring snapshot of %s at version %d (state version %s): cannot decode it "
                "(%s: %s); replaying from events",
                stream_id,
                found.version,
                found.state_version,
                type(exc).__name__,
                exc,
            )
    if used is None:
        state = initial_state()
        version = -1
    else:
        version = used.version
    started = time.perf_counter()
    replayed = 0
    limit = None if upto is None else upto - version
    if limit is None or limit > 0:
        decode = registry.decode
        many = registry.decode_many if registry.has_upcasters else None  # may split or drop
        try:
            async for recorded in store.read_stream(
                stream_id, from_version=version + 1, limit=limit
            ):
                if many is None:
                    state = evolve(state, decode(recorded))
                else:
                    for event in many(recorded):
                        state = evolve(state, event)
                version = recorded.version
                replayed += 1
        except StreamNotFound:
            pass
    elapsed_ms = (time.perf_counter() - started) * 1000
    if replayed:
        track.ms_per_event = elapsed_ms / replayed
    if upto is None:  # a full load: what policies see of this stream
        track.known = True
        track.snapshot_version = used.version if used is not None else -1
        track.snapshot_at = used.created_at.timestamp() if used is not None else None
        track.reads += 1
    return state, version, used


async def stream_status(
    snapshots: SnapshotStore, config: SnapshotConfig, stream_id: str, version: int
) -> StreamStatus:
    """What the policy sees of ``stream_id`` at ``version`` (the newest snapshot is looked up
    once per stream and process; later this process's loads and saves keep it current)."""
    track = snapshots._tracks.get(config.state_version, stream_id)
    if not track.known:
        found = await snapshots.load_latest(stream_id, config.state_version)
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
    await snapshots.save(snapshot, keep=config.keep)
    track = snapshots._tracks.get(config.state_version, stream_id)
    track.known = True
    track.snapshot_version = version
    track.snapshot_at = created.timestamp()
    track.reads = 0
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
        store, stream_id, evolve, initial_state, config, registry=registry, upto=upto
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

    The state is loaded again (snapshot + the few events after it) rather than taken from the
    command's in-memory result, so only what was committed and reads back is snapshotted.
    Never raises: a failure is logged and the command's result stands.
    """
    if not config.inline:
        return None
    try:
        snapshots = snapshot_store(store)
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
