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
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import chronik.store.migrations as migrations
from chronik.errors import (
    CheckpointMoved,
    ChronikError,
    ConcurrencyError,
    DuplicateEventId,
    SchemaError,
    StoreFenced,
    StoreNotFound,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import (
    AppendResult,
    RecordedEvent,
    category_of,
    validate_stream_id,
)
from chronik.store.chain import event_hash
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
    pages_reading_ahead,
    plan_import,
    resolve_duplicate,
    wait_uninterrupted,
)
from chronik.store.sqlite_statements import SqliteStatements
from chronik.store.urls import redact_url

__all__ = ["SqliteEventStore", "SqliteTx"]

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SQL = SqliteStatements()


def _now_us() -> int:
    """Now, as SQLite stores times: microseconds since 1970-01-01 UTC."""
    return time.time_ns() // 1000


def _time_text(value: Any) -> str:
    """A stored time (microseconds since 1970) as ISO 8601 in UTC, as the other backends
    give it."""
    try:
        return (_EPOCH + timedelta(microseconds=int(value))).isoformat()
    except (TypeError, ValueError):  # hand-edited text: shown as it is
        return str(value)


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


class SqliteTx:
    """A write transaction on the store's writer connection (see :class:`chronik.Tx`).

    Its statements run on the caller's thread, not on the writer thread: the transaction
    already holds SQLite's write lock (``BEGIN IMMEDIATE``), so a statement never waits for
    another writer and writes nothing to disk before ``COMMIT`` (which does run on the
    writer thread). That saves a thread round trip per statement, most of the cost of a
    small upsert; keep statements in a transaction short, as they hold up the event loop.
    Errors of the SQL itself are sqlite3's own (as psycopg's are on PostgreSQL); a locked,
    busy or failing database raises :class:`StoreUnavailable`.
    """

    dialect = "sqlite"
    clock_sql = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, store: SqliteEventStore) -> None:
        self._store = store

    def timestamp(self, at: datetime) -> int:
        return (at - _EPOCH) // timedelta(microseconds=1)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._store._conn(self._store._writer)
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if _unavailable_error(exc):
                raise StoreUnavailable(f"SQLite {self._store.path}: {exc}") from exc
            raise

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        await self._run(lambda c: c.execute(sql, params))

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        return await self._run(lambda c: c.execute(sql, params).fetchall())

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = await self._run(lambda c: c.execute(sql, params).fetchone())
        return row

    async def get_checkpoint(self, name: str) -> int | None:
        row = await self.fetchone(_SQL.get_checkpoint, (name,))
        return None if row is None else int(row[0])

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        # the transaction holds SQLite's write lock: nobody moves it between read and write
        actual = await self.get_checkpoint(name) or 0
        if actual != expected:
            raise CheckpointMoved(name, expected, actual)
        await self.set_checkpoint(name, position)

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self.execute(_SQL.set_checkpoint, (name, position, _now_us()))

    async def add_dead_letter(
        self, subscription: str, event: RecordedEvent, error: str, attempts: int
    ) -> None:
        await self.execute(
            _SQL.add_dead_letter,
            (
                subscription,
                event.position,
                str(event.event_id),
                event.stream_id,
                event.version,
                event.type,
                error,
                attempts,
                _now_us(),
            ),
        )

    async def delete_dead_letter(self, dead_letter_id: int) -> None:
        await self.execute(_SQL.delete_dead_letter, (dead_letter_id,))

    async def get_active_version(self, projection: str) -> int | None:
        row = await self.fetchone(_SQL.get_active_version, (projection,))
        return None if row is None else int(row[0])

    async def set_active_version(self, projection: str, version: int) -> None:
        await self.execute(_SQL.set_active_version, (projection, version))

    async def import_events(self, events: Sequence[ImportedEvent]) -> None:
        # thousands of rows at a time: on the writer thread, off the event loop
        store = self._store
        conn = store._conn(store._writer)
        limit, depth = store.max_event_bytes, store.max_json_depth
        await store._writer.run(lambda: _import_sync(conn, events, limit, depth))


def _import_sync(
    conn: sqlite3.Connection, events: Sequence[ImportedEvent], limit: int, depth: int
) -> None:
    """``Tx.import_events`` on the writer connection, inside the caller's transaction."""
    streams = sorted({ev.stream_id for ev in events})
    current: dict[str, int] = {}
    for start in range(0, len(streams), 500):
        chunk = streams[start : start + 500]
        current.update(conn.execute(_SQL.stream_versions(chunk), chunk + chunk).fetchall())
    rows = [
        (
            ev.stream_id,
            category_of(ev.stream_id),
            version,
            str(ev.event_id),
            ev.type,
            ev.schema_version,
            ev.data,
            ev.metadata,
            (ev.recorded_at - _EPOCH) // timedelta(microseconds=1),
        )
        for ev, version in plan_import(events, current, limit, depth)
    ]
    conn.execute("SAVEPOINT chronik_import")
    try:
        conn.executemany(_SQL.import_events, rows)
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK TO chronik_import")
        conn.execute("RELEASE chronik_import")
        _raise_if_fenced(conn, exc)
        ids = [row[3] for row in rows]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found = conn.execute(_SQL.stored_copies(chunk), chunk).fetchone()
            if found is not None:
                raise DuplicateEventId(found[1], uuid.UUID(found[0]), "is stored already") from exc
        raise ConcurrencyError(rows[0][0], rows[0][2] - 1, None) from exc
    conn.execute("RELEASE chronik_import")


_FENCED = "chronik store fenced"
"""The abort message of the ``events_fence`` trigger (migration 0009)."""


def _fence_of(row: Any) -> Fence:
    return Fence(str(row[0]), int(row[1]), _EPOCH + timedelta(microseconds=int(row[2])))


def _raise_if_fenced(conn: sqlite3.Connection, exc: sqlite3.IntegrityError) -> None:
    """Raise :class:`StoreFenced` when ``exc`` is the fence trigger's abort."""
    if str(exc) != _FENCED:
        return
    row = conn.execute(_SQL.fence_state).fetchone()
    fence = _fence_of(row) if row is not None else None
    raise StoreFenced(fence.moved_to if fence else "?", fence.position if fence else None) from exc


MAX_GROUP = 256
"""At most this many appends share one transaction (one fsync) on SQLite."""


class Grouped:
    """A writer job that may share one transaction with the grouped jobs queued right
    behind it: ``run_group(jobs)`` runs them all (on the writer thread) and hands back each
    job's own result."""

    __slots__ = ("args", "run_group")

    def __init__(self, run_group: Callable[[list[_Job]], None], args: tuple[Any, ...]) -> None:
        self.run_group = run_group
        self.args = args

    def __call__(self) -> Any:
        raise RuntimeError("a grouped job runs through run_group")


class _Connection:
    """One sqlite3 connection used only from its own thread.

    The thread takes jobs from a queue and hands each result back to the event loop that
    asked (``call_soon_threadsafe``): one wake-up each way, about half the round-trip cost of
    ``loop.run_in_executor`` on a ``ThreadPoolExecutor``, which matters for small reads.
    Jobs run one at a time, in the order they were submitted; a job whose caller was
    cancelled before it started is skipped, as an executor skips a cancelled future, and a
    job that started runs to its end whatever happens to its caller. Everything this store
    does on the connection is a job or runs after awaiting one, so it happens after every
    job submitted before, finished or not by a cancelled caller.
    """

    def __init__(self, path: str, *, synchronous: str, busy_timeout_ms: int, name: str) -> None:
        self._name = f"chronik-{name}"
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
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
        # the hash chain (migration 0017): the append and import INSERT call it
        conn.create_function("chronik_event_hash", 9, event_hash, deterministic=True)
        self.conn = conn

    def _serve(self) -> None:
        jobs = self._jobs
        held: list[_Job | None] = []  # a job taken off the queue while grouping, run next
        while True:
            job = held.pop() if held else jobs.get()
            if job is None:
                return
            fn, future, loop = job
            if future.cancelled():
                continue
            if isinstance(fn, Grouped):
                # the grouped jobs queued right behind this one run with it (group commit)
                group = [job]
                while len(group) < MAX_GROUP:
                    try:
                        queued = jobs.get_nowait()
                    except queue.Empty:
                        break
                    if queued is None or not isinstance(queued[0], Grouped):
                        held.append(queued)
                        break
                    if not queued[1].cancelled():
                        group.append(queued)
                fn.run_group(group)
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller, like an executor does
                _hand_back(loop, future, None, exc)
            else:
                _hand_back(loop, future, result, None)

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        await self.run(self._open)

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` and return its future without waiting (await it with :meth:`result`;
        a cancelled future's job is skipped if it has not started)."""
        if self._stopped or self._thread is None:
            raise StoreUnavailable(f"SQLite {self._path}: store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop))
        return future

    async def result(self, future: Awaitable[T]) -> T:
        try:
            return await future
        except ChronikError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite {self._path}: {exc}") from exc

    async def run(self, fn: Callable[[], T]) -> T:
        return await self.result(self.submit(fn))

    async def finish(self, fn: Callable[[], T]) -> T:
        """Like :meth:`run` for what ends a transaction (COMMIT, ROLLBACK): ``fn`` runs even
        if the caller is cancelled before it starts, and a cancelled caller gets its
        ``CancelledError`` only after ``fn`` has run."""
        return await self.result(wait_uninterrupted(self.submit(fn)))

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def close(self) -> None:
        if self._stopped:
            return
        if self._thread is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.run(self._close)
        self._stopped = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()


_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_settle, future, result, exc)


def _commit(conn: sqlite3.Connection) -> None:
    """COMMIT; if it fails, roll back: the transaction ends either way."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK whatever is open (nothing, when the BEGIN was skipped or failed)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _unavailable_error(exc: sqlite3.OperationalError) -> bool:
    """Whether an error is the database's state (locked, busy, I/O) rather than the SQL's."""
    # the primary result code: BUSY, LOCKED, IOERR, CORRUPT, FULL, CANTOPEN
    return exc.sqlite_errorcode & 0xFF in (5, 6, 10, 11, 13, 14)


def _require_store(path: str) -> None:
    """Raise StoreNotFound unless ``path`` is a SQLite file with chronik's migration table.

    Looks through a read-only connection of its own: nothing is created or changed.
    """
    file = Path(path).absolute()
    if not file.is_file():
        raise StoreNotFound(str(file), "no such file" if not file.exists() else "not a file")
    try:
        conn = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            conn.execute(_SQL.applied_migrations).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise StoreUnavailable(f"SQLite {path}: {exc}") from exc
        raise StoreNotFound(str(file), "a SQLite database without chronik's tables") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreNotFound(str(file), f"not a SQLite database ({exc})") from exc


class SqliteEventStore(EventStoreBase):
    """Event store on one SQLite file; create with :meth:`open` or ``chronik.connect``."""

    capabilities = frozenset({EventLog, Inspectable, WorkerState, SqlStore, Fencing})
    dialect = "sqlite"

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
        self._write_lock = asyncio.Lock()
        self.watch_interval = 0.005
        """How often other processes' commits are looked for while followers wait."""
        self._watcher: asyncio.Task[None] | None = None
        self._marker_asked = float("-inf")
        self.largest_group = 1
        """The most appends one transaction has committed together (group commit)."""
        self.inline_projections: list[InlineProjection] = []
        """Projections applied inside every append's transaction (see chronik.projections)."""

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
        migrate: bool = True,
        create: bool = True,
    ) -> SqliteEventStore:
        """Open the store in ``path`` and apply pending migrations.

        With ``create`` (the default) a missing file becomes a new store. With
        ``create=False`` the file must hold a chronik store already, else
        :class:`~chronik.errors.StoreNotFound` is raised and nothing is written.
        """
        path = str(path)
        if path != ":memory:":
            if not create:
                _require_store(path)
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
        """Apply the pending migrations (:mod:`chronik.store.migrations`) in one write
        transaction; returns how many."""
        conn = self._conn(self._writer)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SQL.create_migrations_table)
            applied = [int(row[0]) for row in conn.execute(_SQL.applied_migrations)]
            todo = migrations.pending(migrations.load("sqlite"), applied, self.path)
            for migration in todo:
                for statement in _split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(_SQL.record_migration, (migration.number, _now_us(), migration.name))
            conn.execute("COMMIT")
            return len(todo)
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
            for row in conn.execute(_SQL.stored_copies(chunk), chunk):
                event_id = uuid.UUID(row[0])
                found[event_id] = StoredCopy(event_id, row[1], row[2], row[3], row[4], row[5])
        return found

    def _append_sync(
        self, stream_id: str, expected: int, batch: list[EncodedEvent], commit: bool = True
    ) -> tuple[AppendResult, int | None]:
        """Append in one transaction; returns the result and the time stamp written.

        The time stamp is ``None`` when nothing was written (an idempotent retry or an empty
        append). With ``commit=False`` a write leaves the transaction open for the caller.
        """
        conn = self._conn(self._writer)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result, written = self._append_in(conn, stream_id, expected, batch, "ROLLBACK")
            if written is None:
                _rollback(conn)
            elif commit:
                conn.execute("COMMIT")
            return result, written
        except BaseException:
            _rollback(conn)
            raise

    def _append_in(
        self,
        conn: sqlite3.Connection,
        stream_id: str,
        expected: int,
        batch: list[EncodedEvent],
        undo: str,
    ) -> tuple[AppendResult, int | None]:
        """The append's statements inside an open transaction. ``undo`` ("ROLLBACK", or
        "ROLLBACK TO" a savepoint in a group) drops what the append wrote before the
        original of an idempotent retry is looked up."""
        row = conn.execute(_SQL.stream_version, (stream_id,)).fetchone()
        current = -1 if row[0] is None else int(row[0])
        try:
            check_expected(stream_id, expected, current)
        except ConcurrencyError:
            original = resolve_duplicate(stream_id, expected, batch, self._lookup_ids(conn, batch))
            if original is not None:
                return original, None
            raise
        if not batch:
            head = conn.execute(_SQL.head).fetchone()[0]
            return AppendResult(position=int(head), version=current), None
        category = category_of(stream_id)
        now = _now_us()
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
            conn.executemany(_SQL.append, rows)
        except sqlite3.IntegrityError as exc:
            conn.execute(undo)
            original = resolve_duplicate(stream_id, expected, batch, self._lookup_ids(conn, batch))
            if original is not None:
                return original, None
            _raise_if_fenced(conn, exc)
            raise
        position = conn.execute(_SQL.last_position).fetchone()[0]
        return AppendResult(position=int(position), version=current + len(batch)), now

    def _append_group(self, group: list[_Job]) -> None:
        """Run appends queued together in ONE transaction, one fsync for all (group commit),
        each in a savepoint with its own expected-version check and its own outcome: one
        append's conflict does not fail the others. Runs on the writer thread."""
        if len(group) == 1:
            fn, future, loop = group[0]
            try:
                result = self._append_sync(*cast(Grouped, fn).args)
            except BaseException as exc:
                _hand_back(loop, future, None, exc)
            else:
                _hand_back(loop, future, result, None)
            return
        conn = self._conn(self._writer)
        outcomes: list[tuple[Any, BaseException | None]] = []
        self.largest_group = max(self.largest_group, len(group))
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _, _ in group:
                conn.execute("SAVEPOINT chronik_append")
                try:
                    stream_id, expected, batch = cast(Grouped, fn).args
                    outcome = self._append_in(
                        conn, stream_id, expected, batch, "ROLLBACK TO chronik_append"
                    )
                except Exception as exc:
                    conn.execute("ROLLBACK TO chronik_append")
                    outcomes.append((None, exc))
                else:
                    outcomes.append((outcome, None))
                conn.execute("RELEASE chronik_append")
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                _rollback(conn)
            for _, future, loop in group:
                _hand_back(loop, future, None, exc)
            return
        for (_, future, loop), (outcome, error) in zip(group, outcomes, strict=True):
            _hand_back(loop, future, outcome, error)

    async def _write(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        try:
            if not self.inline_projections:
                # one job, grouped with the appends queued behind it (group commit): skipped
                # if cancelled before it starts, else it runs to its end
                job = Grouped(self._append_group, (stream_id, expected, batch))
                if self._write_lock.locked():  # a transaction() is open: after it
                    async with self._write_lock:
                        future = self._writer.submit(job)
                else:
                    future = self._writer.submit(job)
                outcome: tuple[AppendResult, int | None] = await self._writer.result(future)
                result, written = outcome
            else:
                async with self._write_lock:
                    result, written = await self._append_inline(stream_id, expected, batch)
        except asyncio.CancelledError:
            self._wake_after_writer()  # it may have committed (or may still)
            raise
        if written is not None:
            self._wake()
        return result

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _wake_after_writer(self) -> None:
        """Wake followers once every job queued so far on the writer has run."""
        with contextlib.suppress(StoreUnavailable):
            self._writer.submit(lambda: None).add_done_callback(lambda _: self._wake())

    async def _append_inline(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> tuple[AppendResult, int | None]:
        """Append with the inline projections in the same transaction, which spans several
        awaits: if the caller fails or is cancelled at any of them, the writer thread rolls
        the transaction back (or, once COMMIT was queued, finishes it) before the caller
        gets its error."""
        conn = self._conn(self._writer)
        try:
            result, written = await self._writer.run(
                lambda: self._append_sync(stream_id, expected, batch, commit=False)
            )
            if written is not None:
                await self._apply_inline(stream_id, result, batch, written)
        except BaseException:
            await self._writer.finish(lambda: _rollback(conn))
            raise
        if written is not None:
            await self._writer.finish(lambda: _commit(conn))
        return result, written

    async def _apply_inline(
        self, stream_id: str, result: AppendResult, batch: list[EncodedEvent], written: int
    ) -> None:
        """Run inline projections inside the append's open transaction (not committed)."""
        first_position = result.position - len(batch) + 1
        first_version = result.version - len(batch) + 1
        recorded = [
            RecordedEvent(
                event_id=ev.event_id,
                stream_id=stream_id,
                version=first_version + i,
                position=first_position + i,
                type=ev.type,
                schema_version=ev.schema_version,
                raw_data=ev.data,
                raw_metadata=ev.metadata,
                recorded_at=_EPOCH + timedelta(microseconds=written),
            )
            for i, ev in enumerate(batch)
        ]
        tx = SqliteTx(self)
        for projection in self.inline_projections:
            for event in recorded:
                if projection.accepts(event):
                    await projection.handle(event, tx)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTx]:
        """A write transaction (``BEGIN IMMEDIATE``) on the writer connection.

        Appends from this store wait until it ends; other processes wait on SQLite's lock.
        The writer thread ends it whatever happens to the caller: if the block fails or is
        cancelled at any await (the BEGIN included), it rolls back; once the block is done,
        it commits. A cancelled caller gets its ``CancelledError`` after that.
        """
        self._check_open()
        async with self._write_lock:
            conn = self._conn(self._writer)
            try:
                await self._writer.run(lambda: conn.execute("BEGIN IMMEDIATE"))
                yield SqliteTx(self)
            except BaseException:
                await self._writer.finish(lambda: _rollback(conn))
                raise
            await self._writer.finish(lambda: _commit(conn))

    async def fence(self, moved_to: str) -> Fence:
        """Fence the store (see :class:`chronik.store.port.Fencing`): one row, written under
        SQLite's write lock, so no append commits after it."""
        moved_to = redact_url(moved_to)  # the fence row is readable by anyone
        async with self.transaction() as tx:
            row = await tx.fetchone(_SQL.fence_state)
            if row is None:
                await tx.execute(_SQL.set_fence, (moved_to, _now_us()))
                row = await tx.fetchone(_SQL.fence_state)
        return _fence_of(row)

    async def fence_state(self) -> Fence | None:
        self._check_open()

        def query() -> Fence | None:
            row = self._conn(self._reader).execute(_SQL.fence_state).fetchone()
            return None if row is None else _fence_of(row)

        return await self._reader.run(query)

    async def unfence(self) -> None:
        async with self.transaction() as tx:
            await tx.execute(_SQL.unfence)

    async def get_checkpoint(self, name: str) -> int | None:
        self._check_open()

        def query() -> int | None:
            row = self._conn(self._reader).execute(_SQL.get_checkpoint, (name,)).fetchone()
            return None if row is None else int(row[0])

        return await self._reader.run(query)

    async def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only query (a read model, say) on the reader connection. An error of
        the SQL itself (no such table, too many variables) is SQLite's own, as in a
        transaction and as on PostgreSQL; the database's state (busy, locked, I/O) is
        :class:`StoreUnavailable`."""
        self._check_open()

        def run() -> list[tuple[Any, ...]] | sqlite3.Error:
            try:
                return self._conn(self._reader).execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if _unavailable_error(exc):
                    raise
                return exc
            except (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.DataError) as exc:
                return exc  # the SQL's or its parameters' (passed out of the reader thread)

        result = await self._reader.run(run)
        if isinstance(result, sqlite3.Error):
            raise result
        return result

    async def checkpoints(self) -> dict[str, int]:
        self._check_open()
        return {str(name): int(pos) for name, pos in await self.query(_SQL.all_checkpoints)}

    async def get_active_version(self, projection: str) -> int | None:
        self._check_open()

        def query() -> int | None:
            row = (
                self._conn(self._reader).execute(_SQL.get_active_version, (projection,)).fetchone()
            )
            return None if row is None else int(row[0])

        return await self._reader.run(query)

    async def dead_letters(self, subscription: str | None = None) -> list[DeadLetter]:
        self._check_open()
        sql, params = (
            (_SQL.dead_letters_of, (subscription,)) if subscription else (_SQL.dead_letters_all, ())
        )

        def query() -> list[DeadLetter]:
            rows = self._conn(self._reader).execute(sql, params)
            return [
                DeadLetter(
                    r[0],
                    r[1],
                    r[2],
                    uuid.UUID(r[3]),
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    r[8],
                    _time_text(r[9]),
                )
                for r in rows
            ]

        return await self._reader.run(query)

    async def count_events(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> int:
        self._check_open()
        after, categories, types, _ = check_read_all(after, categories, types, None)
        sql = _SQL.count_events(categories=categories, types=types)
        params = [after, *(categories or ()), *(types or ())]

        def query() -> int:
            return int(self._conn(self._reader).execute(sql, params).fetchone()[0])

        return await self._reader.run(query)

    # -- reads --------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any]) -> list[RecordedEvent]:
        conn = self._conn(self._reader)
        make = RecordedEvent.from_stored  # the columns are in its argument order
        return [make(*row) for row in conn.execute(sql, params)]

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
        remaining = limit
        cursor = from_version if backwards else max(from_version or 0, 0)

        def fetch(cursor: int | None, size: int) -> Awaitable[list[RecordedEvent]]:
            params: tuple[Any, ...]
            if not backwards:
                sql, params = _SQL.read_forward, (stream_id, cursor, size)
            elif cursor is None:
                sql, params = _SQL.read_backward_from_end, (stream_id, size)
            else:
                sql, params = _SQL.read_backward, (stream_id, cursor, size)
            # queued on the reader thread at once
            return self._reader.result(self._reader.submit(lambda: self._query(sql, params)))

        def read_next(page: list[RecordedEvent], size: int) -> Awaitable[list[RecordedEvent]]:
            return fetch(page[-1].version - 1 if backwards else page[-1].version + 1, size)

        size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
        if size <= 0:  # nothing to read, but a missing stream is missing whatever the limit
            if await self.stream_version(stream_id) is None:
                raise StreamNotFound(stream_id)
            return
        first = await fetch(cursor, size)
        if not first and await self.stream_version(stream_id) is None:
            raise StreamNotFound(stream_id)
        if len(first) < size:  # the whole stream in one page: the usual load
            for ev in first:
                yield ev
            return
        pages = pages_reading_ahead(first, size, remaining, read_next)
        async with contextlib.aclosing(pages):
            async for page in pages:
                for ev in page:
                    yield ev

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
        sql = _SQL.read_all(categories=categories, types=types)
        filters = (*(categories or ()), *(types or ()))

        def fetch(cursor: int, size: int) -> Awaitable[list[RecordedEvent]]:
            params = (cursor, *filters, size)  # queued on the reader thread at once
            return self._reader.result(self._reader.submit(lambda: self._query(sql, params)))

        size = READ_PAGE_SIZE if limit is None else min(READ_PAGE_SIZE, limit)
        if size <= 0:
            return
        pages = pages_reading_ahead(
            await fetch(after, size),
            size,
            limit,
            lambda page, size: fetch(page[-1].position, size),
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                for ev in page:
                    yield ev

    async def read_correlation(
        self, correlation_id: str, *, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events with this correlation id, by position (index ``events_correlation_id_idx``)."""
        self._check_open()
        correlation_id, limit = check_read_correlation(correlation_id, limit)
        params = (correlation_id, -1 if limit is None else max(limit, 0))
        return await self._reader.run(lambda: self._query(_SQL.read_correlation, params))

    async def stream_version(self, stream_id: str) -> int | None:
        self._check_open()
        validate_stream_id(stream_id)

        def query() -> int | None:
            row = self._conn(self._reader).execute(_SQL.stream_version, (stream_id,)).fetchone()
            return None if row[0] is None else int(row[0])

        return await self._reader.run(query)

    async def streams(
        self, *, category: str | None = None, limit: int | None = None
    ) -> AsyncIterator[StreamInfo]:
        self._check_open()
        category, limit = check_streams(category, limit)
        cursor = ""
        remaining = limit
        sql = _SQL.streams_all if category is None else _SQL.streams_category
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
            return int(self._conn(self._reader).execute(_SQL.head).fetchone()[0])

        return await self._reader.run(query)

    async def stats(self) -> StoreStats:
        self._check_open()

        def query() -> StoreStats:
            conn = self._conn(self._reader)
            conn.execute("BEGIN")
            try:
                events, streams = conn.execute(_SQL.stats_counts).fetchone()
                head = conn.execute(_SQL.head).fetchone()[0]
                cats = dict(conn.execute(_SQL.count_categories).fetchall())
                size = int(conn.execute(_SQL.size).fetchone()[0])
            finally:
                conn.execute("COMMIT")
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

    def change_marker(self) -> asyncio.Event:
        """An event set by the next change (take it before a read: no change is missed).

        This process's appends set it at once. Other processes' commits are seen by a
        watcher that asks SQLite for ``PRAGMA data_version`` every ``watch_interval``
        seconds (a look at the WAL index in shared memory, no disk read) while someone has
        asked for a marker in the last second.
        """
        self._check_open()
        self._marker_asked = time.monotonic()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self._changed

    async def _watch(self) -> None:
        """Wake followers when another connection (another process) commits."""
        conn = self._conn(self._reader)

        def version() -> int:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        last: int | None = None
        while not self._closed and time.monotonic() - self._marker_asked < 1.0:
            try:
                now = await self._reader.run(version)
            except StoreUnavailable:
                return  # closed meanwhile
            if last is not None and now != last:
                self._wake()
            last = now
            await asyncio.sleep(self.watch_interval)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await self._watcher
        await self._reader.close()
        await self._writer.close()
