from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chronik.store.memory import MemoryEventStore
from chronik.store.protocol import EventStore
from chronik.testing.contract import EventStoreContract


class TestMemoryStore(EventStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        async with MemoryEventStore(max_event_bytes=64 * 1024) as store:
            yield store
