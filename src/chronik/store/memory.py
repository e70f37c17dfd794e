"""The in-memory event store: the reference implementation, for tests and examples.

Everything lives in Python lists in this process; nothing survives ``close``. Appends are
atomic: they hold the store's write lock and publish their events only at the end.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from chronik.errors import (
    CheckpointMoved,
    DuplicateEventId,
    StoreFenced,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import (
    AppendResult,
    RecordedEvent,
    category_of,
    validate_stream_id,
)
from chronik.store.capabilities import missing
from chronik.store.port import EventLog, Fence, Fencing, Inspectable, SqlStore, WorkerState
from chronik.store.protocol import (
    DEFAULT_MAX_EVENT_BYTES,
    READ_PAGE_SIZE,
    DeadLetter,
    EncodedEvent,
    EventStoreBase,
    ImportedEvent,
    InlineProjection,
    StoredCopy,
    StoreStats,
    StreamInfo,
    check_expected,
    check_read_all,
    check_read_correlation,
    check_read_stream,
    check_streams,
    plan_import,
    resolve_duplicate,
)
from chronik.store.urls import redact_url

__all__ = ["MemoryEventStore", "MemoryTx"]


class MemoryTx:
    """Buffered checkpoint and dead-letter writes, applied by :meth:`commit`."""

    dialect = "memory"
    clock_sql = ""  # runs no SQL

    def __init__(self, store: MemoryEventStore) -> None:
        self._store = store
        self._checkpoints: dict[str, int] = {}
        self._dead: list[tuple[str, RecordedEvent, str, int]] = []
        self._deleted: set[int] = set()
        self._versions: dict[str, int] = {}
        self._imports: list[ImportedEvent] = []
        self._expected: dict[str, int] = {}

    def timestamp(self, at: datetime) -> Any:
        return at

    # the memory store runs no SQL (it has no SqlStore capability): these raise
    # MissingCapability, which names the backends that have it

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        raise missing(self._store, SqlStore)

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        raise missing(self._store, SqlStore)

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[Any, ...] | None:
        raise missing(self._store, SqlStore)

    async def get_checkpoint(self, name: str) -> int | None:
        return self._checkpoints.get(name, self._store._checkpoints.get(name))

    async def set_checkpoint(self, name: str, position: int) -> None:
        self._checkpoints[name] = position

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        actual = await self.get_checkpoint(name) or 0
        if actual != expected:
            raise CheckpointMoved(name, expected, actual)
        self._expected.setdefault(name, expected)  # checked again at commit
        self._checkpoints[name] = position

    async def add_dead_letter(
        self, subscription: str, event: RecordedEvent, error: str, attempts: int
    ) -> None:
        self._dead.append((subscription, event, error, attempts))

    async def delete_dead_letter(self, dead_letter_id: int) -> None:
        self._deleted.add(dead_letter_id)

    async def get_active_version(self, projection: str) -> int | None:
        return self._versions.get(projection, self._store._active_versions.get(projection))

    async def set_active_version(self, projection: str, version: int) -> None:
        self._versions[projection] = version

    async def import_events(self, events: Sequence[ImportedEvent]) -> None:
        self._plan([*self._imports, *events])
        self._imports.extend(events)

    def _plan(self, events: Sequence[ImportedEvent]) -> list[tuple[ImportedEvent, int]]:
        store = self._store
        if events:
            store._refuse_if_fenced()
        current = {
            ev.stream_id: stream[-1].version
            for ev in events
            if (stream := store._streams.get(ev.stream_id))
        }
        planned = plan_import(events, current, store.max_event_bytes, store.max_json_depth)
        for ev, _ in planned:
            if ev.event_id in store._by_id:
                raise DuplicateEventId(ev.stream_id, ev.event_id, "is stored already")
        return planned

    def _commit_imports(self) -> None:
        store = self._store
        planned = self._plan(self._imports)  # again: appends may have run meanwhile
        position = store._positions[-1] if store._log else 0
        for offset, (ev, version) in enumerate(planned, start=1):
            record = RecordedEvent(
                event_id=ev.event_id,
                stream_id=ev.stream_id,
                version=version,
                position=position + offset,
                type=ev.type,
                schema_version=ev.schema_version,
                raw_data=ev.data,
                raw_metadata=ev.metadata,
                recorded_at=ev.recorded_at,
            )
            store._log.append(record)
            store._positions.append(record.position)
            store._streams.setdefault(ev.stream_id, []).append(record)
            store._by_id[ev.event_id] = record
        store._changed.set()
        store._changed = asyncio.Event()

    def commit(self) -> None:
        store = self._store
        for name, expected in self._expected.items():
            actual = store._checkpoints.get(name, 0)
            if actual != expected:  # another transaction moved it meanwhile: apply nothing
                raise CheckpointMoved(name, expected, actual)
        if self._imports:
            self._commit_imports()
        store._checkpoints.update(self._checkpoints)
        store._active_versions.update(self._versions)
        letters = [d for d in store._dead_letters if d.id not in self._deleted]
        next_id = max((d.id for d in store._dead_letters), default=0) + 1
        for subscription, event, error, attempts in self._dead:
            existing = next(
                (
                    d
                    for d in letters
                    if d.subscription == subscription and d.event_id == event.event_id
                ),
                None,
            )
            if existing is not None:
                letters.remove(existing)
                attempts += existing.attempts
            letters.append(
                DeadLetter(
                    next_id,
                    subscription,
                    event.position,
                    event.event_id,
                    event.stream_id,
                    event.version,
                    event.type,
                    error,
                    attempts,
                    datetime.now(UTC).isoformat(),
                )
            )
            next_id += 1
        store._dead_letters = letters


class MemoryEventStore(EventStoreBase):
    """Events in a list; streams as lists of indexes into it. No SQL."""

    capabilities = frozenset({EventLog, Inspectable, WorkerState, Fencing})

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._log: list[RecordedEvent] = []
        self._positions: list[int] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._by_id: dict[uuid.UUID, RecordedEvent] = {}
        self._closed = False
        self._changed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._checkpoints: dict[str, int] = {}
        self._dead_letters: list[DeadLetter] = []
        self._active_versions: dict[str, int] = {}
        self.inline_projections: list[InlineProjection] = []
        self._fence: Fence | None = None

    def _refuse_if_fenced(self) -> None:
        if self._fence is not None:
            raise StoreFenced(self._fence.moved_to, self._fence.position)

    async def fence(self, moved_to: str) -> Fence:
        """Fence the store (see :class:`chronik.store.port.Fencing`)."""
        moved_to = redact_url(moved_to)  # the fence row is readable by anyone
        self._check_open()
        async with self._write_lock:
            if self._fence is None:
                head = self._positions[-1] if self._log else 0
                self._fence = Fence(moved_to, head, datetime.now(UTC))
            return self._fence

    async def fence_state(self) -> Fence | None:
        self._check_open()
        return self._fence

    async def unfence(self) -> None:
        self._check_open()
        async with self._write_lock:
            self._fence = None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the memory store is closed")

    async def _write(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        async with self._write_lock:
            return await self._append_locked(stream_id, expected, batch)

    async def _append_locked(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        stored = {
            ev.event_id: StoredCopy(
                rec.event_id, rec.stream_id, rec.version, rec.position, rec.type, rec.raw_data
            )
            for ev in batch
            if (rec := self._by_id.get(ev.event_id)) is not None
        }
        if batch:
            self._refuse_if_fenced()
        original = resolve_duplicate(stream_id, expected, batch, stored)
        if original is not None:
            return original
        stream = self._streams.get(stream_id)
        current = stream[-1].version if stream else -1
        check_expected(stream_id, expected, current)
        if not batch:
            return AppendResult(position=self._positions[-1] if self._log else 0, version=current)
        now = datetime.now(UTC)
        position = self._positions[-1] if self._log else 0
        records = []
        for offset, ev in enumerate(batch, start=1):
            records.append(
                RecordedEvent(
                    event_id=ev.event_id,
                    stream_id=stream_id,
                    version=current + offset,
                    position=position + offset,
                    type=ev.type,
                    schema_version=ev.schema_version,
                    raw_data=ev.data,
                    raw_metadata=ev.metadata,
                    recorded_at=now,
                )
            )
        if self.inline_projections:
            async with self.transaction() as tx:
                for projection in self.inline_projections:
                    for record in records:
                        if projection.accepts(record):
                            await projection.handle(record, tx)
        self._log.extend(records)
        self._positions.extend(r.position for r in records)
        self._streams.setdefault(stream_id, []).extend(records)
        for r in records:
            self._by_id[r.event_id] = r
        self._changed.set()
        self._changed = asyncio.Event()
        last = records[-1]
        return AppendResult(position=last.position, version=last.version)

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        self._check_open()
        validate_stream_id(stream_id)
        from_version, limit = check_read_stream(from_version, limit, backwards)
        stream = self._streams.get(stream_id)
        if not stream:
            raise StreamNotFound(stream_id)
        if backwards:
            last = len(stream) - 1
            start = last if from_version is None else min(from_version, last)
            selected = stream[start::-1] if start >= 0 else []
        else:
            selected = stream[max(from_version or 0, 0) :]
        if limit is not None:
            selected = selected[: max(limit, 0)]
        for index, rec in enumerate(selected):
            if index % READ_PAGE_SIZE == READ_PAGE_SIZE - 1:
                await asyncio.sleep(0)
            yield rec

    async def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        self._check_open()
        after, categories, types, limit = check_read_all(after, categories, types, limit)
        cats = set(categories) if categories is not None else None
        kinds = set(types) if types is not None else None
        if limit is not None and limit <= 0:
            return
        index = bisect.bisect_right(self._positions, after)
        remaining = limit if limit is not None else -1
        yielded = 0
        while remaining != 0 and index < len(self._log):
            rec = self._log[index]
            index += 1
            if cats is not None and category_of(rec.stream_id) not in cats:
                continue
            if kinds is not None and rec.type not in kinds:
                continue
            yield rec
            remaining -= 1
            yielded += 1
            if yielded % READ_PAGE_SIZE == 0:
                await asyncio.sleep(0)

    async def read_correlation(
        self, correlation_id: str, *, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events with this correlation id, by position (a scan: memory stores are small)."""
        self._check_open()
        correlation_id, limit = check_read_correlation(correlation_id, limit)
        found = [e for e in self._log if e.correlation_id == correlation_id]
        return found if limit is None else found[: max(limit, 0)]

    async def stream_version(self, stream_id: str) -> int | None:
        self._check_open()
        validate_stream_id(stream_id)
        stream = self._streams.get(stream_id)
        return stream[-1].version if stream else None

    async def streams(
        self, *, category: str | None = None, limit: int | None = None
    ) -> AsyncIterator[StreamInfo]:
        self._check_open()
        category, limit = check_streams(category, limit)
        count = 0
        for stream_id in sorted(self._streams):
            if category is not None and category_of(stream_id) != category:
                continue
            if limit is not None and count >= limit:
                return
            last = self._streams[stream_id][-1]
            count += 1
            yield StreamInfo(stream_id, last.version, last.position)

    async def head_position(self) -> int:
        self._check_open()
        return self._positions[-1] if self._log else 0

    async def stats(self) -> StoreStats:
        self._check_open()
        categories: dict[str, int] = {}
        for rec in self._log:
            cat = category_of(rec.stream_id)
            categories[cat] = categories.get(cat, 0) + 1
        return StoreStats(
            events=len(self._log),
            streams=len(self._streams),
            head_position=await self.head_position(),
            categories=dict(sorted(categories.items())),
            size_bytes=sum(len(r.raw_data) + len(r.raw_metadata) for r in self._log),
        )

    async def count_events(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> int:
        return len(
            [e async for e in self.read_all(after=after, categories=categories, types=types)]
        )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTx]:
        """Checkpoints and dead letters written through it apply only if the block succeeds.

        The memory store runs no SQL: read models of in-memory projections are the
        projection's own Python objects, which are not rolled back.
        """
        self._check_open()
        tx = MemoryTx(self)
        yield tx
        tx.commit()

    async def get_checkpoint(self, name: str) -> int | None:
        self._check_open()
        return self._checkpoints.get(name)

    async def checkpoints(self) -> dict[str, int]:
        self._check_open()
        return dict(self._checkpoints)

    async def dead_letters(self, subscription: str | None = None) -> list[DeadLetter]:
        self._check_open()
        return [d for d in self._dead_letters if subscription in (None, d.subscription)]

    async def get_active_version(self, projection: str) -> int | None:
        self._check_open()
        return self._active_versions.get(projection)

    def change_marker(self) -> asyncio.Event:
        """An event set by the next append (take it before a read: no change is missed)."""
        return self._changed

    async def close(self) -> None:
        self._closed = True
