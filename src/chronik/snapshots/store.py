"""Where snapshots live: a table beside the events (a store with SQL) or a dict (memory).

:func:`snapshot_store` gives the one :class:`SnapshotStore` of an event store: the SQL one
when the store has the :class:`~chronik.store.SqlStore` capability, else one in this
process. The SQL implementation writes through ``transaction()`` and reads through
``query()`` with ``:name`` parameters, so one class serves SQLite and PostgreSQL; the table
comes from migration ``0003_snapshots.sql`` of each backend.
"""

from __future__ import annotations

import abc
import contextlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chronik.errors import ChronikError
from chronik.events import category_of
from chronik.store.capabilities import require, supports
from chronik.store.port import EventStore, SqlStore

__all__ = [
    "MemorySnapshotStore",
    "Snapshot",
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
        }


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
    ms_per_event: float = 0.0
    warned: bool = False


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

    async def save(self, snapshot: Snapshot, *, keep: int | None = None) -> None:
        """Store ``snapshot`` (replacing one of the same stream, state version and version),
        then delete all but the newest ``keep`` of its stream.

        Raises:
            ChronikError: ``snapshot.version`` is not a committed version of the stream.
        """
        committed = await self.events.stream_version(snapshot.stream_id)
        if committed is None or not 0 <= snapshot.version <= committed:
            raise ChronikError(
                f"refusing snapshot of {snapshot.stream_id!r} at version {snapshot.version}: "
                f"the stream's committed version is {committed}"
            )
        await self._write(snapshot, keep)

    @abc.abstractmethod
    async def _write(self, snapshot: Snapshot, keep: int | None) -> None: ...

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
    async def delete(self, stream_id: str) -> int:
        """Delete every snapshot of a stream (the next load replays from the events)."""


class MemorySnapshotStore(SnapshotStore):
    """Snapshots of a store without SQL (``memory://``), in this process."""

    def __init__(self, events: EventStore) -> None:
        super().__init__(events)
        self._rows: dict[str, list[Snapshot]] = {}

    async def _write(self, snapshot: Snapshot, keep: int | None) -> None:
        rows = [
            s
            for s in self._rows.get(snapshot.stream_id, [])
            if (s.state_version, s.version) != (snapshot.state_version, snapshot.version)
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

    async def delete(self, stream_id: str) -> int:
        return len(self._rows.pop(stream_id, []))


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


def _snapshot(row: tuple[Any, ...]) -> Snapshot:
    stream_id, state_version, version, state, created_at = row
    return Snapshot(
        stream_id, int(version), state_version, _as_bytes(state), _as_datetime(created_at)
    )


_COLUMNS = "stream_id, state_version, version, state, created_at"
_UPSERT = (
    "INSERT INTO snapshots (stream_id, state_version, version, category, state, created_at) "
    "VALUES (:stream_id, :state_version, :version, :category, :state, :created_at) "
    "ON CONFLICT (stream_id, state_version, version) "
    "DO UPDATE SET state = excluded.state, created_at = excluded.created_at"
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

    async def _write(self, snapshot: Snapshot, keep: int | None) -> None:
        async with self.sql.transaction() as tx:
            await tx.execute(
                _UPSERT,
                {
                    "stream_id": snapshot.stream_id,
                    "state_version": snapshot.state_version,
                    "version": snapshot.version,
                    "category": snapshot.category,
                    "state": snapshot.state,
                    "created_at": tx.timestamp(snapshot.created_at),
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

    async def delete(self, stream_id: str) -> int:
        async with self.sql.transaction() as tx:
            row = await tx.fetchone(
                "SELECT COUNT(*) FROM snapshots WHERE stream_id = :s", {"s": stream_id}
            )
            await tx.execute("DELETE FROM snapshots WHERE stream_id = :s", {"s": stream_id})
        return int(row[0]) if row else 0


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
