"""What every backend shares, written once: the port's types, the append path, the checks.

The port itself (the capabilities a backend may have) is :mod:`chronik.store.port`; its
types are re-exported here. A backend derives from :class:`EventStoreBase`, which brings
``append`` (validated, encoded, traced: the backend writes the encoded batch in ``_write``),
``read_page``, ``wait_for_change`` and ``async with``; and it uses :func:`check_expected`,
:func:`resolve_duplicate`, :func:`plan_import` and :func:`pages_reading_ahead` instead of
writing them again. A backend is done when it passes :mod:`chronik.testing.contract` for
each capability it declares. The memory backend is the reference; sqlite and postgres follow
it name for name.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Self, TypeVar

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
from chronik.store.port import (
    DeadLetter,
    EventStore,
    ImportedEvent,
    InlineProjection,
    PageRead,
    StoreStats,
    StreamInfo,
    Tx,
)
from chronik.telemetry import traced_append

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "READ_PAGE_SIZE",
    "DeadLetter",
    "EncodedEvent",
    "EventStore",
    "EventStoreBase",
    "ImportedEvent",
    "InlineProjection",
    "StoreStats",
    "StoredCopy",
    "StreamInfo",
    "Tx",
    "check_expected",
    "encode_batch",
    "pages_reading_ahead",
    "plan_import",
    "read_page_from_head",
    "resolve_duplicate",
    "wait_uninterrupted",
]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
READ_PAGE_SIZE = 500

_Item = TypeVar("_Item")


class EventStoreBase(abc.ABC):
    """The part of every backend written once.

    A backend sets ``capabilities`` (the protocols of :mod:`chronik.store.port` it has: a
    promise to pass their contract suites) and ``max_event_bytes``, and gives
    ``_check_open()``, ``_write(stream_id, expected, batch)`` and the rest of the port. In
    return it gets:

    - ``append``: checks the store is open, validates and encodes the batch
      (:func:`encode_batch`, the context's metadata), opens the ``chronik.append`` span
      whose traceparent goes into the events' metadata, then calls ``_write``. Tracing is
      applied here, once, for every backend.
    - ``read_page``: the head, then a page of ``read_all`` (:func:`read_page_from_head`); a
      backend that can do it in one round trip overrides it (PostgreSQL).
    - ``wait_for_change`` (on ``change_marker()``) and ``async with``.
    """

    capabilities: ClassVar[frozenset[object]]
    max_event_bytes: int

    @abc.abstractmethod
    def _check_open(self) -> None:
        """Raise :class:`~chronik.errors.StoreUnavailable` when the store is closed."""

    @abc.abstractmethod
    async def _write(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        """Write one validated, encoded append (``expected`` checked by the backend)."""

    @traced_append
    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int = ANY
    ) -> AppendResult:
        """Append ``events`` atomically at the end of ``stream_id`` (see
        :meth:`chronik.store.port.EventLog.append`)."""
        self._check_open()
        stream_id, expected, batch = encode_batch(
            stream_id, events, expected_version, self.max_event_bytes
        )
        return await self._write(stream_id, expected, batch)

    @abc.abstractmethod
    def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]: ...

    @abc.abstractmethod
    async def head_position(self) -> int: ...

    @abc.abstractmethod
    def change_marker(self) -> asyncio.Event: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def read_page(
        self,
        *,
        after: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> PageRead:
        """One page for a follower (see :meth:`chronik.store.port.EventLog.read_page`)."""
        return await read_page_from_head(
            self, after=after, limit=limit, categories=categories, types=types
        )

    async def wait_for_change(self, timeout: float) -> None:
        """Return when ``change_marker()`` is set (a change this store can signal), or
        after ``timeout`` seconds."""
        marker = self.change_marker()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(marker.wait(), max(timeout, 0.0))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def read_page_from_head(
    store: EventStoreBase,
    *,
    after: int,
    limit: int,
    categories: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
) -> PageRead:
    """``read_page`` from ``head_position`` and ``read_all``: two reads, the head first.

    Every matching event at or below the head was visible before the page was read, so a
    page that is not full is complete up to the head: ``caught_up_to`` is the head (or the
    last event's position, when higher), ``more`` is ``False``. A full page may have more
    behind it: ``caught_up_to`` is its last position and ``more`` is ``True``.
    """
    if limit <= 0:  # nothing read, nothing known beyond `after`
        return [], after, False
    head = await store.head_position()
    events = [
        e
        async for e in store.read_all(after=after, categories=categories, types=types, limit=limit)
    ]
    if len(events) >= limit:
        return events, events[-1].position, True
    caught_up_to = events[-1].position if events else after
    return events, max(caught_up_to, head), False


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
