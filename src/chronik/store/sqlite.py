"""The embedded event store on one SQLite file (WAL, ``synchronous=FULL``).

SQLite work runs on two threads of the store's own, never on the event loop: one writer
connection (appends take ``BEGIN IMMEDIATE``, so a write transaction never has to upgrade a
read lock and every writer, in any process, waits its turn through ``busy_timeout``) and one
reader connection (WAL lets it read while the writer writes).

SQLite allows one write transaction at a time and the position is assigned inside it, so
position order is commit order: a reader can never see a position before a lower one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from chronik.errors import (
    ChronikError,
    ConcurrencyError,
    SchemaError,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import (
    ANY,
    AppendResult,
    NewEvent,
    RecordedEvent,
    category_of,
    validate_stream_id,
)
from chronik.store.protocol import (
    DEFAULT_MAX_EVENT_BYTES,
    READ_PAGE_SIZE,
    EncodedEvent,
    StoredCopy,
    StoreStats,
    StreamInfo,
    check_expected,
    encode_batch,
    resolve_duplicate,
)

__all__ = ["SqliteEventStore", "sqlite_migrations"]

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, "
    "CAST(data AS BLOB), CAST(metadata AS BLOB), recorded_at"
)
_INSERT = (
    "INSERT INTO events (stream_id, category, version, event_id, type, schema_version, "
    "data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?)"
)


def sqlite_migrations() -> list[tuple[int, str, str]]:
    """The numbered schema migrations shipped with chronik: ``(number, name, sql)``."""
    folder = resources.files("chronik").joinpath("store/sql/sqlite")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _split_statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip() and not all(
                ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
            ):
                statements.append(current.strip())
            current = ""
    if current.strip():
        raise SchemaError(f"incomplete SQL statement in migration: {current.strip()[:80]!r}")
    return statements


def _row_to_event(row: tuple[Any, ...]) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        stream_id=row[1],
        version=row[2],
        event_id=uuid.UUID(row[3]),
        type=row[4],
        schema_version=row[5],
        raw_data=row[6],
        raw_metadata=row[7],
        recorded_at=_EPOCH + timedelta(microseconds=row[8]),
    )


class _Connection:
    """One sqlite3 connection used only from its own thread."""

    def __init__(self, path: str, *, synchronous: str, busy_timeout_ms: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"chronik-{name}")
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self.conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise StoreUnavailable(f"{self._path}: could not switch to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        self.conn = conn

    async def start(self) -> None:
        await self.run(self._open)

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except ChronikError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite {self._path}: {exc}") from exc
        except RuntimeError as exc:  # executor shut down
            raise StoreUnavailable(f"SQLite {self._path}: store is closed") from exc

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


class SqliteEventStore:
    """Event store on one SQLite file; create with :meth:`open` or ``chronik.connect``."""

    def __init__(
        self,
        path: str,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
    ) -> None:
        if synchronous.upper() not in ("FULL", "EXTRA", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, EXTRA, NORMAL or OFF, not {synchronous}")
        self.path = path
        self.max_event_bytes = max_event_bytes
        self._writer = _Connection(
            path, synchronous=synchronous.upper(), busy_timeout_ms=busy_timeout_ms, name="w"
        )
        self._reader = _Connection(
            path, synchronous=synchronous.upper(), busy_timeout_ms=busy_timeout_ms, name="r"
        )
        self._changed = asyncio.Event()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
        migrate: bool = True,
    ) -> SqliteEventStore:
        """Open (creating if needed) the store in ``path`` and apply pending migrations."""
        path = str(path)
        if path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir():
                raise StoreUnavailable(f"SQLite: folder {parent} does not exist")
        store = cls(
            path,
            max_event_bytes=max_event_bytes,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
        )
        try:
            await store._writer.start()
            if migrate:
                await store._writer.run(store._migrate)
            await store._reader.start()
        except BaseException:
            await store.close()
            raise
        return store

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> int:
        conn = self._conn(self._writer)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            known = sqlite_migrations()
            newest_known = known[-1][0] if known else 0
            if applied and max(applied) > newest_known:
                raise SchemaError(
                    f"{self.path} has schema version {max(applied)}; this chronik knows "
                    f"up to {newest_known}: upgrade chronik"
                )
            count = 0
            for number, name, sql in known:
                if number in applied:
                    continue
                for statement in _split_statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) "
                    "VALUES (?, ?, datetime('now'))",
                    (number, name),
                )
                count += 1
            conn.execute("COMMIT")
            return count
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def migrate(self) -> int:
        """Apply pending migrations; returns how many were applied (0 when up to date)."""
        return await self._writer.run(self._migrate)

    @staticmethod
    def _conn(holder: _Connection) -> sqlite3.Connection:
        if holder.conn is None:
            raise StoreUnavailable("SQLite store is closed")
        return holder.conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("SQLite store is closed")

    # -- append -------------------------------------------------------------------------

    def _lookup_ids(
        self, conn: sqlite3.Connection, batch: Sequence[EncodedEvent]
    ) -> dict[uuid.UUID, StoredCopy]:
        found: dict[uuid.UUID, StoredCopy] = {}
        ids = [str(ev.event_id) for ev in batch]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT event_id, stream_id, version, position, type, CAST(data AS BLOB) "
                f"FROM events WHERE event_id IN ({marks})",
                chunk,
            ):
                event_id = uuid.UUID(row[0])
                found[event_id] = StoredCopy(event_id, row[1], row[2], row[3], row[4], row[5])
        return found

    def _append_sync(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        conn = self._conn(self._writer)
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT max(version), max(position) FROM events WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
            current = -1 if row[0] is None else int(row[0])
            try:
                check_expected(stream_id, expected, current)
            except ConcurrencyError:
                original = resolve_duplicate(
                    stream_id, expected, batch, self._lookup_ids(conn, batch)
                )
                conn.execute("ROLLBACK")
                if original is not None:
                    return original
                raise
            if not batch:
                conn.execute("ROLLBACK")
                head = conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0
                return AppendResult(position=int(head), version=current)
            category = category_of(stream_id)
            now = time.time_ns() // 1000
            rows = [
                (
                    stream_id,
                    category,
                    current + offset,
                    str(ev.event_id),
                    ev.type,
                    ev.schema_version,
                    ev.data,
                    ev.metadata,
                    now,
                )
                for offset, ev in enumerate(batch, start=1)
            ]
            try:
                conn.executemany(_INSERT, rows)
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN")
                try:
                    original = resolve_duplicate(
                        stream_id, expected, batch, self._lookup_ids(conn, batch)
                    )
                finally:
                    conn.execute("ROLLBACK")
                if original is not None:
                    return original
                raise
            position = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            conn.execute("COMMIT")
            return AppendResult(position=int(position), version=current + len(batch))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int = ANY
    ) -> AppendResult:
        self._check_open()
        stream_id, expected, batch = encode_batch(
            stream_id, events, expected_version, self.max_event_bytes
        )
        result = await self._writer.run(lambda: self._append_sync(stream_id, expected, batch))
        if batch:
            self._changed.set()
            self._changed = asyncio.Event()
        return result

    # -- reads --------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any]) -> list[RecordedEvent]:
        conn = self._conn(self._reader)
        return [_row_to_event(row) for row in conn.execute(sql, params)]

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
        remaining = limit
        if backwards:
            cursor = from_version if from_version is not None else 2**62
            sql = (
                f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version <= ? "
                "ORDER BY version DESC LIMIT ?"
            )
        else:
            cursor = max(from_version or 0, 0)
            sql = (
                f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version >= ? "
                "ORDER BY version LIMIT ?"
            )
        first = True
        while remaining is None or remaining > 0:
            size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            params = (stream_id, cursor, size)
            page = await self._reader.run(lambda p=params: self._query(sql, p))  # type: ignore[misc]
            if first and not page and await self.stream_version(stream_id) is None:
                raise StreamNotFound(stream_id)
            first = False
            for ev in page:
                yield ev
            if len(page) < size:
                return
            if remaining is not None:
                remaining -= len(page)
            cursor = page[-1].version - 1 if backwards else page[-1].version + 1

    async def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        self._check_open()
        where = ["position > ?"]
        filters: list[Any] = []
        if categories is not None:
            cats = list(categories)
            where.append(f"category IN ({','.join('?' * len(cats))})" if cats else "0")
            filters.extend(cats)
        if types is not None:
            kinds = list(types)
            where.append(f"type IN ({','.join('?' * len(kinds))})" if kinds else "0")
            filters.extend(kinds)
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY position LIMIT ?"
        cursor = after
        remaining = limit
        while remaining is None or remaining > 0:
            size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            params = (cursor, *filters, size)
            page = await self._reader.run(lambda p=params: self._query(sql, p))  # type: ignore[misc]
            for ev in page:
                yield ev
            if len(page) < size:
                return
            if remaining is not None:
                remaining -= len(page)
            cursor = page[-1].position

    async def stream_version(self, stream_id: str) -> int | None:
        self._check_open()
        validate_stream_id(stream_id)

        def query() -> int | None:
            row = (
                self._conn(self._reader)
                .execute("SELECT max(version) FROM events WHERE stream_id = ?", (stream_id,))
                .fetchone()
            )
            return None if row[0] is None else int(row[0])

        return await self._reader.run(query)

    async def streams(
        self, *, category: str | None = None, limit: int | None = None
    ) -> AsyncIterator[StreamInfo]:
        self._check_open()
        cursor = ""
        remaining = limit
        cat_sql = " AND category = ?" if category is not None else ""
        sql = (
            "SELECT stream_id, max(version), max(position) FROM events "
            f"WHERE stream_id > ?{cat_sql} GROUP BY stream_id ORDER BY stream_id LIMIT ?"
        )
        while remaining is None or remaining > 0:
            size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            params: tuple[Any, ...] = (
                (cursor, category, size) if category is not None else (cursor, size)
            )

            def page_query(p: tuple[Any, ...] = params) -> list[StreamInfo]:
                rows = self._conn(self._reader).execute(sql, p).fetchall()
                return [StreamInfo(r[0], int(r[1]), int(r[2])) for r in rows]

            page = await self._reader.run(page_query)
            for info in page:
                yield info
            if len(page) < size:
                return
            if remaining is not None:
                remaining -= len(page)
            cursor = page[-1].stream_id

    async def head_position(self) -> int:
        self._check_open()

        def query() -> int:
            row = self._conn(self._reader).execute("SELECT max(position) FROM events").fetchone()
            return int(row[0] or 0)

        return await self._reader.run(query)

    async def stats(self) -> StoreStats:
        self._check_open()

        def query() -> StoreStats:
            conn = self._conn(self._reader)
            conn.execute("BEGIN")
            try:
                events, head = conn.execute(
                    "SELECT count(*), coalesce(max(position), 0) FROM events"
                ).fetchone()
                streams = conn.execute(
                    "SELECT count(*) FROM (SELECT DISTINCT stream_id FROM events)"
                ).fetchone()[0]
                cats = dict(
                    conn.execute(
                        "SELECT category, count(*) FROM events GROUP BY category ORDER BY category"
                    ).fetchall()
                )
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            finally:
                conn.execute("COMMIT")
            size = pages * page_size
            wal = Path(self.path + "-wal")
            if wal.exists():
                size += wal.stat().st_size
            return StoreStats(
                events=int(events),
                streams=int(streams),
                head_position=int(head),
                categories={str(k): int(v) for k, v in cats.items()},
                size_bytes=size,
            )

        return await self._reader.run(query)

    async def wait_for_change(self, timeout: float) -> None:
        """Return when this process appends, or after ``timeout`` (other processes: poll)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reader.close()
        await self._writer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
