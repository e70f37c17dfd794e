"""Least privilege on PostgreSQL (migration 0015): a login role in ``chronik_runtime`` appends,
reads and runs a projection, while PostgreSQL itself refuses it any UPDATE, DELETE or
TRUNCATE of events and any change to retention, its records, the fence and tokens. The
owner keeps every right (negative control: the same statements succeed as the owner)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import chronik
from chronik.cli.main import main
from chronik.errors import ChronikError
from chronik.ops import retention
from chronik.store.roles import RUNTIME_ROLE, grant_runtime_role
from tests.conftest import PG_URL


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
def app_role(pg_url: str) -> Iterator[str]:
    """A login role that is a member of chronik_runtime (dropped afterwards)."""
    role = f"chronik_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        yield role
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def schema_of(url: str) -> str:
    return url.split("schema=")[1].split("&")[0]


TAMPERING = [
    "UPDATE {s}.events SET type = 'Forged'",
    "UPDATE {s}.events SET data = '{{\"amount\": 1000000}}'",
    "DELETE FROM {s}.events",
    "TRUNCATE {s}.events",
    "DELETE FROM {s}.truncations",
    "INSERT INTO {s}.retention_policies (category, max_count, updated_at) "
    "VALUES ('order', 1, now())",
    "INSERT INTO {s}.store_fence (moved_to, position) VALUES ('elsewhere', 0)",
    "UPDATE {s}.position_base SET xid_offset = 0",
    "DELETE FROM {s}.api_tokens",
    "DELETE FROM {s}.schema_migrations",
]


async def test_the_runtime_role_appends_and_projects_but_cannot_change_history(
    pg_url: str, app_role: str
) -> None:
    async with await chronik.connect(pg_url) as owner:
        await owner.append("order-1", [chronik.NewEvent("Placed", {"amount": 5})])
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app_role} LOGIN IN ROLE {RUNTIME_ROLE}")
    app_url = as_user(pg_url, app_role)

    class Totals(chronik.Projection):
        name = "totals"

        async def setup(self, tx: Any) -> None:
            await tx.execute("CREATE TABLE IF NOT EXISTS totals_v1 (n integer)")

        async def handle(self, event: chronik.RecordedEvent, tx: Any) -> None:
            await tx.execute("INSERT INTO totals_v1 (n) VALUES (:n)", {"n": event.data["amount"]})

    async with await chronik.connect(app_url) as app_store:
        app: Any = app_store
        await app.append("order-1", [chronik.NewEvent("Placed", {"amount": 7})], expected_version=0)
        runner = chronik.ProjectionRunner(app, [Totals()])
        assert await runner.catch_up() == 2
        assert await app.query("SELECT sum(n) FROM totals_v1") == [(12,)]
        # retention is the owner's job: PostgreSQL refuses it to the application
        with pytest.raises(Exception, match="permission denied"):
            await retention.set_policy(app, "order", max_count=1)
        assert [e.version async for e in app.read_stream("order-1")] == [0, 1]

    s = f'"{schema_of(pg_url)}"'
    refused = 0
    with psycopg.connect(as_user(PG_URL, app_role), autocommit=True) as conn:
        for statement in TAMPERING:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.format(s=s))
            refused += 1
    assert refused == len(TAMPERING)
    # negative control: the owner may (inside a transaction rolled back)
    with psycopg.connect(PG_URL) as conn:
        for statement in TAMPERING:
            if "UPDATE {s}.events" in statement:
                continue  # the owner's updates hit the immutability trigger instead
            with conn.transaction(force_rollback=True):
                conn.execute(statement.format(s=s))
    async with await chronik.connect(pg_url) as owner:
        assert [e.version async for e in owner.read_stream("order-1")] == [0, 1]


async def test_grants_are_idempotent_and_sqlite_has_no_roles(pg_url: str, tmp_path: Path) -> None:
    async with await chronik.connect(pg_url) as store:
        assert await grant_runtime_role(store) is True
        assert await grant_runtime_role(store) is True
    async with await chronik.connect(f"sqlite:///{tmp_path}/r.db") as store:
        with pytest.raises(ChronikError, match="PostgreSQL feature"):
            await grant_runtime_role(store)
    assert await asyncio.to_thread(main, ["roles", "setup", "--store", pg_url, "--json"]) == 0
