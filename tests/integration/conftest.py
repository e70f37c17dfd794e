"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from chronik.store.postgres import split_schema


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
    """A plain autocommit psycopg connection to the test database (outside chronik)."""
    conninfo, _ = split_schema(pg_url)
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()
