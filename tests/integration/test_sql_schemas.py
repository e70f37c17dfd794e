"""The SQL schemas mirror each other, and stores made by earlier chronik versions upgrade.

- SQLite and PostgreSQL have the same tables, columns and index names (constraint indexes
  aside, which SQLite names itself), and one time representation each.
- A SQLite file made at schema 0003 or 0005 (before migration 0006: datetime text times, the
  old index names) opens, is migrated, and keeps its events, checkpoints and dead letters.
- A PostgreSQL schema made by the loader before names were recorded, at 0005, opens and is
  migrated.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chronik.events import NewEvent
from chronik.store import migrations
from chronik.store.postgres import PostgresEventStore, split_schema
from chronik.store.sqlite import SqliteEventStore
from chronik.store.sqlite_statements import SqliteStatements

SECONDS_COLUMNS = {
    # the saga and inbox tables keep seconds since 1970 (REAL / double precision) on both
    # dialects: they are compared with Tx.clock_sql, the database's clock in seconds
    ("saga_instances", "updated_at"),
    ("saga_deadlines", "due_at"),
    ("saga_commands", "claimed_at"),
    ("processed_messages", "processed_at"),
    ("inbox_dead_letters", "created_at"),
}
TIME_COLUMNS = {"recorded_at", "created_at", "updated_at", "applied_at", "processed_at", "due_at"}
POSTGRES_ONLY_TABLES = {"position_base": "positions are transaction ids (docs/ordering.md)"}


def _sqlite_schema(path: Path) -> tuple[dict[str, dict[str, str]], set[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        columns = {
            t: {r[1]: str(r[2]).upper() for r in conn.execute(f"PRAGMA table_info({t})")}
            for t in tables
        }
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    finally:
        conn.close()
    return columns, indexes


@pytest.mark.postgres
async def test_both_dialects_have_the_same_tables_columns_and_index_names(
    tmp_path: Path, pg_url: str
) -> None:
    async with await SqliteEventStore.open(tmp_path / "s.db"):
        pass
    async with await PostgresEventStore.open(pg_url):
        pass
    sqlite_columns, sqlite_indexes = _sqlite_schema(tmp_path / "s.db")
    conninfo, schema = split_schema(pg_url)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        pg_indexes = {
            r[0]
            for r in conn.execute(
                "SELECT i.indexname FROM pg_indexes i WHERE i.schemaname = %s AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                " WHERE n.nspname = %s AND c.conname = i.indexname)",
                (schema, schema),
            )
        }
    pg_columns: dict[str, dict[str, str]] = {}
    for table, column, data_type in rows:
        pg_columns.setdefault(table, {})[column] = data_type
    for table in POSTGRES_ONLY_TABLES:
        del pg_columns[table]
    assert {t: sorted(c) for t, c in sqlite_columns.items()} == {
        t: sorted(c) for t, c in pg_columns.items()
    }
    assert sqlite_indexes == pg_indexes
    assert "events_correlation_id_idx" in sqlite_indexes
    for table, columns in sqlite_columns.items():
        for column, declared in columns.items():
            if column not in TIME_COLUMNS:
                continue
            if (table, column) in SECONDS_COLUMNS:
                assert (declared, pg_columns[table][column]) == ("REAL", "double precision")
            else:
                assert declared == "INTEGER", (table, column)  # microseconds since 1970
                # consumer groups keep microseconds on both dialects (0013, 0019)
                wanted = (
                    "bigint" if table == "consumer_group_messages" else "timestamp with time zone"
                )
                assert pg_columns[table][column] == wanted, (table, column)


def _old_sqlite_store(path: Path, at: int) -> None:
    """A SQLite file as chronik made it with migrations 1..``at`` (before 0006): the
    version table with datetime text, checkpoints and dead letters written that way."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL)"
    )
    for migration in migrations.load("sqlite")[:at]:
        assert migration.number < 6
        conn.executescript(migration.sql)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) "
            "VALUES (?, ?, '2025-01-02 03:04:05')",
            (migration.number, migration.name),
        )
    meta = '{"correlation_id":"c-1"}'
    rows = [
        ("order-1", "order", v, str(uuid.uuid4()), "Placed", 1, "{}", meta, 1_700_000_000 + v)
        for v in range(3)
    ]
    # the INSERT of before 0017 (no hash column yet; the upgrade backfills the chain)
    conn.executemany(
        "INSERT INTO events (stream_id, category, version, event_id, type, schema_version, "
        "data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute(
        "INSERT INTO checkpoints (name, position, updated_at) "
        "VALUES ('proj:v1', 2, '2025-01-02 03:04:05')"
    )
    for n in range(1, 4):
        conn.execute(
            "INSERT INTO dead_letters (subscription, position, event_id, stream_id, version, "
            "type, error, attempts, created_at) "
            "VALUES ('proj:v1', ?, ?, 'order-1', 0, 'Placed', 'boom', 3, '2025-01-02 03:04:05')",
            (n, str(uuid.uuid4())),
        )
    conn.execute("DELETE FROM dead_letters WHERE id = 3")  # its id is never handed out again
    conn.close()


@pytest.mark.parametrize("at", [3, 5])
async def test_a_sqlite_store_from_before_0006_opens_and_upgrades(tmp_path: Path, at: int) -> None:
    path = tmp_path / "old.db"
    _old_sqlite_store(path, at)
    async with await SqliteEventStore.open(path) as store:
        assert [e.version async for e in store.read_stream("order-1")] == [0, 1, 2]
        assert [e.version for e in await store.read_correlation("c-1")] == [0, 1, 2]
        assert await store.checkpoints() == {"proj:v1": 2}
        letters = await store.dead_letters()
        assert [d.id for d in letters] == [1, 2]
        assert letters[0].created_at == "2025-01-02T03:04:05+00:00"
        event = await store.read_stream("order-1").__anext__()
        async with store.transaction() as tx:
            await tx.add_dead_letter("other:v1", event, "boom", 1)
            await tx.advance_checkpoint("proj:v1", 2, 3)
        assert [d.id for d in await store.dead_letters("other:v1")] == [4]
        result = await store.append("order-1", [NewEvent("Paid")], expected_version=2)
        assert result.version == 3
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT version, name, typeof(applied_at) FROM schema_migrations")
        recorded = {int(v): (name, kind) for v, name, kind in rows}
        known = migrations.load("sqlite")
        assert recorded == {m.number: (m.name, "integer") for m in known}
        old = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
        applied = conn.execute("SELECT applied_at FROM schema_migrations WHERE version = 1")
        assert applied.fetchone()[0] == (old - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
            microseconds=1
        )
        (updated,) = conn.execute("SELECT updated_at FROM checkpoints").fetchone()
        now_us = datetime.now(UTC).timestamp() * 1e6
        assert isinstance(updated, int) and abs(updated - now_us) < 60e6
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"events_category_position_idx", "events_correlation_id_idx"} <= indexes
        assert not indexes & {"events_category_position", "events_correlation_id"}
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN {SqliteStatements.read_correlation}", ("c-1", -1)
        ).fetchall()
        assert "events_correlation_id_idx" in str(plan)
    finally:
        conn.close()


@pytest.mark.postgres
async def test_a_postgres_schema_from_the_previous_loader_opens_and_upgrades(
    pg_url: str,
) -> None:
    async with await PostgresEventStore.open(pg_url) as store:
        await store.append("order-1", [NewEvent("Placed")])
    conninfo, schema = split_schema(pg_url)
    s = f'"{schema}"'
    with psycopg.connect(conninfo, autocommit=True) as conn:  # back to 0005, no names
        conn.execute(f"ALTER TABLE {s}.schema_migrations DROP COLUMN name")
        conn.execute(f"DELETE FROM {s}.schema_migrations WHERE version = 6")
        conn.execute(f"DROP FUNCTION {s}.chronik_advance_checkpoint(text, text, bigint, bigint)")
    async with await PostgresEventStore.open(pg_url) as store:
        async with store.transaction() as tx:
            await tx.advance_checkpoint("proj:v1", 0, 1)
        assert await store.get_checkpoint("proj:v1") == 1
        assert await store.stream_version("order-1") == 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows: list[Any] = conn.execute(
            f"SELECT version, name FROM {s}.schema_migrations ORDER BY version"
        ).fetchall()
    assert rows == [(m.number, m.name) for m in migrations.load("postgres")]
