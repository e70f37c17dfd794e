"""The SQL backends mirror each other: the same statement names in the same place, the same
migrations (numbers and names), loaded by one loader with one rule.

What only one dialect needs is listed here with the reason; anything else that one backend has
and the other lacks fails the test.
"""

from __future__ import annotations

import pytest

from chronik.errors import SchemaError
from chronik.store import migrations
from chronik.store.postgres_statements import PostgresStatements
from chronik.store.sqlite_statements import SqliteStatements

_POSITIONS = "positions are transaction ids on PostgreSQL (docs/ordering.md)"
_SIGNALS = "other processes' appends wake followers by LISTEN/NOTIFY; on SQLite they poll"
_SCHEMA = "a PostgreSQL store is a schema, created and migrated under an advisory lock"

POSTGRES_ONLY = {
    "append_one": "one event with scalar parameters: five one-element arrays cost more "
    "client CPU than the INSERT (SQLite binds plain rows either way)",
    "append_group": "group commit of concurrent appends in one statement; SQLite's writer "
    "thread groups them in one transaction with a savepoint each",
    "read_page": "the head and a page in one round trip; on SQLite the shared read_page "
    "(head, then read_all) costs no round trip",
    "read_window": "a filtered read walks the primary key in windows, so that a generic plan "
    "never sorts the whole tail; SQLite's planner uses the category index",
    "lock_checkpoint": "a checkpoint's transaction lock; on SQLite the write transaction "
    "already holds the only write lock",
    "lock_events_share": "the fence waits for inserting transactions in flight (0009); on "
    "SQLite the write transaction already holds the only write lock",
    "advance_checkpoint": "compares and moves a checkpoint in the server "
    "(chronik_advance_checkpoint, migration 0006); SQLite does it inside its transaction",
    "migrate_lock": _SCHEMA,
    "schema_state": _SCHEMA,
    "create_schema": _SCHEMA,
    "name_migrations": "version tables made before names were recorded (SQLite's had them)",
    "position_base_check": _POSITIONS,
    "lock_events": _POSITIONS,
    "raise_position_offset": _POSITIONS,
    "listen": _SIGNALS,
    "listen_lock": _SIGNALS,
    "notify": _SIGNALS,
    "others_listening": _SIGNALS,
}
SQLITE_ONLY = {
    "last_position": "SQLite's INSERT of several rows cannot return them (executemany); "
    "PostgreSQL's append returns positions with RETURNING",
}


def _names(statements: object) -> set[str]:
    return {name for name in dir(statements) if not name.startswith("_")}


def test_both_backends_have_the_same_statement_names() -> None:
    sqlite = _names(SqliteStatements())
    postgres = _names(PostgresStatements("chronik"))
    assert sorted(postgres - sqlite) == sorted(POSTGRES_ONLY)
    assert sorted(sqlite - postgres) == sorted(SQLITE_ONLY)
    shared = sqlite & postgres
    assert {"append", "read_all", "head", "set_checkpoint", "record_migration"} <= shared


def test_both_backends_have_the_same_migrations() -> None:
    sqlite = [(m.number, m.name) for m in migrations.load("sqlite")]
    postgres = [(m.number, m.name) for m in migrations.load("postgres")]
    assert sqlite == postgres
    assert [n for n, _ in sqlite] == list(range(1, len(sqlite) + 1))
    assert len(sqlite) >= 6


def test_a_store_from_a_newer_chronik_is_refused() -> None:
    known = migrations.load("sqlite")
    assert migrations.pending(known, [1, 2], "x.db") == known[2:]
    assert migrations.pending(known, [m.number for m in known], "x.db") == []
    with pytest.raises(SchemaError, match="upgrade chronik"):
        migrations.pending(known, [1, len(known) + 1], "x.db")
