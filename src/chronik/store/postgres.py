"""The PostgreSQL event store (psycopg 3 + psycopg-pool): the production backend.

It behaves exactly like :class:`chronik.store.memory.MemoryEventStore`, name for name. What is
particular to it is how ``position`` is made, which docs/ordering.md explains in full:

* an append is ONE ``INSERT ... SELECT`` statement; each event's position is
  ``((pg_current_xact_id() + xid_offset) << 20) + ordinal - 1``, so positions are ordered by
  the transaction that wrote them, then by place in the append (at most 2**20 events an append);
* ``read_all`` and ``head_position`` only return positions below
  ``(pg_snapshot_xmin(pg_current_snapshot()) + xid_offset) << 20``, computed in the same
  statement (the same snapshot) as the page. Every transaction below a snapshot's xmin has
  finished, so nothing can later commit below what a reader has seen: position order is
  delivery order, and no reader skips an event that commits late.

``xid_offset`` (one row in ``position_base``) only grows: :meth:`PostgresEventStore.open`
raises it when the cluster's transaction ids are behind the stored positions, which is what a
``pg_dump``/``pg_restore`` into a new cluster does.

Example::

    store = await PostgresEventStore.open("postgresql://app@db/app", schema="orders")
    async with store:
        await store.append("order-42", [NewEvent("OrderPlaced", {"total": 10})])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg.types.json import JsonBinaryLoader, JsonLoader
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from chronik.errors import (
    BatchTooLarge,
    CheckpointMoved,
    ConcurrencyError,
    DuplicateEventId,
    LeaseLost,
    ProjectionPaused,
    SerializationError,
    StoreFenced,
    StoreNotFound,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import (
    AppendResult,
    RecordedEvent,
    validate_stream_id,
)
from chronik.store.pg_support import (
    _JSON_OID,
    _T,
    DEFAULT_SCHEMA,
    MAX_APPEND_ATTEMPTS,
    MAX_EVENTS_PER_APPEND,
    POSITION_SHIFT,
    _configure_connection,
    _Conflict,
    _Conn,
    _dead_letter,
    _lost,
    _migrate,
    _record,
    _retryable,
    _Row,
    _unavailable,
    _user_sql,
    split_schema,
    validate_schema_name,
)
from chronik.store.port import EventLog, Fence, Fencing, Inspectable, SqlStore, WorkerState
from chronik.store.postgres_statements import PostgresStatements
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
    check_read_page,
    check_read_stream,
    check_streams,
    pages_reading_ahead,
    plan_import,
    resolve_duplicate,
    wait_uninterrupted,
)
from chronik.store.urls import redact_url

__all__ = [
    "DEFAULT_SCHEMA",
    "MAX_EVENTS_PER_APPEND",
    "POSITION_SHIFT",
    "PostgresEventStore",
    "PostgresTx",
    "split_schema",
    "validate_schema_name",
]

logger = logging.getLogger("chronik.store.postgres")

CHECKPOINT_MOVED = "CK001"
"""SQLSTATE of chronik_advance_checkpoint() finding the checkpoint moved (migration 0006)."""
PROJECTION_PAUSED = "CK002"
LEASE_LOST = "CK003"
"""SQLSTATE of chronik_check_lease(): a partition's lease has a newer owner (migration 0011)."""


def _checkpoint_moved(exc: psycopg.Error) -> CheckpointMoved:
    """chronik_advance_checkpoint's error (DETAIL the name, HINT "expected X, found Y")."""
    found = re.fullmatch(r"expected (\d+), found (\d+)", exc.diag.message_hint or "")
    expected, actual = (int(found[1]), int(found[2])) if found else (None, None)
    return CheckpointMoved(exc.diag.message_detail or "?", expected, actual)


STORE_FENCED = "CF001"
"""SQLSTATE of the events_fence trigger: the store is fenced (migration 0009)."""


def _fenced(exc: psycopg.Error) -> StoreFenced:
    """The fence trigger's error as :class:`StoreFenced` (new store in DETAIL, position in
    HINT)."""
    hint = exc.diag.message_hint
    return StoreFenced(
        exc.diag.message_detail or "?", int(hint) if hint and hint.isdigit() else None
    )


FILTER_WINDOW = 1000
"""A filtered read walks the log in windows of at least this many events (in order)."""
GROUP_MAX_APPENDS = 128
"""Group commit: at most this many appends share one statement and commit."""
GROUP_MAX_EVENTS = 1024
"""Group commit: at most this many events in one group (an append of more runs alone)."""


class _Queued:
    """An append waiting for a group commit: its arguments and the caller's future."""

    __slots__ = ("batch", "expected", "future", "stream_id")

    def __init__(
        self,
        stream_id: str,
        expected: int,
        batch: list[EncodedEvent],
        future: asyncio.Future[AppendResult],
    ) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.batch = batch
        self.future = future


class PostgresTx:
    """A write transaction on one pooled connection (see :class:`chronik.store.protocol.Tx`).

    ``:name`` parameters with a mapping, or psycopg's ``%s`` with a sequence. Unqualified
    table names resolve in the store's schema first. A connection lost midway raises
    :class:`StoreUnavailable`; errors of the SQL itself are PostgreSQL's own (psycopg's), and
    after one the transaction can only roll back.
    """

    dialect = "postgresql"
    clock_sql = "extract(epoch from clock_timestamp())::float8"

    def __init__(self, conn: _Conn, store: PostgresEventStore) -> None:
        self._conn = conn
        self._imported = 0
        self._store = store

    def timestamp(self, at: datetime) -> datetime:
        return at

    async def _cursor(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> psycopg.AsyncCursor[_Row]:
        query, args = _user_sql(sql, params)
        cur = self._conn.cursor()
        # read models get parsed JSON, as everywhere else in psycopg
        cur.adapters.register_loader(_JSON_OID, JsonLoader)
        cur.adapters.register_loader(_JSON_OID, JsonBinaryLoader)
        try:
            await cur.execute(query, args)
        except psycopg.OperationalError as exc:
            if _retryable(exc):
                raise _unavailable(exc) from exc
            raise
        return cur

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        query, args = _user_sql(sql, params)
        try:  # no rows to load: the connection's own cursor, no per-cursor loaders
            await self._conn.execute(query, args)
        except psycopg.OperationalError as exc:
            if _retryable(exc):
                raise _unavailable(exc) from exc
            raise

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        return await (await self._cursor(sql, params)).fetchall()

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[Any, ...] | None:
        return await (await self._cursor(sql, params)).fetchone()

    async def _one(self, sql: str, params: Sequence[Any]) -> _Row | None:
        cur = await self._conn.execute(sql, params)
        return await cur.fetchone()

    async def get_checkpoint(self, name: str) -> int | None:
        """The checkpoint, locked for this transaction: a second runner of the same
        subscription waits here until this one commits, then reads the new value."""
        key = f"chronik.checkpoint.{self._store.schema}.{name}"
        await self._conn.execute(self._store._sql.lock_checkpoint, (key,))
        row = await self._one(self._store._sql.get_checkpoint, (name,))
        return None if row is None else int(row[0])

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._conn.execute(self._store._sql.set_checkpoint, (name, position))

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        # Sent without waiting (pipeline mode): the function takes the checkpoint's lock,
        # checks and writes in the server; a mismatch fails the transaction, and the error
        # (SQLSTATE CK001) arrives at COMMIT as CheckpointMoved.
        key = f"chronik.checkpoint.{self._store.schema}.{name}"
        await self._conn.execute(
            self._store._sql.advance_checkpoint, (key, name, int(expected), int(position))
        )

    async def add_dead_letter(
        self, subscription: str, event: RecordedEvent, error: str, attempts: int
    ) -> None:
        await self._conn.execute(
            self._store._sql.add_dead_letter,
            (
                subscription,
                event.position,
                event.event_id,
                event.stream_id,
                event.version,
                event.type,
                error,
                attempts,
            ),
        )

    async def delete_dead_letter(self, dead_letter_id: int) -> None:
        await self._conn.execute(self._store._sql.delete_dead_letter, (dead_letter_id,))

    async def get_active_version(self, projection: str) -> int | None:
        row = await self._one(self._store._sql.get_active_version, (projection,))
        return None if row is None else int(row[0])

    async def set_active_version(self, projection: str, version: int) -> None:
        await self._conn.execute(self._store._sql.set_active_version, (projection, version))

    async def import_events(self, events: Sequence[ImportedEvent]) -> None:
        """See :meth:`chronik.store.protocol.Tx.import_events`. Positions come from this
        transaction's id, like an append's, so one transaction imports at most 2**20."""
        sql = self._store._sql
        streams = sorted({ev.stream_id for ev in events})
        cur = await self._conn.execute(sql.stream_versions, {"streams": streams})
        current = {str(sid): int(v) for sid, v in await cur.fetchall()}
        planned = plan_import(
            events, current, self._store.max_event_bytes, self._store.max_json_depth
        )
        if not planned:
            return
        if self._imported + len(planned) > MAX_EVENTS_PER_APPEND:
            raise BatchTooLarge(
                f"{self._imported + len(planned)} events imported in one transaction, over "
                f"the PostgreSQL backend's limit of {MAX_EVENTS_PER_APPEND}"
            )
        try:
            data = [ev.data.decode("utf-8") for ev, _ in planned]
            metadata = [ev.metadata.decode("utf-8") for ev, _ in planned]
        except UnicodeDecodeError as exc:
            raise SerializationError(f"imported event data is not UTF-8 JSON: {exc}") from exc
        params = {
            "offset": self._imported,
            "stream_ids": [ev.stream_id for ev, _ in planned],
            "versions": [version for _, version in planned],
            "event_ids": [ev.event_id for ev, _ in planned],
            "types": [ev.type for ev, _ in planned],
            "schema_versions": [ev.schema_version for ev, _ in planned],
            "data": data,
            "metadata": metadata,
            "recorded_at": [ev.recorded_at for ev, _ in planned],
        }
        try:
            async with self._conn.transaction():  # a savepoint: the outer one stays usable
                await self._conn.execute(sql.import_events, params)
        except psycopg.errors.UniqueViolation as exc:
            cur = await self._conn.execute(sql.stored_copies, ([e.event_id for e, _ in planned],))
            found = await cur.fetchone()
            if found is not None:  # (event_id, stream_id, ...)
                raise DuplicateEventId(found[1], found[0], "is stored already") from exc
            ev, version = planned[0]
            raise ConcurrencyError(ev.stream_id, version - 1, None) from exc
        except psycopg.DataError as exc:
            raise SerializationError(f"PostgreSQL rejected an imported event: {exc}") from exc
        except psycopg.Error as exc:
            if exc.sqlstate == STORE_FENCED:
                raise _fenced(exc) from exc
            raise
        self._imported += len(planned)


class _InsertConflict(Exception):
    """The append's INSERT hit a unique index (raised inside its transaction to roll back)."""

    def __init__(self, constraint: str | None) -> None:
        self.constraint = constraint


class _HandlerFailed(Exception):
    """An inline projection failed inside an append: carries its error past ``_run``."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class PostgresEventStore(EventStoreBase):
    """Events in one PostgreSQL schema; see the module docstring for how positions work.

    Create it with :meth:`open`, which connects, creates the schema and applies migrations.

    ``_before_commit`` is a testing hook: when set, each append runs in an explicit
    transaction and awaits it after the INSERT and before COMMIT, so a test can hold the
    transaction open (sleep, wait on an event) or roll it back (raise).
    """

    capabilities = frozenset({EventLog, Inspectable, WorkerState, SqlStore, Fencing})
    dialect = "postgresql"

    def __init__(
        self,
        pool: AsyncConnectionPool[_Conn],
        schema: str,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        poll_interval: float = 0.1,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.schema = validate_schema_name(schema)
        self._pool = pool
        self._sql = PostgresStatements(schema)
        self._closed = False
        self._poll_interval = poll_interval
        self._before_commit: Callable[[], Awaitable[None]] | None = None
        self.inline_projections: list[InlineProjection] = []
        # group commit: appends beyond `appends_in_flight` queue and commit together
        self.appends_in_flight = 4
        """Appends (or groups of appends) this store runs at once; more callers queue and
        their appends commit together in the next group (group commit)."""
        self.largest_group = 1
        """The most appends one statement has committed together (group commit)."""
        self._in_flight = 0
        self._queue: deque[_Queued] = deque()
        self._drainers: set[asyncio.Task[None]] = set()
        # change signalling: LISTEN on one connection; NOTIFY after commits, coalesced
        self.notify_interval = 0.005
        """At most one NOTIFY per this many seconds per process (appends coalesce)."""
        self._changed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._notify_pending = False
        self._last_notify = float("-inf")
        # listeners hold a shared advisory lock on these keys; writers NOTIFY only when a
        # listener of another backend holds it (checked at most once a second)
        self._listen_keys = (0x6368726B, zlib.crc32(self.schema.encode()) - (1 << 31))
        self._listener_pid = 0
        self._others_listening = False
        self._listeners_checked = float("-inf")

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        schema: str | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 30.0,
        idle_in_transaction_timeout: float = 60.0,
        create: bool = True,
    ) -> PostgresEventStore:
        """Connect, create ``schema`` if missing, apply migrations, and open the pool.

        Args:
            conninfo: a libpq connection string or ``postgresql://`` URL; a ``schema`` query
                parameter in the URL is taken as the schema (see :func:`split_schema`).
            schema: the schema holding the store's tables (default ``chronik``).
            max_event_bytes: largest encoded event (data + metadata) accepted.
            pool_min, pool_max: connection pool size.
            pool_timeout: seconds to wait for a connection (also the connect timeout).
            idle_in_transaction_timeout: set on every pooled connection, so a transaction
                left open cannot stall readers' horizon for longer than this.
            create: create the schema and its tables when missing; with ``False`` a schema
                without chronik's tables raises :class:`StoreNotFound` and nothing is
                created (what read-only tools use).

        Raises:
            StoreUnavailable: the database cannot be reached or refused the setup.
            SchemaError: the schema was migrated by a newer chronik.
            StoreNotFound: ``create=False`` and the schema holds no chronik store.
            ValueError: the schema name is not a plain identifier.
        """
        conninfo, url_schema = split_schema(conninfo)
        if schema is not None and url_schema is not None and schema != url_schema:
            raise ValueError(f"schema {schema!r} given, but the URL says {url_schema!r}")
        given = schema if schema is not None else url_schema
        name = validate_schema_name(DEFAULT_SCHEMA if given is None else given)
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=max(2, int(pool_timeout))
            )
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc
        try:
            async with conn:
                if not create:
                    cur = await conn.execute(
                        "SELECT to_regclass(%s) IS NOT NULL", (f'"{name}".schema_migrations',)
                    )
                    row = await cur.fetchone()
                    if not (row and row[0]):
                        raise StoreNotFound(
                            f"PostgreSQL schema {name!r}", "no chronik tables there"
                        )
                await _migrate(conn, name)
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc

        idle_ms = int(idle_in_transaction_timeout * 1000)

        async def configure(c: _Conn) -> None:
            await _configure_connection(c, name, idle_ms)

        pool: AsyncConnectionPool[_Conn] = AsyncConnectionPool(
            conninfo,
            min_size=pool_min,
            max_size=max(pool_max, pool_min),
            kwargs={"autocommit": True},
            configure=configure,
            open=False,
            timeout=pool_timeout,
            name=f"chronik-{name}",
        )
        try:
            await pool.open(wait=True, timeout=pool_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise _unavailable(exc) from exc
        return cls(pool, name, max_event_bytes=max_event_bytes)

    # -- plumbing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")

    async def _run(self, op: Callable[[_Conn], Awaitable[_T]], *, user_sql: bool = False) -> _T:
        """Run ``op`` on a pooled connection; driver errors become chronik errors.

        A lost connection is retried (twice, after the pool discards broken connections):
        reads repeat harmlessly, and an append repeats idempotently because its event ids
        find the first attempt if that one committed. With ``user_sql``, errors of the SQL
        itself (not of the connection) are raised as they are.
        """
        self._check_open()
        attempt = 0
        while True:
            try:
                conn = await self._pool.getconn()
                try:
                    result = await op(conn)
                except BaseException as exc:
                    # handing back (closing first if cancelled mid-query) runs to its end
                    # even if the caller is cancelled again meanwhile: a connection lost
                    # from the pool's books drained it (seen: PoolTimeout after a gRPC
                    # client left mid-subscription)
                    await wait_uninterrupted(
                        self._give_back(conn, broken=not isinstance(exc, Exception))
                    )
                    raise
                await wait_uninterrupted(self._pool.putconn(conn))
                return result
            except psycopg.Error as exc:
                if exc.sqlstate == STORE_FENCED:
                    raise _fenced(exc) from exc
                if self._closed:
                    raise StoreUnavailable("the PostgreSQL store is closed") from exc
                if attempt < 2 and _retryable(exc):
                    attempt += 1
                    logger.warning("PostgreSQL connection lost (%s); retrying", exc)
                    with contextlib.suppress(psycopg.Error):
                        await self._pool.check()
                    continue
                if user_sql and not _lost(exc):
                    raise
                if isinstance(exc, psycopg.DataError | psycopg.errors.ProgramLimitExceeded):
                    raise SerializationError(f"PostgreSQL rejected a value: {exc}") from exc
                raise _unavailable(exc) from exc

    async def _give_back(self, conn: _Conn, *, broken: bool) -> None:
        """Return ``conn`` to the pool; ``broken`` (a cancelled statement may have left the
        protocol out of step): closed first, so the pool replaces it."""
        try:
            if broken:
                await conn.close()
        finally:
            await self._pool.putconn(conn)

    async def _fetchall(self, sql: str, params: Any) -> list[_Row]:
        async def op(conn: _Conn) -> list[_Row]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._run(op)

    async def _fetchone(self, sql: str, params: Any = None) -> _Row:
        rows = await self._fetchall(sql, params)
        return rows[0]

    # -- writing --------------------------------------------------------------------------

    async def _write(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        """One append: alone while fewer than ``appends_in_flight`` run, else queued for the
        next group commit (:meth:`_commit_group`)."""
        if len(batch) > MAX_EVENTS_PER_APPEND:
            raise BatchTooLarge(
                f"stream {stream_id!r}: {len(batch)} events in one append, "
                f"over the PostgreSQL backend's limit of {MAX_EVENTS_PER_APPEND}"
            )
        if not batch:
            return await self._append_nothing(stream_id, expected)
        groupable = (
            len(batch) <= GROUP_MAX_EVENTS
            and self._before_commit is None
            and not self.inline_projections
        )
        if groupable and (self._queue or self._in_flight >= self.appends_in_flight):
            return await self._join_group(stream_id, expected, batch)
        self._in_flight += 1
        try:
            return await self._write_alone(stream_id, expected, batch)
        finally:
            self._in_flight -= 1
            self._start_draining()

    async def _join_group(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        """Queue an append for the next group and wait for its own result.

        Cancelled while still queued, the append leaves the queue (nothing written).
        Cancelled once its group has started, the caller waits for the group's commit or
        rollback before its ``CancelledError`` (so a retry with the same event ids finds
        out which), as a cancelled append alone does.
        """
        entry = _Queued(stream_id, expected, batch, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._start_draining()
        future = entry.future
        try:
            await asyncio.wait((future,))  # unlike `await future`, never cancels it
        except asyncio.CancelledError:
            if entry in self._queue:
                self._queue.remove(entry)
                future.cancel()
                raise
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((future,))
            if not future.cancelled():
                future.exception()  # retrieved: the outcome is dropped with the caller
            raise
        return future.result()

    def _start_draining(self) -> None:
        """Start a group committer for the queue while fewer than ``appends_in_flight``
        appends run."""
        while self._queue and self._in_flight < self.appends_in_flight and not self._closed:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)

    async def _drain(self) -> None:
        """Commit groups off the queue until it is empty (one slot of ``appends_in_flight``)."""
        try:
            while self._queue and not self._closed:
                await self._commit_group(self._take_group())
        finally:
            self._in_flight -= 1
            if self._closed:
                self._fail_queued()

    def _take_group(self) -> list[_Queued]:
        """The next group: queued appends in order, one per stream (a second append to a
        stream waits for the next group, as its version depends on the first)."""
        group: list[_Queued] = []
        skipped: list[_Queued] = []
        streams: set[str] = set()
        events = 0
        scanned = 0
        while self._queue and len(group) < GROUP_MAX_APPENDS and scanned < 2 * GROUP_MAX_APPENDS:
            entry = self._queue.popleft()
            scanned += 1
            if entry.future.done():  # cancelled while queued
                continue
            if entry.stream_id in streams or (
                group and events + len(entry.batch) > GROUP_MAX_EVENTS
            ):
                skipped.append(entry)
                continue
            group.append(entry)
            streams.add(entry.stream_id)
            events += len(entry.batch)
        self._queue.extendleft(reversed(skipped))
        return group

    def _fail_queued(self) -> None:
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(StoreUnavailable("the PostgreSQL store is closed"))

    async def _commit_group(self, group: list[_Queued]) -> None:
        """Commit ``group`` in one INSERT (one round trip, one commit) and hand each caller
        its own result.

        An append whose expected version does not fit inserts nothing in the group; it runs
        again alone, which raises its ``ConcurrencyError`` (or finds it was a retry). If the
        statement fails as a whole (an event id already stored, a version another process
        took, a value PostgreSQL refuses), nothing of it was written and every append runs
        alone, so that only the guilty one fails.
        """
        if not group:
            return
        if len(group) == 1:
            await self._settle(group)
            return
        self.largest_group = max(self.largest_group, len(group))
        sql, params = self._group_statement(group)

        async def op(conn: _Conn) -> list[_Row] | None:
            try:
                cur = await conn.execute(sql, params)
            except (psycopg.errors.UniqueViolation, psycopg.DataError):
                return None
            return await cur.fetchall()

        try:
            rows = await self._run(op)
        except Exception as exc:  # the store is lost or closed: every caller gets it
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        if rows is None:
            await self._settle(group)
            return
        self._appended()
        landed: dict[str, tuple[int, int]] = {}
        for stream_id, position, version in rows:
            pos, ver = landed.get(stream_id, (0, -1))
            landed[stream_id] = (max(pos, position), max(ver, version))
        rest: list[_Queued] = []
        for entry in group:
            if entry.stream_id in landed:
                position, version = landed[entry.stream_id]
                if not entry.future.done():
                    entry.future.set_result(AppendResult(position=position, version=version))
            else:
                rest.append(entry)
        await self._settle(rest)

    async def _settle(self, entries: list[_Queued]) -> None:
        """Run each of ``entries`` alone (concurrently) and hand its caller the outcome."""

        async def one(entry: _Queued) -> None:
            try:
                result = await self._write_alone(entry.stream_id, entry.expected, entry.batch)
            except Exception as exc:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            else:
                if not entry.future.done():
                    entry.future.set_result(result)

        await asyncio.gather(*(one(entry) for entry in entries))

    def _group_statement(self, group: list[_Queued]) -> tuple[str, dict[str, Any]]:
        stream_ids: list[str] = []
        expected: list[int] = []
        ordinals: list[int] = []
        event_ids: list[uuid.UUID] = []
        types: list[str] = []
        schema_versions: list[int] = []
        data: list[str] = []
        metadata: list[str] = []
        for entry in group:
            for n, ev in enumerate(entry.batch, 1):
                stream_ids.append(entry.stream_id)
                expected.append(entry.expected)
                ordinals.append(n)
                event_ids.append(ev.event_id)
                types.append(ev.type)
                schema_versions.append(ev.schema_version)
                data.append(ev.data.decode("utf-8"))
                metadata.append(ev.metadata.decode("utf-8"))
        return self._sql.append_group, {
            "stream_ids": stream_ids,
            "expected": expected,
            "n": ordinals,
            "event_ids": event_ids,
            "types": types,
            "schema_versions": schema_versions,
            "data": data,
            "metadata": metadata,
        }

    async def _write_alone(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> AppendResult:
        """One append in its own statement: one INSERT ... SELECT (retried while others
        take the version an ``ANY``/``STREAM_EXISTS`` append computed)."""
        sql, params = self._append_statement(stream_id, expected, batch)
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            try:
                # Cancelled, psycopg cancels the statement in the server and waits for its
                # outcome (committed or not; a retry with the same ids tells which); an
                # inline projection's transaction is rolled back by its context manager.
                outcome = await self._run(
                    lambda conn: self._insert(conn, stream_id, batch, sql, params)
                )
            except _HandlerFailed as failed:
                raise failed.error from None
            except asyncio.CancelledError:
                self._appended()  # it may have committed: a spurious wake-up costs a read
                raise
            if isinstance(outcome, AppendResult):
                self._appended()
                return outcome
            if outcome.constraint == "events_pkey":
                raise StoreUnavailable(
                    f"stream {stream_id!r}: position collision; the position base is behind "
                    f"the stored positions (reopen the store to repair it, see "
                    f"docs/ordering.md)"
                )
            original = resolve_duplicate(
                stream_id, expected, batch, await self._stored_copies(batch)
            )
            if original is not None:
                return original
            actual = await self.stream_version(stream_id)
            # Raises ConcurrencyError unless the stream now fits (then another writer took
            # the version we computed; try again at the new end).
            check_expected(stream_id, expected, -1 if actual is None else actual)
        actual = await self.stream_version(stream_id)
        raise ConcurrencyError(stream_id, expected, -1 if actual is None else actual)

    def _append_statement(
        self, stream_id: str, expected: int, batch: list[EncodedEvent]
    ) -> tuple[str, dict[str, Any]]:
        try:
            data = [ev.data.decode("utf-8") for ev in batch]
            metadata = [ev.metadata.decode("utf-8") for ev in batch]
        except UnicodeDecodeError as exc:
            raise SerializationError(
                f"event data is not UTF-8 JSON: {exc}", stream_id=stream_id
            ) from exc
        for index, (text, meta) in enumerate(zip(data, metadata, strict=True)):
            if "\x00" in text or "\x00" in meta:
                raise SerializationError(
                    f"events[{index}] contains a NUL byte, which is not valid JSON",
                    event_type=batch[index].type,
                    stream_id=stream_id,
                )
        if len(batch) == 1:
            (ev,) = batch
            return self._sql.append_one, {
                "stream_id": stream_id,
                "expected": int(expected),
                "event_id": ev.event_id,
                "type": ev.type,
                "schema_version": ev.schema_version,
                "data": data[0],
                "metadata": metadata[0],
            }
        return self._sql.append, {
            "stream_id": stream_id,
            "expected": int(expected),
            "event_ids": [ev.event_id for ev in batch],
            "types": [ev.type for ev in batch],
            "schema_versions": [ev.schema_version for ev in batch],
            "data": data,
            "metadata": metadata,
        }

    async def _insert(
        self,
        conn: _Conn,
        stream_id: str,
        batch: list[EncodedEvent],
        sql: str,
        params: dict[str, Any],
    ) -> AppendResult | _Conflict:
        """The append statement: alone (autocommit, one round trip), or in a transaction
        with the inline projections and the testing hook before COMMIT."""
        try:
            if self._before_commit is None and not self.inline_projections:
                try:
                    cur = await conn.execute(sql, params)
                except psycopg.errors.UniqueViolation as exc:
                    return _Conflict(exc.diag.constraint_name)
                rows = await cur.fetchall()
            else:
                async with conn.transaction():
                    try:
                        cur = await conn.execute(sql, params)
                    except psycopg.errors.UniqueViolation as exc:
                        raise _InsertConflict(exc.diag.constraint_name) from exc
                    rows = await cur.fetchall()
                    if rows and self.inline_projections:
                        await self._apply_inline(conn, stream_id, batch, rows)
                    if self._before_commit is not None:
                        await self._before_commit()
        except _InsertConflict as conflict:
            return _Conflict(conflict.constraint)
        except psycopg.DataError as exc:
            raise SerializationError(
                f"PostgreSQL rejected the event data: {exc}", stream_id=stream_id
            ) from exc
        if not rows:
            return _Conflict(None)
        return AppendResult(position=max(r[0] for r in rows), version=max(r[1] for r in rows))

    async def _apply_inline(
        self, conn: _Conn, stream_id: str, batch: list[EncodedEvent], rows: list[_Row]
    ) -> None:
        """Run the inline projections on the events just inserted, in their transaction."""
        tx = PostgresTx(conn, self)
        for ev, (position, version, recorded_at) in zip(batch, sorted(rows), strict=True):
            record = RecordedEvent.from_stored(
                position,
                stream_id,
                version,
                ev.event_id,
                ev.type,
                ev.schema_version,
                ev.data,
                ev.metadata,
                recorded_at,
            )
            for projection in self.inline_projections:
                if projection.accepts(record):
                    try:
                        await projection.handle(record, tx)
                    except Exception as exc:
                        raise _HandlerFailed(exc) from exc

    async def _stored_copies(self, batch: list[EncodedEvent]) -> dict[uuid.UUID, StoredCopy]:
        rows = await self._fetchall(self._sql.stored_copies, ([ev.event_id for ev in batch],))
        return {row[0]: StoredCopy(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows}

    async def _append_nothing(self, stream_id: str, expected: int) -> AppendResult:
        actual = await self.stream_version(stream_id)
        current = -1 if actual is None else actual
        check_expected(stream_id, expected, current)
        return AppendResult(position=await self.head_position(), version=current)

    # -- reading --------------------------------------------------------------------------

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of one stream by version, in pages (see ``EventStore.read_stream``)."""
        self._check_open()
        validate_stream_id(stream_id)
        from_version, limit = check_read_stream(from_version, limit, backwards)
        remaining = None if limit is None else max(limit, 0)
        if backwards:
            cursor: int | None = from_version
            if cursor is not None and cursor < 0:
                remaining = 0
        else:
            cursor = max(from_version or 0, 0)

        def fetch(cursor: int | None, size: int) -> Awaitable[list[_Row]]:
            sql = self._sql
            if not backwards:
                return self._fetchall(sql.read_forward, (stream_id, cursor, size))
            if cursor is None:
                return self._fetchall(sql.read_backward_from_end, (stream_id, size))
            return self._fetchall(sql.read_backward, (stream_id, cursor, size))

        size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
        rows = await fetch(cursor, size) if size > 0 else []
        if not rows and await self.stream_version(stream_id) is None:
            raise StreamNotFound(stream_id)
        if len(rows) < size or size <= 0:  # the whole stream in one page: the usual load
            for row in rows:
                yield _record(row)
            return

        def read_next(page: list[_Row], size: int) -> Awaitable[list[_Row]]:
            last = page[-1][2]
            return fetch(last - 1 if backwards else last + 1, size)

        pages = pages_reading_ahead(rows, size, remaining, read_next)
        async with contextlib.aclosing(pages):
            async for page in pages:
                for row in page:
                    yield _record(row)

    async def read_all(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events with ``position > after`` in global order, below the visibility horizon.

        Each page is one statement: the horizon ``(xmin of this snapshot + offset) << 20`` and
        the rows come from one snapshot, so a transaction that commits later always lands
        above every position already returned. The next page is read while the caller
        consumes this one (at most two pages are held).
        """
        self._check_open()
        after, categories, types, limit = check_read_all(after, categories, types, limit)
        remaining = None if limit is None else max(limit, 0)
        if categories is not None or types is not None:
            cursor = int(after)
            more = True
            while more and (remaining is None or remaining > 0):
                size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
                rows, reached, more = await self._read_window(cursor, size, categories, types)
                if not rows and reached <= cursor:
                    return  # held back by an open transaction: nothing more readable now
                cursor = reached
                if remaining is not None:
                    remaining -= len(rows)
                for row in rows:
                    yield _record(row)
            return
        sql = self._sql.read_all(categories=None, types=None)
        params: dict[str, Any] = {"after": int(after)}

        def fetch(cursor: int, size: int) -> Awaitable[list[_Row]]:
            return self._fetchall(sql, {**params, "after": cursor, "page": size})

        size = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
        if size <= 0:
            return
        pages = pages_reading_ahead(
            await fetch(int(after), size),
            size,
            remaining,
            lambda page, size: fetch(page[-1][0], size),
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                for row in page:
                    yield _record(row)

    async def read_page(
        self,
        *,
        after: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> tuple[list[RecordedEvent], int, bool]:
        """What a live subscription reads each time it wakes, in one round trip.

        Returns the matching events after ``after`` (at most ``limit``), a position such
        that every matching event at or below it is in this page or an earlier one (see
        :class:`chronik.subscriptions.Page`), and whether more may match right now. The
        head and the page come from one snapshot.
        """
        self._check_open()
        after, limit, categories, types = check_read_page(after, limit, categories, types)
        limit = max(int(limit), 0)
        if limit == 0:  # nothing read, nothing known beyond `after`
            return [], int(after), False
        if categories is None and types is None:
            rows = await self._fetchall(self._sql.read_page(), {"after": int(after), "page": limit})
            head, top = (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)
            events = [_record(row[2:]) for row in rows if row[2] is not None]
            if len(events) >= limit:
                return events, events[-1].position, True
            caught_up_to = max(head, int(after))
            # committed events above the horizon (an older transaction is still open):
            # more is there, readable as soon as it ends, which no NOTIFY will announce
            return events, caught_up_to, top > caught_up_to
        found, caught_up_to, more = await self._read_window(after, limit, categories, types)
        return [_record(row) for row in found], caught_up_to, more

    async def _read_window(
        self,
        after: int,
        page: int,
        categories: Sequence[str] | None,
        types: Sequence[str] | None,
    ) -> tuple[list[_Row], int, bool]:
        """One window of a filtered read (see ``PostgresStatements.read_window``): the matching
        rows, the position the read is complete up to, and whether to read on."""
        window = max(2 * page, FILTER_WINDOW)
        params: dict[str, Any] = {"after": int(after), "page": page, "window": window}
        if categories is not None:
            params["categories"] = list(categories)
        if types is not None:
            params["types"] = list(types)
        sql = self._sql.read_window(categories=categories, types=types)
        rows = await self._fetchall(sql, params)
        head, top = int(rows[0][0]), int(rows[0][1])
        scanned, scanned_to = int(rows[0][2]), int(rows[0][3])
        found = [row[4:] for row in rows if row[4] is not None]
        if len(found) >= page:
            return found, found[-1][0], True
        if scanned < window:  # reached the horizon: everything below it has been seen
            caught_up_to = max(head, scanned_to, int(after))
            return found, caught_up_to, top > caught_up_to  # see read_page
        return found, scanned_to, True

    async def read_correlation(
        self, correlation_id: str, *, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events with this correlation id, by position (index ``events_correlation_id_idx``).

        Committed events above the readers' horizon are included: this is for inspection,
        not for subscriptions.
        """
        self._check_open()
        correlation_id, limit = check_read_correlation(correlation_id, limit)
        rows = await self._fetchall(
            self._sql.read_correlation, (correlation_id, None if limit is None else max(limit, 0))
        )
        return [_record(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int | None:
        """The version of the stream's last event, or ``None`` when it has none."""
        self._check_open()
        validate_stream_id(stream_id)
        (version,) = await self._fetchone(self._sql.stream_version, (stream_id,))
        return None if version is None else int(version)

    async def streams(
        self, *, category: str | None = None, limit: int | None = None
    ) -> AsyncIterator[StreamInfo]:
        """The streams by stream id, paged by stream id (see ``EventStore.streams``)."""
        self._check_open()
        category, limit = check_streams(category, limit)
        remaining = None if limit is None else max(limit, 0)
        last = ""
        while True:
            page = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            if page <= 0:
                return
            if category is None:
                rows = await self._fetchall(self._sql.streams_all, (last, page))
            else:
                rows = await self._fetchall(self._sql.streams_category, (last, category, page))
            for stream_id, version, position in rows:
                yield StreamInfo(stream_id, int(version), int(position))
            if len(rows) < page:
                return
            last = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)

    async def head_position(self) -> int:
        """The highest position a reader can see now: the last one below the horizon."""
        self._check_open()
        (head,) = await self._fetchone(self._sql.head)
        return int(head)

    async def stats(self) -> StoreStats:
        """Counts of events and streams, per category, and the table's size on disk."""
        self._check_open()
        events, streams = await self._fetchone(self._sql.stats_counts)
        categories = await self._fetchall(self._sql.count_categories, None)
        (size,) = await self._fetchone(self._sql.size)
        return StoreStats(
            events=int(events),
            streams=int(streams),
            head_position=await self.head_position(),
            categories={str(cat): int(n) for cat, n in categories},
            size_bytes=int(size),
        )

    async def count_events(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> int:
        """How many events ``read_all`` with these arguments would yield now."""
        self._check_open()
        after, categories, types, _ = check_read_all(after, categories, types, None)
        sql = self._sql.count_events(categories=categories, types=types)
        params: dict[str, Any] = {"after": int(after)}
        if categories is not None:
            params["categories"] = list(categories)
        if types is not None:
            params["types"] = list(types)
        (count,) = await self._fetchone(sql, params)
        return int(count)

    # -- read models, checkpoints, dead letters ---------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        """A write transaction on one pooled connection, committed when the block succeeds.

        Read models, checkpoints and dead letters written through it commit together.

        The store, not the caller, ends it: COMMIT or ROLLBACK and handing the connection
        back to the pool run in a task of their own (:meth:`_end_transaction`), which a
        cancelled caller cannot interrupt; the caller gets its ``CancelledError`` once the
        transaction is over. A block that is cancelled (or interrupted otherwise) may have
        left a statement half-sent in the pipeline, so its connection is closed (the server
        rolls back) instead of being reused.
        """
        self._check_open()
        try:
            # pipeline mode: statements whose results nobody fetches (a handler's
            # INSERTs, the checkpoint) go out without waiting for one round trip each;
            # an error surfaces at the next fetch or at COMMIT and rolls everything back
            conn = await self._pool.getconn()  # a cancelled wait loses no connection
            scope = contextlib.AsyncExitStack()
            try:
                await scope.enter_async_context(conn.pipeline())
                await scope.enter_async_context(conn.transaction())
                yield PostgresTx(conn, self)
            except BaseException as exc:
                await wait_uninterrupted(self._end_transaction(conn, scope, exc))
                raise
            await wait_uninterrupted(self._end_transaction(conn, scope, None))
        except psycopg.Error as exc:
            if _lost(exc):
                raise _unavailable(exc) from exc
            if exc.sqlstate == CHECKPOINT_MOVED:
                raise _checkpoint_moved(exc) from exc
            if exc.sqlstate == PROJECTION_PAUSED:
                raise ProjectionPaused(exc.diag.message_detail or "?") from exc
            if exc.sqlstate == LEASE_LOST:
                detail, hint = exc.diag.message_detail, exc.diag.message_hint
                raise LeaseLost(detail or "?", hint or "") from exc
            if exc.sqlstate == STORE_FENCED:
                raise _fenced(exc) from exc
            raise

    async def _end_transaction(
        self, conn: _Conn, scope: contextlib.AsyncExitStack, failure: BaseException | None
    ) -> None:
        """Commit (no failure), roll back (an error), or close the connection (the block
        was cancelled or interrupted: the pipeline may be out of step), then give the
        connection back to the pool, which replaces a closed one."""
        try:
            if failure is None:
                await scope.aclose()
            elif isinstance(failure, Exception):
                await scope.__aexit__(type(failure), failure, failure.__traceback__)
            else:
                await conn.close()
                with contextlib.suppress(psycopg.Error):  # "the connection is closed"
                    await scope.aclose()
        finally:
            await self._pool.putconn(conn)

    async def fence(self, moved_to: str) -> Fence:
        """Fence the store (see :class:`chronik.store.port.Fencing`): the row is written
        under ``LOCK TABLE events IN SHARE MODE``, which waits for every inserting
        transaction in flight and holds new ones until the fence is committed; the
        ``events_fence`` trigger then refuses them."""
        moved_to = redact_url(moved_to)  # the fence row is readable by anyone

        async def op(conn: _Conn) -> _Row:
            async with conn.transaction():
                await conn.execute(self._sql.lock_events_share)
                cur = await conn.execute(self._sql.fence_state)
                row: _Row | None = await cur.fetchone()
                if row is None:
                    cur = await conn.execute(self._sql.set_fence, (moved_to,))
                    row = await cur.fetchone()
                assert row is not None
                return row

        row = await self._run(op)
        return Fence(str(row[0]), int(row[1]), row[2])

    async def fence_state(self) -> Fence | None:
        rows = await self._fetchall(self._sql.fence_state, ())
        return None if not rows else Fence(str(rows[0][0]), int(rows[0][1]), rows[0][2])

    async def unfence(self) -> None:
        async def op(conn: _Conn) -> None:
            await conn.execute(self._sql.unfence)

        await self._run(op)

    async def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only query (a read model, say) outside any write transaction."""
        self._check_open()

        async def op(conn: _Conn) -> list[_Row]:
            return await PostgresTx(conn, self).fetchall(sql, params)

        return await self._run(op, user_sql=True)

    async def get_checkpoint(self, name: str) -> int | None:
        """The stored checkpoint of a subscription (``None``: never saved)."""
        self._check_open()
        rows = await self._fetchall(self._sql.get_checkpoint, (name,))
        return int(rows[0][0]) if rows else None

    async def checkpoints(self) -> dict[str, int]:
        """Every stored checkpoint by subscription name."""
        self._check_open()
        return {str(n): int(p) for n, p in await self._fetchall(self._sql.all_checkpoints, None)}

    async def dead_letters(self, subscription: str | None = None) -> list[DeadLetter]:
        """Recorded dead letters, oldest first."""
        self._check_open()
        if subscription is None:
            rows = await self._fetchall(self._sql.dead_letters_all, None)
        else:
            rows = await self._fetchall(self._sql.dead_letters_of, (subscription,))
        return [_dead_letter(row) for row in rows]

    async def get_active_version(self, projection: str) -> int | None:
        """The version of a projection's read model that readers should use."""
        self._check_open()
        rows = await self._fetchall(self._sql.get_active_version, (projection,))
        return int(rows[0][0]) if rows else None

    def change_marker(self) -> asyncio.Event:
        """An event set by the next change: an append of this process, or a NOTIFY from
        another (take it before a read: no change is missed). Starts the listener.

        Appends of this process set it at once. Other processes' appends arrive by
        LISTEN/NOTIFY: each process sends at most one ``NOTIFY`` per ``notify_interval``
        (5 ms), after its commits and outside their transactions, so notifications never
        serialise appends. If the listening connection is down, a waiter simply times out
        and polls; the listener reconnects by itself.
        """
        self._check_open()
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return self._changed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _appended(self) -> None:
        self._wake()
        if not self._others_listening and time.monotonic() - self._listeners_checked < 0.1:
            return  # nobody else listened 0.1 s ago: no NOTIFY, no task, no pool checkout
        self._notify_pending = True
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.get_running_loop().create_task(self._send_notifies())

    async def _send_notifies(self) -> None:
        while self._notify_pending and not self._closed:
            wait = self._last_notify + self.notify_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._notify_pending = False
            self._last_notify = time.monotonic()
            try:
                async with self._pool.connection() as conn:
                    # NOTIFY first when someone was listening, and refresh that answer
                    # after: the check is a round trip a listener need not wait for
                    listening = self._others_listening
                    if listening:
                        await conn.execute(self._sql.notify)
                    if await self._someone_else_listens(conn) and not listening:
                        await conn.execute(self._sql.notify)
            except (psycopg.Error, PoolClosed, PoolTimeout) as exc:
                logger.debug("NOTIFY failed (%s); listeners fall back to polling", exc)

    async def _someone_else_listens(self, conn: _Conn) -> bool:
        """Whether a listener on another connection waits for this schema's NOTIFY.

        Listeners hold a shared advisory lock while they LISTEN; a process with no
        followers elsewhere (a batch writer, say) then sends no NOTIFY at all. The answer
        is kept for a second when someone listens (a listener gone meanwhile costs a few
        unheard NOTIFYs), but only for 0.1 s when nobody does: a projection worker that
        starts next to a busy writer would otherwise wait up to a second, on its polling,
        for its first wake-up (seen in benchmark W7).
        """
        now = time.monotonic()
        if now - self._listeners_checked >= (1.0 if self._others_listening else 0.1):
            cur = await conn.execute(
                self._sql.others_listening, (*self._listen_keys, self._listener_pid)
            )
            row = await cur.fetchone()
            self._others_listening = bool(row and row[0])
            self._listeners_checked = now
        return self._others_listening

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                conninfo = self._pool.conninfo
                if not isinstance(conninfo, str):
                    return  # a dynamic conninfo: no listener, callers poll
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with conn:
                    await conn.execute(self._sql.listen)
                    await conn.execute(self._sql.listen_lock, self._listen_keys)
                    self._listener_pid = conn.info.backend_pid
                    self._wake()  # anything committed while (re)connecting
                    backoff = 0.1
                    async for _ in conn.notifies():
                        self._wake()
            except psycopg.Error as exc:
                logger.debug("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the pool; further calls raise :class:`StoreUnavailable`. Idempotent."""
        if self._closed:
            return
        if self._notifier is not None and not self._notifier.done():
            # the last appends' NOTIFY: a process that appends once and exits (a script,
            # a CLI command) must still wake the followers elsewhere
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._notifier), 2.0)
        self._closed = True
        if self._drainers:  # the groups in flight end (commit or roll back) before the pool
            await asyncio.wait(list(self._drainers))
        self._fail_queued()
        for task in (self._listener, self._notifier):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._pool.close()


# -- migrations -------------------------------------------------------------------------------
