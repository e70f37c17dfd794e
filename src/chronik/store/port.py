"""The store port: what chronik asks of an event store, as named capabilities.

Each capability is a :class:`~typing.Protocol` with a contract suite of its own in
:mod:`chronik.testing.contract`:

- :class:`EventLog` — the core: append, read a stream, read the global order (also a page
  at a time, with what the reader knows of the head), a stream's version, the head, change
  signals, close. Every backend has it.
- :class:`Inspectable` — listing and counting for tools and the CLI: ``streams``, ``stats``,
  ``count_events``, ``read_correlation``.
- :class:`WorkerState` — what workers keep beside the log and commit with their own writes:
  ``transaction()`` (a :class:`Tx` with checkpoints, dead letters, active projection
  versions, imports) and reading them back.
- :class:`SqlStore` — SQL on the store's database: ``query()`` for read models,
  ``Tx.execute/fetchall/fetchone`` in a transaction, and the ``dialect``.
- :class:`Fencing` — a migration's cut-over: ``fence()`` makes the store refuse every new
  event (:class:`~chronik.errors.StoreFenced`, inside the writing transaction),
  ``fence_state()`` and ``unfence()``.

:class:`EventStore` is ``EventLog + Inspectable + WorkerState``: what every backend of
chronik has, so most of chronik is written against it. A backend *declares* its
capabilities (``capabilities``, a class attribute): a declaration is a promise to pass that
capability's contract suite, and it is what :func:`chronik.store.require` reads. Nothing
asks a store what it can do by its class or by looking for a method (a memory store's
``Tx`` has ``execute``: it raises :class:`~chronik.errors.MissingCapability`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

from chronik.events import ANY, AppendResult, NewEvent, RecordedEvent

__all__ = [
    "BOOKKEEPING_CHECKPOINTS",
    "DeadLetter",
    "EventLog",
    "EventStore",
    "Fence",
    "Fencing",
    "ImportedEvent",
    "InlineProjection",
    "Inspectable",
    "PageRead",
    "SqlStore",
    "StoreStats",
    "StreamInfo",
    "Tx",
    "WorkerState",
]

PageRead = tuple[list[RecordedEvent], int, bool]
"""What :meth:`EventLog.read_page` returns: the events, the position the read is complete up
to (``caught_up_to``), and whether more may match now (``more``)."""


BOOKKEEPING_CHECKPOINTS = ("chronik.migrate.", "chronik.restore")
"""Prefixes of checkpoint rows that are not a reader's position in this store: a copy's
progress in its source (``chronik.migrate.copy:``, ``chronik.migrate.complete:``) and a
restore's event counts (``chronik.restore:``, ``chronik.restore.done:``). ``chronik check``
does not compare them with the head, and retention does not wait for them."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One stream as listed by :meth:`EventStore.streams`."""

    stream_id: str
    version: int
    last_position: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for ``chronik stats``."""

    events: int
    streams: int
    head_position: int
    categories: dict[str, int] = field(default_factory=dict)
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscription gave up on: recorded, not lost; retried on request."""

    id: int
    subscription: str
    position: int
    event_id: uuid.UUID
    stream_id: str
    version: int
    type: str
    error: str
    attempts: int
    created_at: str


class ImportedEvent(NamedTuple):
    """An event copied from another store, for :meth:`Tx.import_events`."""

    event_id: uuid.UUID
    stream_id: str
    version: int | None
    """The version to write (checked to be the next of its stream); ``None``: the next."""
    type: str
    schema_version: int
    data: bytes
    metadata: bytes
    recorded_at: datetime

    @classmethod
    def of(cls, event: RecordedEvent, *, keep_version: bool = True) -> ImportedEvent:
        """The import of a stored event as it is (its version kept, or renumbered)."""
        return cls(
            event.event_id,
            event.stream_id,
            event.version if keep_version else None,
            event.type,
            event.schema_version,
            event.raw_data,
            event.raw_metadata,
            event.recorded_at,
        )


class Tx(Protocol):
    """One write transaction on the store's database (see :meth:`WorkerState.transaction`).

    Checkpoints, dead letters, active versions and imports written through it commit or roll
    back with everything else. ``execute``/``fetchall``/``fetchone`` run SQL in the backend's
    dialect (named parameters written ``:name`` with a mapping work on SQLite and PostgreSQL
    alike) on a store with the :class:`SqlStore` capability; elsewhere they raise
    :class:`~chronik.errors.MissingCapability`. They are on every ``Tx`` so that a handler has
    one type to write against.
    """

    dialect: str
    """``"sqlite"``, ``"postgresql"`` or ``"memory"`` (which runs no SQL)."""

    clock_sql: str
    """An SQL expression for the database's clock, in seconds since 1970 (a float): one
    clock for every process that uses the store, whatever their own clocks say."""

    def timestamp(self, at: datetime) -> Any:
        """``at`` as this database stores a point in time, to pass as a parameter for a time
        column of chronik's tables: an aware ``datetime`` on PostgreSQL (``timestamptz``),
        INTEGER microseconds since 1970 on SQLite (it has no time type)."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None: ...

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]: ...

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[Any, ...] | None: ...

    async def get_checkpoint(self, name: str) -> int | None: ...

    async def set_checkpoint(self, name: str, position: int) -> None: ...

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        """Move checkpoint ``name`` from ``expected`` (0: never saved) to ``position``.

        Raises :class:`~chronik.errors.CheckpointMoved` when another transaction moved it,
        and the whole transaction rolls back; on PostgreSQL the check runs in the server
        and the error arrives at COMMIT, so the batch costs no round trip of its own.
        Transactions advancing the same checkpoint run one after the other.
        """
        ...

    async def add_dead_letter(
        self, subscription: str, event: RecordedEvent, error: str, attempts: int
    ) -> None: ...

    async def delete_dead_letter(self, dead_letter_id: int) -> None: ...

    async def get_active_version(self, projection: str) -> int | None: ...

    async def set_active_version(self, projection: str, version: int) -> None: ...

    async def import_events(self, events: Sequence[ImportedEvent]) -> None:
        """Write events copied from another store as they were (``chronik migrate copy``).

        Event id, stream id, type, schema version, data, metadata and ``recorded_at`` are
        kept; positions are new, in the order given. An event's ``version`` must be the next
        of its stream (``None``: take the next). Checked with :func:`plan_import`; inline
        projections do not run. Commits or rolls back with the rest of the transaction.

        Raises:
            ConcurrencyError: a version is not the next of its stream.
            DuplicateEventId: an event id is stored already (or given twice).
            PayloadTooLarge, InvalidStreamId, SerializationError, BatchTooLarge.
        """
        ...


class InlineProjection(Protocol):
    """What a store needs of a projection it updates inside every append's transaction."""

    def accepts(self, event: RecordedEvent) -> bool: ...

    async def handle(self, event: RecordedEvent, tx: Tx) -> None: ...


class EventLog(Protocol):
    """The core capability: the log itself. Every backend has it."""

    max_event_bytes: int
    inline_projections: list[InlineProjection]
    """Projections updated in the same transaction as every append (strong consistency)."""

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int = ANY
    ) -> AppendResult:
        """Append ``events`` atomically at the end of ``stream_id``.

        Raises:
            ConcurrencyError: the stream is not at ``expected_version``; nothing written.
            DuplicateEventId: an event id is stored already at another place or with other
                content (the same events at the same place return the original result).
            InvalidEvent: an event breaks a rule of docs/limits.md (its id, type, data,
                metadata, schema version); names the field and the event's index.
            InvalidStreamId, InvalidExpectedVersion, PayloadTooLarge, BatchTooLarge,
            InvalidArgument (``events`` is not a sequence of ``NewEvent``),
            SerializationError. Every refusal leaves the store unchanged.
        """
        ...

    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of one stream by version.

        ``from_version`` is the first version returned; ``None`` means the start when reading
        forwards and the last event when reading ``backwards``.

        Raises ``StreamNotFound`` (on iteration) when the stream has no events.
        """
        ...

    def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events with ``position > after`` in global order, never one with a hole behind it."""
        ...

    async def read_page(
        self,
        *,
        after: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> PageRead:
        """What a follower reads each time it wakes: one page of ``read_all``, and how far
        the read is complete.

        Returns the matching events after ``after`` (at most ``limit``), ``caught_up_to`` (a
        position such that every matching event at or below it is in this page or an
        earlier one) and ``more`` (more may match right now: read again rather than wait).
        A page can be short, even empty, and still have ``more``. ``more`` with an empty
        page that did not move ``caught_up_to`` means more is committed but not readable
        yet (PostgreSQL: an older transaction is still open; its end is not signalled, so
        a follower looks again soon). ``limit <= 0`` reads nothing and knows nothing
        beyond ``after``.
        """
        ...

    async def stream_version(self, stream_id: str) -> int | None:
        """The version of the stream's last event, or ``None`` when it has none."""
        ...

    async def head_position(self) -> int:
        """The highest position a reader can see now (0 for an empty store)."""
        ...

    def change_marker(self) -> asyncio.Event:
        """An :class:`asyncio.Event` set by the next change the store can signal.

        A follower takes it *before* it reads a page and waits on it after handling the
        page, so an append that commits meanwhile wakes it at once (no lost wake-up).
        """
        ...

    async def wait_for_change(self, timeout: float) -> None:
        """Return soon after an append commits, or after ``timeout`` seconds."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Inspectable(Protocol):
    """Listing and counting, for tools (``chronik streams``, ``stats``, ``trace``, lag)."""

    def streams(
        self, *, category: str | None = None, limit: int | None = None
    ) -> AsyncIterator[StreamInfo]:
        """The streams, by stream id."""
        ...

    async def stats(self) -> StoreStats:
        """Counts of events and streams, per category, and the database size."""
        ...

    async def count_events(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> int:
        """How many events ``read_all`` with these arguments would yield (for lag)."""
        ...

    async def read_correlation(
        self, correlation_id: str, *, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Every event whose metadata has this ``correlation_id``, by position (indexed).

        For debugging (``chronik trace``): on PostgreSQL it also returns committed events
        above the readers' visibility horizon.
        """
        ...


class WorkerState(Protocol):
    """What workers keep beside the log, written in the same transaction as their effects:
    checkpoints, dead letters, active projection versions, imported events."""

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction for read models, checkpoints and dead letters."""
        ...

    async def get_checkpoint(self, name: str) -> int | None:
        """The stored checkpoint of a subscription (``None``: never saved)."""
        ...

    async def checkpoints(self) -> dict[str, int]:
        """Every stored checkpoint by subscription name."""
        ...

    async def dead_letters(self, subscription: str | None = None) -> list[DeadLetter]:
        """Recorded dead letters, oldest first."""
        ...

    async def get_active_version(self, projection: str) -> int | None:
        """The version of a projection's read model that readers should use."""
        ...


class SqlStore(Protocol):
    """SQL on the store's database: read models, sagas, the inbox, SQL snapshots.

    Get it with ``chronik.store.require(store, SqlStore)``, which raises
    :class:`~chronik.errors.MissingCapability` on a backend without it (``memory://``).
    """

    dialect: str
    """``"sqlite"`` or ``"postgresql"``: for SQL text that differs, never for behaviour."""

    async def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query outside any write transaction (read models)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction whose ``Tx`` runs SQL (``execute``, ``fetchall``, ...)."""
        ...


@runtime_checkable
class EventStore(EventLog, Inspectable, WorkerState, Protocol):
    """What every backend of chronik has: the log, inspection and workers' state.

    SQL is not part of it: ask for :class:`SqlStore` with ``chronik.store.require``.
    """


@dataclass(frozen=True, slots=True)
class Fence:
    """A store's fence: writes moved to ``moved_to`` after ``position``."""

    moved_to: str
    """the new store's URL, password hidden"""
    position: int
    """the last position written here (every event at or below it was committed before)"""
    fenced_at: datetime
    """when the fence was set (UTC, the database's clock)"""


class Fencing(Protocol):
    """A store a migration can fence: once fenced, every write path refuses new events with
    :class:`~chronik.errors.StoreFenced`, checked inside the writing transaction (appends
    alone or grouped, imports in ``transaction()``). Reads, checkpoints and read models
    still work. Get it with ``chronik.store.require(store, Fencing)``."""

    async def fence(self, moved_to: str) -> Fence:
        """Fence the store, naming the new store; returns the fence. Waits for writes in
        flight: when it returns, no further event can commit here. Fencing a fenced store
        changes nothing and returns its fence."""
        ...

    async def fence_state(self) -> Fence | None:
        """The fence, or ``None`` when the store takes writes."""
        ...

    async def unfence(self) -> None:
        """Lift the fence (a cut-over given up): the store takes writes again."""
        ...
