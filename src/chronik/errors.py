"""Every error chronik raises, in one tree.

::

    ChronikError
    ├── ConcurrencyError            expected_version did not match; nothing written
    ├── CheckpointMoved             another worker moved a checkpoint; the transaction rolled back
    ├── DuplicateEventId            an event id is stored already, elsewhere or with other content
    ├── StreamNotFound (LookupError)
    ├── InvalidStreamId (ValueError)
    ├── InvalidExpectedVersion (ValueError)
    ├── BatchTooLarge (ValueError)  more events in one append than a backend can number
    ├── PayloadTooLarge (ValueError)
    ├── UnknownEventType (LookupError)
    ├── SerializationError (ValueError)
    │   └── UpcastError             a stored event cannot be upcast (failing or missing step,
    │                               or a schema version newer than the code)
    ├── RegistryError (ValueError)  an event type declared twice or malformed; broken chains
    ├── StoreUnavailable (ConnectionError)
    ├── UnsupportedStoreUrl (ValueError)
    ├── MissingCapability (TypeError)
    │                               a store lacks a capability asked of it (SQL on memory://);
    │                               says which backends have it
    ├── MigrationError              an offline copy stopped (failing transform, failed check)
    ├── SchemaError                 the database schema is newer than this code
    ├── LoadError                   ``MODULE:OBJECT`` names no module, no attribute, or the
    │                               wrong kind of object (``--app``, ``--transform``, ...)
    ├── WaitTimeout (TimeoutError)  a projection did not reach a position in time
    ├── FollowerFailed              a worker stopped for good (a poison event with "stop")
    ├── CommandRejected             a saga's command was refused by its aggregate
    └── InvalidSubject (ValueError) a NATS subject token would be empty or a wildcard

Driver exceptions never leak: each backend raises one of these ``from`` the driver's error.
The core knows no HTTP status codes; the HTTP layer maps them. This module imports nothing
of chronik: it is the bottom of the layers (see docs/architecture.md).
"""

from __future__ import annotations

__all__ = [
    "BatchTooLarge",
    "CheckpointMoved",
    "ChronikError",
    "CommandRejected",
    "ConcurrencyError",
    "DuplicateEventId",
    "FollowerFailed",
    "InvalidExpectedVersion",
    "InvalidStreamId",
    "InvalidSubject",
    "LoadError",
    "MigrationError",
    "MissingCapability",
    "PayloadTooLarge",
    "RegistryError",
    "SchemaError",
    "SerializationError",
    "StoreUnavailable",
    "StreamNotFound",
    "UnknownEventType",
    "UnsupportedStoreUrl",
    "UpcastError",
    "WaitTimeout",
]


class ChronikError(Exception):
    """Base class of every error chronik raises on purpose."""


def _describe_version(version: int | None) -> str:
    # The stream states of chronik.events.StreamState, spelled here so that errors imports
    # nothing of chronik (events imports errors).
    if version is None or version == -1:
        return "NO_STREAM"
    if version == -2:
        return "ANY"
    if version == -4:
        return "STREAM_EXISTS"
    return str(version)


class ConcurrencyError(ChronikError):
    """The stream was not at the expected version; the append wrote nothing.

    ``actual`` is the stream's version when the conflict was detected (``-1``: no stream).
    """

    def __init__(self, stream_id: str, expected: int, actual: int | None) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r}: expected version {_describe_version(expected)}, "
            f"actual {_describe_version(actual)}"
        )


class CheckpointMoved(ChronikError):
    """``Tx.advance_checkpoint`` found the checkpoint elsewhere than expected: another worker
    of the same subscription moved it. The transaction rolls back (on PostgreSQL the error
    arrives at COMMIT); re-read the checkpoint and go on from there."""

    def __init__(self, name: str, expected: int | None = None, actual: int | None = None) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        where = "" if actual is None else f" is at {actual}"
        super().__init__(f"checkpoint {name!r}{where}, not at {expected} as expected")


class DuplicateEventId(ChronikError):
    """An event id in the append is already stored at another place or with other content."""

    def __init__(self, stream_id: str, event_id: object, reason: str) -> None:
        self.stream_id = stream_id
        self.event_id = event_id
        self.reason = reason
        super().__init__(f"stream {stream_id!r}: event id {event_id} {reason}")


class StreamNotFound(ChronikError, LookupError):
    """The stream has no events."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} not found")


class InvalidStreamId(ChronikError, ValueError):
    """A stream id breaks the grammar (see :func:`chronik.validate_stream_id`)."""

    def __init__(self, stream_id: object, reason: str) -> None:
        self.stream_id = stream_id
        self.reason = reason
        super().__init__(f"invalid stream id {stream_id!r}: {reason}")


class InvalidExpectedVersion(ChronikError, ValueError):
    """``expected_version`` is neither a version >= 0 nor one of the stream states."""


class BatchTooLarge(ChronikError, ValueError):
    """One append holds more events than the backend can give positions to."""


class PayloadTooLarge(ChronikError, ValueError):
    """An encoded event is larger than the store's ``max_event_bytes``; nothing written."""

    def __init__(self, stream_id: str, index: int, event_type: str, size: int, limit: int) -> None:
        self.stream_id = stream_id
        self.index = index
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(
            f"stream {stream_id!r}: event #{index} ({event_type}) is {size} bytes, "
            f"over the limit of {limit} bytes"
        )


class UnknownEventType(ChronikError, LookupError):
    """A stored or given event type is not registered."""

    def __init__(
        self,
        event_type: str,
        *,
        stream_id: str | None = None,
        version: int | None = None,
        schema_version: int | None = None,
    ) -> None:
        self.event_type = event_type
        self.stream_id = stream_id
        self.version = version
        self.schema_version = schema_version
        where = f" (stream {stream_id!r} version {version})" if stream_id is not None else ""
        if schema_version is not None:
            where += f" at schema version {schema_version}"
        super().__init__(f"unknown event type {event_type!r}{where}")


class SerializationError(ChronikError, ValueError):
    """An event could not be encoded, or stored data could not be decoded into its type."""

    def __init__(
        self,
        message: str,
        *,
        event_type: str | None = None,
        stream_id: str | None = None,
        version: int | None = None,
        schema_version: int | None = None,
    ) -> None:
        self.event_type = event_type
        self.stream_id = stream_id
        self.version = version
        self.schema_version = schema_version
        parts = []
        if stream_id is not None:
            parts.append(f"stream {stream_id!r} version {version}")
        if event_type is not None:
            parts.append(f"type {event_type!r} v{schema_version}")
        where = f" ({', '.join(parts)})" if parts else ""
        super().__init__(f"{message}{where}")


class UpcastError(SerializationError):
    """A stored event could not be brought to the shape the code knows.

    An upcaster raised or returned something it did not declare, a step of its chain is
    missing, or the stored schema version is newer than the registered one. The message
    names the stream, the event's version, the stored type and its schema version.
    """


class MigrationError(ChronikError):
    """``chronik migrate copy`` stopped: a transform failed on an event, the target holds
    other events, or the final check found a difference. What was copied stays consistent
    and the copy resumes from its checkpoint."""


class RegistryError(ChronikError, ValueError):
    """An event type was registered twice under one name, or is not a dataclass/Struct, or
    the upcaster chains are broken (a gap, a cycle, two upcasters for one step)."""


class StoreUnavailable(ChronikError, ConnectionError):
    """The database could not be reached or failed in a way that says nothing about data."""


class UnsupportedStoreUrl(ChronikError, ValueError):
    """``chronik.connect`` got a URL whose scheme it does not know."""


class MissingCapability(ChronikError, TypeError):
    """A store was asked for a capability its backend does not have (see
    ``chronik.store.require``): an SQL projection, a saga or the inbox on ``memory://``, say.

    ``capability`` names it (``"SqlStore"``), ``store`` the store's class, ``backends`` the
    URL schemes of the backends that have it.
    """

    def __init__(self, capability: str, store: str, backends: list[str], what: str = "") -> None:
        self.capability = capability
        self.store = store
        self.backends = backends
        have = ", ".join(f"{b}://" for b in backends) or "no backend of this install"
        detail = f" ({what})" if what else ""
        super().__init__(
            f"{store} does not have the {capability} capability{detail}; stores that have "
            f"it: {have}"
        )


class SchemaError(ChronikError):
    """The database schema is newer than this version of chronik knows how to use."""


class LoadError(ChronikError):
    """``MODULE:OBJECT`` could not be loaded: the text is not of that form, the module is not
    found, it has no such attribute, or the object is not of the kind asked for.

    ``spec`` is the text given; ``what`` names what it was for (``"--app"``, say).
    """

    def __init__(self, spec: str, what: str, reason: str) -> None:
        self.spec = spec
        self.what = what
        self.reason = reason
        super().__init__(f"{what} {spec!r}: {reason}")


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


class FollowerFailed(ChronikError):
    """Raised by a follower's ``handle_page`` to stop the worker for good (state
    ``failed``): a projection's poison event with ``on_poison = "stop"``, say."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CommandRejected(ChronikError):
    """Raised by a saga's command executor: the aggregate refused the command (a domain
    outcome, which starts compensation)."""


class InvalidSubject(ChronikError, ValueError):
    """A NATS subject token would be empty or smuggle in ``.``, ``*``, ``>`` or whitespace."""

    def __init__(self, token: str, reason: str) -> None:
        super().__init__(f"invalid NATS subject token {token!r}: {reason}")
        self.token = token
        self.reason = reason
