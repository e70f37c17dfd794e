"""What every backend shares, written once: the port's types, the append path, the checks.

The port itself (the capabilities a backend may have) is :mod:`chronik.store.port`; its
types are re-exported here. A backend derives from :class:`EventStoreBase`, which brings
``append`` (validated, encoded, traced: the backend writes the encoded batch in ``_write``),
``read_page``, ``wait_for_change`` and ``async with``; and it uses :func:`check_expected`,
:func:`resolve_duplicate`, :func:`plan_import`, the ``check_read_*`` helpers and
:func:`pages_reading_ahead` instead of writing them again. What a store accepts (every
limit, every check) is :mod:`chronik.store.validation`, re-exported here. A backend is done
when it passes :mod:`chronik.testing.contract` for each capability it declares. The memory
backend is the reference; sqlite and postgres follow it name for name.
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

from chronik.errors import (
    ConcurrencyError,
    DuplicateEventId,
    InvalidArgument,
)
from chronik.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
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
from chronik.store.validation import (
    DEFAULT_MAX_JSON_DEPTH,
    MAX_JSON_DEPTH,
    EncodedEvent,
    check_read_all,
    check_read_correlation,
    check_read_page,
    check_read_stream,
    check_streams,
    encode_batch,
    plan_import,
)
from chronik.telemetry import traced_append

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_JSON_DEPTH",
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
    "check_read_all",
    "check_read_correlation",
    "check_read_page",
    "check_read_stream",
    "check_streams",
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
    ``_check_open()``, ``_write(stream_id, expected, batch)`` and the rest of the port; its
    reads start with the ``check_read_*`` helper of their arguments. In return it gets:

    - ``append``: checks the store is open, validates and encodes the batch
      (:func:`encode_batch`, the context's metadata), opens the ``chronik.append`` span
      whose traceparent goes into the events' metadata, then calls ``_write``. Tracing is
      applied here, once, for every backend.
    - ``read_page``: the head, then a page of ``read_all`` (:func:`read_page_from_head`); a
      backend that can do it in one round trip overrides it (PostgreSQL).
    - ``wait_for_change`` (on ``change_marker()``) and ``async with``.

    ``max_event_bytes`` (type, data and metadata of one event) and ``max_json_depth`` (how
    deep data and metadata may nest, at most
    :data:`~chronik.store.validation.MAX_JSON_DEPTH`) are the limits a store may be given;
    the others are fixed (docs/limits.md).
    """

    capabilities: ClassVar[frozenset[object]]
    max_event_bytes: int
    _max_json_depth: int = DEFAULT_MAX_JSON_DEPTH

    @property
    def max_json_depth(self) -> int:
        """How deep an event's data or metadata may nest (default 64)."""
        return self._max_json_depth

    @max_json_depth.setter
    def max_json_depth(self, depth: int) -> None:
        if (
            isinstance(depth, bool)
            or not isinstance(depth, int)
            or not 1 <= depth <= MAX_JSON_DEPTH
        ):
            raise InvalidArgument("max_json_depth", f"must be an int from 1 to {MAX_JSON_DEPTH}")
        self._max_json_depth = depth

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
            stream_id, events, expected_version, self.max_event_bytes, self.max_json_depth
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
        after, limit, categories, types = check_read_page(after, limit, categories, types)
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
