"""Reading through an archive: events moved out of the events table into segment files.

``chronik archive`` (:mod:`chronik.ops.archive`) writes a category's old events into a
zstd-compressed NDJSON file (the line format of a backup's ``events.ndjson.zst``), records
the segment in ``archive_segments`` (migration 0016) and only then deletes the rows. This
module is the read side, written once for every backend: :func:`connect` wraps a store that
has archived segments in :class:`ArchiveReadThrough`, whose ``read_stream``, ``read_all``
and ``read_page`` merge the segments' events with the stored ones by version or position.
An event found in both (a segment whose removal or restore is half done) is read once, from
the store. Everything else is the wrapped store's.

A segment file is read whole, checked against the size, sha256 and event count the store
recorded, and kept in memory while the segment list does not change; a missing or altered
file raises :class:`~chronik.errors.ArchiveCorrupted` naming it: a read never silently
misses archived events.

The archiver never moves a stream's last event (it carries the stream's version, so
``stream_version`` and appends need nothing from here) nor one a checkpoint has not
processed. A store opened before its first segment was recorded is not wrapped: reopen it
(long-running processes: restart) after the first ``chronik archive`` of a store.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from chronik.errors import ArchiveCorrupted
from chronik.events import RecordedEvent, category_of
from chronik.store.capabilities import supports
from chronik.store.port import PageRead, SqlStore, Tx
from chronik.store.protocol import EventStore
from chronik.store.validation import check_read_all, check_read_page, check_read_stream

__all__ = [
    "SEGMENTS_SQL",
    "ArchiveReadThrough",
    "ArchivedEvent",
    "Segment",
    "archived_segments",
    "bare",
    "refresh",
    "load_segment",
    "reinsert",
    "select_for_archive",
    "with_archive",
]

SEGMENTS_SQL = (
    "SELECT id, category, file, sha256, bytes, events, first_position, last_position, state "
    "FROM archive_segments ORDER BY id"
)
PAGE_TTL = 1.0
"""Seconds a follower's ``read_page`` goes on with the segment list it knows."""


class ArchivedEvent(msgspec.Struct, frozen=True):
    """One event as a line of a segment file (a backup's line format): ``data`` and
    ``metadata`` the stored JSON text byte for byte, ``recorded_at`` microseconds since 1970
    (UTC), ``position`` the store's."""

    position: int
    event_id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    recorded_at: int
    data: str
    metadata: str

    def recorded(self) -> RecordedEvent:
        return RecordedEvent.from_stored(
            self.position,
            self.stream_id,
            self.version,
            self.event_id,
            self.type,
            self.schema_version,
            self.data.encode(),
            self.metadata.encode(),
            self.recorded_at,
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """One archived segment as the store recorded it."""

    id: int
    category: str
    file: str
    sha256: str
    bytes: int
    events: int
    first_position: int
    last_position: int
    state: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "events": self.events,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "state": self.state,
        }


async def archived_segments(store: object) -> list[Segment]:
    """The archived segments a store recorded (none for a store without SQL)."""
    if not supports(store, SqlStore):
        return []
    rows = await store.query(SEGMENTS_SQL)  # type: ignore[attr-defined]
    return [
        Segment(int(i), str(c), str(f), str(h), int(b), int(n), int(p0), int(p1), str(s))
        for i, c, f, h, b, n, p0, p1, s in rows
    ]


def load_segment(segment: Segment) -> list[ArchivedEvent]:
    """A segment file's events in position order, checked against the store's record.

    Raises:
        ArchiveCorrupted: the file is missing, or its size, sha256, zstd frame, lines or
            event count do not match.
    """
    import zstandard

    path = Path(segment.file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArchiveCorrupted(path, "is missing") from None
    except OSError as exc:
        raise ArchiveCorrupted(path, f"cannot be read: {exc}") from None
    if len(raw) != segment.bytes:
        raise ArchiveCorrupted(path, f"has {len(raw)} bytes, the store recorded {segment.bytes}")
    if hashlib.sha256(raw).hexdigest() != segment.sha256:
        raise ArchiveCorrupted(path, "sha256 differs from the one the store recorded")
    try:
        text = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        events = msgspec.json.Decoder(ArchivedEvent).decode_lines(text)
    except (zstandard.ZstdError, msgspec.DecodeError) as exc:
        raise ArchiveCorrupted(path, f"does not decode: {exc}") from None
    if len(events) != segment.events:
        raise ArchiveCorrupted(
            path, f"holds {len(events)} events, the store recorded {segment.events}"
        )
    if any(
        category_of(e.stream_id) != segment.category
        or not segment.first_position <= e.position <= segment.last_position
        for e in events
    ):
        raise ArchiveCorrupted(path, "holds an event outside the recorded category or range")
    return sorted(events, key=lambda e: e.position)


async def reinsert(tx: Tx, events: Sequence[ArchivedEvent]) -> int:
    """Put archived events back with their positions, ids and versions (those not stored
    already); returns how many went in."""
    if not events:
        return 0
    stored = {
        int(p)
        for (p,) in await tx.fetchall(
            "SELECT position FROM events WHERE position >= :a AND position <= :b",
            {"a": events[0].position, "b": events[-1].position},
        )
    }
    columns = "position, stream_id, version, event_id, type, schema_version, data, metadata"
    values = ":p, :s, :v, :id, :t, :sv, :d, :m"
    if tx.dialect == "sqlite":  # PostgreSQL computes category (a generated column)
        columns, values = columns + ", category", values + ", :c"
        # and its chain hash in a trigger; SQLite's writer computes it in the INSERT
        # (store/chain.py): the same hash as before archiving, so the chain holds
        columns += ", hash"
        values += (
            ", chronik_event_hash((SELECT h.hash FROM events AS h WHERE h.stream_id = :s "
            "AND h.version = :v - 1), :s, :v, :id, :t, :sv, :at, CAST(:d AS TEXT), "
            "CAST(:m AS TEXT))"
        )
    n = 0
    for e in events:
        if e.position in stored:
            continue
        recorded = e.recorded()
        await tx.execute(
            f"INSERT INTO events ({columns}, recorded_at) VALUES ({values}, :at)",
            {"p": e.position, "s": e.stream_id, "v": e.version, "id": e.event_id,
             "t": e.type, "sv": e.schema_version, "d": e.data, "m": e.metadata,
             "c": category_of(e.stream_id), "at": tx.timestamp(recorded.recorded_at)},
        )  # fmt: skip
        n += 1
    return n


def _micros(at: object) -> int:
    if isinstance(at, datetime):
        return (at - _EPOCH) // timedelta(microseconds=1)
    return int(str(at))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def select_for_archive(
    sql: SqlStore,
    category: str,
    *,
    hold: int,
    before: int | None,
    cutoff: datetime | None,
    closed_streams: bool,
    limit: int,
) -> list[ArchivedEvent]:
    """The oldest events of ``category`` an archive may move, in position order (at most
    ``limit``): at or below ``hold`` (what every reader processed), below position
    ``before`` or recorded before ``cutoff``, never a stream's last event; with
    ``closed_streams`` only of streams whose last event is itself that old."""
    text = "data::text, metadata::text" if sql.dialect == "postgresql" else "data, metadata"
    event_id = "event_id::text" if sql.dialect == "postgresql" else "event_id"
    rules: list[str] = []
    params: dict[str, Any] = {"c": category, "hold": hold, "n": limit}
    if before is not None:
        rules.append("e.position < :before")
        params["before"] = before
        if closed_streams:
            rules.append("s.last_position < :before")
    if cutoff is not None:
        params["cutoff"] = cutoff if sql.dialect == "postgresql" else _micros(cutoff)
        rules.append("e.recorded_at < :cutoff")
        if closed_streams:
            rules.append("s.last_at < :cutoff")
    rows = await sql.query(
        f"SELECT e.position, {event_id}, e.stream_id, e.version, e.type, e.schema_version, "
        f"e.recorded_at, {text} FROM events e JOIN ("
        "SELECT stream_id, max(version) AS last_version, max(position) AS last_position, "
        "max(recorded_at) AS last_at FROM events WHERE category = :c GROUP BY stream_id"
        ") s ON s.stream_id = e.stream_id "
        "WHERE e.category = :c AND e.position <= :hold AND e.version < s.last_version AND "
        + " AND ".join(rules or ["1 = 0"])
        + " ORDER BY e.position LIMIT :n",
        params,
    )
    return [
        ArchivedEvent(int(p), str(i), str(s), int(v), str(t), int(sv), _micros(at), str(d), str(m))
        for p, i, s, v, t, sv, at, d, m in rows
    ]


class _Loaded:
    """The events of the segments a store has, by stream and in position order."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.key = tuple((s.id, s.sha256) for s in segments)
        self.events: list[ArchivedEvent] = []
        self.streams: dict[str, list[ArchivedEvent]] = {}
        by_position: dict[int, ArchivedEvent] = {}
        for segment in segments:  # a half-restored segment and a newer one may share events
            by_position.update((e.position, e) for e in load_segment(segment))
        self.events = sorted(by_position.values(), key=lambda e: e.position)
        for e in self.events:
            self.streams.setdefault(e.stream_id, []).append(e)
        for events in self.streams.values():
            events.sort(key=lambda e: e.version)


def _merge(
    archived: Iterator[RecordedEvent], stored: list[RecordedEvent], key: str, reverse: bool
) -> Iterator[RecordedEvent]:
    seen: set[int] = set()
    merged = heapq.merge(
        stored,  # first: an event in both is read from the store
        archived,
        key=lambda e: getattr(e, key),
        reverse=reverse,
    )
    for e in merged:
        k = getattr(e, key)
        if k in seen:
            continue
        seen.add(k)
        yield e


class ArchiveReadThrough:
    """A store whose reads also return the events of its archived segments (see the
    module's docstring). Every other attribute is the wrapped store's."""

    capabilities: ClassVar[frozenset[object]] = frozenset()
    _classes: ClassVar[dict[type, type[ArchiveReadThrough]]] = {}

    def __init__(self, inner: EventStore, segments: Sequence[Segment]) -> None:
        self._inner = inner
        self._segments = list(segments)
        self._cached: _Loaded | None = None  # the files are read at the first read
        self._checked = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def wrapped(self) -> EventStore:
        """The store without read-through."""
        return self._inner

    @property
    def _loaded(self) -> _Loaded:
        key = tuple((s.id, s.sha256) for s in self._segments)
        if self._cached is None or self._cached.key != key:
            self._cached = _Loaded(self._segments)
        return self._cached

    async def refresh(self) -> None:
        """Read the segment list again (the files of new segments at the next read)."""
        self._segments = await archived_segments(self._inner)
        self._checked = time.monotonic()

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        """``read_stream`` over the archive and the store, by version."""
        start, count = check_read_stream(from_version, limit, backwards)
        stored = [
            e
            async for e in self._inner.read_stream(
                stream_id, from_version=from_version, limit=limit, backwards=backwards
            )
        ]
        # the store holds a suffix of each stream (archives and retention take prefixes):
        # a read that starts where it asked, or reached version 0 or its limit, is whole
        if (
            bool(stored) and (stored[-1].version == 0 or len(stored) == count)
            if backwards
            else not stored or stored[0].version == start
        ):
            for e in stored:
                yield e
            return
        if backwards or not self._covers(stream_id, start or 0, stored[0].version):
            await self.refresh()  # a segment recorded since the list was read
        if backwards:
            archived = (
                e.recorded()
                for e in reversed(self._loaded.streams.get(stream_id, []))
                if start is None or e.version <= start
            )
        else:
            archived = (
                e.recorded()
                for e in self._loaded.streams.get(stream_id, [])
                if e.version >= (start or 0)
            )
        for n, e in enumerate(_merge(archived, stored, "version", backwards)):
            if count is not None and n >= count:
                return
            yield e

    def _covers(self, stream_id: str, low: int, high: int) -> bool:
        """Whether the known segments hold versions ``low`` to ``high - 1`` of the stream."""
        versions = [e.version for e in self._loaded.streams.get(stream_id, [])]
        a, b = bisect.bisect_left(versions, low), bisect.bisect_left(versions, high)
        return b - a == high - low

    async def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """``read_all`` over the archive and the store, by position."""
        start, cats, kinds, count = check_read_all(after, categories, types, limit)
        await self.refresh()
        n = 0
        archived = self._archived_after(start, cats, kinds)
        pending = next(archived, None)
        async for e in self._inner.read_all(
            after=after, categories=categories, types=types, limit=limit
        ):
            while pending is not None and pending.position <= e.position:
                if pending.position < e.position:
                    if count is not None and n >= count:
                        return
                    yield pending.recorded()
                    n += 1
                pending = next(archived, None)
            if count is not None and n >= count:
                return
            yield e
            n += 1
        while pending is not None and (count is None or n < count):
            yield pending.recorded()
            n += 1
            pending = next(archived, None)

    def _archived_after(
        self, after: int, categories: list[str] | None, types: list[str] | None
    ) -> Iterator[ArchivedEvent]:
        events = self._loaded.events
        lo = 0
        hi = len(events)
        while lo < hi:  # the first event above `after`
            mid = (lo + hi) // 2
            if events[mid].position <= after:
                lo = mid + 1
            else:
                hi = mid
        cats = None if categories is None else set(categories)
        kinds = None if types is None else set(types)
        for e in events[lo:]:
            if cats is not None and category_of(e.stream_id) not in cats:
                continue
            if kinds is not None and e.type not in kinds:
                continue
            yield e

    async def read_page(
        self,
        *,
        after: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> PageRead:
        """The wrapped store's page with the archived events up to its ``caught_up_to``."""
        start, page, cats, kinds = check_read_page(after, limit, categories, types)
        events, caught_up_to, more = await self._inner.read_page(
            after=after, limit=limit, categories=categories, types=types
        )
        if time.monotonic() - self._checked > PAGE_TTL:
            await self.refresh()
        archived = [
            e.recorded()
            for e in self._archived_after(start, cats, kinds)
            if e.position <= caught_up_to
        ]
        if not archived:
            return events, caught_up_to, more
        merged = list(_merge(iter(archived), list(events), "position", False))
        if len(merged) > page:
            return merged[:page], merged[page - 1].position, True
        return merged, caught_up_to, more

    async def close(self) -> None:
        await self._inner.close()

    async def __aenter__(self) -> ArchiveReadThrough:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.close()


def bare(store: EventStore) -> EventStore:
    """``store`` without read-through (itself when it has none)."""
    return store.wrapped if isinstance(store, ArchiveReadThrough) else store


async def refresh(store: EventStore) -> None:
    """Make a store that reads through its archive read the segment list again (after this
    process archived or restored); nothing for other stores."""
    if isinstance(store, ArchiveReadThrough):
        await store.refresh()


def with_archive(store: EventStore, segments: Sequence[Segment]) -> EventStore:
    """``store`` wrapped in :class:`ArchiveReadThrough` (declaring what it declares), or
    ``store`` itself when there are no segments or it is wrapped already."""
    if not segments or isinstance(store, ArchiveReadThrough):
        return store
    backend = type(store)
    cls = ArchiveReadThrough._classes.get(backend)
    if cls is None:
        cls = type(
            f"Archived{backend.__name__}",
            (ArchiveReadThrough,),
            {"capabilities": getattr(backend, "capabilities", frozenset())},
        )
        ArchiveReadThrough._classes[backend] = cls
    wrapped: Any = cls(store, segments)
    return wrapped  # type: ignore[no-any-return]
