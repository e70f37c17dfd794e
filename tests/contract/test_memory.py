"""The memory backend fed to the contract suites of its capabilities (it has no SQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chronik.errors import ChronikError, MissingCapability
from chronik.store import SqlStore, require, supports
from chronik.store.memory import MemoryEventStore
from chronik.store.protocol import EventStore
from chronik.testing.contract import EventStoreContract, FencingContract


class TestMemoryStore(EventStoreContract, FencingContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        async with MemoryEventStore(max_event_bytes=64 * 1024) as store:
            yield store


async def test_sql_on_memory_is_one_typed_error_naming_who_has_it() -> None:
    async with MemoryEventStore() as store:
        assert not supports(store, SqlStore)
        with pytest.raises(MissingCapability) as info:
            require(store, SqlStore)
        error = info.value
        assert (error.capability, error.store) == ("SqlStore", "MemoryEventStore")
        assert error.backends == ["sqlite", "postgresql"]
        assert "sqlite://" in str(error) and "postgresql://" in str(error)
        assert isinstance(error, ChronikError) and isinstance(error, TypeError)
        async with store.transaction() as tx:  # a handler's SQL meets the same error
            with pytest.raises(MissingCapability, match="SqlStore"):
                await tx.execute("SELECT 1")
            with pytest.raises(MissingCapability):
                await tx.fetchone("SELECT 1")


async def test_workers_that_need_sql_refuse_a_memory_store_when_made() -> None:
    from chronik.nats import Inbox
    from chronik.snapshots.store import MemorySnapshotStore, SqlSnapshotStore, snapshot_store

    async def handler(message: object, tx: object) -> None:
        raise AssertionError("never called")

    async with MemoryEventStore() as store:
        with pytest.raises(MissingCapability, match="SqlStore"):
            Inbox(store, "nats://127.0.0.1:1", name="n", stream="s", subject="x.>", handler=handler)
        with pytest.raises(MissingCapability):
            SqlSnapshotStore(store)
        assert isinstance(snapshot_store(store), MemorySnapshotStore)
