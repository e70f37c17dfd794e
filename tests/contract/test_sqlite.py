from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import chronik
from chronik.events import NO_STREAM, NewEvent
from chronik.store.protocol import EventStore
from chronik.store.sqlite import SqliteEventStore
from chronik.testing.contract import EventStoreContract, FencingContract, SqlStoreContract, collect


class TestSqliteStore(EventStoreContract, SqlStoreContract, FencingContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[EventStore]:
        async with await SqliteEventStore.open(
            tmp_path / "events.db", max_event_bytes=64 * 1024
        ) as store:
            yield store


async def test_reopening_a_file_keeps_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/app.db"
    async with await chronik.connect(url) as store:
        first = await store.append(
            "order-1", [NewEvent("Placed", {"n": 1})], expected_version=NO_STREAM
        )
    async with await chronik.connect(url) as store:
        (got,) = await collect(store.read_stream("order-1"))
        assert got.position == first.position and got.data == {"n": 1}
        again = await store.append("order-1", [NewEvent("Paid")], expected_version=0)
        assert again.position > first.position
        assert await store.stream_version("order-1") == 1


async def test_sqlite_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    import sqlite3

    async with await SqliteEventStore.open(tmp_path / "a.db") as store:
        await store.append("x-1", [NewEvent("E")])
        conn = store._writer.conn
        assert conn is not None
        assert (
            await store._writer.run(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0])
            == "wal"
        )
        assert (
            await store._writer.run(lambda: conn.execute("PRAGMA synchronous").fetchone()[0]) == 2
        )  # FULL
    raw = sqlite3.connect(tmp_path / "a.db")
    assert raw.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1
    raw.close()


async def test_migrations_are_idempotent_and_newer_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "m.db"
    async with await SqliteEventStore.open(path) as store:
        assert await store.migrate() == 0
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_migrations (version, applied_at, name) VALUES (9999, 0, 'x')")
    raw.commit()
    raw.close()
    with pytest.raises(chronik.SchemaError):
        await SqliteEventStore.open(path)


async def test_missing_folder_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(chronik.StoreUnavailable):
        await chronik.connect(f"sqlite:///{tmp_path}/nope/x.db")


async def test_events_rows_are_immutable(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "i.db"
    async with await SqliteEventStore.open(path) as store:
        await store.append("x-1", [NewEvent("E", {"a": 1})])
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        raw.execute("UPDATE events SET data = '{}'")
    raw.close()


async def test_refused_appends_leave_the_file_as_it_was(tmp_path: Path) -> None:
    import math
    import sqlite3

    def dump() -> list[str]:
        conn = sqlite3.connect(tmp_path / "d.db")
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    refused: list[tuple[list[NewEvent], int]] = [
        ([NewEvent("E", {"x": math.nan})], chronik.ANY),
        ([NewEvent("E", {}, event_id="nope")], chronik.ANY),  # type: ignore[arg-type]
        ([NewEvent("E", b'{"a":"\xff"}')], chronik.ANY),
        ([NewEvent("E\x00", {})], chronik.ANY),
        ([NewEvent("E", {}, metadata={"correlation_id": 123})], chronik.ANY),
        ([NewEvent("E", {}, metadata={"note": "\x00"})], chronik.ANY),
        ([NewEvent("E", {}, schema_version=0)], chronik.ANY),
        ([NewEvent("E", {})], 2**31),
        ([NewEvent("E", {}), NewEvent("E", {"deep": [[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]})], 0),
    ]
    async with await SqliteEventStore.open(tmp_path / "d.db") as store:
        store.max_json_depth = 16
        await store.append("x-1", [NewEvent("E", {"a": 1})])
        before = dump()
        for events, expected in refused:
            with pytest.raises(chronik.ChronikError):
                await store.append("x-1", events, expected_version=expected)
        assert dump() == before
