"""Where snapshots live: a table beside the events (a store with SQL) or a dict (memory).

:func:`snapshot_store` gives the one :class:`SnapshotStore` of an event store: the SQL one
when the store has the :class:`~chronik.store.SqlStore` capability, else one in this
process. The SQL implementation writes through ``transaction()`` and reads through
``query()`` with ``:name`` parameters, so one class serves SQLite and PostgreSQL; the table
comes from migration ``0003_snapshots.sql`` of each backend (``0008_snapshot_event_id.sql``
adds the id of the event a snapshot was taken after).

:meth:`SnapshotStore.invalid` lists the snapshots that no longer match their stream (ahead of
it, or another event at their version); loaders skip those, ``chronik check`` reports them
and ``chronik snapshots prune --invalid`` deletes them.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chronik.errors import ChronikError, StreamNotFound
from chronik.events import RecordedEvent, category_of
from chronik.store.capabilities import require, supports
from chronik.store.port import EventStore, SqlStore, Tx

__all__ = [
    "invalidate_streams",
    "MemorySnapshotStore",
    "Snapshot",
    "SnapshotProblem",
    "SnapshotStats",
    "SnapshotStore",
    "SqlSnapshotStore",
    "snapshot_store",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The encoded state of ``stream_id`` after its event ``version`` (always a committed one)."""

    stream_id: str
    version: int
    state_version: str
    state: bytes
    """msgspec JSON of the state (of its field record, for an :class:`~chronik.Aggregate`)."""
    created_at: datetime
    event_id: uuid.UUID | None = None
    """The id of the stream's event at ``version`` when the snapshot was taken (filled in by
    :meth:`SnapshotStore.save`). A loader uses the snapshot only while that event is still
    there: a restored backup or a re-copied stream has other events at the same versions."""

    @property
    def category(self) -> str:
        return category_of(self.stream_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view without the state itself (what ``--json`` prints)."""
        return {
            "stream_id": self.stream_id,
            "version": self.version,
            "state_version": self.state_version,
            "bytes": len(self.state),
            "created_at": self.created_at.isoformat(),
            "event_id": None if self.event_id is None else str(self.event_id),
        }

    def mismatch(self, event_id: uuid.UUID | None) -> str | None:
        """Why this snapshot does not belong to a stream whose event at ``version`` has id
        ``event_id`` (``None``: the stream has no event there); ``None`` when it does."""
        if event_id is None:
            return "ahead of its stream (no event at its version)"
        if self.event_id is None:
            return "no event id recorded (written by hand, or by a chronik before 0008)"
        if event_id != self.event_id:
            return (
                f"taken after event {self.event_id}, but the stream has event {event_id} at "
                f"version {self.version} (a restored backup, a re-copied stream?)"
            )
        return None


@dataclass(frozen=True, slots=True)
class SnapshotProblem:
    """A stored snapshot that a loader must not trust (:meth:`SnapshotStore.invalid`,
    :func:`~chronik.snapshots.verify_snapshots`)."""

    stream_id: str
    version: int
    state_version: str
    reason: str
    kind: str = "mismatch"
    """``"ahead"`` (the stream has no event at its version), ``"mismatch"`` (another event
    there, or no event id recorded), ``"undecodable"`` or ``"differs"`` (from a replay; these
    two need the snapshot configuration)."""


@dataclass(frozen=True, slots=True)
class SnapshotStats:
    """Snapshots of one category (``chronik snapshots stats``)."""

    category: str
    snapshots: int
    streams: int
    bytes: int
    oldest: datetime | None
    newest: datetime | None

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)

        def age(at: datetime | None) -> float | None:
            return None if at is None else round(max((now - at).total_seconds(), 0.0), 3)

        return {
            "category": self.category,
            "snapshots": self.snapshots,
            "streams": self.streams,
            "bytes": self.bytes,
            "oldest_age_seconds": age(self.oldest),
            "newest_age_seconds": age(self.newest),
        }


# -- per-process tracking of what policies need ---------------------------------------------


@dataclass(slots=True)
class _Track:
    known: bool = False
    snapshot_version: int = -1
    snapshot_at: float | None = None
    reads: int = 0
    """Loads to read the stream since the last snapshot (not those of commands)."""
    writes: int = 0
    """Commands that appended to the stream since the last snapshot."""
    ms_per_event: float = 0.0
    warned: bool = False
    rejected: set[tuple[int, str]] = dataclasses.field(default_factory=set)
    """``(version, reason)`` of snapshots skipped already (warned once, then at DEBUG)."""


class _Tracks:
    """The last snapshot, reads and replay cost per stream, bounded (least recently used)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._items: OrderedDict[tuple[str, str], _Track] = OrderedDict()
        self._limit = limit

    def get(self, state_version: str, stream_id: str) -> _Track:
        key = (state_version, stream_id)
        track = self._items.get(key)
        if track is None:
            track = self._items[key] = _Track()
            if len(self._items) > self._limit:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return track


class SnapshotStore(abc.ABC):
    """Snapshots of one event store, kept apart from its events (see :func:`snapshot_store`)."""

    def __init__(self, events: EventStore) -> None:
        self.events = events
        self._tracks = _Tracks()

    async def save(self, snapshot: Snapshot, *, keep: int | None = None) -> Snapshot:
        """Store ``snapshot`` (replacing one of the same stream, state version and version),
        then delete all but the newest ``keep`` of its stream.

        The id of the stream's event at ``snapshot.version`` is recorded with it (the one
        given must be that one). Snapshots of the stream ahead of its committed version are
        deleted in the same write: no loader can use them, and they would outrank the new one
        in ``keep``. Returns the snapshot as stored.

        Raises:
            ChronikError: ``snapshot.version`` is not a committed version of the stream, or
                the event there is not ``snapshot.event_id``.
        """
        committed = await self.events.stream_version(snapshot.stream_id)
        event = None
        if committed is not None and 0 <= snapshot.version <= committed:
            event = await _event_at(self.events, snapshot.stream_id, snapshot.version)
        if event is None:
            raise ChronikError(
                f"refusing snapshot of {snapshot.stream_id!r} at version {snapshot.version}: "
                f"the stream's committed version is {committed}"
            )
        if snapshot.event_id is None:
            snapshot = dataclasses.replace(snapshot, event_id=event.event_id)
        elif snapshot.event_id != event.event_id:
            raise ChronikError(
                f"refusing snapshot of {snapshot.stream_id!r} at version {snapshot.version}: "
                f"taken after event {snapshot.event_id}, the stream has {event.event_id} there"
            )
        assert committed is not None
        await self._write(snapshot, keep, committed)
        return snapshot

    @abc.abstractmethod
    async def _write(
        self, snapshot: Snapshot, keep: int | None, committed: int | None = None
    ) -> None:
        """Upsert ``snapshot``, delete the stream's rows above ``committed`` (if given),
        apply ``keep``."""

    @abc.abstractmethod
    async def newest(
        self, stream_id: str, state_version: str | None = None, *, max_version: int | None = None
    ) -> Snapshot | None:
        """The newest snapshot of the stream: of ``state_version`` if there is one, else of
        any state version (``None`` when the stream has none at or below ``max_version``)."""

    async def load_latest(
        self, stream_id: str, state_version: str, *, max_version: int | None = None
    ) -> Snapshot | None:
        """The newest snapshot of ``stream_id`` with this state version (``None``: none)."""
        found = await self.newest(stream_id, state_version, max_version=max_version)
        return found if found is not None and found.state_version == state_version else None

    @abc.abstractmethod
    async def find(self, stream_id: str | None = None) -> list[Snapshot]:
        """Every snapshot (of one stream), by stream id, newest first."""

    @abc.abstractmethod
    async def stats(self) -> list[SnapshotStats]:
        """Count, bytes and age of the snapshots per category."""

    @abc.abstractmethod
    async def prune(
        self,
        *,
        keep: int,
        stream_id: str | None = None,
        category: str | None = None,
        stale: dict[str, str] | None = None,
    ) -> int:
        """Delete all but the newest ``keep`` snapshots per stream; returns how many went.

        ``stale`` maps categories to their current state version: snapshots of those
        categories with another state version are deleted too (no loader can use them).
        """

    @abc.abstractmethod
    async def delete(
        self, stream_id: str, *, state_version: str | None = None, version: int | None = None
    ) -> int:
        """Delete the snapshots of a stream (all, or those of one state version and/or one
        version); returns how many went. The next load replays from the events."""

    async def invalid(self) -> list[SnapshotProblem]:
        """The snapshots that do not match their stream, by stream id and version.

        Each is ``"ahead"`` (its stream has no event at its version: a restored backup, a
        truncated stream) or a ``"mismatch"`` (the event there is not the one it was taken
        after, or it records none). Loaders skip them; whether a snapshot's *state* is right
        needs its configuration: :func:`~chronik.snapshots.verify_snapshots`.
        """
        problems: list[SnapshotProblem] = []
        heads: dict[str, int | None] = {}
        for snap in sorted(await self.find(), key=lambda s: (s.stream_id, s.version)):
            if snap.stream_id not in heads:
                heads[snap.stream_id] = await self.events.stream_version(snap.stream_id)
            head = heads[snap.stream_id]
            event = None
            if head is not None and snap.version <= head:
                event = await _event_at(self.events, snap.stream_id, snap.version)
            problem = _problem(snap, None if event is None else event.event_id, head)
            if problem is not None:
                problems.append(problem)
        return problems


def _problem(
    snap: Snapshot, event_id: uuid.UUID | None, head: int | None
) -> SnapshotProblem | None:
    reason = snap.mismatch(event_id)
    if reason is None:
        return None
    if event_id is None:
        has = "no events" if head is None else f"version {head}"
        return SnapshotProblem(
            snap.stream_id, snap.version, snap.state_version,
            f"ahead of its stream (the stream has {has})", "ahead",
        )  # fmt: skip
    return SnapshotProblem(snap.stream_id, snap.version, snap.state_version, reason, "mismatch")


async def _event_at(events: EventStore, stream_id: str, version: int) -> RecordedEvent | None:
    try:
        async for event in events.read_stream(stream_id, from_version=version, limit=1):
            return event if event.version == version else None
    except StreamNotFound:
        return None
    return None


class MemorySnapshotStore(SnapshotStore):
    """Snapshots of a store without SQL (``memory://``), in this process."""

    def __init__(self, events: EventStore) -> None:
        super().__init__(events)
        self._rows: dict[str, list[Snapshot]] = {}

    async def _write(
        self, snapshot: Snapshot, keep: int | None, committed: int | None = None
    ) -> None:
        rows = [
            s
            for s in self._rows.get(snapshot.stream_id, [])
            if (s.state_version, s.version) != (snapshot.state_version, snapshot.version)
            and (committed is None or s.version <= committed)
        ]
        rows.append(snapshot)
        rows.sort(key=lambda s: (s.version, s.created_at), reverse=True)
        self._rows[snapshot.stream_id] = rows[:keep] if keep is not None else rows

    async def newest(
        self, stream_id: str, state_version: str | None = None, *, max_version: int | None = None
    ) -> Snapshot | None:
        rows = [
            s
            for s in self._rows.get(stream_id, [])
            if max_version is None or s.version <= max_version
        ]
        matching = [s for s in rows if s.state_version == state_version]
        candidates = matching or rows
        return candidates[0] if candidates else None

    async def find(self, stream_id: str | None = None) -> list[Snapshot]:
        ids = [stream_id] if stream_id is not None else sorted(self._rows)
        return [s for sid in ids for s in self._rows.get(sid, [])]

    async def stats(self) -> list[SnapshotStats]:
        by_category: dict[str, list[Snapshot]] = {}
        for rows in self._rows.values():
            for s in rows:
                by_category.setdefault(s.category, []).append(s)
        return [
            SnapshotStats(
                category,
                len(rows),
                len({s.stream_id for s in rows}),
                sum(len(s.state) for s in rows),
                min(s.created_at for s in rows),
                max(s.created_at for s in rows),
            )
            for category, rows in sorted(by_category.items())
        ]

    async def prune(
        self,
        *,
        keep: int,
        stream_id: str | None = None,
        category: str | None = None,
        stale: dict[str, str] | None = None,
    ) -> int:
        deleted = 0
        for sid, rows in list(self._rows.items()):
            if stream_id is not None and sid != stream_id:
                continue
            if category is not None and category_of(sid) != category:
                continue
            current = (stale or {}).get(category_of(sid))
            kept = [s for s in rows if current is None or s.state_version == current][:keep]
            deleted += len(rows) - len(kept)
            self._rows[sid] = kept
        return deleted

    async def delete(
        self, stream_id: str, *, state_version: str | None = None, version: int | None = None
    ) -> int:
        rows = self._rows.get(stream_id, [])
        kept = [
            s
            for s in rows
            if (state_version is not None and s.state_version != state_version)
            or (version is not None and s.version != version)
        ]
        if kept:
            self._rows[stream_id] = kept
        else:
            self._rows.pop(stream_id, None)
        return len(rows) - len(kept)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # SQLite keeps what it is given: a hand-edited row may be text
        return value.encode("utf-8")
    return bytes(value)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return _EPOCH + timedelta(microseconds=int(value))


def _as_uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:  # a hand-edited row: matches no event
        return uuid.UUID(int=0)


def _snapshot(row: tuple[Any, ...]) -> Snapshot:
    stream_id, state_version, version, state, created_at, event_id = row
    return Snapshot(
        stream_id,
        int(version),
        state_version,
        _as_bytes(state),
        _as_datetime(created_at),
        _as_uuid(event_id),
    )


_COLUMNS = "stream_id, state_version, version, state, created_at, event_id"
_UPSERT = (
    "INSERT INTO snapshots (stream_id, state_version, version, category, state, created_at, "
    "event_id) VALUES (:stream_id, :state_version, :version, :category, :state, :created_at, "
    ":event_id) ON CONFLICT (stream_id, state_version, version) DO UPDATE SET "
    "state = excluded.state, created_at = excluded.created_at, event_id = excluded.event_id"
)
_AHEAD = "DELETE FROM snapshots WHERE stream_id = :stream_id AND version > :committed"
# every snapshot with its stream's head and the id of the event at its version
_INVALID = (
    f"SELECT {_COLUMNS}, "
    "(SELECT max(e.version) FROM events e WHERE e.stream_id = s.stream_id), "
    "(SELECT e.event_id FROM events e WHERE e.stream_id = s.stream_id "
    "AND e.version = s.version LIMIT 1), "
    "(SELECT min(e.version) FROM events e WHERE e.stream_id = s.stream_id), "
    "(SELECT max(t.through_version) FROM truncations t WHERE t.stream_id = s.stream_id) "
    "FROM snapshots s ORDER BY stream_id, version"
)
_PRUNE = (
    "DELETE FROM snapshots WHERE (stream_id, state_version, version) IN ("
    " SELECT stream_id, state_version, version FROM ("
    "  SELECT stream_id, state_version, version, ROW_NUMBER() OVER ("
    "   PARTITION BY stream_id ORDER BY version DESC, created_at DESC) AS n"
    "  FROM snapshots WHERE {where}) AS ranked"
    " WHERE n > :keep)"
)


class SqlSnapshotStore(SnapshotStore):
    """Snapshots in the ``snapshots`` table beside the events (SQLite and PostgreSQL).

    Writes go through ``transaction()``, reads through ``query()``; the SQL uses ``:name``
    parameters, which both backends take.

    Raises:
        MissingCapability: the event store has no SQL.
    """

    def __init__(self, events: EventStore) -> None:
        self.sql = require(events, SqlStore)
        super().__init__(events)

    async def _write(
        self, snapshot: Snapshot, keep: int | None, committed: int | None = None
    ) -> None:
        async with self.sql.transaction() as tx:
            if committed is not None:
                await tx.execute(_AHEAD, {"stream_id": snapshot.stream_id, "committed": committed})
            await tx.execute(
                _UPSERT,
                {
                    "stream_id": snapshot.stream_id,
                    "state_version": snapshot.state_version,
                    "version": snapshot.version,
                    "category": snapshot.category,
                    "state": snapshot.state,
                    "created_at": tx.timestamp(snapshot.created_at),
                    "event_id": None if snapshot.event_id is None else str(snapshot.event_id),
                },
            )
            if keep is not None:
                await tx.execute(
                    _PRUNE.format(where="stream_id = :stream_id"),
                    {"stream_id": snapshot.stream_id, "keep": keep},
                )

    async def newest(
        self, stream_id: str, state_version: str | None = None, *, max_version: int | None = None
    ) -> Snapshot | None:
        # one query: the newest of this state version first, else the newest of any
        where = "stream_id = :stream_id"
        params: dict[str, Any] = {"stream_id": stream_id, "sv": state_version or ""}
        if max_version is not None:
            where += " AND version <= :max_version"
            params["max_version"] = max_version
        rows = await self.sql.query(
            f"SELECT {_COLUMNS} FROM snapshots WHERE {where} "
            "ORDER BY CASE WHEN state_version = :sv THEN 0 ELSE 1 END, version DESC LIMIT 1",
            params,
        )
        return _snapshot(rows[0]) if rows else None

    async def find(self, stream_id: str | None = None) -> list[Snapshot]:
        where, params = ("WHERE stream_id = :s", {"s": stream_id}) if stream_id else ("", {})
        rows = await self.sql.query(
            f"SELECT {_COLUMNS} FROM snapshots {where} ORDER BY stream_id, version DESC, "
            "created_at DESC",
            params,
        )
        return [_snapshot(r) for r in rows]

    async def stats(self) -> list[SnapshotStats]:
        rows = await self.sql.query(
            "SELECT category, COUNT(*), COUNT(DISTINCT stream_id), SUM(LENGTH(state)), "
            "MIN(created_at), MAX(created_at) FROM snapshots GROUP BY category ORDER BY category"
        )
        return [
            SnapshotStats(
                str(cat),
                int(n),
                int(streams),
                int(size or 0),
                None if oldest is None else _as_datetime(oldest),
                None if newest is None else _as_datetime(newest),
            )
            for cat, n, streams, size, oldest, newest in rows
        ]

    async def prune(
        self,
        *,
        keep: int,
        stream_id: str | None = None,
        category: str | None = None,
        stale: dict[str, str] | None = None,
    ) -> int:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        where = ["1 = 1"]
        params: dict[str, Any] = {"keep": keep}
        if stream_id is not None:
            where.append("stream_id = :stream_id")
            params["stream_id"] = stream_id
        if category is not None:
            where.append("category = :category")
            params["category"] = category
        filters = " AND ".join(where)
        async with self.sql.transaction() as tx:
            before = await tx.fetchone(f"SELECT COUNT(*) FROM snapshots WHERE {filters}", params)
            for index, (cat, current) in enumerate(sorted((stale or {}).items())):
                if category is None or cat == category:
                    await tx.execute(
                        f"DELETE FROM snapshots WHERE {filters} "
                        f"AND category = :c{index} AND state_version <> :v{index}",
                        {**params, f"c{index}": cat, f"v{index}": current},
                    )
            await tx.execute(_PRUNE.format(where=filters), params)
            after = await tx.fetchone(f"SELECT COUNT(*) FROM snapshots WHERE {filters}", params)
        return int(before[0] if before else 0) - int(after[0] if after else 0)

    async def delete(
        self, stream_id: str, *, state_version: str | None = None, version: int | None = None
    ) -> int:
        where = "stream_id = :s"
        params: dict[str, Any] = {"s": stream_id}
        if state_version is not None:
            where += " AND state_version = :sv"
            params["sv"] = state_version
        if version is not None:
            where += " AND version = :v"
            params["v"] = version
        async with self.sql.transaction() as tx:
            row = await tx.fetchone(f"SELECT COUNT(*) FROM snapshots WHERE {where}", params)
            await tx.execute(f"DELETE FROM snapshots WHERE {where}", params)
        return int(row[0]) if row else 0

    async def invalid(self) -> list[SnapshotProblem]:
        # one query: each row with its stream's head and the event id at its version
        problems: list[SnapshotProblem] = []
        for row in await self.sql.query(_INVALID):
            snap = _snapshot(row[:6])
            head = None if row[6] is None else int(row[6])
            first, removed = row[8], row[9]
            if (
                row[7] is None
                and removed is not None
                and int(removed) >= snap.version
                and first is not None
                and int(first) == snap.version + 1
            ):
                continue  # retention removed the event it was taken after: still good
            problem = _problem(snap, _as_uuid(row[7]), head)
            if problem is not None:
                problems.append(problem)
        return problems


_stores: weakref.WeakKeyDictionary[Any, SnapshotStore] = weakref.WeakKeyDictionary()


def snapshot_store(store: EventStore) -> SnapshotStore:
    """The snapshot store of an event store (one per event store, shared by its users)."""
    try:
        existing = _stores.get(store)
    except TypeError:  # an unhashable or non-weakrefable store: no sharing
        existing = None
    if existing is not None:
        return existing
    created: SnapshotStore = (
        SqlSnapshotStore(store) if supports(store, SqlStore) else MemorySnapshotStore(store)
    )
    with contextlib.suppress(TypeError):
        _stores[store] = created
    return created


async def invalidate_streams(tx: Tx, stream_ids: Sequence[str]) -> int:
    """Delete every snapshot of ``stream_ids`` inside the caller's transaction (SQL stores);
    returns how many went. For data that must not outlive a decision taken in that same
    transaction: crypto-shredding's ``forget`` (a snapshot holds decrypted state)."""
    deleted = 0
    ids = list(stream_ids)
    for start in range(0, len(ids), 500):
        chunk = {f"s{i}": sid for i, sid in enumerate(ids[start : start + 500])}
        where = "stream_id IN (" + ", ".join(f":{k}" for k in chunk) + ")"
        row = await tx.fetchone(f"SELECT COUNT(*) FROM snapshots WHERE {where}", chunk)
        await tx.execute(f"DELETE FROM snapshots WHERE {where}", chunk)
        deleted += int(row[0]) if row else 0
    return deleted
