"""Shared fixtures: service URLs for PostgreSQL and NATS, fresh schemas per test.

With ``CI=true`` a missing service fails the run; elsewhere its tests skip with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

PG_URL = os.environ.get("CHRONIK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("CHRONIK_TEST_NATS", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


def require_service(name: str, url: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a service is not reachable."""
    if _reachable(url):
        return
    message = f"{name} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it (start it, see README)")
    pytest.skip(f"{message}; set CHRONIK_TEST_PG / start the service to run these tests")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``schema`` option names a fresh schema, dropped afterwards."""
    require_service("PostgreSQL", PG_URL)
    import psycopg

    schema = f"chronik_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}schema={schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/events.db"


@pytest.fixture
async def memory_store() -> AsyncIterator[object]:
    from chronik.store.memory import MemoryEventStore

    async with MemoryEventStore() as store:
        yield store
