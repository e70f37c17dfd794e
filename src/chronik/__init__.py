"""chronik: event sourcing for Python services.

From one process on an embedded SQLite file to a fleet of services on PostgreSQL::

    import chronik
    store = await chronik.connect("sqlite:///app.db")
    await store.append("order-42", [chronik.NewEvent("OrderPlaced", {"total": 10})],
                       expected_version=chronik.NO_STREAM)
"""

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
    BatchTooLarge,
    CheckpointMoved,
    ChronikError,
    ConcurrencyError,
    DuplicateEventId,
    InvalidExpectedVersion,
    InvalidStreamId,
    MigrationError,
    PayloadTooLarge,
    RegistryError,
    SchemaError,
    SerializationError,
    StoreUnavailable,
    StreamDeleted,
    StreamNotFound,
    UnknownEventType,
    UnsupportedStoreUrl,
    UpcastError,
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
from chronik.snapshots import (
    Adaptive,
    AnyOf,
    EveryN,
    OnDemand,
    Periodic,
    SnapshotConfig,
    Snapshotter,
)
from chronik.store import EventStore, StoreStats, StreamInfo, connect
from chronik.upcasting import Upcast

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Adaptive",
    "Aggregate",
    "App",
    "AnyOf",
    "AppendResult",
    "BatchTooLarge",
    "CheckpointMoved",
    "ChronikError",
    "CommandHandler",
    "ConcurrencyError",
    "Decider",
    "DuplicateEventId",
    "EveryN",
    "EventRegistry",
    "EventStore",
    "EventType",
    "HandleResult",
    "InvalidExpectedVersion",
    "InvalidStreamId",
    "Loaded",
    "MessageContext",
    "MigrationError",
    "NewEvent",
    "OnDemand",
    "PayloadTooLarge",
    "Periodic",
    "RecordedEvent",
    "RegistryError",
    "Repository",
    "SchemaError",
    "SnapshotConfig",
    "Snapshotter",
    "SerializationError",
    "StoreStats",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamInfo",
    "StreamNotFound",
    "StreamState",
    "UnknownEventType",
    "UnsupportedStoreUrl",
    "Upcast",
    "UpcastError",
    "__version__",
    "category_of",
    "connect",
    "context",
    "current_context",
    "default_registry",
    "event",
    "execute",
    "load_app",
    "load_state",
    "new_event_id",
    "validate_stream_id",
]
