"""KurrentDB's stream semantics over a chronik store: appends with tombstone checks,
soft delete, tombstones, stream metadata, and reads in both directions.

Nothing here knows gRPC: :mod:`chronik.kurrent.streams` translates messages and calls this.

How deletion is represented (docs/kurrent-protocol.md has the full story):

- **Stream metadata** is what KurrentDB does: ``$metadata`` events in the stream ``$$name``
  (chronik stream id ``kurrent$$name``); the last one is in force.
- **Soft delete** appends a ``$metadata`` event with ``$tb`` (truncate before) set to the
  stream's next version: reads of the stream answer "not found" until it is written again,
  and a new append continues the numbering (``NO_STREAM`` is accepted, as KurrentDB does).
- **Tombstone** appends one ``$streamDeleted`` event to the stream itself: it is the stream's
  last event for ever; reads, appends and deletes answer "stream deleted".

chronik's own readers (``chronik events``, projections) see all of these as ordinary events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chronik.errors import ConcurrencyError, DuplicateEventId, StreamNotFound
from chronik.events import (
    ANY,
    MAX_VERSION,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
)
from chronik.kurrent.mapping import METADATA_TYPE, TOMBSTONE_TYPE, metadata_stream_of
from chronik.store import SqlStore, supports
from chronik.store.port import EventStore

__all__ = ["SETTLE_SECONDS", "KurrentLog", "Visibility"]  # its errors are the face's own signals

_PAGE = 500
_ANY_RETRIES = 50
_SETTLE_POLL = 0.02
SETTLE_SECONDS = 10.0
"""How long a one-off read of ``$all`` waits for appends that committed before it but are not
readable yet (PostgreSQL: a transaction that began earlier is still open), so that a client
reads its own acknowledged writes. After it, the read answers what is readable."""


class StreamDeleted(Exception):
    """The stream is tombstoned (protocol face: ``StreamDeleted``)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.stream_id = stream_id


class WrongExpectedVersion(Exception):
    """The stream is not where the request expected it (``actual`` ``None``: no stream)."""

    def __init__(self, stream_id: str, expected: int, actual: int | None) -> None:
        super().__init__(stream_id, expected, actual)
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class Visibility:
    """What of a stream a reader sees, from its metadata and its last event."""

    last_version: int | None
    first_visible: int
    max_age: float | None
    tombstoned: bool

    @property
    def empty(self) -> bool:
        return self.last_version is None or self.first_visible > self.last_version


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


class KurrentLog:
    """KurrentDB's append, delete, tombstone and read rules over one chronik store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def last_event(self, stream_id: str) -> RecordedEvent | None:
        try:
            async for event in self.store.read_stream(stream_id, backwards=True, limit=1):
                return event
        except StreamNotFound:
            return None
        return None

    async def stream_metadata(self, stream_id: str) -> dict[str, Any]:
        """The metadata in force for a stream (the last ``$metadata`` event), or ``{}``."""
        last = await self.last_event(metadata_stream_of(stream_id))
        if last is None:
            return {}
        try:
            return dict(last.data)
        except ValueError:
            return {}

    async def visibility(self, stream_id: str) -> Visibility:
        last = await self.last_event(stream_id)
        if last is not None and last.type == TOMBSTONE_TYPE:
            return Visibility(last.version, last.version + 1, None, True)
        meta = await self.stream_metadata(stream_id)
        first = 0
        tb = _int_or_none(meta.get("$tb"))
        if tb is not None:
            first = max(first, tb)
        max_count = _int_or_none(meta.get("$maxCount"))
        if max_count is not None and last is not None:
            first = max(first, last.version + 1 - max(max_count, 0))
        age = meta.get("$maxAge")
        max_age = float(age) if isinstance(age, int | float) and not isinstance(age, bool) else None
        return Visibility(None if last is None else last.version, first, max_age, False)

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected: int
    ) -> AppendResult:
        """Append with KurrentDB's expectations, refusing a tombstoned stream.

        The tombstone check and the append are one step: the append names the exact version
        the check saw, and a concurrent writer makes it retry (``ANY``, ``STREAM_EXISTS``) or
        fail (an exact revision, ``NO_STREAM``).
        """
        if expected > MAX_VERSION:  # no stream gets there: a conflict, not a bad request
            last = await self.last_event(stream_id)
            raise WrongExpectedVersion(stream_id, expected, None if last is None else last.version)
        if expected == NO_STREAM:  # a tombstoned stream exists: chronik refuses this append
            try:
                return await self.store.append(stream_id, events, expected_version=NO_STREAM)
            except ConcurrencyError:
                pass  # tombstoned, soft-deleted or simply there: look below
        for _ in range(_ANY_RETRIES):
            last = await self.last_event(stream_id)
            if last is not None and last.type == TOMBSTONE_TYPE:
                raise StreamDeleted(stream_id)
            resolved = expected
            if expected in (ANY, STREAM_EXISTS) and last is not None:
                resolved = last.version
            elif expected == NO_STREAM and last is not None:
                vis = await self.visibility(stream_id)
                if vis.empty:  # soft-deleted: the stream may be written again from scratch
                    resolved = last.version
            try:
                return await self.store.append(stream_id, events, expected_version=resolved)
            except ConcurrencyError as exc:
                if resolved != expected and expected in (ANY, STREAM_EXISTS):
                    continue  # another writer got there first: look again
                raise WrongExpectedVersion(stream_id, expected, _actual(exc.actual)) from exc
            except DuplicateEventId:
                if resolved == expected:
                    raise
                # an idempotent retry of an append that succeeded: chronik answers it with
                # the original result when given the client's own expectation
                return await self.store.append(stream_id, events, expected_version=expected)
        raise WrongExpectedVersion(stream_id, expected, None)  # pragma: no cover - live-lock

    def _check(self, stream_id: str, expected: int, last: RecordedEvent | None) -> None:
        actual = None if last is None else last.version
        ok = (
            expected == ANY
            or (expected == NO_STREAM and actual is None)
            or (expected == STREAM_EXISTS and actual is not None)
            or (expected >= 0 and actual == expected)
        )
        if not ok:
            raise WrongExpectedVersion(stream_id, expected, actual)

    async def delete(self, stream_id: str, expected: int) -> int:
        """Soft-delete: ``$tb`` set past the last event. Returns the metadata event's position."""
        last = await self.last_event(stream_id)
        if last is not None and last.type == TOMBSTONE_TYPE:
            raise StreamDeleted(stream_id)
        self._check(stream_id, expected, last)
        if last is None:
            raise WrongExpectedVersion(stream_id, expected, None)
        meta_stream = metadata_stream_of(stream_id)
        for _ in range(_ANY_RETRIES):
            meta_last = await self.last_event(meta_stream)
            meta = dict(meta_last.data) if meta_last is not None else {}
            meta["$tb"] = last.version + 1
            try:
                result = await self.store.append(
                    meta_stream,
                    [NewEvent(METADATA_TYPE, meta)],
                    expected_version=NO_STREAM if meta_last is None else meta_last.version,
                )
            except ConcurrencyError:
                continue
            return result.position
        raise WrongExpectedVersion(meta_stream, ANY, None)  # pragma: no cover

    async def tombstone(self, stream_id: str, expected: int) -> int:
        """Hard-delete: append ``$streamDeleted``. Returns its position."""
        last = await self.last_event(stream_id)
        if last is not None and last.type == TOMBSTONE_TYPE:
            raise StreamDeleted(stream_id)
        self._check(stream_id, expected, last)
        try:
            result = await self.store.append(
                stream_id,
                [NewEvent(TOMBSTONE_TYPE, {})],
                expected_version=NO_STREAM if last is None else last.version,
            )
        except ConcurrencyError as exc:
            raise WrongExpectedVersion(stream_id, expected, _actual(exc.actual)) from exc
        return result.position

    async def read_stream(
        self, stream_id: str, vis: Visibility, *, start: int | None, backwards: bool, count: int
    ) -> AsyncIterator[RecordedEvent]:
        """The visible events of a stream, ``count`` at most, a page at a time."""
        if vis.last_version is None or count <= 0:
            return
        oldest = None
        if vis.max_age is not None:
            oldest = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=vis.max_age)
        if backwards:
            version = vis.last_version if start is None else min(start, vis.last_version)
        else:
            version = vis.first_visible if start is None else max(start, vis.first_visible)
        left = count
        while left > 0 and version >= vis.first_visible and version <= vis.last_version:
            page = min(left, _PAGE)
            got = 0
            try:
                async for event in self.store.read_stream(
                    stream_id, from_version=version, limit=page, backwards=backwards
                ):
                    got += 1
                    version = event.version - 1 if backwards else event.version + 1
                    if event.version < vis.first_visible or event.type == TOMBSTONE_TYPE:
                        continue
                    if oldest is not None and event.recorded_at < oldest:
                        continue
                    left -= 1
                    yield event
            except StreamNotFound:
                return
            if got < page:
                return

    async def read_all_forwards(
        self, after: int, count: int, accept: Callable[[RecordedEvent], bool]
    ) -> AsyncIterator[RecordedEvent]:
        """Events after ``after`` in chronik's global order (holes never passed)."""
        left = count
        deadline = time.monotonic() + SETTLE_SECONDS
        while left > 0:
            events, upto, more = await self.store.read_page(after=after, limit=_PAGE)
            for event in events:
                if accept(event):
                    left -= 1
                    yield event
                    if left <= 0:
                        return
            if not more:
                return
            if not events and upto <= after:
                # committed but not readable yet (PostgreSQL: an older transaction is still
                # open): wait for it, so a read sees the appends acknowledged before it
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(_SETTLE_POLL)
            after = max(upto, after)

    async def settled_head(self) -> int:
        """The head position once every append committed before this call is readable (or
        after :data:`SETTLE_SECONDS`): what a backwards read starts from."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            head = await self.store.head_position()
            events, _, more = await self.store.read_page(after=head, limit=1)
            if events or not more or time.monotonic() >= deadline:
                return head  # (an event past the head committed after this call began)
            await asyncio.sleep(_SETTLE_POLL)

    async def read_all_backwards(
        self, before: int | None, count: int, accept: Callable[[RecordedEvent], bool]
    ) -> AsyncIterator[RecordedEvent]:
        """Events below ``before`` (``None``: from the head), newest first.

        Only positions a forward reader can see now (at or below the head) are read; the
        port has no backwards read of the global order, so on SQL stores one query lists
        the positions of a page and ``read_all`` fetches it.
        """
        head = await self.settled_head()
        hi = head if before is None else min(head, before - 1)
        left = count
        if not supports(self.store, SqlStore):
            events = [e async for e in self.store.read_all(after=0) if e.position <= hi]
            for event in reversed(events):
                if left <= 0:
                    return
                if accept(event):
                    left -= 1
                    yield event
            return
        sql: Any = self.store
        while left > 0 and hi > 0:
            rows = await sql.query(
                "SELECT position FROM events WHERE position <= :hi ORDER BY position DESC LIMIT :n",
                {"hi": hi, "n": _PAGE},
            )
            if not rows:
                return
            lo = int(rows[-1][0])
            page = [e async for e in self.store.read_all(after=lo - 1, limit=len(rows))]
            for event in reversed(page):
                if event.position > hi:
                    continue
                if accept(event):
                    left -= 1
                    yield event
                    if left <= 0:
                        return
            hi = lo - 1

    async def wait(self, marker: asyncio.Event, timeout: float) -> None:
        """Wait for the store's next change (or ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(marker.wait(), timeout)


def _actual(actual: int | None) -> int | None:
    return None if actual is None or actual < 0 else actual
