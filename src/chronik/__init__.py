"""chronik: event sourcing for Python services.

From one process on an embedded SQLite file to a fleet of services on PostgreSQL::

    import chronik
    store = await chronik.connect("sqlite:///app.db")
    await store.append("order-42", [chronik.NewEvent("OrderPlaced", {"total": 10})],
                       expected_version=chronik.NO_STREAM)

The names of the worker layer (``Snapshotter``, ...) load on first use, so ``import chronik``
starts no worker module (``tests/test_layers.py`` checks it).
"""

import importlib as _importlib
import typing as _typing

from chronik._version import __version__
from chronik.aggregate import (
    Aggregate,
    CommandHandler,
    HandleResult,
    Loaded,
    Repository,
    execute,
    load_state,
)
from chronik.app import App, load_app
from chronik.codec import EventRegistry, EventType, default_registry, event
from chronik.context import MessageContext, context, current_context
from chronik.decider import Decider
from chronik.errors import (
    AccessDenied,
    ArchiveCorrupted,
    ArchiveError,
    AuthenticationFailed,
    BackupCorrupted,
    BackupError,
    BatchTooLarge,
    CheckpointMoved,
    ChronikError,
    CiphertextError,
    CommandRejected,
    ConcurrencyError,
    DuplicateEventId,
    FollowerFailed,
    GroupExists,
    GroupNotFound,
    InvalidArgument,
    InvalidDecision,
    InvalidEvent,
    InvalidExpectedVersion,
    InvalidStreamId,
    InvalidSubject,
    KeyEncryptionKeyError,
    LeaseLost,
    LoadError,
    MigrationComplete,
    MigrationError,
    MissingCapability,
    MissingDependency,
    PayloadTooLarge,
    PolicyError,
    ProjectionPaused,
    RateLimited,
    RegistryError,
    SchemaError,
    SerializationError,
    StoreFenced,
    StoreNotFound,
    StoreUnavailable,
    StreamNotFound,
    TamperDetected,
    UnknownEventType,
    UnknownProjection,
    UnsupportedStoreUrl,
    UpcastError,
    WaitTimeout,
    WorkOwned,
)
from chronik.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
    StreamState,
    category_of,
    new_event_id,
    validate_stream_id,
)
from chronik.snapshots.config import SnapshotConfig
from chronik.snapshots.policies import Adaptive, AnyOf, EveryN, OnDemand, Periodic
from chronik.store import EventStore, StoreStats, StreamInfo, connect
from chronik.upcasting import Upcast

if _typing.TYPE_CHECKING:
    from chronik.projections import (
        ExternalProjection,
        Pending,
        Projection,
        ProjectionRunner,
        fresh_or_pending,
        wait_for_projection,
    )
    from chronik.snapshots.worker import Snapshotter
    from chronik.subscriptions import Page, Subscription
    from chronik.workers import Follower, Worker

_LAZY = {
    "ExternalProjection": "chronik.projections",
    "Follower": "chronik.workers",
    "Page": "chronik.subscriptions",
    "Pending": "chronik.projections",
    "Projection": "chronik.projections",
    "ProjectionRunner": "chronik.projections",
    "Snapshotter": "chronik.snapshots.worker",
    "Subscription": "chronik.subscriptions",
    "Worker": "chronik.workers",
    "fresh_or_pending": "chronik.projections",
    "wait_for_projection": "chronik.projections",
}
"""Names of the worker layer re-exported here: name -> the module that defines it."""

__all__ = [
    "ANY",
    "AccessDenied",
    "Adaptive",
    "Aggregate",
    "AnyOf",
    "App",
    "AppendResult",
    "ArchiveCorrupted",
    "ArchiveError",
    "AuthenticationFailed",
    "BackupCorrupted",
    "BackupError",
    "BatchTooLarge",
    "CiphertextError",
    "KeyEncryptionKeyError",
    "CheckpointMoved",
    "ChronikError",
    "CommandHandler",
    "CommandRejected",
    "ConcurrencyError",
    "Decider",
    "DuplicateEventId",
    "EventRegistry",
    "EventStore",
    "EventType",
    "EveryN",
    "ExternalProjection",
    "Follower",
    "FollowerFailed",
    "GroupExists",
    "GroupNotFound",
    "HandleResult",
    "InvalidArgument",
    "InvalidDecision",
    "InvalidEvent",
    "InvalidExpectedVersion",
    "InvalidStreamId",
    "InvalidSubject",
    "LeaseLost",
    "LoadError",
    "Loaded",
    "MessageContext",
    "MigrationComplete",
    "MigrationError",
    "MissingCapability",
    "MissingDependency",
    "NO_STREAM",
    "NewEvent",
    "OnDemand",
    "Page",
    "PayloadTooLarge",
    "PolicyError",
    "Pending",
    "Periodic",
    "Projection",
    "ProjectionRunner",
    "RecordedEvent",
    "ProjectionPaused",
    "RateLimited",
    "RegistryError",
    "Repository",
    "STREAM_EXISTS",
    "SchemaError",
    "SerializationError",
    "SnapshotConfig",
    "Snapshotter",
    "StoreFenced",
    "StoreNotFound",
    "StoreStats",
    "StoreUnavailable",
    "StreamInfo",
    "StreamNotFound",
    "StreamState",
    "Subscription",
    "TamperDetected",
    "UnknownEventType",
    "UnknownProjection",
    "UnsupportedStoreUrl",
    "Upcast",
    "UpcastError",
    "WaitTimeout",
    "WorkOwned",
    "Worker",
    "__version__",
    "category_of",
    "connect",
    "context",
    "current_context",
    "default_registry",
    "event",
    "execute",
    "fresh_or_pending",
    "load_app",
    "load_state",
    "new_event_id",
    "validate_stream_id",
    "wait_for_projection",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chronik' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
