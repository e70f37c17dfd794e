"""PostgreSQL plumbing for :mod:`chronik.store.postgres`: SQL statements, migrations,
connection setup, URL and schema-name handling, driver-error mapping.

Private to the PostgreSQL backend; its public names are re-exported there.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import psycopg.errors
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format
from psycopg_pool import PoolClosed, PoolTimeout

from chronik.errors import (
    SchemaError,
    StoreUnavailable,
)
from chronik.events import (
    RecordedEvent,
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
        # Scalar subqueries, not CTEs joined in FROM: the planner then estimates one row for
        # each and keeps the prepared statement's generic plan. With the CTE form and no
        # statistics on position_base (a one-row table autovacuum never analyzes) it re-plans
        # every append, which costs more server CPU than the insert (docs/architecture.md).
        base = (
            f"(SELECT (pg_current_xact_id()::text::bigint + xid_offset) << {POSITION_SHIFT}"
            f" FROM {s}.position_base)"
        )
        current = (
            f"(SELECT coalesce(max(version), -1) AS v FROM {s}.events "
            f"WHERE stream_id = %(stream_id)s) AS cur"
        )
        self.append = f"""
INSERT INTO {s}.events
    (position, stream_id, version, event_id, type, schema_version, data, metadata)
SELECT {base} + e.ord - 1, %(stream_id)s, cur.v + e.ord, e.event_id, e.type,
       e.schema_version, e.data::json, e.metadata::json
FROM {current},
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
INSERT INTO {s}.events
    (position, stream_id, version, event_id, type, schema_version, data, metadata)
SELECT {base}, %(stream_id)s, cur.v + 1, %(event_id)s::uuid, %(type)s::text,
       %(schema_version)s::int, %(data)s::text::json, %(metadata)s::text::json
FROM {current}
WHERE %(expected)s::int = -2
   OR (%(expected)s::int = -4 AND cur.v >= 0)
   OR cur.v = %(expected)s::int
RETURNING position, version, recorded_at"""
        self.stored_copies = (
            f"SELECT event_id, stream_id, version, position, type, data FROM {s}.events "
            f"WHERE event_id = ANY(%s::uuid[])"
        )
        self.stream_version = f"SELECT max(version) FROM {s}.events WHERE stream_id = %s"
        # matches the expression of index events_correlation_id_idx (migration 0004)
        self.read_correlation = (
            f"SELECT {columns} FROM {s}.events WHERE (metadata->>'correlation_id') = %s "
            f"ORDER BY position LIMIT %s"
        )
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
        self.advance_checkpoint = f"SELECT {s}.chronik_advance_checkpoint(%s, %s, %s, %s)"
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
        # chronik migrate copy: events written as they were, with new positions in the
        # given order (%(offset)s counts the events imported earlier in the transaction).
        # Arrays go in binary (%b): the text format escapes every JSON string on the client.
        self.import_events = f"""
INSERT INTO {s}.events (position, stream_id, version, event_id, type, schema_version, data,
                        metadata, recorded_at)
SELECT base.p + %(offset)s::bigint + e.ord - 1, e.stream_id, e.version, e.event_id, e.type,
       e.schema_version, e.data::json, e.metadata::json, e.recorded_at
FROM (SELECT (pg_current_xact_id()::text::bigint + xid_offset) << {POSITION_SHIFT} AS p
      FROM {s}.position_base) AS base,
     unnest(%(stream_ids)b::text[], %(versions)b::int[], %(event_ids)b::uuid[],
            %(types)b::text[], %(schema_versions)b::int[], %(data)b::text[],
            %(metadata)b::text[], %(recorded_at)b::timestamptz[])
     WITH ORDINALITY AS e(stream_id, version, event_id, type, schema_version, data, metadata,
                          recorded_at, ord)"""
        self.stream_versions = (
            f"SELECT stream_id, max(version) FROM {s}.events "
            f"WHERE stream_id = ANY(%s::text[]) GROUP BY stream_id"
        )
        self._schema_sql = s

    def read_all(self, *, categories: bool, types: bool) -> str:
        """One page of the global order: horizon and rows from the same snapshot."""
        return (
            f"SELECT {self.columns} FROM {self._schema_sql}.events "
            f"WHERE {self._read_all_where(categories, types)} ORDER BY position LIMIT %(page)s"
        )

    def read_page(self) -> str:
        """The head (last position below the horizon) and one unfiltered page of
        ``read_all``, from one snapshot: every row carries the head, and an empty page is
        one row of the head and NULLs."""
        s = self._schema_sql
        return (
            f"SELECT h.head, e.* FROM (SELECT coalesce(max(position), 0) AS head "
            f"FROM {s}.events WHERE position < {self.horizon}) AS h "
            f"LEFT JOIN LATERAL (SELECT {self.columns} FROM {s}.events "
            f"WHERE {self._read_all_where(False, False)} "
            f"ORDER BY position LIMIT %(page)s) AS e ON true"
        )

    def read_window(self, *, categories: bool, types: bool) -> str:
        """A filtered read: the next ``%(window)s`` events in position order (the primary
        key, never a bitmap + sort), and those of them that match, at most ``%(page)s``.

        Each row is ``head, scanned, scanned_to`` then the event's columns (NULLs when
        nothing in the window matches). Filtering inside a window of the primary key keeps
        every read a short ordered index walk whatever the planner believes about how many
        events match; with the filters in the WHERE clause of one query, a generic plan
        (which cannot know how dense a category or type is) chose a bitmap scan of the
        whole tail and a sort, for every page.
        """
        s = self._schema_sql
        where = []
        if categories:
            where.append("category = ANY(%(categories)s::text[])")
        if types:
            where.append("type = ANY(%(types)s::text[])")
        return f"""
WITH w AS MATERIALIZED (
    SELECT {self.columns}, category FROM {s}.events
    WHERE {self._read_all_where(False, False)}
    ORDER BY position LIMIT %(window)s
)
SELECT s.head, s.scanned, s.scanned_to, e.*
FROM (SELECT (SELECT coalesce(max(position), 0) FROM {s}.events
              WHERE position < {self.horizon}) AS head,
             count(*) AS scanned, coalesce(max(position), 0) AS scanned_to FROM w) AS s
LEFT JOIN LATERAL (
    SELECT {self.columns} FROM w WHERE {" AND ".join(where or ["true"])}
    ORDER BY position LIMIT %(page)s
) AS e ON true"""

    def count(self, *, categories: bool, types: bool) -> str:
        """How many events ``read_all`` would yield now (same horizon, same filters)."""
        return (
            f"SELECT count(*) FROM {self._schema_sql}.events "
            f"WHERE {self._read_all_where(categories, types)}"
        )

    def _read_all_where(self, categories: bool, types: bool) -> str:
        # ``position + 0``: the horizon is a filter, not the second bound of an index range.
        # A range of two unknown bounds is estimated at 0.5% of the table, and the planner
        # then reads the whole tail above the cursor through a bitmap and sorts it, for
        # every page (14 ms a page at 20,000 events with a category filter, growing with the
        # log: quadratic catch-up). With one bound it walks the primary key in order and
        # stops at the page size; the rows above the horizon it filters out are only those
        # of transactions still open.
        where = [
            "position > %(after)s::bigint",
            f"position + 0 < {self.horizon}",
        ]
        if categories:
            where.append("category = ANY(%(categories)s::text[])")
        if types:
            where.append("type = ANY(%(types)s::text[])")
        return " AND ".join(where)


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
        f"SET TIME ZONE 'UTC'; SET search_path TO {_quote(schema)}, public; "
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
