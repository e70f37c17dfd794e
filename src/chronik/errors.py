"""Every error chronik raises, in one tree.

::

    ChronikError
    ├── ConcurrencyError            expected_version did not match; nothing written
    ├── CheckpointMoved             another worker moved a checkpoint; the transaction rolled back
    ├── DuplicateEventId            an event id is stored already, elsewhere or with other content
    ├── StreamNotFound (LookupError)
    ├── InvalidStreamId (ValueError)
    ├── InvalidExpectedVersion (ValueError)
    ├── InvalidArgument (TypeError, ValueError)
    │                               a call's argument has the wrong type (``events`` not a
    │                               list of NewEvent, ``read_correlation(123)``, ...)
    ├── BatchTooLarge (ValueError)  more events in one append than a backend can number
    ├── PayloadTooLarge (ValueError)
    ├── UnknownEventType (LookupError)
    ├── UnknownProjection           no projection of that name was set up in this store
    ├── ProjectionPaused            an operator paused the projection: the batch rolled back
    │                               and its runner holds until resumed (runners handle it)
    ├── SerializationError (ValueError)
    │   ├── InvalidEvent            an event to append or import breaks a rule of what the
    │   │                           store holds (its id, type, schema version, data or
    │   │                           metadata); names the event and the field
    │   └── UpcastError             a stored event cannot be upcast (failing or missing step,
    │                               or a schema version newer than the code)
    ├── RegistryError (ValueError)  an event type declared twice or malformed; broken chains
    ├── StoreUnavailable (ConnectionError)
    │   └── StoreFenced             writes here were moved to another store (a migration's
    │                               cut-over); retry against the store it names
    ├── StoreNotFound (LookupError) no chronik store where the URL points, and none was to be
    │                               created (``connect(url, create=False)``)
    ├── UnsupportedStoreUrl (ValueError)
    │                               an unknown scheme, or a parameter or value the backend does
    │                               not take; the message lists what it takes
    ├── MissingDependency (ImportError)
    │                               an optional extra is not installed; gives the pip command
    ├── MissingCapability (TypeError)
    │                               a store lacks a capability asked of it (SQL on memory://);
    │                               says which backends have it
    ├── MigrationError              an offline copy stopped (failing transform, failed check)
    ├── BackupError                 a backup cannot be taken or restored (target exists, store
    │   │                           not empty, an incremental continues another base, ...)
    │   └── BackupCorrupted         a backup is missing a file, truncated or altered
    ├── ArchiveError                an archive cannot be written, read or restored
    │   └── ArchiveCorrupted        an archive file is missing or altered (names the file)
    │   └── MigrationComplete       the migration was cut over: writers use the new store
    ├── SchemaError                 the database schema is newer than this code
    ├── LoadError                   ``MODULE:OBJECT`` names no module, no attribute, or the
    │                               wrong kind of object (``--app``, ``--transform``, ...)
    ├── WaitTimeout (TimeoutError)  a projection did not reach a position in time
    ├── FollowerFailed              a worker stopped for good (a poison event with "stop")
    ├── LeaseLost                   a partition's lease has a newer owner (epoch): the batch
    │                               rolled back and the stale owner stops handling it
    ├── WorkOwned                   SQLite: another live process already runs that worker
    ├── CommandRejected             a saga's command was refused by its aggregate
    ├── InvalidDecision (TypeError) ``decide`` returned no list of events (``None``, one
    │                               event); names the decider, the command and the stream
    ├── InvalidSubject (ValueError) a NATS subject token would be empty or a wildcard
    ├── AuthenticationFailed (PermissionError)
    │                               no, malformed, unknown, expired or revoked credentials
    ├── KeyEncryptionKeyError       the key-encryption key of crypto-shredding is missing,
    │                               malformed or not the one the subject keys were wrapped with
    ├── CiphertextError (ValueError) an encrypted personal field was altered or moved to
    │                               another event or field (names the event and field only)
    ├── AccessDenied (PermissionError)
    │                               the principal may not do that operation on that category
    ├── RateLimited                 a token sent more requests than its rate allows
    ├── PolicyError (ValueError)    a security policy (TOML) is invalid; names the bad key
    ├── GroupNotFound (LookupError) no consumer group of that name
    ├── GroupExists                 a consumer group of that name exists already
    └── TamperDetected              the hash chain or a signed checkpoint does not match the
                                    stored events (``chronik verify``); names the first break

Driver exceptions never leak: each backend raises one of these ``from`` the driver's error.
The core knows no HTTP status codes; the HTTP layer maps them. This module imports nothing
of chronik: it is the bottom of the layers (see docs/architecture.md).
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ArchiveCorrupted",
    "ArchiveError",
    "AuthenticationFailed",
    "BackupCorrupted",
    "CiphertextError",
    "KeyEncryptionKeyError",
    "BackupError",
    "BatchTooLarge",
    "CheckpointMoved",
    "ChronikError",
    "CommandRejected",
    "ConcurrencyError",
    "DuplicateEventId",
    "FollowerFailed",
    "GroupExists",
    "GroupNotFound",
    "InvalidArgument",
    "InvalidEvent",
    "InvalidDecision",
    "InvalidExpectedVersion",
    "InvalidStreamId",
    "InvalidSubject",
    "LeaseLost",
    "LoadError",
    "MigrationComplete",
    "MigrationError",
    "MissingCapability",
    "MissingDependency",
    "PayloadTooLarge",
    "PolicyError",
    "ProjectionPaused",
    "RateLimited",
    "RegistryError",
    "SchemaError",
    "SerializationError",
    "StoreFenced",
    "StoreNotFound",
    "StoreUnavailable",
    "StreamNotFound",
    "TamperDetected",
    "UnknownEventType",
    "WorkOwned",
    "UnknownProjection",
    "UnsupportedStoreUrl",
    "UpcastError",
    "WaitTimeout",
]


class ChronikError(Exception):
    """Base class of every error chronik raises on purpose."""


def _show(value: object, width: int = 60) -> str:
    """``repr(value)``, cut to about ``width`` characters: messages name what was given
    without copying a 2 MiB string into every log line (the attributes keep it whole)."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 5]}...{text[-2:]}"


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


class UnknownProjection(ChronikError):
    """No projection of that name has been set up in this store (pause, resume)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no projection {name!r} in this store (a projection is known once a runner set "
            "it up: `chronik projections status` lists them)"
        )
        self.name = name


class ProjectionPaused(ChronikError):
    """An operator paused the projection (``chronik projections pause``): the batch's
    transaction rolled back before its checkpoint moved. Its runner catches it and holds
    until the projection is resumed; it reaches callers of a runner only through bugs."""

    def __init__(self, name: str) -> None:
        super().__init__(f"projection {name!r} is paused")
        self.name = name


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
        super().__init__(f"invalid stream id {_show(stream_id)}: {reason}")


class InvalidExpectedVersion(ChronikError, ValueError):
    """``expected_version`` is neither a version >= 0 nor one of the stream states, or it
    is above the largest version a stream can have (2**31 - 1)."""


class InvalidArgument(ChronikError, TypeError, ValueError):
    """An argument of a call has the wrong type or no meaning: ``events`` that is not a
    sequence of :class:`~chronik.NewEvent`, a read's ``after``, ``limit``, ``from_version``,
    filters or correlation id of the wrong type, a filter text no event can hold.

    Both a :class:`TypeError` and a :class:`ValueError`, so code that caught either before
    keeps working. ``argument`` names it, ``reason`` says what is wrong.
    """

    def __init__(self, argument: str, reason: str) -> None:
        self.argument = argument
        self.reason = reason
        super().__init__(f"{argument} {reason}")


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
            f"stream {_show(stream_id)}: event #{index} ({_show(event_type)}) is {size} "
            f"bytes (type, data and metadata), over the limit of {limit} bytes"
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


class InvalidEvent(SerializationError):
    """An event to append or import breaks a rule of what a store holds; nothing written.

    ``field`` names what is wrong (``"event_id"``, ``"type"``, ``"schema_version"``,
    ``"data"``, ``"metadata"``, ``"metadata.correlation_id"``, ...), ``reason`` says how,
    ``limit`` is the limit it broke (or ``None``), ``index`` is the event's place in the
    append (0-based) and ``stream_id`` its stream. The rules and limits are listed in
    docs/limits.md; every backend checks them, before anything is written.
    """

    def __init__(
        self,
        stream_id: object,
        index: int,
        field: str,
        reason: str,
        *,
        event_type: object = None,
        limit: int | None = None,
    ) -> None:
        self.event_type = event_type if isinstance(event_type, str) else None
        self.stream_id = stream_id if isinstance(stream_id, str) else None
        self.version = None
        self.schema_version = None
        self.index = index
        self.field = field
        self.reason = reason
        self.limit = limit
        kind = f" ({_show(event_type)})" if isinstance(event_type, str) and field != "type" else ""
        ChronikError.__init__(
            self, f"stream {_show(stream_id)}: event #{index}{kind}: {field} {reason}"
        )


class UpcastError(SerializationError):
    """A stored event could not be brought to the shape the code knows.

    An upcaster raised or returned something it did not declare, a step of its chain is
    missing, or the stored schema version is newer than the registered one. The message
    names the stream, the event's version, the stored type and its schema version.
    """


class BackupError(ChronikError):
    """A backup cannot be taken or restored (``chronik backup``/``restore``): the backup
    folder exists, the store is in memory, the target is not empty or holds a half restore,
    an incremental backup continues another base than the target holds. Nothing written."""


class BackupCorrupted(BackupError):
    """A backup does not check: a file is missing, truncated or altered. Names the backup
    folder (``path``) and what does not match (``reason``); nothing was restored from it."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"backup {self.path} is corrupted or incomplete: {reason}")


class ArchiveError(ChronikError):
    """An archive cannot be written, read or restored (``chronik archive``): bad arguments,
    a store without SQL, an archive directory that cannot hold the file."""


class ArchiveCorrupted(ArchiveError):
    """An archive segment file is missing or does not match what the store recorded (size,
    sha256, events). Names the file (``path``); no event of it is handed out, so a read
    never silently misses the archived events."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"archive file {self.path}: {reason}")


class MigrationError(ChronikError):
    """``chronik migrate copy`` stopped: a transform failed on an event, the target holds
    other events, or the final check found a difference. What was copied stays consistent
    and the copy resumes from its checkpoint."""


class MigrationComplete(MigrationError):
    """The migration was cut over (``chronik migrate cutover``): the old store is fenced and
    writers use the new one, so there is nothing left to copy."""

    def __init__(self, position: int) -> None:
        self.position = position
        super().__init__(
            f"this migration is complete (cut over at position {position}): writers use the "
            f"target now; copy into a fresh store to migrate again"
        )


class RegistryError(ChronikError, ValueError):
    """An event type was registered twice under one name, or is not a dataclass/Struct, or
    the upcaster chains are broken (a gap, a cycle, two upcasters for one step)."""


class StoreUnavailable(ChronikError, ConnectionError):
    """The database could not be reached or failed in a way that says nothing about data."""


class StoreFenced(StoreUnavailable):
    """This store takes no more events: a migration fenced it and writes go to ``moved_to``
    (the new store's URL, password hidden). Nothing of the refused append was written, so
    it is safe to retry it there (``chronik.migrate.MigratingStore`` does it for you)."""

    retryable = True

    def __init__(self, moved_to: str, position: int | None = None) -> None:
        self.moved_to = moved_to
        self.position = position
        at = "" if position is None else f" at position {position}"
        super().__init__(f"this store was fenced{at} by a migration: write to {moved_to} instead")


class UnsupportedStoreUrl(ChronikError, ValueError):
    """``chronik.connect`` got a URL it cannot use: an unknown scheme, a parameter its backend
    does not take, or a value out of range; the message names what is allowed."""


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


class LeaseLost(ChronikError):
    """A partitioned worker's lease was taken over (its epoch is no longer current): the
    batch's writes and checkpoint rolled back, and the stale owner stops handling the
    partition (see docs/scale-out.md)."""

    def __init__(self, lease: str, detail: str = "") -> None:
        self.lease = lease
        super().__init__(f"lease {lease} lost" + (f" ({detail})" if detail else ""))


class WorkOwned(ChronikError):
    """SQLite runs one process per worker group: another live process owns ``name``."""

    def __init__(self, name: str, owner: str) -> None:
        self.name = name
        self.owner = owner
        super().__init__(
            f"worker group {name!r} is already run by {owner} on this SQLite store; SQLite "
            "runs one process per worker group (use PostgreSQL to run several)"
        )


class CommandRejected(ChronikError):
    """Raised by a saga's command executor: the aggregate refused the command (a domain
    outcome, which starts compensation)."""


class InvalidSubject(ChronikError, ValueError):
    """A NATS subject token would be empty or smuggle in ``.``, ``*``, ``>`` or whitespace."""

    def __init__(self, token: str, reason: str) -> None:
        super().__init__(f"invalid NATS subject token {token!r}: {reason}")
        self.token = token
        self.reason = reason


class StoreNotFound(ChronikError, LookupError):
    """No chronik store is where the URL points, and the caller asked not to create one
    (``chronik.connect(url, create=False)``; every ``chronik`` command but ``init``).

    ``where`` is the place looked at (an absolute SQLite path), ``reason`` what was found
    there instead. Nothing was created.
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(
            f"no chronik store at {where}: {reason} (`chronik init` or "
            "chronik.connect(url) creates one)"
        )


class MissingDependency(ChronikError, ImportError):
    """An optional part of chronik was used without its extra installed.

    ``extra`` is the extra to install (``"postgres"``), ``package`` the missing
    distribution; the message gives the command: ``pip install 'chronik[postgres]'``.
    """

    def __init__(self, what: str, package: str, extra: str) -> None:
        self.what = what
        self.package = package
        self.extra = extra
        super().__init__(
            f"{what} needs {package}, which is not installed: pip install 'chronik[{extra}]'"
        )


class InvalidDecision(ChronikError, TypeError):
    """A decider's ``decide`` returned something other than a list of events (``None``, most
    often: a branch that forgot ``return []``). Nothing was appended.

    ``decider`` names the ``decide`` function, ``command`` is the command it was given and
    ``returned`` what it gave back; ``stream_id`` is the stream, when known.
    """

    def __init__(
        self, decider: str, command: object, returned: object, stream_id: str | None = None
    ) -> None:
        self.decider = decider
        self.command = command
        self.returned = returned
        self.stream_id = stream_id
        where = "" if stream_id is None else f" on stream {stream_id!r}"
        got = "None" if returned is None else f"a {type(returned).__name__}"
        super().__init__(
            f"decide of {decider} returned {got} for command {type(command).__name__}{where}: "
            "it must return a list of events ([] when nothing happens)"
        )


class AuthenticationFailed(ChronikError, PermissionError):
    """No credentials where they are required, or credentials that are malformed, unknown,
    expired or revoked. The message says which, never the secret."""


class AccessDenied(ChronikError, PermissionError):
    """The principal's roles do not grant ``operation`` on ``category`` (``None``: the store
    as a whole). Decided from the principal and the request alone, never from what exists."""

    def __init__(self, principal: str, operation: str, category: str | None) -> None:
        self.principal = principal
        self.operation = operation
        self.category = category
        on = "the whole store" if category is None else f"category {category!r}"
        super().__init__(f"{principal} may not {operation} on {on}")


class RateLimited(ChronikError):
    """More requests than the policy's rate allows for one principal; retry after
    ``retry_after`` seconds."""

    def __init__(self, principal: str, retry_after: float) -> None:
        self.principal = principal
        self.retry_after = retry_after
        super().__init__(f"{principal}: too many requests; retry after {retry_after:.1f}s")


class PolicyError(ChronikError, ValueError):
    """A security policy is invalid: ``key`` is the dotted path of the bad entry
    (``roles.reader.read``), ``reason`` what is wrong with it."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"policy: {key}: {reason}")


class TamperDetected(ChronikError):
    """The stored events do not match their hash chain or a signed checkpoint: someone
    changed the log around chronik. The message names the first broken link."""


class KeyEncryptionKeyError(ChronikError):
    """The key-encryption key that wraps the subject keys (docs/security.md) is missing,
    malformed, or does not unwrap a stored subject key: ``source`` names where it was looked
    for (a file path or an environment variable), never its bytes."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"key-encryption key ({source}): {reason}")


class CiphertextError(ChronikError, ValueError):
    """An encrypted personal field does not decrypt: it was altered, or moved from another
    event or field. Names the event and the field, never a value."""

    def __init__(self, event_id: object, field: str, reason: str) -> None:
        self.event_id = event_id
        self.field = field
        self.reason = reason
        super().__init__(f"event {event_id}: personal field {field!r}: {reason}")


class GroupNotFound(ChronikError, LookupError):
    """No consumer group of that name exists in this store (create it first)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no consumer group {name!r}")


class GroupExists(ChronikError):
    """A consumer group of that name exists already (update or delete it instead)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"consumer group {name!r} exists already")
