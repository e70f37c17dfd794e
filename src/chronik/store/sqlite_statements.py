"""Every SQL statement of the SQLite backend, under the names the PostgreSQL backend uses.

:class:`SqliteStatements` and :class:`chronik.store.postgres_statements.PostgresStatements`
hold the same names for the same operations (``tests/unit/test_sql_backends.py`` compares
them and lists the few each dialect needs alone, with the reason). A statement with a
variable number of parameters (``IN (?, ?, ...)``: SQLite has no arrays) is a method taking
the values it will be given. Transaction control (``BEGIN IMMEDIATE``, ``COMMIT``,
savepoints) and connection set-up (``PRAGMA``) stay with the code that owns the connection.

Times are INTEGER microseconds since 1970-01-01 UTC in every table (SQLite has no time type);
PostgreSQL keeps ``timestamptz``.
"""

from __future__ import annotations

from collections.abc import Sized

__all__ = ["SqliteStatements"]


def _marks(values: Sized) -> str:
    return ",".join("?" * len(values))


def _filters(categories: Sized | None, types: Sized | None) -> str:
    where = ""
    if categories is not None:
        where += f" AND category IN ({_marks(categories)})" if len(categories) else " AND 0"
    if types is not None:
        where += f" AND type IN ({_marks(types)})" if len(types) else " AND 0"
    return where


class SqliteStatements:
    """The SQL of the SQLite backend (``?`` parameters, in the order each comment gives)."""

    # -- events --------------------------------------------------------------------------

    columns = (
        "position, stream_id, version, event_id, type, schema_version, "
        "CAST(data AS BLOB), CAST(metadata AS BLOB), recorded_at"
    )
    """The columns of an event, in the argument order of ``RecordedEvent.from_stored``."""

    append = (
        "INSERT INTO events (stream_id, category, version, event_id, type, schema_version, "
        "data, metadata, recorded_at, hash) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, CAST(?7 AS TEXT), CAST(?8 AS TEXT), ?9, "
        "chronik_event_hash((SELECT p.hash FROM events AS p WHERE p.stream_id = ?1 "
        "AND p.version = ?3 - 1), ?1, ?3, ?4, ?5, ?6, ?9, CAST(?7 AS TEXT), CAST(?8 AS TEXT)))"
    )
    """One row per event (``executemany``), inside the transaction that checked the
    stream's version: SQLite's single writer makes check and insert one step. The hash
    chains from the stream's previous event (migration 0017; ``chronik_event_hash`` is
    registered on the writer connection), which an earlier row of the same
    ``executemany`` may have inserted."""

    import_events = append
    """The same INSERT: an imported event brings its own ``recorded_at``."""

    last_position = "SELECT last_insert_rowid()"
    """The position of the last event the append inserted."""

    stream_version = "SELECT max(version) FROM events WHERE stream_id = ?"
    """(stream_id): one seek of the ``(stream_id, version)`` index."""

    def stored_copies(self, event_ids: Sized) -> str:
        """What is stored under these event ids (at most 500 a statement)."""
        return (
            "SELECT event_id, stream_id, version, position, type, CAST(data AS BLOB) "
            f"FROM events WHERE event_id IN ({_marks(event_ids)})"
        )

    def stream_versions(self, stream_ids: Sized) -> str:
        """The version of each of these streams (at most 500 a statement)."""
        marks = _marks(stream_ids)  # the ids twice: events, then retention's records (0014)
        return (
            "SELECT stream_id, max(v) FROM ("
            f"SELECT stream_id, max(version) AS v FROM events WHERE stream_id IN ({marks}) "
            "GROUP BY stream_id UNION ALL "
            f"SELECT stream_id, max(through_version) FROM truncations WHERE stream_id IN ({marks}) "
            "GROUP BY stream_id) GROUP BY stream_id"
        )

    read_forward = (
        f"SELECT {columns} FROM events WHERE stream_id = ? AND version >= ? "
        "ORDER BY version LIMIT ?"
    )
    read_backward = (
        f"SELECT {columns} FROM events WHERE stream_id = ? AND version <= ? "
        "ORDER BY version DESC LIMIT ?"
    )
    read_backward_from_end = (
        f"SELECT {columns} FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT ?"
    )

    def read_all(self, *, categories: Sized | None, types: Sized | None) -> str:
        """One page of the global order: (after, *categories, *types, limit)."""
        return (
            f"SELECT {self.columns} FROM events WHERE position > ?"
            f"{_filters(categories, types)} ORDER BY position LIMIT ?"
        )

    def count_events(self, *, categories: Sized | None, types: Sized | None) -> str:
        """How many events ``read_all`` would yield: (after, *categories, *types)."""
        return f"SELECT count(*) FROM events WHERE position > ?{_filters(categories, types)}"

    read_correlation = (
        f"SELECT {columns} FROM events WHERE json_extract(metadata, '$.correlation_id') = ? "
        "ORDER BY position LIMIT ?"
    )
    """(correlation_id, limit; -1: none): the expression of index events_correlation_id_idx."""

    head = "SELECT coalesce(max(position), 0) FROM events"

    # -- inspection ------------------------------------------------------------------------

    streams_all = (
        "SELECT stream_id, max(version), max(position) FROM events "
        "WHERE stream_id > ? GROUP BY stream_id ORDER BY stream_id LIMIT ?"
    )
    streams_category = (
        "SELECT stream_id, max(version), max(position) FROM events "
        "WHERE stream_id > ? AND category = ? GROUP BY stream_id ORDER BY stream_id LIMIT ?"
    )
    stats_counts = "SELECT count(*), count(DISTINCT stream_id) FROM events"
    count_categories = "SELECT category, count(*) FROM events GROUP BY category ORDER BY category"
    size = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
    """The database file's size (the WAL file is added apart)."""

    # -- checkpoints, dead letters, projection versions ------------------------------------

    # -- the fence of a migration's cut-over (0009) -----------------------------------------

    fence_state = "SELECT moved_to, position, fenced_at FROM store_fence"
    set_fence = (
        "INSERT INTO store_fence (singleton, moved_to, position, fenced_at) "
        "SELECT 1, ?, coalesce(max(position), 0), ? FROM events"
    )
    unfence = "DELETE FROM store_fence"

    get_checkpoint = "SELECT position FROM checkpoints WHERE name = ?"
    all_checkpoints = "SELECT name, position FROM checkpoints ORDER BY name"
    set_checkpoint = (
        "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
        "updated_at = excluded.updated_at"
    )
    """(name, position, now in microseconds)."""
    add_dead_letter = (
        "INSERT INTO dead_letters (subscription, position, event_id, stream_id, version, "
        "type, error, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (subscription, event_id) DO UPDATE SET error = excluded.error, "
        "attempts = dead_letters.attempts + excluded.attempts"
    )
    """(subscription, position, event_id, stream_id, version, type, error, attempts, now in
    microseconds)."""
    delete_dead_letter = "DELETE FROM dead_letters WHERE id = ?"
    _dead_columns = (
        "id, subscription, position, event_id, stream_id, version, type, error, attempts, "
        "created_at"
    )
    dead_letters_all = f"SELECT {_dead_columns} FROM dead_letters ORDER BY id"
    dead_letters_of = f"SELECT {_dead_columns} FROM dead_letters WHERE subscription = ? ORDER BY id"
    get_active_version = "SELECT active FROM projection_versions WHERE name = ?"
    set_active_version = (
        "INSERT INTO projection_versions (name, active) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET active = excluded.active"
    )

    # -- migrations (chronik.store.migrations) -------------------------------------------

    create_migrations_table = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL, name TEXT)"
    )
    applied_migrations = "SELECT version FROM schema_migrations"
    record_migration = (
        "INSERT INTO schema_migrations (version, applied_at, name) VALUES (?, ?, ?) "
        "ON CONFLICT (version) DO UPDATE SET name = excluded.name "
        "WHERE schema_migrations.name IS NULL"
    )
    """(number, now in microseconds, file name); names a row recorded without one."""
