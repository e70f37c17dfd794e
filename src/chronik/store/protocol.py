"""The event store port every backend implements, and the work they all share.

A backend is done when it passes :mod:`chronik.testing.contract` unchanged. The memory
backend is the reference; sqlite and postgres follow it name for name.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, TypeVar, runtime_checkable

import msgspec

from chronik.context import metadata_for_append
from chronik.errors import (
    ConcurrencyError,
    DuplicateEventId,
    PayloadTooLarge,
    SerializationError,
)
from chronik.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
    validate_expected_version,
    validate_stream_id,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DeadLetter",
    "InlineProjection",
    "Tx",
    "EncodedEvent",
    "EventStore",
    "ImportedEvent",
    "READ_PAGE_SIZE",
    "StoreStats",
    "StoredCopy",
    "StreamInfo",
    "check_expected",
    "encode_batch",
    "pages_reading_ahead",
    "plan_import",
    "resolve_duplicate",
    "wait_uninterrupted",
]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
READ_PAGE_SIZE = 500

_Item = TypeVar("_Item")


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


class Tx(Protocol):
    """One write transaction on the store's database (see ``EventStore.transaction``).

    ``execute``/``fetchall``/``fetchone`` run SQL in the backend's dialect; named parameters
    written ``:name`` with a mapping work on SQLite and PostgreSQL alike. Checkpoints and
    dead letters written through it commit or roll back with everything else.
    """

    dialect: str
    """``"sqlite"``, ``"postgresql"`` or ``"memory"`` (which runs no SQL)."""

    clock_sql: str
    """An SQL expression for the database's clock, in seconds since 1970 (a float): one
    clock for every process that uses the store, whatever their own clocks say."""

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


@runtime_checkable
class EventStore(Protocol):
    """Append and read events; every backend has exactly this shape."""

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
            InvalidStreamId, InvalidExpectedVersion, PayloadTooLarge, SerializationError.
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

    async def read_correlation(
        self, correlation_id: str, *, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Every event whose metadata has this ``correlation_id``, by position (indexed).

        For debugging (``chronik trace``): on PostgreSQL it also returns committed events
        above the readers' visibility horizon.
        """
        ...

    async def stream_version(self, stream_id: str) -> int | None:
        """The version of the stream's last event, or ``None`` when it has none."""
        ...

    def streams(
        self, *, category: str | None = None, limit: int | None = None
    ) -> AsyncIterator[StreamInfo]:
        """The streams, by stream id."""
        ...

    async def head_position(self) -> int:
        """The highest position a reader can see now (0 for an empty store)."""
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

    async def wait_for_change(self, timeout: float) -> None:
        """Return soon after an append commits, or after ``timeout`` seconds."""
        ...

    def change_marker(self) -> asyncio.Event:
        """An :class:`asyncio.Event` set by the next change the store can signal.

        A follower takes it *before* it reads a page and waits on it after handling the
        page, so an append that commits meanwhile wakes it at once (no lost wake-up).
        """
        ...

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction for read models, checkpoints and dead letters."""
        ...

    async def get_checkpoint(self, name: str) -> int | None:
        """The stored checkpoint of a subscription (``None``: never saved)."""
        ...

    async def dead_letters(self, subscription: str | None = None) -> list[DeadLetter]:
        """Recorded dead letters, oldest first."""
        ...

    async def checkpoints(self) -> dict[str, int]:
        """Every stored checkpoint by subscription name."""
        ...

    async def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query outside any write transaction (read models)."""
        ...

    async def get_active_version(self, projection: str) -> int | None:
        """The version of a projection's read model that readers should use."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class EncodedEvent(NamedTuple):
    """A :class:`NewEvent` validated and encoded, ready for a backend to write."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    data: bytes
    metadata: bytes


_encode = msgspec.json.encode


def encode_batch(
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: object,
    max_event_bytes: int,
) -> tuple[str, int, list[EncodedEvent]]:
    """Validate one append's arguments and encode its events (shared by every backend).

    Metadata starts from :func:`chronik.context.metadata_for_append`; an event's own
    metadata merges over it.
    """
    validate_stream_id(stream_id)
    expected = validate_expected_version(expected_version)
    if isinstance(events, NewEvent) or not isinstance(events, Sequence):
        raise TypeError("events must be a sequence of NewEvent")
    base_meta = metadata_for_append()
    base_meta_bytes = _encode(base_meta)
    out: list[EncodedEvent] = []
    seen: set[uuid.UUID] = set()
    for index, ev in enumerate(events):
        if not isinstance(ev, NewEvent):
            raise TypeError(f"events[{index}] is {type(ev).__name__}, not NewEvent")
        if not isinstance(ev.type, str) or not ev.type:
            raise SerializationError(f"events[{index}] has no type", stream_id=stream_id)
        if ev.event_id in seen:
            raise DuplicateEventId(stream_id, ev.event_id, "appears twice in one append")
        seen.add(ev.event_id)
        data = ev.data
        if isinstance(data, bytes):
            raw = data
        elif isinstance(data, Mapping):
            try:
                raw = _encode(data)
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"events[{index}] data cannot be encoded as JSON: {exc}",
                    event_type=ev.type,
                    stream_id=stream_id,
                ) from exc
        else:
            raise SerializationError(
                f"events[{index}] data must be a mapping or JSON bytes, not {type(data).__name__}",
                event_type=ev.type,
                stream_id=stream_id,
            )
        if ev.metadata:
            try:
                meta = _encode({**base_meta, **ev.metadata})
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"events[{index}] metadata cannot be encoded as JSON: {exc}",
                    event_type=ev.type,
                    stream_id=stream_id,
                ) from exc
        else:
            meta = base_meta_bytes
        size = len(raw) + len(meta)
        if size > max_event_bytes:
            raise PayloadTooLarge(stream_id, index, ev.type, size, max_event_bytes)
        out.append(EncodedEvent(ev.event_id, ev.type, ev.schema_version, raw, meta))
    return stream_id, expected, out


def check_expected(stream_id: str, expected: int, current: int) -> None:
    """Raise :class:`ConcurrencyError` unless ``current`` (``-1``: no stream) fits ``expected``."""
    if expected == ANY:
        return
    if expected == NO_STREAM:
        ok = current == -1
    elif expected == STREAM_EXISTS:
        ok = current >= 0
    else:
        ok = current == expected
    if not ok:
        raise ConcurrencyError(stream_id, expected, current)


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


def plan_import(
    events: Sequence[ImportedEvent], current: Mapping[str, int], max_event_bytes: int
) -> list[tuple[ImportedEvent, int]]:
    """Check one import batch and give each event its version (shared by every backend).

    ``current`` maps the batch's stream ids to their version in the target (absent: no
    events yet).
    """
    following: dict[str, int] = {}
    seen: set[uuid.UUID] = set()
    out: list[tuple[ImportedEvent, int]] = []
    for index, ev in enumerate(events):
        if not isinstance(ev, ImportedEvent):
            raise TypeError(f"events[{index}] is {type(ev).__name__}, not ImportedEvent")
        stream_id = ev.stream_id
        nxt = following.get(stream_id)
        if nxt is None:  # first of its stream in this batch
            validate_stream_id(stream_id)
            nxt = current.get(stream_id, -1) + 1
        if ev.event_id in seen:
            raise DuplicateEventId(stream_id, ev.event_id, "appears twice in one import")
        seen.add(ev.event_id)
        if not isinstance(ev.type, str) or not ev.type:
            raise SerializationError(f"events[{index}] has no type", stream_id=stream_id)
        version = nxt if ev.version is None else ev.version
        if version != nxt:
            raise ConcurrencyError(stream_id, version - 1, nxt - 1)
        following[stream_id] = version + 1
        size = len(ev.data) + len(ev.metadata)
        if size > max_event_bytes:
            raise PayloadTooLarge(stream_id, index, ev.type, size, max_event_bytes)
        out.append((ev, version))
    return out


class StoredCopy(NamedTuple):
    """What a backend found stored under one of the event ids of an append."""

    event_id: uuid.UUID
    stream_id: str
    version: int
    position: int
    type: str
    data: bytes


def _same_json(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    try:
        return bool(msgspec.json.decode(a) == msgspec.json.decode(b))
    except msgspec.DecodeError:
        return False


def resolve_duplicate(
    stream_id: str,
    expected: int,
    batch: Sequence[EncodedEvent],
    stored: Mapping[uuid.UUID, StoredCopy],
) -> AppendResult | None:
    """Decide what an append whose event ids may already be stored means.

    Returns the original :class:`AppendResult` when every event of the batch is stored, in
    this stream, in this order, with the same type and data, and (for an exact
    ``expected_version``) at the place that version implies: a retry of an append that
    succeeded. Returns ``None`` when none of the ids is stored. Raises
    :class:`DuplicateEventId` for anything in between.
    """
    if not stored:
        return None
    copies: list[StoredCopy] = []
    for ev in batch:
        copy = stored.get(ev.event_id)
        if copy is None:
            first = next(iter(stored.values()))
            raise DuplicateEventId(
                stream_id,
                first.event_id,
                "is stored already, but the rest of this append is not: "
                "an append is idempotent only when repeated whole",
            )
        if copy.stream_id != stream_id:
            raise DuplicateEventId(
                stream_id, ev.event_id, f"is stored already in stream {copy.stream_id!r}"
            )
        if copy.type != ev.type or not _same_json(copy.data, ev.data):
            raise DuplicateEventId(
                stream_id, ev.event_id, "is stored already with a different type or data"
            )
        copies.append(copy)
    first_version = copies[0].version
    for offset, copy in enumerate(copies):
        if copy.version != first_version + offset:
            raise DuplicateEventId(
                stream_id, copy.event_id, "is stored already at another place in the stream"
            )
    if expected >= 0 and first_version != expected + 1:
        raise DuplicateEventId(
            stream_id,
            copies[0].event_id,
            f"is stored already at version {first_version}, not after version {expected}",
        )
    if expected == NO_STREAM and first_version != 0:
        raise DuplicateEventId(
            stream_id, copies[0].event_id, f"is stored already at version {first_version}"
        )
    last = copies[-1]
    return AppendResult(position=last.position, version=last.version)


async def pages_reading_ahead(
    first: list[_Item],
    size: int,
    remaining: int | None,
    read_next: Callable[[list[_Item], int], Awaitable[list[_Item]]],
) -> AsyncGenerator[list[_Item], None]:
    """The pages of a paged read, each next page asked for before the current one is handed
    out, so the database (or the reader thread) works while the caller consumes.

    ``first`` is the first page, read with ``size``; ``read_next(page, size)`` starts reading
    the page after ``page`` at once. The read ends after a short page, or when ``remaining``
    (``None``: no limit) is used up. At most two pages are held. If the caller stops early
    or is cancelled, the read started for it finishes on its own and its outcome is dropped
    (cancelling a query mid-flight costs a cancel request to the server, or the pooled
    connection). Close it with ``aclosing``.
    """
    page = first
    pending: asyncio.Future[list[_Item]] | None = None
    try:
        while True:
            if remaining is not None:
                remaining -= len(page)
            if len(page) < size or remaining == 0:
                yield page
                return
            size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            pending = asyncio.ensure_future(read_next(page, size))
            yield page
            page = await asyncio.shield(pending)  # a cancelled reader leaves it running
            pending = None
    finally:
        if pending is not None:
            pending.add_done_callback(_drop_outcome)


def _drop_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as lost


async def wait_uninterrupted(work: Awaitable[_Item]) -> _Item:
    """Await ``work`` to its end even if the calling task is cancelled meanwhile.

    For what finishes a transaction (COMMIT, ROLLBACK, handing its connection back): it runs
    to its end whatever happens to the caller, and a caller cancelled meanwhile gets its
    ``CancelledError`` once it is over (the outcome is then dropped). So when a cancelled
    call returns, its transaction is committed or rolled back, never still open, and a
    retry (same event ids) finds out which.
    """
    future = asyncio.ensure_future(work)
    interrupted: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait((future,))  # unlike `await future`, never cancels it
        except asyncio.CancelledError as exc:
            interrupted = exc
    if interrupted is not None:
        _drop_outcome(future)
        raise interrupted
    return future.result()
