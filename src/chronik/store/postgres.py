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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import psycopg.errors
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format
from psycopg.types.json import JsonBinaryLoader, JsonLoader
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from chronik.errors import (
    BatchTooLarge,
    ConcurrencyError,
    SchemaError,
    SerializationError,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import (
    ANY,
    AppendResult,
    NewEvent,
    RecordedEvent,
    validate_stream_id,
)
from chronik.store.protocol import (
    DEFAULT_MAX_EVENT_BYTES,
    READ_PAGE_SIZE,
    DeadLetter,
    EncodedEvent,
    InlineProjection,
    StoredCopy,
    StoreStats,
    StreamInfo,
    check_expected,
    encode_batch,
    resolve_duplicate,
)

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

DEFAULT_SCHEMA = "chronik"
POSITION_SHIFT = 20
"""Bits of a position that number the events of one append; the rest is the transaction."""
MAX_EVENTS_PER_APPEND = 1 << POSITION_SHIFT
OFFSET_MARGIN = 1024
"""Transaction ids of headroom left above the stored positions when the offset is raised."""
MAX_APPEND_ATTEMPTS = 100
"""Retries of an ``ANY``/``STREAM_EXISTS`` append that keeps losing its version to others."""

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_JSON_OID = 114
_T = TypeVar("_T")
_Conn = psycopg.AsyncConnection[Any]
_Row = tuple[Any, ...]


def validate_schema_name(schema: object) -> str:
    """Return ``schema`` if it is a plain lower-case identifier, else raise ``ValueError``.

    Schema names end up in SQL text (always double-quoted), so only ``^[a-z_][a-z0-9_]{0,62}$``
    is accepted.
    """
    if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema):
        raise ValueError(
            f"invalid PostgreSQL schema name {schema!r}: use 1-63 characters of a-z, 0-9 and _, "
            f"not starting with a digit"
        )
    return schema


def split_schema(conninfo: str) -> tuple[str, str | None]:
    """Split chronik's ``schema`` query parameter off a ``postgresql://`` URL.

    libpq rejects query parameters it does not know, so the URL given to psycopg must not
    carry it. Key/value connection strings are returned unchanged (with ``None``).

    >>> split_schema("postgresql://u@h/db?schema=orders&sslmode=disable")
    ('postgresql://u@h/db?sslmode=disable', 'orders')
    """
    parts = urlsplit(conninfo)
    if parts.scheme not in ("postgres", "postgresql") or not parts.query:
        return conninfo, None
    schema: str | None = None
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if schema is None:
        return conninfo, None
    head = conninfo.split("?", 1)[0]
    query = urlencode(kept, quote_via=quote)
    return (f"{head}?{query}" if query else head), schema


class _RawJsonLoader(Loader):
    """Hand ``json`` columns back as the stored bytes; RecordedEvent decodes them lazily."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _RawJsonBinaryLoader(_RawJsonLoader):
    format = Format.BINARY


@dataclass(frozen=True, slots=True)
class _Conflict:
    """An append that wrote nothing: the expected-version check failed, or a unique index."""

    constraint: str | None


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    name: str
    sql: str


def _load_migrations() -> list[_Migration]:
    folder = files("chronik").joinpath("store", "sql", "postgres")
    found: list[_Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append(_Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise SchemaError(f"PostgreSQL migrations are not numbered 1..n: {migration.name}")
    return found


def _quote(schema: str) -> str:
    return '"' + validate_schema_name(schema) + '"'


def _retryable(exc: psycopg.Error) -> bool:
    """A lost or refused connection: nothing was decided, the operation may run again."""
    if isinstance(exc, (PoolTimeout, PoolClosed)):
        return False
    state = exc.sqlstate
    return isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith(("08", "57P"))
    )


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    if isinstance(exc, PoolClosed):
        return StoreUnavailable("the PostgreSQL store is closed")
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no PostgreSQL connection available: {exc}")
    kind = type(exc).__name__
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
    return StoreUnavailable(f"PostgreSQL error {kind}{state}: {first_line}")


class _Statements:
    """The SQL of one store, with its schema name substituted once (validated and quoted)."""

    def __init__(self, schema: str) -> None:
        s = _quote(schema)
        horizon = (
            f"(SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint + xid_offset)"
            f" << {POSITION_SHIFT} FROM {s}.position_base)"
        )
        self.horizon = horizon
        # the argument order of RecordedEvent.from_stored
        columns = (
            "position, stream_id, version, event_id, type, schema_version, data, metadata, "
            "recorded_at"
        )
        self.columns = columns
        self.append = f"""
WITH cur AS (
    SELECT coalesce(max(version), -1) AS v FROM {s}.events WHERE stream_id = %(stream_id)s
), base AS (
    SELECT (pg_current_xact_id()::text::bigint + xid_offset) << {POSITION_SHIFT} AS p
    FROM {s}.position_base
)
INSERT INTO {s}.events
    (position, stream_id, version, event_id, type, schema_version, data, metadata)
SELECT base.p + e.ord - 1, %(stream_id)s, cur.v + e.ord, e.event_id, e.type,
       e.schema_version, e.data::json, e.metadata::json
FROM cur, base,
     unnest(%(event_ids)s::uuid[], %(types)s::text[], %(schema_versions)s::int[],
            %(data)s::text[], %(metadata)s::text[])
     WITH ORDINALITY AS e(event_id, type, schema_version, data, metadata, ord)
WHERE %(expected)s::int = -2
   OR (%(expected)s::int = -4 AND cur.v >= 0)
   OR cur.v = %(expected)s::int
RETURNING position, version, recorded_at"""
        # The same statement for the common one-event append, with scalar parameters:
        # dumping five one-element arrays costs more client CPU than the whole INSERT.
        self.append_one = f"""
WITH cur AS (
    SELECT coalesce(max(version), -1) AS v FROM {s}.events WHERE stream_id = %(stream_id)s
), base AS (
    SELECT (pg_current_xact_id()::text::bigint + xid_offset) << {POSITION_SHIFT} AS p
    FROM {s}.position_base
)
INSERT INTO {s}.events
    (position, stream_id, version, event_id, type, schema_version, data, metadata)
SELECT base.p, %(stream_id)s, cur.v + 1, %(event_id)s::uuid, %(type)s::text,
       %(schema_version)s::int, %(data)s::text::json, %(metadata)s::text::json
FROM cur, base
WHERE %(expected)s::int = -2
   OR (%(expected)s::int = -4 AND cur.v >= 0)
   OR cur.v = %(expected)s::int
RETURNING position, version, recorded_at"""
        self.stored_copies = (
            f"SELECT event_id, stream_id, version, position, type, data FROM {s}.events "
            f"WHERE event_id = ANY(%s::uuid[])"
        )
        self.stream_version = f"SELECT max(version) FROM {s}.events WHERE stream_id = %s"
        self.stream_exists = f"SELECT EXISTS (SELECT 1 FROM {s}.events WHERE stream_id = %s)"
        self.read_forward = (
            f"SELECT {columns} FROM {s}.events WHERE stream_id = %s AND version >= %s "
            f"ORDER BY version LIMIT %s"
        )
        self.read_backward = (
            f"SELECT {columns} FROM {s}.events WHERE stream_id = %s AND version <= %s "
            f"ORDER BY version DESC LIMIT %s"
        )
        self.read_backward_from_end = (
            f"SELECT {columns} FROM {s}.events WHERE stream_id = %s ORDER BY version DESC LIMIT %s"
        )
        self.head = f"SELECT coalesce(max(position), 0) FROM {s}.events WHERE position < {horizon}"
        self.streams_all = (
            f"SELECT stream_id, max(version), max(position) FROM {s}.events "
            f"WHERE stream_id > %s GROUP BY stream_id ORDER BY stream_id LIMIT %s"
        )
        self.streams_category = (
            f"SELECT stream_id, max(version), max(position) FROM {s}.events "
            f"WHERE stream_id > %s AND category = %s "
            f"GROUP BY stream_id ORDER BY stream_id LIMIT %s"
        )
        self.count_events = f"SELECT count(*), count(DISTINCT stream_id) FROM {s}.events"
        self.count_categories = (
            f"SELECT category, count(*) FROM {s}.events GROUP BY category ORDER BY category"
        )
        self.size = f"SELECT pg_total_relation_size('{s}.events'::regclass)"
        self.get_checkpoint = f"SELECT position FROM {s}.checkpoints WHERE name = %s"
        self.all_checkpoints = f"SELECT name, position FROM {s}.checkpoints ORDER BY name"
        self.lock_checkpoint = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
        self.set_checkpoint = (
            f"INSERT INTO {s}.checkpoints (name, position, updated_at) VALUES (%s, %s, now()) "
            f"ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
            f"updated_at = excluded.updated_at"
        )
        self.add_dead_letter = (
            f"INSERT INTO {s}.dead_letters (subscription, position, event_id, stream_id, "
            f"version, type, error, attempts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (subscription, event_id) DO UPDATE SET error = excluded.error, "
            f"attempts = {s}.dead_letters.attempts + excluded.attempts"
        )
        self.delete_dead_letter = f"DELETE FROM {s}.dead_letters WHERE id = %s"
        dead_columns = (
            "id, subscription, position, event_id, stream_id, version, type, error, attempts, "
            "created_at"
        )
        self.dead_letters_all = f"SELECT {dead_columns} FROM {s}.dead_letters ORDER BY id"
        self.dead_letters_of = (
            f"SELECT {dead_columns} FROM {s}.dead_letters WHERE subscription = %s ORDER BY id"
        )
        self.get_active_version = f"SELECT active FROM {s}.projection_versions WHERE name = %s"
        self.set_active_version = (
            f"INSERT INTO {s}.projection_versions (name, active) VALUES (%s, %s) "
            f"ON CONFLICT (name) DO UPDATE SET active = excluded.active"
        )
        self._schema_sql = s

    def read_all(self, *, categories: bool, types: bool) -> str:
        """One page of the global order: horizon and rows from the same snapshot."""
        return (
            f"SELECT {self.columns} FROM {self._schema_sql}.events "
            f"WHERE {self._read_all_where(categories, types)} ORDER BY position LIMIT %(page)s"
        )

    def count(self, *, categories: bool, types: bool) -> str:
        """How many events ``read_all`` would yield now (same horizon, same filters)."""
        return (
            f"SELECT count(*) FROM {self._schema_sql}.events "
            f"WHERE {self._read_all_where(categories, types)}"
        )

    def _read_all_where(self, categories: bool, types: bool) -> str:
        where = [
            "position > %(after)s::bigint",
            f"position < {self.horizon}",
        ]
        if categories:
            where.append("category = ANY(%(categories)s::text[])")
        if types:
            where.append("type = ANY(%(types)s::text[])")
        return " AND ".join(where)


def _record(row: _Row) -> RecordedEvent:
    return RecordedEvent.from_stored(*row)


async def _configure_connection(conn: _Conn, schema: str, idle_timeout_ms: int) -> None:
    """Raw ``json`` for event reads, UTC, the idle-in-transaction limit, the search path.

    The search path puts the store's schema first, so read-model tables that projections
    create through :class:`PostgresTx` without a schema live beside the events.
    """
    conn.adapters.register_loader(_JSON_OID, _RawJsonLoader)
    conn.adapters.register_loader(_JSON_OID, _RawJsonBinaryLoader)
    await conn.execute(
        f"SET idle_in_transaction_session_timeout = {int(idle_timeout_ms)}; "
        f"SET TIME ZONE 'UTC'; SET search_path TO {_quote(schema)}, public"
    )


_SQL_TOKEN = re.compile(
    r"""'(?:[^']|'')*'"""  # string literal
    r'|"(?:[^"]|"")*"'  # quoted identifier
    r"|\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$"  # dollar-quoted string
    r"|--[^\n]*|/\*.*?\*/"  # comments
    r"|::"  # a cast, not a parameter
    r"|:(?P<name>[A-Za-z_][A-Za-z0-9_]*)"  # :name
    r"|%",
    re.S,
)


def _user_sql(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[str, Any]:
    """Portable ``:name`` parameters (with a mapping) become psycopg's ``%(name)s``.

    With a sequence the SQL is already in psycopg's dialect (``%s``); with no parameters it
    is sent as it is.
    """
    if not params:
        return sql, None
    if not isinstance(params, Mapping):
        return sql, list(params)

    def sub(match: re.Match[str]) -> str:
        text = match.group(0)
        if match.group("name") is not None:
            return f"%({match.group('name')})s"
        return text.replace("%", "%%")  # psycopg reads % even inside literals

    return _SQL_TOKEN.sub(sub, sql), dict(params)


def _dead_letter(row: _Row) -> DeadLetter:
    return DeadLetter(
        int(row[0]),
        row[1],
        int(row[2]),
        row[3],
        row[4],
        int(row[5]),
        row[6],
        row[7],
        int(row[8]),
        row[9].isoformat(),
    )


class PostgresTx:
    """A write transaction on one pooled connection (see :class:`chronik.store.protocol.Tx`).

    ``:name`` parameters with a mapping, or psycopg's ``%s`` with a sequence. Unqualified
    table names resolve in the store's schema first. A connection lost midway raises
    :class:`StoreUnavailable`; errors of the SQL itself are PostgreSQL's own (psycopg's), and
    after one the transaction can only roll back.
    """

    dialect = "postgresql"

    def __init__(self, conn: _Conn, store: PostgresEventStore) -> None:
        self._conn = conn
        self._store = store

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
        await self._cursor(sql, params)

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


class _InsertConflict(Exception):
    """The append's INSERT hit a unique index (raised inside its transaction to roll back)."""

    def __init__(self, constraint: str | None) -> None:
        self.constraint = constraint


class _HandlerFailed(Exception):
    """An inline projection failed inside an append: carries its error past ``_run``."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class PostgresEventStore:
    """Events in one PostgreSQL schema; see the module docstring for how positions work.

    Create it with :meth:`open`, which connects, creates the schema and applies migrations.

    ``_before_commit`` is a testing hook: when set, each append runs in an explicit
    transaction and awaits it after the INSERT and before COMMIT, so a test can hold the
    transaction open (sleep, wait on an event) or roll it back (raise).
    """

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
        self._sql = _Statements(schema)
        self._closed = False
        self._poll_interval = poll_interval
        self._before_commit: Callable[[], Awaitable[None]] | None = None
        self.inline_projections: list[InlineProjection] = []

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

        Raises:
            StoreUnavailable: the database cannot be reached or refused the setup.
            SchemaError: the schema was migrated by a newer chronik.
            ValueError: the schema name is not a plain identifier.
        """
        conninfo, url_schema = split_schema(conninfo)
        if schema is not None and url_schema is not None and schema != url_schema:
            raise ValueError(f"schema {schema!r} given, but the URL says {url_schema!r}")
        name = validate_schema_name(schema or url_schema or DEFAULT_SCHEMA)
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=max(2, int(pool_timeout))
            )
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc
        try:
            async with conn:
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
                async with self._pool.connection() as conn:
                    return await op(conn)
            except psycopg.Error as exc:
                if self._closed:
                    raise StoreUnavailable("the PostgreSQL store is closed") from exc
                if attempt < 2 and _retryable(exc):
                    attempt += 1
                    logger.warning("PostgreSQL connection lost (%s); retrying", exc)
                    with contextlib.suppress(psycopg.Error):
                        await self._pool.check()
                    continue
                if user_sql and not isinstance(exc, psycopg.OperationalError):
                    raise
                if isinstance(exc, psycopg.DataError):
                    raise SerializationError(f"PostgreSQL rejected a value: {exc}") from exc
                raise _unavailable(exc) from exc

    async def _fetchall(self, sql: str, params: Any) -> list[_Row]:
        async def op(conn: _Conn) -> list[_Row]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._run(op)

    async def _fetchone(self, sql: str, params: Any = None) -> _Row:
        rows = await self._fetchall(sql, params)
        return rows[0]

    # -- writing --------------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int = ANY
    ) -> AppendResult:
        """Append ``events`` atomically at the end of ``stream_id`` (see ``EventStore``)."""
        self._check_open()
        stream_id, expected, batch = encode_batch(
            stream_id, events, expected_version, self.max_event_bytes
        )
        if len(batch) > MAX_EVENTS_PER_APPEND:
            raise BatchTooLarge(
                f"stream {stream_id!r}: {len(batch)} events in one append, "
                f"over the PostgreSQL backend's limit of {MAX_EVENTS_PER_APPEND}"
            )
        if not batch:
            return await self._append_nothing(stream_id, expected)
        sql, params = self._append_statement(stream_id, expected, batch)
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            try:
                outcome = await self._run(
                    lambda conn: self._insert(conn, stream_id, batch, sql, params)
                )
            except _HandlerFailed as failed:
                raise failed.error from None
            if isinstance(outcome, AppendResult):
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
        remaining = None if limit is None else max(limit, 0)
        if backwards:
            cursor: int | None = from_version
            if cursor is not None and cursor < 0:
                remaining = 0
        else:
            cursor = max(from_version or 0, 0)
        first = True
        while True:
            page = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            if page <= 0:
                rows: list[_Row] = []
            elif not backwards:
                rows = await self._fetchall(self._sql.read_forward, (stream_id, cursor, page))
            elif cursor is None:
                rows = await self._fetchall(self._sql.read_backward_from_end, (stream_id, page))
            else:
                rows = await self._fetchall(self._sql.read_backward, (stream_id, cursor, page))
            if first and not rows:
                (exists,) = await self._fetchone(self._sql.stream_exists, (stream_id,))
                if not exists:
                    raise StreamNotFound(stream_id)
            first = False
            for row in rows:
                yield _record(row)
            if len(rows) < page or page <= 0:
                return
            cursor = rows[-1][2] - 1 if backwards else rows[-1][2] + 1
            if remaining is not None:
                remaining -= len(rows)

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
        above every position already returned.
        """
        self._check_open()
        sql = self._sql.read_all(categories=categories is not None, types=types is not None)
        params: dict[str, Any] = {"after": int(after)}
        if categories is not None:
            params["categories"] = list(categories)
        if types is not None:
            params["types"] = list(types)
        remaining = None if limit is None else max(limit, 0)
        while True:
            page = READ_PAGE_SIZE if remaining is None else min(READ_PAGE_SIZE, remaining)
            if page <= 0:
                return
            params["page"] = page
            rows = await self._fetchall(sql, params)
            for row in rows:
                yield _record(row)
            if len(rows) < page:
                return
            params["after"] = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)

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
        events, streams = await self._fetchone(self._sql.count_events)
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
        sql = self._sql.count(categories=categories is not None, types=types is not None)
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
        """
        self._check_open()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield PostgresTx(conn, self)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc

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

    async def wait_for_change(self, timeout: float) -> None:
        """Return when the head position moves or ``timeout`` seconds pass (for followers).

        This polls :meth:`head_position` every ``poll_interval`` seconds: a NOTIFY in each
        append would serialise every commit on PostgreSQL's notify queue lock.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        start = await self.head_position()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(self._poll_interval, left))
            if await self.head_position() != start:
                return

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the pool; further calls raise :class:`StoreUnavailable`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# -- migrations -------------------------------------------------------------------------------


async def _migrate(conn: _Conn, schema: str) -> None:
    """Create the schema and apply missing migrations, once, whoever else opens at once.

    Everything runs in one transaction under ``pg_advisory_xact_lock`` keyed by the schema
    name: a second process opening concurrently waits, then finds the work done.
    """
    migrations = _load_migrations()
    s = _quote(schema)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"chronik.migrate.{schema}",),
        )
        # Look before creating: CREATE ... IF NOT EXISTS checks the CREATE privilege first,
        # and a least-privilege runtime role opening a migrated schema has none.
        cur = await conn.execute(
            "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            (s, f"{s}.schema_migrations"),
        )
        row = await cur.fetchone()
        assert row is not None
        has_schema, has_migrations = row
        if not has_schema:
            await conn.execute(f"CREATE SCHEMA {s}")
        if not has_migrations:
            await conn.execute(
                f"CREATE TABLE {s}.schema_migrations "
                f"(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        cur = await conn.execute(f"SELECT version FROM {s}.schema_migrations")
        applied = {int(row[0]) for row in await cur.fetchall()}
        known = {m.version for m in migrations}
        newer = sorted(applied - known)
        if newer:
            raise SchemaError(
                f"schema {schema!r} has migration {newer[-1]} applied, but this chronik knows "
                f"only up to {max(known, default=0)}: upgrade chronik"
            )
        for migration in migrations:
            if migration.version in applied:
                continue
            await conn.execute(migration.sql.replace("{schema}", s))
            await conn.execute(
                f"INSERT INTO {s}.schema_migrations (version, applied_at) VALUES (%s, now())",
                (migration.version,),
            )
            logger.info("schema %s: applied migration %s", schema, migration.name)
        await _repair_position_base(conn, schema)


async def _repair_position_base(conn: _Conn, schema: str) -> None:
    """Raise ``xid_offset`` if the next transaction's positions would not be above the max.

    That happens after ``pg_dump``/``pg_restore`` into a new cluster, whose transaction ids
    start lower. The table is locked against appends (SHARE ROW EXCLUSIVE) while the offset
    moves, so no append can run with the old offset after the new one is visible.
    """
    s = _quote(schema)
    # xmax of a fresh snapshot: every transaction id assigned from now on is >= it, so no
    # xid is spent on the check. Each statement below takes a new snapshot.
    check = (
        f"SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, xid_offset, "
        f"(SELECT max(position) FROM {s}.events) FROM {s}.position_base"
    )
    cur = await conn.execute(check)
    row = await cur.fetchone()
    if row is None:
        raise SchemaError(f"schema {schema!r}: the position_base row is missing")
    xid, offset, max_position = row
    if max_position is None or (xid + offset) << POSITION_SHIFT > max_position:
        return
    await conn.execute(f"LOCK TABLE {s}.events IN SHARE ROW EXCLUSIVE MODE")
    cur = await conn.execute(check)
    row = await cur.fetchone()
    assert row is not None
    xid, offset, max_position = row
    if max_position is None or (xid + offset) << POSITION_SHIFT > max_position:
        return
    new_offset = (max_position >> POSITION_SHIFT) + 1 + OFFSET_MARGIN - xid
    await conn.execute(f"UPDATE {s}.position_base SET xid_offset = %s", (new_offset,))
    logger.warning(
        "schema %s: transaction ids (%d + offset %d) are behind the stored positions "
        "(max %d), as after a restore into a new cluster; raised the position offset to %d",
        schema,
        xid,
        offset,
        max_position,
        new_offset,
    )
