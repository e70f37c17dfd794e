"""PostgreSQL plumbing for :mod:`chronik.store.postgres`: migrations, connection setup, URL
handling, driver-error mapping (the SQL is in :mod:`chronik.store.postgres_statements`).

Private to the PostgreSQL backend; its public names are re-exported there.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import psycopg.errors
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format
from psycopg_pool import PoolClosed, PoolTimeout

import chronik.store.migrations as migrations
from chronik.errors import (
    SchemaError,
    StoreUnavailable,
)
from chronik.events import (
    RecordedEvent,
)
from chronik.store.postgres_statements import (
    POSITION_SHIFT,
    PostgresStatements,
    quote_schema,
    validate_schema_name,
)
from chronik.store.protocol import (
    DeadLetter,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "MAX_EVENTS_PER_APPEND",
    "POSITION_SHIFT",
    "split_schema",
    "validate_schema_name",
]


logger = logging.getLogger("chronik.store.postgres")

DEFAULT_SCHEMA = "chronik"
MAX_EVENTS_PER_APPEND = 1 << POSITION_SHIFT
OFFSET_MARGIN = 1024
"""Transaction ids of headroom left above the stored positions when the offset is raised."""
MAX_APPEND_ATTEMPTS = 100
"""Retries of an ``ANY``/``STREAM_EXISTS`` append that keeps losing its version to others."""

_JSON_OID = 114
_T = TypeVar("_T")
_Conn = psycopg.AsyncConnection[Any]
_Row = tuple[Any, ...]


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


def _retryable(exc: psycopg.Error) -> bool:
    """A lost or refused connection: nothing was decided, the operation may run again."""
    if isinstance(exc, (PoolTimeout, PoolClosed)):
        return False
    state = exc.sqlstate
    return isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith(("08", "57P"))
    )


def _lost(exc: psycopg.Error) -> bool:
    """An error of the server or the connection (:class:`StoreUnavailable`), not of the
    SQL: psycopg files both under ``OperationalError``, but class 54 (a program limit: an
    index row too large, too many columns or arguments) fails the same statement every time,
    so it is the statement's own error; retrying it as an outage would hold a worker for
    ever. (57014, a cancelled statement, stays an outage: a lock wait past
    ``statement_timeout`` or an administrator's ``pg_cancel_backend`` pass.)"""
    return isinstance(exc, psycopg.OperationalError) and not (exc.sqlstate or "").startswith("54")


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    if isinstance(exc, PoolClosed):
        return StoreUnavailable("the PostgreSQL store is closed")
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no PostgreSQL connection available: {exc}")
    kind = type(exc).__name__
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
    return StoreUnavailable(f"PostgreSQL error {kind}{state}: {first_line}")


def _record(row: _Row) -> RecordedEvent:
    return RecordedEvent.from_stored(*row)


async def _configure_connection(conn: _Conn, schema: str, idle_timeout_ms: int) -> None:
    """Raw ``json`` for event reads, UTC, the idle-in-transaction limit, the search path,
    generic plans.

    The search path puts the store's schema first, so read-model tables that projections
    create through :class:`PostgresTx` without a schema live beside the events.

    ``plan_cache_mode = force_generic_plan``: the store's statements are short and keyed by
    an index, so the generic plan is the right one, and the custom plans PostgreSQL tries
    first can be very wrong. On an append-only table the statistics lag behind the data, so
    the planner estimates a hundred rows above a ``read_all`` cursor when there are
    thousands, and picks a bitmap scan that sorts the whole tail (12 ms per 500-event page
    instead of 0.3 ms, measured).
    """
    conn.adapters.register_loader(_JSON_OID, _RawJsonLoader)
    conn.adapters.register_loader(_JSON_OID, _RawJsonBinaryLoader)
    await conn.execute(
        f"SET idle_in_transaction_session_timeout = {int(idle_timeout_ms)}; "
        f"SET TIME ZONE 'UTC'; SET search_path TO {quote_schema(schema)}, public; "
        "SET plan_cache_mode = force_generic_plan"
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
    return _named_to_psycopg(sql), dict(params)


def _sub_token(match: re.Match[str]) -> str:
    text = match.group(0)
    if match.group("name") is not None:
        return f"%({match.group('name')})s"
    return text.replace("%", "%%")  # psycopg reads % even inside literals


@functools.lru_cache(maxsize=512)
def _named_to_psycopg(sql: str) -> str:
    """``:name`` → ``%(name)s`` (a handler runs the same few statements for every event)."""
    return _SQL_TOKEN.sub(_sub_token, sql)


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


async def _migrate(conn: _Conn, schema: str) -> None:
    """Create the schema and apply missing migrations, once, whoever else opens at once.

    Everything runs in one transaction under ``pg_advisory_xact_lock`` keyed by the schema
    name: a second process opening concurrently waits, then finds the work done.
    """
    known = migrations.load("postgres")
    sql = PostgresStatements(schema)
    async with conn.transaction():
        await conn.execute(sql.migrate_lock, (f"chronik.migrate.{schema}",))
        cur = await conn.execute(sql.schema_state)
        row = await cur.fetchone()
        assert row is not None
        has_schema, has_migrations = row
        if not has_schema:
            await conn.execute(sql.create_schema)
        if not has_migrations:
            await conn.execute(sql.create_migrations_table)
        cur = await conn.execute(sql.applied_migrations)
        applied = [int(row[0]) for row in await cur.fetchall()]
        todo = migrations.pending(known, applied, f"schema {schema!r}")
        if todo and has_migrations:
            # a version table from before names were recorded: add the column, name the rows
            await conn.execute(sql.name_migrations)
            for migration in known:
                if migration.number in applied:
                    await conn.execute(sql.record_migration, (migration.number, migration.name))
        for migration in todo:
            await conn.execute(migration.sql.replace("{schema}", quote_schema(schema)))
            await conn.execute(sql.record_migration, (migration.number, migration.name))
            logger.info("schema %s: applied migration %s", schema, migration.name)
        await _repair_position_base(conn, schema, sql)


async def _repair_position_base(conn: _Conn, schema: str, sql: PostgresStatements) -> None:
    """Raise ``xid_offset`` if the next transaction's positions would not be above the max.

    That happens after ``pg_dump``/``pg_restore`` into a new cluster, whose transaction ids
    start lower. The table is locked against appends (SHARE ROW EXCLUSIVE) while the offset
    moves, so no append can run with the old offset after the new one is visible.
    """
    # each statement below takes a new snapshot
    cur = await conn.execute(sql.position_base_check)
    row = await cur.fetchone()
    if row is None:
        raise SchemaError(f"schema {schema!r}: the position_base row is missing")
    xid, offset, max_position = row
    if max_position is None or (xid + offset) << POSITION_SHIFT > max_position:
        return
    await conn.execute(sql.lock_events)
    cur = await conn.execute(sql.position_base_check)
    row = await cur.fetchone()
    assert row is not None
    xid, offset, max_position = row
    if max_position is None or (xid + offset) << POSITION_SHIFT > max_position:
        return
    new_offset = (max_position >> POSITION_SHIFT) + 1 + OFFSET_MARGIN - xid
    await conn.execute(sql.raise_position_offset, (new_offset,))
    logger.warning(
        "schema %s: transaction ids (%d + offset %d) are behind the stored positions "
        "(max %d), as after a restore into a new cluster; raised the position offset to %d",
        schema,
        xid,
        offset,
        max_position,
        new_offset,
    )
