"""The PostgreSQL backend fed to the shared contract suite, in a fresh schema per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chronik.store.postgres import PostgresEventStore
from chronik.store.protocol import EventStore
from chronik.testing.contract import EventStoreContract, FencingContract, SqlStoreContract


@pytest.mark.postgres
class TestPostgresStore(EventStoreContract, SqlStoreContract, FencingContract):
    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[EventStore]:
        async with await PostgresEventStore.open(pg_url, max_event_bytes=64 * 1024) as store:
            yield store
