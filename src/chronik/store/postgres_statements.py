"""Every SQL statement of the PostgreSQL backend, under the names the SQLite backend uses.

:class:`PostgresStatements` and :class:`chronik.store.sqlite_statements.SqliteStatements`
hold the same names for the same operations; ``tests/unit/test_sql_backends.py`` compares
them and lists, with the reason, the few that only one dialect needs (the visibility horizon,
the position base, LISTEN/NOTIFY and the checkpoint function are PostgreSQL's alone).
Connection set-up (``SET ...``) stays with the code that opens connections.

Times are ``timestamptz`` (SQLite: INTEGER microseconds since 1970 UTC).
"""

from __future__ import annotations

import re
from collections.abc import Sized

__all__ = ["POSITION_SHIFT", "PostgresStatements", "quote_schema", "validate_schema_name"]

POSITION_SHIFT = 20
"""Bits of a position that number the events of one append; the rest is the transaction."""

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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


def quote_schema(schema: str) -> str:
    """The schema name as it goes into SQL text: validated and double-quoted."""
    return '"' + validate_schema_name(schema) + '"'


class PostgresStatements:
    """The SQL of one store, with its schema name substituted once (validated and quoted).

    Parameters are psycopg's (``%s``, ``%(name)s``); lists go as arrays.
    """

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        # the visibility horizon: below it, every transaction has ended (docs/ordering.md);
        # a fenced store (0009) has none: the fence waited for every insert in flight and
        # refuses new ones, so everything committed is final
        horizon = (
            f"(SELECT CASE WHEN EXISTS (SELECT 1 FROM {s}.store_fence) "
            f"THEN 9223372036854775807 "
            f"ELSE (pg_snapshot_xmin(pg_current_snapshot())::text::bigint + xid_offset)"
            f" << {POSITION_SHIFT} END FROM {s}.position_base)"
        )
        self._horizon = horizon
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
        # Group commit: the appends of several callers (distinct streams) in one statement,
        # each event with its append's stream, expected version and place in the append.
        # An append whose expected version does not fit inserts nothing (its caller then
        # finds out why alone); the others commit together.
        self.append_group = f"""
INSERT INTO {s}.events
    (position, stream_id, version, event_id, type, schema_version, data, metadata)
SELECT {base} + e.ord - 1, e.stream_id, cur.v + e.n, e.event_id, e.type,
       e.schema_version, e.data::json, e.metadata::json
FROM unnest(%(stream_ids)s::text[], %(expected)s::int[], %(n)s::int[], %(event_ids)s::uuid[],
            %(types)s::text[], %(schema_versions)s::int[], %(data)s::text[],
            %(metadata)s::text[])
     WITH ORDINALITY AS e(stream_id, expected, n, event_id, type, schema_version, data,
                          metadata, ord)
CROSS JOIN LATERAL (SELECT coalesce(max(version), -1) AS v FROM {s}.events
                    WHERE stream_id = e.stream_id) AS cur
WHERE e.expected = -2
   OR (e.expected = -4 AND cur.v >= 0)
   OR cur.v = e.expected
RETURNING stream_id, position, version"""
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
        self.stats_counts = f"SELECT count(*), count(DISTINCT stream_id) FROM {s}.events"
        self.count_categories = (
            f"SELECT category, count(*) FROM {s}.events GROUP BY category ORDER BY category"
        )
        self.size = f"SELECT pg_total_relation_size('{s}.events'::regclass)"
        # the fence of a migration's cut-over (0009): set under a SHARE lock on events,
        # which waits for the inserting transactions in flight
        self.lock_events_share = f"LOCK TABLE {s}.events IN SHARE MODE"
        self.fence_state = f"SELECT moved_to, position, fenced_at FROM {s}.store_fence"
        self.set_fence = (
            f"INSERT INTO {s}.store_fence (moved_to, position) "
            f"SELECT %s, coalesce(max(position), 0) FROM {s}.events "
            f"RETURNING moved_to, position, fenced_at"
        )
        self.unfence = f"DELETE FROM {s}.store_fence"
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
        # an import continues a stream where its events, or retention's records of removed
        # ones (0014), end
        self.stream_versions = (
            f"SELECT stream_id, max(v) FROM ("
            f"SELECT stream_id, max(version) AS v FROM {s}.events "
            f"WHERE stream_id = ANY(%(streams)s::text[]) GROUP BY stream_id UNION ALL "
            f"SELECT stream_id, max(through_version) FROM {s}.truncations "
            f"WHERE stream_id = ANY(%(streams)s::text[]) GROUP BY stream_id) AS known "
            f"GROUP BY stream_id"
        )
        # -- migrations (chronik.store.migrations), under the schema's advisory lock --------
        self.migrate_lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
        # Look before creating: CREATE ... IF NOT EXISTS checks the CREATE privilege first,
        # and a least-privilege runtime role opening a migrated schema has none.
        self.schema_state = (
            f"SELECT to_regnamespace('{s}') IS NOT NULL, "
            f"to_regclass('{s}.schema_migrations') IS NOT NULL"
        )
        self.create_schema = f"CREATE SCHEMA {s}"
        self.create_migrations_table = (
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations (version integer PRIMARY KEY, "
            f"applied_at timestamptz NOT NULL DEFAULT now(), name text)"
        )
        # a version table made before the name was recorded: named when next migrating
        self.name_migrations = (
            f"ALTER TABLE {s}.schema_migrations ADD COLUMN IF NOT EXISTS name text"
        )
        self.applied_migrations = f"SELECT version FROM {s}.schema_migrations"
        # records a migration, or names one recorded before names were kept
        self.record_migration = (
            f"INSERT INTO {s}.schema_migrations (version, applied_at, name) "
            f"VALUES (%s, now(), %s) "
            f"ON CONFLICT (version) DO UPDATE SET name = excluded.name "
            f"WHERE {s}.schema_migrations.name IS NULL"
        )
        # -- the position base (a restore into a new cluster) -------------------------------
        # xmax of a fresh snapshot: every transaction id assigned from now on is >= it, so
        # no xid is spent on the check.
        self.position_base_check = (
            f"SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, xid_offset, "
            f"(SELECT max(position) FROM {s}.events) FROM {s}.position_base"
        )
        self.lock_events = f"LOCK TABLE {s}.events IN SHARE ROW EXCLUSIVE MODE"
        self.raise_position_offset = f"UPDATE {s}.position_base SET xid_offset = %s"
        # -- change signalling: LISTEN/NOTIFY on one channel per schema ----------------------
        channel = f"chronik_{schema}"
        self.listen = f"LISTEN {channel}"
        self.notify = f"NOTIFY {channel}"
        # listeners hold a shared advisory lock (keys: two int4) while they listen
        self.listen_lock = "SELECT pg_advisory_lock_shared(%s, %s)"
        self.others_listening = (
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid::bigint = %s::bigint & 4294967295 "
            "AND objid::bigint = %s::bigint & 4294967295 "
            "AND objsubid = 2 AND granted AND pid <> %s)"
        )
        self._schema_sql = s

    def read_all(self, *, categories: Sized | None, types: Sized | None) -> str:
        """One page of the global order: horizon and rows from the same snapshot."""
        return (
            f"SELECT {self.columns} FROM {self._schema_sql}.events "
            f"WHERE {self._read_all_where(categories, types)} ORDER BY position LIMIT %(page)s"
        )

    def read_page(self) -> str:
        """The head (last position below the horizon), the top (last committed position,
        above the horizon when an older transaction is still open) and one unfiltered page
        of ``read_all``, from one snapshot: every row carries head and top, and an empty
        page is one row of them and NULLs."""
        s = self._schema_sql
        return (
            f"SELECT h.head, h.top, e.* FROM (SELECT (SELECT coalesce(max(position), 0) "
            f"FROM {s}.events WHERE position < {self._horizon}) AS head, "
            f"(SELECT coalesce(max(position), 0) FROM {s}.events) AS top) AS h "
            f"LEFT JOIN LATERAL (SELECT {self.columns} FROM {s}.events "
            f"WHERE {self._read_all_where(None, None)} "
            f"ORDER BY position LIMIT %(page)s) AS e ON true"
        )

    def read_window(self, *, categories: Sized | None, types: Sized | None) -> str:
        """A filtered read: the next ``%(window)s`` events in position order (the primary
        key, never a bitmap + sort), and those of them that match, at most ``%(page)s``.

        Each row is ``head, top, scanned, scanned_to`` then the event's columns (NULLs when
        nothing in the window matches). Filtering inside a window of the primary key keeps
        every read a short ordered index walk whatever the planner believes about how many
        events match; with the filters in the WHERE clause of one query, a generic plan
        (which cannot know how dense a category or type is) chose a bitmap scan of the
        whole tail and a sort, for every page.
        """
        s = self._schema_sql
        where = []
        if categories is not None:
            where.append("category = ANY(%(categories)s::text[])")
        if types is not None:
            where.append("type = ANY(%(types)s::text[])")
        return f"""
WITH w AS MATERIALIZED (
    SELECT {self.columns}, category FROM {s}.events
    WHERE {self._read_all_where(None, None)}
    ORDER BY position LIMIT %(window)s
)
SELECT s.head, s.top, s.scanned, s.scanned_to, e.*
FROM (SELECT (SELECT coalesce(max(position), 0) FROM {s}.events
              WHERE position < {self._horizon}) AS head,
             (SELECT coalesce(max(position), 0) FROM {s}.events) AS top,
             count(*) AS scanned, coalesce(max(position), 0) AS scanned_to FROM w) AS s
LEFT JOIN LATERAL (
    SELECT {self.columns} FROM w WHERE {" AND ".join(where or ["true"])}
    ORDER BY position LIMIT %(page)s
) AS e ON true"""

    def count_events(self, *, categories: Sized | None, types: Sized | None) -> str:
        """How many events ``read_all`` would yield now (same horizon, same filters)."""
        return (
            f"SELECT count(*) FROM {self._schema_sql}.events "
            f"WHERE {self._read_all_where(categories, types)}"
        )

    def _read_all_where(self, categories: Sized | None, types: Sized | None) -> str:
        # ``position + 0``: the horizon is a filter, not the second bound of an index range.
        # A range of two unknown bounds is estimated at 0.5% of the table, and the planner
        # then reads the whole tail above the cursor through a bitmap and sorts it, for
        # every page (14 ms a page at 20,000 events with a category filter, growing with the
        # log: quadratic catch-up). With one bound it walks the primary key in order and
        # stops at the page size; the rows above the horizon it filters out are only those
        # of transactions still open.
        where = [
            "position > %(after)s::bigint",
            f"position + 0 < {self._horizon}",
        ]
        if categories is not None:
            where.append("category = ANY(%(categories)s::text[])")
        if types is not None:
            where.append("type = ANY(%(types)s::text[])")
        return " AND ".join(where)
