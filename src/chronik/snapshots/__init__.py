"""Snapshots: a stream's state at one of its versions, so a load folds only the later events.

Snapshots are an optimisation only. A loader uses the newest snapshot whose *state version*
matches its code and folds the events after it; a snapshot of another state version is
ignored, and one that does not decode or no longer matches its stream (its stream has no
event at its version, or another one than it was taken after: a restored backup, a
re-copied stream) is skipped with a warning; the state is then rebuilt from an older
snapshot or from the events. So the state with or without snapshots is always the same.

- :class:`SnapshotConfig` says how one kind of stream is snapshotted: the state type (a
  dataclass, a ``msgspec.Struct`` or any type msgspec encodes), its state version (a hash of
  the type's fields, with an optional explicit version in front), the policy, and how many
  snapshots to keep per stream.
- Policies decide when: :class:`EveryN`, :class:`Periodic`, :class:`OnDemand`,
  :class:`Adaptive`, and :class:`AnyOf` to combine them (:mod:`.policies`).
- :func:`snapshot_store` gives the :class:`SnapshotStore` of an event store (a table beside
  the events on SQLite and PostgreSQL, a dict for ``memory://``; :mod:`.store`).
- :class:`Snapshotter` takes them in the background, from committed events only, and
  :func:`verify_snapshots` checks every stored snapshot against its stream and a replay
  (:mod:`.worker`); :meth:`SnapshotStore.invalid` finds those that no longer match their
  stream without one.

Example::

    snapshots = SnapshotConfig(Account, policy=EveryN(100))
    handler = CommandHandler(store, account_decider, snapshots=snapshots)
    await handler.handle("account-1", Deposit(10))   # snapshots every 100 events
    await handler.take_snapshot("account-1")          # on demand
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from chronik.snapshots.config import SnapshotConfig, stale_versions, state_version_of
from chronik.snapshots.load import (
    load_from_snapshot,
    snapshot_after_append,
    snapshot_loaded,
    stream_status,
    take_snapshot,
)
from chronik.snapshots.policies import (
    Adaptive,
    AnyOf,
    EveryN,
    OnDemand,
    Periodic,
    SnapshotPolicy,
    StreamStatus,
)
from chronik.snapshots.store import (
    MemorySnapshotStore,
    Snapshot,
    SnapshotProblem,
    SnapshotStats,
    SnapshotStore,
    SqlSnapshotStore,
    snapshot_store,
)

if TYPE_CHECKING:
    from chronik.snapshots.worker import (
        Snapshotter,
        Targets,
        snapshot_targets,
        verify_snapshots,
    )

_WORKER_NAMES = {
    "Snapshotter",
    "Targets",
    "snapshot_targets",
    "verify_snapshots",
}

__all__ = [
    "Adaptive",
    "AnyOf",
    "EveryN",
    "MemorySnapshotStore",
    "OnDemand",
    "Periodic",
    "Snapshot",
    "SnapshotConfig",
    "SnapshotPolicy",
    "SnapshotProblem",
    "SnapshotStats",
    "SnapshotStore",
    "Snapshotter",
    "SqlSnapshotStore",
    "StreamStatus",
    "Targets",
    "load_from_snapshot",
    "snapshot_after_append",
    "snapshot_loaded",
    "snapshot_store",
    "snapshot_targets",
    "stale_versions",
    "state_version_of",
    "stream_status",
    "take_snapshot",
    "verify_snapshots",
]


def __getattr__(name: str) -> object:
    # The worker layer loads on first use, so ``import chronik`` (which needs the policies
    # and the snapshot store) starts no worker module (tests/test_layers.py).
    if name in _WORKER_NAMES:
        value = getattr(importlib.import_module("chronik.snapshots.worker"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
