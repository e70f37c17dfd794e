"""What only the PostgreSQL backend has: migrations, the position offset, the pool, errors.

The behaviour every backend shares is in the contract suite (tests/contract/); these tests
cover what is particular to PostgreSQL, and a few shared rules where PostgreSQL gets there
by another road (unique-index retries, paging).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, timedelta
from typing import Any

import psycopg
import pytest

from chronik.errors import (
    BatchTooLarge,
    ChronikError,
    ConcurrencyError,
    DuplicateEventId,
    SchemaError,
    SerializationError,
    StoreUnavailable,
    StreamNotFound,
)
from chronik.events import ANY, NO_STREAM, NewEvent, RecordedEvent
from chronik.store import migrations, pg_support, postgres
from chronik.store.postgres import (
    POSITION_SHIFT,
    PostgresEventStore,
    split_schema,
    validate_schema_name,
)
from chronik.store.protocol import READ_PAGE_SIZE, Tx

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(pg_url, pool_max=12)
    try:
        yield s
    finally:
        await s.close()


def schema_of(pg_url: str) -> str:
    _, schema = split_schema(pg_url)
    assert schema is not None
    return schema


async def scalar(conn: Conn, sql: str, params: tuple[object, ...] = ()) -> object:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


# -- names and URLs -----------------------------------------------------------------------


def test_split_schema_takes_only_the_schema_parameter() -> None:
    assert split_schema("postgresql://u@h:5/db?schema=s1&sslmode=disable") == (
        "postgresql://u@h:5/db?sslmode=disable",
        "s1",
    )
    assert split_schema("postgresql://u@h/db?schema=s1") == ("postgresql://u@h/db", "s1")
    assert split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert split_schema("host=h dbname=db") == ("host=h dbname=db", None)
    assert split_schema("postgresql:///db?options=-c%20a%3Db&schema=x") == (
        "postgresql:///db?options=-c%20a%3Db",
        "x",
    )


@pytest.mark.parametrize(
    "name", ["", "Chronik", "1abc", "a-b", 'x"; DROP TABLE t; --', "a" * 64, "é"]
)
def test_schema_names_outside_the_identifier_grammar_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_schema_name(name)


async def test_open_refuses_a_bad_schema_before_connecting() -> None:
    with pytest.raises(ValueError):
        await PostgresEventStore.open("postgresql://nobody@127.0.0.1:1/x", schema="Bad-Name")


async def test_reserved_word_schema_works_because_it_is_quoted(pg_url: str, raw: Conn) -> None:
    conninfo, _ = split_schema(pg_url)
    await raw.execute('DROP SCHEMA IF EXISTS "select" CASCADE')
    try:
        async with await PostgresEventStore.open(conninfo, schema="select") as s:
            await s.append("a-1", [NewEvent("E")])
            assert [e.type async for e in s.read_all()] == ["E"]
    finally:
        await raw.execute('DROP SCHEMA IF EXISTS "select" CASCADE')


# -- migrations ---------------------------------------------------------------------------


async def test_migrations_apply_once_and_reopen_is_a_no_op(pg_url: str, raw: Conn) -> None:
    schema = schema_of(pg_url)
    async with await PostgresEventStore.open(pg_url) as s:
        res = await s.append("order-1", [NewEvent("Placed", {"n": 1})])
    async with await PostgresEventStore.open(pg_url) as s:
        assert await s.stream_version("order-1") == 0
        assert await s.head_position() == res.position
    cur = await raw.execute(f'SELECT version FROM "{schema}".schema_migrations')
    applied = sorted(int(r[0]) for r in await cur.fetchall())
    assert applied == [m.number for m in migrations.load("postgres")]
    assert applied[:2] == [1, 2]


async def test_concurrent_opens_of_a_fresh_schema_all_succeed(pg_url: str, raw: Conn) -> None:
    schema = schema_of(pg_url)
    stores = await asyncio.gather(*(PostgresEventStore.open(pg_url) for _ in range(6)))
    try:
        await asyncio.gather(*(s.append(f"s-{i}", [NewEvent("E")]) for i, s in enumerate(stores)))
        assert (await stores[0].stats()).events == 6
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    count = await scalar(raw, f'SELECT count(*) FROM "{schema}".schema_migrations')
    assert count == len(migrations.load("postgres"))


async def test_a_schema_from_a_newer_chronik_is_refused(pg_url: str, raw: Conn) -> None:
    schema = schema_of(pg_url)
    async with await PostgresEventStore.open(pg_url):
        pass
    await raw.execute(f'INSERT INTO "{schema}".schema_migrations VALUES (999, now())')
    with pytest.raises(SchemaError, match="999"):
        await PostgresEventStore.open(pg_url)


async def test_events_cannot_be_updated(store: PostgresEventStore, raw: Conn, pg_url: str) -> None:
    await store.append("a-1", [NewEvent("E")])
    with pytest.raises(psycopg.errors.RestrictViolation):
        await raw.execute(f'UPDATE "{schema_of(pg_url)}".events SET type = %s', ("X",))


# -- positions ----------------------------------------------------------------------------


async def test_positions_encode_transaction_then_place_in_the_append(
    store: PostgresEventStore,
) -> None:
    first = await store.append("a-1", [NewEvent("E") for _ in range(3)])
    second = await store.append("a-1", [NewEvent("E")])
    positions = [e.position async for e in store.read_all()]
    assert positions == sorted(positions)
    base = positions[0]
    assert base % (1 << POSITION_SHIFT) == 0
    assert positions[:3] == [base, base + 1, base + 2] and first.position == base + 2
    assert positions[3] >> POSITION_SHIFT > base >> POSITION_SHIFT
    assert second.position == positions[3]


async def test_more_events_than_an_append_can_number_is_refused(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "MAX_EVENTS_PER_APPEND", 3)
    with pytest.raises(BatchTooLarge):
        await store.append("a-1", [NewEvent("E") for _ in range(4)])
    assert await store.stream_version("a-1") is None
    await store.append("a-1", [NewEvent("E") for _ in range(3)])


async def test_restore_into_a_cluster_with_lower_xids_moves_the_offset_forward(
    pg_url: str, raw: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """Simulates pg_dump/pg_restore into a new cluster, whose xid counter starts lower.

    Events are written while ``xid_offset`` says the cluster is 10**9 xids further on; then
    the offset goes back to 0, which is where a fresh cluster's xid counter would put us with
    these positions stored. Reopening must lift the offset above the stored maximum.
    """
    schema = schema_of(pg_url)
    async with await PostgresEventStore.open(pg_url):
        pass
    await raw.execute(f'UPDATE "{schema}".position_base SET xid_offset = 1000000000')
    async with await PostgresEventStore.open(pg_url) as s:
        old = [await s.append(f"old-{i}", [NewEvent("Old"), NewEvent("Old")]) for i in range(3)]
    old_max = max(r.position for r in old)
    await raw.execute(f'UPDATE "{schema}".position_base SET xid_offset = 0')

    with caplog.at_level(logging.WARNING, logger="chronik.store.postgres"):
        s = await PostgresEventStore.open(pg_url)
    try:
        assert "raised the position offset" in caplog.text
        offset = await scalar(raw, f'SELECT xid_offset FROM "{schema}".position_base')
        assert isinstance(offset, int) and offset > 0
        assert await s.head_position() == old_max  # the horizon is above the old rows again
        new = await s.append("new-1", [NewEvent("New")])
        assert new.position > old_max
        events = [e async for e in s.read_all()]
        assert [e.type for e in events] == ["Old"] * 6 + ["New"]
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))
        tail = [e.type async for e in s.read_all(after=old_max)]
        assert tail == ["New"]
    finally:
        await s.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chronik.store.postgres"):
        async with await PostgresEventStore.open(pg_url):
            pass
    assert "raised the position offset" not in caplog.text  # only when needed
    assert await scalar(raw, f'SELECT xid_offset FROM "{schema}".position_base') == offset


# -- appends ------------------------------------------------------------------------------


async def test_concurrent_any_appends_to_one_stream_all_land_gapless(
    store: PostgresEventStore,
) -> None:
    results = await asyncio.gather(*(store.append("hot-1", [NewEvent("E")]) for _ in range(40)))
    assert sorted(r.version for r in results) == list(range(40))
    versions = [e.version async for e in store.read_stream("hot-1")]
    assert versions == list(range(40))


async def test_concurrent_no_stream_appends_one_wins(store: PostgresEventStore) -> None:
    outcomes = await asyncio.gather(
        *(store.append("new-1", [NewEvent("E")], expected_version=NO_STREAM) for _ in range(10)),
        return_exceptions=True,
    )
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(o, ConcurrencyError) and o.actual == 0 for o in losses)
    assert await store.stream_version("new-1") == 0


async def test_retry_with_a_stale_exact_version_returns_the_original(
    store: PostgresEventStore,
) -> None:
    batch = [NewEvent("A"), NewEvent("B")]
    first = await store.append("o-1", batch, expected_version=NO_STREAM)
    await store.append("o-1", [NewEvent("C")], expected_version=1)
    assert await store.append("o-1", batch, expected_version=NO_STREAM) == first
    assert await store.append("o-1", batch, expected_version=ANY) == first
    with pytest.raises(DuplicateEventId):
        await store.append("o-1", [NewEvent("A", {"x": 1}, event_id=batch[0].event_id)])
    with pytest.raises(DuplicateEventId):
        await store.append("other-1", batch)
    assert await store.stream_version("o-1") == 2


async def test_invalid_json_bytes_are_refused_and_nothing_is_written(
    store: PostgresEventStore,
) -> None:
    for bad in (b"{not json", b"\xff\xfe", b'{"a": "\x00"}'):
        with pytest.raises(SerializationError):
            await store.append("j-1", [NewEvent("E"), NewEvent("E", bad)])
    assert await store.stream_version("j-1") is None


async def test_data_comes_back_as_the_exact_bytes_written(store: PostgresEventStore) -> None:
    raw_json = b'{ "b" : 2,  "a": [1, 2.50, "\\u00e9"] }'
    await store.append("b-1", [NewEvent("E", raw_json, metadata={"k": "v"})])
    (ev,) = [e async for e in store.read_stream("b-1")]
    assert ev.raw_data == raw_json
    assert ev.data == {"b": 2, "a": [1, 2.5, "é"]}
    assert ev.metadata["k"] == "v" and ev.correlation_id
    assert ev.recorded_at.utcoffset() == timedelta(0)
    assert ev.recorded_at.tzinfo is UTC


# -- reading ------------------------------------------------------------------------------


async def test_paging_across_pages_forward_backward_filtered(store: PostgresEventStore) -> None:
    n = READ_PAGE_SIZE * 2 + 7
    await store.append("big-1", [NewEvent("Even" if i % 2 == 0 else "Odd") for i in range(n)])
    await store.append("other-1", [NewEvent("Even")])
    forward = [e.version async for e in store.read_stream("big-1")]
    assert forward == list(range(n))
    backward = [e.version async for e in store.read_stream("big-1", backwards=True)]
    assert backward == list(reversed(range(n)))
    window = [e.version async for e in store.read_stream("big-1", from_version=100, limit=501)]
    assert window == list(range(100, 601))
    back = [
        e.version
        async for e in store.read_stream("big-1", from_version=700, backwards=True, limit=600)
    ]
    assert back == list(range(700, 100, -1))
    evens = [e async for e in store.read_all(types=["Even"])]
    assert len(evens) == (n + 1) // 2 + 1
    only_big = [e async for e in store.read_all(categories=["big"], types=["Even"])]
    assert len(only_big) == (n + 1) // 2
    assert [e async for e in store.read_all(categories=[])] == []
    limited = [e.position async for e in store.read_all(limit=READ_PAGE_SIZE + 1)]
    assert len(limited) == READ_PAGE_SIZE + 1
    with pytest.raises(StreamNotFound):
        async for _ in store.read_stream("missing-1", limit=0):
            pass
    assert [e async for e in store.read_stream("big-1", from_version=n)] == []


async def test_streams_are_listed_by_keyset_pages(store: PostgresEventStore) -> None:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            await store.append(f"{'a' if i % 3 else 'b'}-{i:04d}", [NewEvent("E")])

    n = READ_PAGE_SIZE + 120
    await asyncio.gather(*(one(i) for i in range(n)))
    listed = [s async for s in store.streams()]
    assert [s.stream_id for s in listed] == sorted(s.stream_id for s in listed)
    assert len(listed) == n
    b_streams = [s async for s in store.streams(category="b")]
    assert len(b_streams) == len([i for i in range(n) if i % 3 == 0])
    assert len([s async for s in store.streams(limit=READ_PAGE_SIZE + 3)]) == READ_PAGE_SIZE + 3
    stats = await store.stats()
    assert stats.events == n and stats.streams == n
    assert stats.categories == {"a": n - len(b_streams), "b": len(b_streams)}
    assert stats.size_bytes and stats.size_bytes > 0
    assert stats.head_position == max(s.last_position for s in listed)


async def test_wait_for_change_returns_on_append_or_timeout(store: PostgresEventStore) -> None:
    await store.wait_for_change(0.05)  # nothing happens: returns after the timeout

    async def later() -> None:
        await asyncio.sleep(0.2)
        await store.append("w-1", [NewEvent("E")])

    task = asyncio.create_task(later())
    await store.wait_for_change(60)  # only the append can end this before the test times out
    assert task.done() or await store.head_position() > 0
    await task


# -- connections and errors ---------------------------------------------------------------


async def test_pooled_connections_are_configured(store: PostgresEventStore) -> None:
    async with store._pool.connection() as conn:
        cur = await conn.execute("SHOW idle_in_transaction_session_timeout")
        assert (await cur.fetchone()) == ("1min",)
        cur = await conn.execute("SHOW TimeZone")
        assert (await cur.fetchone()) == ("UTC",)


async def test_unreachable_database_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await PostgresEventStore.open("postgresql://postgres@127.0.0.1:1/test", pool_timeout=2)


async def test_closed_store_raises_store_unavailable(store: PostgresEventStore) -> None:
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append("a-1", [NewEvent("E")])
    with pytest.raises(StoreUnavailable):
        await store.head_position()
    with pytest.raises(StoreUnavailable):
        async for _ in store.read_all():
            pass
    with pytest.raises(StoreUnavailable):
        async for _ in store.read_stream("a-1"):
            pass


async def test_killed_connections_are_replaced_transparently(pg_url: str, raw: Conn) -> None:
    app = f"chronik_kill_{uuid.uuid4().hex[:8]}"
    async with await PostgresEventStore.open(f"{pg_url}&application_name={app}") as s:
        await asyncio.gather(*(s.append("k-1", [NewEvent("E")]) for _ in range(4)))
        killed = await scalar(
            raw,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (app,),
        )
        assert isinstance(killed, int) and killed >= 1
        await asyncio.sleep(0.1)
        await s.append("k-1", [NewEvent("E")])
        assert await s.stream_version("k-1") == 4
        assert len([e async for e in s.read_all()]) == 5


async def test_driver_errors_never_leak(store: PostgresEventStore, raw: Conn, pg_url: str) -> None:
    await store.append("d-1", [NewEvent("E")])
    await raw.execute(f'DROP TABLE "{schema_of(pg_url)}".events CASCADE')
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.append("d-1", [NewEvent("E")]),
        lambda: store.head_position(),
        lambda: store.stream_version("d-1"),
        lambda: store.stats(),
    ]
    for call in calls:
        with pytest.raises(ChronikError) as info:
            await call()
        assert not isinstance(info.value, psycopg.Error)
        assert isinstance(info.value.__cause__, psycopg.Error)
    with pytest.raises(StoreUnavailable):
        async for _ in store.read_all():
            pass


async def test_failpoint_exception_rolls_the_append_back(store: PostgresEventStore) -> None:
    async def boom() -> None:
        raise RuntimeError("injected")

    store._before_commit = boom
    event = NewEvent("E")
    with pytest.raises(RuntimeError, match="injected"):
        await store.append("f-1", [event])
    store._before_commit = None
    assert await store.stream_version("f-1") is None
    await store.append("f-1", [event], expected_version=NO_STREAM)
    assert [e.event_id async for e in store.read_stream("f-1")] == [event.event_id]


# -- transactions for read models, checkpoints, dead letters, inline projections -----------


def test_portable_named_parameters_become_psycopg_ones() -> None:
    sql, params = pg_support._user_sql(
        "SELECT :a::int, ':b', \"c:d\", $$ :e $$, 5 % 2 -- :f\nWHERE y LIKE 'a%' AND z = :a",
        {"a": 1},
    )
    assert sql == (
        "SELECT %(a)s::int, ':b', \"c:d\", $$ :e $$, 5 %% 2 -- :f\nWHERE y LIKE 'a%%' AND z = %(a)s"
    )
    assert params == {"a": 1}
    assert pg_support._user_sql("SELECT %s", (1,)) == ("SELECT %s", [1])
    assert pg_support._user_sql("SELECT 1 % 2", ()) == ("SELECT 1 % 2", None)


async def test_read_models_live_in_the_store_schema_and_roll_back(
    store: PostgresEventStore, raw: Conn, pg_url: str
) -> None:
    async with store.transaction() as tx:
        assert tx.dialect == "postgresql"
        await tx.execute("CREATE TABLE rm (k TEXT PRIMARY KEY, n INTEGER, doc JSON)")
        await tx.execute(
            "INSERT INTO rm VALUES (:k, :n, :doc) ON CONFLICT (k) DO UPDATE SET n = rm.n + 1",
            {"k": "a", "n": 1, "doc": '{"x": 1}'},
        )
        await tx.set_checkpoint("rm", 10)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.execute("UPDATE rm SET n = 99")
            await tx.set_checkpoint("rm", 20)
            raise RuntimeError("roll back")
    assert await store.query("SELECT k, n, doc FROM rm WHERE k = :k", {"k": "a"}) == [
        ("a", 1, {"x": 1})
    ]
    assert await store.get_checkpoint("rm") == 10
    assert await store.checkpoints() == {"rm": 10}
    await store.append("e-1", [NewEvent("E", {"x": 1})])  # event reads still get raw bytes
    assert [e.raw_data async for e in store.read_all()] == [b'{"x":1}']
    where = await scalar(
        raw, "SELECT table_schema FROM information_schema.tables WHERE table_name = 'rm'"
    )
    assert where == schema_of(pg_url)
    with pytest.raises(psycopg.errors.UndefinedTable):
        await store.query("SELECT * FROM no_such_table")


async def test_a_program_limit_is_the_statements_error_not_an_outage(
    store: PostgresEventStore,
) -> None:
    """Class 54 (here: an index row over PostgreSQL's size limit) fails the same statement
    every time; as StoreUnavailable a worker would retry it for ever, holding its partition."""
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE keyed (k text PRIMARY KEY)")
    huge = uuid.uuid4().hex * 400  # 12.8 kB of incompressible-enough text
    huge = "".join(chr(0x4E00 + (ord(c) * 7919 + i) % 20000) for i, c in enumerate(huge))
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO keyed VALUES (:k)", {"k": huge})
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        await store.query("INSERT INTO keyed VALUES (:k) RETURNING k", {"k": huge})
    assert await store.query("SELECT count(*) FROM keyed") == [(0,)]
    await store.append("after-1", [NewEvent("E", {})])  # the store is fine


async def test_a_statement_timeout_stays_an_outage(store: PostgresEventStore) -> None:
    """57014 is also a lock wait past statement_timeout (a migration holding a lock) or an
    administrator's cancel: temporary, so StoreUnavailable (retried), unlike class 54. As
    the statement's error it stopped a partitioned worker for good (a reviewer's test)."""
    with pytest.raises(StoreUnavailable, match="57014"):
        async with store.transaction() as tx:
            await tx.execute("SET LOCAL statement_timeout = '50ms'")
            await tx.execute("SELECT pg_sleep(1)")
    await store.append("after-1", [NewEvent("E", {})])  # the store is fine


async def test_checkpoint_reads_in_transactions_are_serialised(store: PostgresEventStore) -> None:
    async with store.transaction() as tx:
        await tx.set_checkpoint("sub", 1)
    first_has_lock = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with store.transaction() as tx:
            assert await tx.get_checkpoint("sub") == 1
            first_has_lock.set()
            await release.wait()
            await tx.set_checkpoint("sub", 2)

    async def second() -> int | None:
        await first_has_lock.wait()
        async with store.transaction() as tx:
            return await tx.get_checkpoint("sub")  # waits for first, then sees its value

    task1 = asyncio.create_task(first())
    task2 = asyncio.create_task(second())
    await first_has_lock.wait()
    await asyncio.sleep(0.2)
    assert not task2.done()
    release.set()
    await task1
    assert await task2 == 2


async def test_dead_letters_round_trip(store: PostgresEventStore) -> None:
    await store.append("d-1", [NewEvent("E")])
    (event,) = [e async for e in store.read_all()]
    async with store.transaction() as tx:
        await tx.add_dead_letter("sub", event, "boom", 3)
    async with store.transaction() as tx:
        await tx.add_dead_letter("sub", event, "boom again", 2)
        await tx.set_active_version("p", 2)
    (letter,) = await store.dead_letters("sub")
    assert (letter.event_id, letter.position, letter.error, letter.attempts) == (
        event.event_id,
        event.position,
        "boom again",
        5,
    )
    assert await store.dead_letters("other") == [] and len(await store.dead_letters()) == 1
    assert await store.get_active_version("p") == 2
    async with store.transaction() as tx:
        await tx.delete_dead_letter(letter.id)
        assert await tx.get_active_version("p") == 2
    assert await store.dead_letters() == []


class _Counter:
    """An inline projection counting events per stream; fails on type "Bad"."""

    def accepts(self, event: RecordedEvent) -> bool:
        return event.type != "Ignored"

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        if event.type == "Bad":
            raise ValueError("bad event")
        if event.type == "Clash":
            await tx.execute("INSERT INTO counts VALUES ('same', 1)")
            await tx.execute("INSERT INTO counts VALUES ('same', 1)")  # unique violation
        await tx.execute(
            "INSERT INTO counts VALUES (:s, 1) ON CONFLICT (stream) DO UPDATE SET n = counts.n + 1",
            {"s": event.stream_id},
        )


async def test_inline_projections_commit_or_fail_with_the_append(
    store: PostgresEventStore,
) -> None:
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE counts (stream TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    store.inline_projections.append(_Counter())
    await store.append("a-1", [NewEvent("E"), NewEvent("Ignored"), NewEvent("E")])
    assert await store.query("SELECT stream, n FROM counts") == [("a-1", 2)]
    with pytest.raises(ValueError, match="bad event"):
        await store.append("a-1", [NewEvent("E"), NewEvent("Bad")])
    with pytest.raises(psycopg.errors.UniqueViolation):  # the handler's, not a conflict
        await store.append("a-1", [NewEvent("Clash")], expected_version=2)
    assert await store.stream_version("a-1") == 2
    assert await store.query("SELECT stream, n FROM counts") == [("a-1", 2)]
    batch = [NewEvent("E")]
    first = await store.append("a-1", batch, expected_version=2)
    assert await store.append("a-1", batch, expected_version=2) == first  # idempotent
    assert await store.query("SELECT stream, n FROM counts") == [("a-1", 3)]


async def test_count_events_uses_the_read_all_horizon(
    store: PostgresEventStore, pg_url: str
) -> None:
    await store.append("c-1", [NewEvent("A"), NewEvent("B")])
    conninfo, _ = split_schema(pg_url)
    async with await psycopg.AsyncConnection.connect(conninfo) as other:
        await other.execute("SELECT pg_current_xact_id()")  # an open transaction with an xid
        await store.append("c-1", [NewEvent("A")])
        assert await store.count_events() == 2
        assert await store.count_events(types=["A"]) == 1
        assert await store.count_events(categories=["x"]) == 0
        await other.rollback()
    assert await store.count_events() == 3
    (first,) = [e.position async for e in store.read_all(limit=1)]
    assert await store.count_events(after=first) == 2


# -- query plans of the read path -------------------------------------------------------------


async def _generic_plan(store: PostgresEventStore, sql: str) -> str:
    """The plan a pooled connection (plan_cache_mode = force_generic_plan) runs ``sql`` with:
    PREPARE + EXPLAIN EXECUTE (a plain EXPLAIN plans with the values, a custom plan)."""
    numbered = (
        sql.replace("%(after)s", "$1")
        .replace("%(page)s", "$2")
        .replace("%(categories)s", "$3")
        .replace("%(types)s", "$4")
        .replace("%(window)s", "$5")
    )

    async def op(conn: Any) -> str:
        await conn.execute(
            f"PREPARE plan_probe (bigint, bigint, text[], text[], bigint) AS {numbered}"
        )
        try:
            cur = await conn.execute(
                "EXPLAIN EXECUTE plan_probe (0, 500, ARRAY['order'], ARRAY['Placed'], 1000)"
            )
            return "\n".join(str(r[0]) for r in await cur.fetchall())
        finally:
            await conn.execute("DEALLOCATE plan_probe")

    return await store._run(op)


async def test_read_path_plans_walk_the_primary_key_without_sorting(
    store: PostgresEventStore,
) -> None:
    # A catch-up page must walk the primary key in position order and stop early. A bitmap
    # scan + sort reads the whole tail above the cursor for every page (quadratic catch-up):
    # generic plans chose it for filtered reads (they cannot know how dense a category or a
    # type is), and custom plans chose it on tables with stale statistics.
    for n in range(40):
        await store.append(
            f"{'order' if n % 4 else 'invoice'}-{n}",
            [NewEvent("Placed" if k % 3 else "Paid", {"k": k}) for k in range(250)],
        )
    sql = store._sql
    some = ["x"]
    statements = [sql.read_all(categories=None, types=None), sql.read_page()] + [
        sql.read_window(categories=c, types=t)
        for c, t in ((some, None), (None, some), (some, some))
    ]
    for statement in statements:
        plan = await _generic_plan(store, statement)
        assert "Bitmap" not in plan and "Seq Scan on events" not in plan, f"{statement}\n{plan}"
        assert "Index Scan using events_pkey on events " in plan, plan
        lines = plan.splitlines()
        for i, line in enumerate(lines):
            if "Sort  (" in line:  # only the window (at most 1,000 rows) may be sorted
                scan = next(ln for ln in lines[i + 1 :] if "Scan" in ln)
                assert "CTE Scan on w" in scan, f"{statement}\n{plan}"


async def test_filtered_reads_walk_windows_and_miss_nothing(store: PostgresEventStore) -> None:
    # a rare type among many others: windows (1,000 events) without a match in between
    for n in range(6):
        for _ in range(2):
            await store.append("noise-1", [NewEvent("Noise", {}) for _ in range(600)])
        await store.append(f"rare-{n}", [NewEvent("Rare", {"n": n})])
    got = [e async for e in store.read_all(types=["Rare"])]
    assert [e.data["n"] for e in got] == list(range(6))
    got = [e async for e in store.read_all(categories=["rare"], limit=4)]
    assert [e.data["n"] for e in got] == list(range(4))
    head = await store.head_position()
    events, caught_up_to, more = await store.read_page(after=0, limit=500, types=["Rare"])
    assert more and not events and caught_up_to < head  # one window walked, none matched
    seen: list[int] = []
    after = 0
    while True:
        events, after, more = await store.read_page(after=after, limit=2, types=["Rare"])
        seen += [e.data["n"] for e in events]
        if not more:
            break
    assert seen == list(range(6)) and after == head


async def test_read_page_is_head_and_page_from_one_snapshot(store: PostgresEventStore) -> None:
    assert await store.read_page(after=0, limit=10) == ([], 0, False)
    await store.append("order-1", [NewEvent("Placed", {}), NewEvent("Paid", {})])
    await store.append("invoice-1", [NewEvent("Sent", {})])
    head = await store.head_position()
    events, caught_up_to, more = await store.read_page(after=0, limit=10, categories=["order"])
    assert [e.type for e in events] == ["Placed", "Paid"]
    assert (caught_up_to, more) == (head, False)  # complete up to the head, matching or not
    events, caught_up_to, more = await store.read_page(after=0, limit=1, types=["Paid", "Sent"])
    assert [e.type for e in events] == ["Paid"] and more and caught_up_to == events[0].position
    events, caught_up_to, more = await store.read_page(after=0, limit=2)
    assert len(events) == 2 and more and caught_up_to == events[1].position
    assert await store.read_page(after=head, limit=10) == ([], head, False)
    assert await store.read_page(after=0, limit=0, types=["Paid"]) == ([], 0, False)
