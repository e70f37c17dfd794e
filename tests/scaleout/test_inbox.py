"""The inbox partitioned by subject (chronik.scaleout.inbox): the relay puts a partition
token in each subject, N processes share the inbox's partitions through leases.

- 3 inbox processes, one killed with SIGKILL 10 times and nats-server itself 3 times while
  events are relayed: every message took effect once, each stream's messages in version
  order, and more than one process did the work;
- a stale owner (its lease taken over) has its message's effects rolled back;
- a stream holding subjects no partition takes is refused at start, naming the subject;
- in one process on either backend: everything once, in order, one consumer per partition;
- bad arguments are typed errors; an inbox's group cannot be resized.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chronik
from chronik.errors import InvalidArgument, InvalidSubject, LeaseLost
from chronik.nats import (
    MAX_KEY_BYTES,
    InboxMessage,
    OutboxRelay,
    dedupe_key,
    ensure_stream,
    stored_payload,
    stream_epoch,
    subject_for,
)
from chronik.scaleout import Leases, resize, workers_status
from chronik.scaleout.inbox import (
    UNORDERED_IN_FLIGHT,
    InboxPartition,
    PartitionedInbox,
    check_subject_partitions,
    inbox_group,
    overlaps,
)
from chronik.scaleout.partitions import partition_of
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx
from tests.conftest import NATS_URL, require_service
from tests.scaleout.cluster import ROOT
from tests.scaleout.inbox_worker import EFFECTS, INBOX, effect
from tests.scaleout.test_cross_service import PrivateNats
from tests.scaleout.test_leases import until

pytestmark = pytest.mark.nats


def _serial(store: EventStore) -> str:
    return "BIGSERIAL" if require(store, SqlStore).dialect == "postgresql" else "INTEGER"


async def _effects(store: EventStore) -> list[tuple[Any, ...]]:
    return await require(store, SqlStore).query(
        "SELECT seq, message_id, stream_id, position, member FROM inbox_effects ORDER BY seq"
    )


async def _relay_events(
    store: EventStore, nats_url: str, stream: str, partitions: int
) -> OutboxRelay:
    relay = OutboxRelay(
        store, nats_url, name=stream, stream=stream, prefix=stream, categories=["acct"],
        subject_partitions=partitions, batch_size=13, poll_interval=0.05,
    )  # fmt: skip
    await relay.start()
    return relay


def check_effects(rows: list[tuple[Any, ...]], ids: dict[str, tuple[str, int]]) -> None:
    """Every event id applied exactly once, each stream's in position order."""
    applied = [row[1] for row in rows]
    twice = {m for m in applied if applied.count(m) > 1}
    assert not twice, f"applied twice: {sorted(twice)[:5]}"
    assert set(applied) == set(ids), f"lost: {sorted(set(ids) - set(applied))[:5]}"
    by_stream: dict[str, list[int]] = defaultdict(list)
    for _, _, stream_id, position, _ in rows:
        by_stream[stream_id].append(position)
    for stream_id, positions in by_stream.items():
        assert positions == sorted(positions), f"{stream_id} applied out of order: {positions}"


def test_the_check_catches_a_loss_a_duplicate_and_a_reorder() -> None:
    ids = {"a": ("s-1", 1), "b": ("s-1", 2), "c": ("s-2", 3)}
    good = [(1, "a", "s-1", 1, "m"), (2, "c", "s-2", 3, "m"), (3, "b", "s-1", 2, "m")]
    check_effects(good, ids)
    with pytest.raises(AssertionError, match="lost"):
        check_effects(good[:2], ids)
    with pytest.raises(AssertionError, match="twice"):
        check_effects([*good, (4, "a", "s-1", 1, "m")], ids)
    with pytest.raises(AssertionError, match="out of order"):
        check_effects([good[2], good[1], good[0]], ids)


# -- processes: kill -9 of inbox members and of nats-server ------------------------------------


def _member(
    url: str, nats_url: str, stream: str, member: str, log: Path
) -> subprocess.Popen[bytes]:
    return _process(log, "tests.scaleout.inbox_worker", url, nats_url, stream, "8", "1.0", member)


def _relay(url: str, nats_url: str, stream: str, log: Path) -> subprocess.Popen[bytes]:
    """A partitioned relay (2 partitions, by stream) putting 8 subject partition tokens."""
    args = (url, "2", "1.0", "relay", "13", nats_url, stream)
    return _process(log, "tests.scaleout.relay_worker", *args, subject_partitions=8)


def _process(
    log: Path, module: str, *args: str, subject_partitions: int | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    if subject_partitions is not None:
        env["CHRONIK_SO_SUBJECT_PARTITIONS"] = str(subject_partitions)
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


@pytest.mark.postgres
async def test_three_members_inbox_kill9_x10_nats_kill9_x3_once_and_in_order(
    pg_url: str, tmp_path: Path
) -> None:
    import nats

    server = PrivateNats(tmp_path)
    server.start()
    stream = f"so_{uuid.uuid4().hex[:8]}"
    rng = random.Random(17)
    log = tmp_path / "members.log"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        nc = await nats.connect(server.url)
        await ensure_stream(nc.jetstream(), stream, [f"{stream}.>"])
        await nc.close()
        async with await chronik.connect(pg_url) as store:
            async with store.transaction() as tx:
                await tx.execute(EFFECTS.format(serial=_serial(store)))
            procs["relay"] = _relay(pg_url, server.url, stream, log)
            for m in ("m0", "m1", "m2"):
                procs[m] = _member(pg_url, server.url, stream, m, log)
            appended = 0
            for cycle in range(10):
                for k in range(24):
                    await store.append(f"acct-{k % 12}", [chronik.NewEvent("Added", {"n": k})])
                    appended += 1
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                victim = rng.choice(["m0", "m1", "m2"])
                procs[victim].kill()  # kill -9 of an inbox member, mid-stream
                procs[victim].wait()
                if cycle in (2, 5, 8):  # kill -9 of nats-server itself, then back
                    server.kill9()
                    await asyncio.sleep(rng.uniform(0.1, 0.5))
                    server.start()
                procs[victim] = _member(pg_url, server.url, stream, victim, log)

            async def all_applied() -> bool:
                rows = await require(store, SqlStore).query(
                    "SELECT count(DISTINCT message_id) FROM inbox_effects"
                )
                return int(rows[0][0]) >= appended

            await until(all_applied, "every message applied", timeout=180)
            await asyncio.sleep(1.0)  # a late duplicate would show now
            ids = {str(e.event_id): (e.stream_id, e.position)
                   async for e in store.read_all(categories=["acct"])}  # fmt: skip
            assert len(ids) == appended
            rows = await _effects(store)
            check_effects(rows, ids)
            assert len({row[4] for row in rows}) >= 2, "one process did all the work"
            sql = require(store, SqlStore)
            assert await sql.query("SELECT message_id FROM inbox_dead_letters") == []
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in procs.values():
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(-9)
        server.stop()
    assert set(codes) <= {0}, log.read_text()[-3000:]


# -- fencing ----------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_stale_owners_message_is_rolled_back_and_the_owners_applies(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as store:
        async with store.transaction() as tx:
            await tx.execute(EFFECTS.format(serial="BIGSERIAL"))
        group = inbox_group("fenced")
        old = Leases(store, group, 2, member="old", ttl=0.3)
        await old.join()
        stale = await old.acquire(0)
        assert stale is not None
        new = Leases(store, group, 2, member="new", ttl=5.0)
        await new.join()

        async def taken() -> bool:
            return await new.acquire(0) is not None

        await until(taken, "takeover after the old lease expired")
        (lease,) = [x for x in await new.leases() if x.partition == 0]

        def partition(leases: Leases, epoch: int) -> InboxPartition:
            return InboxPartition(
                store, NATS_URL, name="fenced", stream="S", prefix="s", leases=leases,
                partition=0, epoch=epoch, handler=effect,
            )  # fmt: skip

        message = InboxMessage(
            "m-1", "s.0.acct.Added", "Added", b"{}",
            {"Chronik-Stream-Id": "acct-1", "Chronik-Position": "1"},
        )  # fmt: skip
        with pytest.raises(LeaseLost):
            await partition(old, stale).process(message)
        sql = require(store, SqlStore)
        assert await _effects(store) == []
        assert await sql.query("SELECT message_id FROM processed_messages") == []
        # the control: the current owner applies it (once)
        assert await partition(new, lease.epoch).process(message) is True
        assert await partition(new, lease.epoch).process(message) is False
        assert [row[1] for row in await _effects(store)] == ["m-1"]


# -- one process, either backend ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    async with await chronik.connect(request.getfixturevalue(name)) as s:
        async with s.transaction() as tx:
            await tx.execute(EFFECTS.format(serial=_serial(s)))
        yield s


@pytest.fixture
def nats_url() -> str:
    require_service("NATS", NATS_URL)
    return NATS_URL


@pytest.fixture
async def jetstream(nats_url: str) -> AsyncIterator[tuple[Any, str]]:
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"so_{uuid.uuid4().hex[:8]}"
    await ensure_stream(js, stream, [f"{stream}.>"])
    try:
        yield js, stream
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def test_one_process_applies_every_message_once_in_order(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    js, stream = jetstream
    events = [(f"acct-{k % 6}", k) for k in range(60)]
    for stream_id, k in events:
        await store.append(stream_id, [chronik.NewEvent("Added", {"n": k})])
    relay = await _relay_events(store, nats_url, stream, 4)
    inbox = PartitionedInbox(
        store, nats_url, name=INBOX, stream=stream, prefix=stream, partitions=4, handler=effect,
        member="solo", lease_ttl=2.0, batch_size=7, fetch_timeout=0.1,
    )  # fmt: skip
    try:
        async with inbox:

            async def done() -> bool:
                return len(await _effects(store)) >= len(events)

            await until(done, "every message applied", timeout=60)
            assert sorted(inbox.owned()) == [0, 1, 2, 3]
            (status,) = await workers_status(store, inbox_group(INBOX))
            assert [(p.owner, p.lag) for p in status.partitions] == [("solo", None)] * 4
    finally:
        await relay.stop()
    ids = {str(e.event_id): (e.stream_id, e.position)
           async for e in store.read_all(categories=["acct"])}  # fmt: skip
    check_effects(await _effects(store), ids)
    names = sorted([c.durable_name or c.name async for c in _consumers(js, stream)])
    assert names == [f"{INBOX}_p{p}of4" for p in range(4)]
    # the subjects carry the stream's partition token
    info = await js.stream_info(stream, subjects_filter=f"{stream}.>")
    tokens = {s.split(".")[1] for s in info.state.subjects}
    assert tokens <= {"0", "1", "2", "3"} and len(tokens) > 1


async def _consumers(js: Any, stream: str) -> AsyncIterator[Any]:
    for consumer in await js.consumers_info(stream):
        yield consumer.config


async def test_a_stream_with_subjects_no_partition_takes_is_refused(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    js, stream = jetstream
    await js.publish(subject_for(stream, "acct", "Added", 2), b"{}", stream=stream)
    await check_subject_partitions(nats_url, stream, stream, 4)  # token 2 of 4: fine
    for subject in (f"{stream}.acct.Added", f"{stream}.7.acct.Added", f"{stream}.02.acct.Added"):
        await js.publish(subject, b"{}", stream=stream)
        with pytest.raises(InvalidArgument, match=subject.replace(".", r"\.")):
            await check_subject_partitions(nats_url, stream, stream, 4)
        await js.purge_stream(stream, subject=subject)
    await js.publish(f"{stream}.acct.Added", b"{}", stream=stream)
    inbox = PartitionedInbox(
        store, nats_url, name=INBOX, stream=stream, prefix=stream, partitions=4, handler=effect
    )
    with pytest.raises(InvalidArgument, match="no partition of 4 takes"):
        await inbox.start()
    assert await _effects(store) == []


# -- hostile arguments --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(max_size=12),
    prefix=st.text(max_size=12),
    partitions=st.one_of(st.integers(-3, 2000), st.sampled_from([True, 2.0, "8", None])),
)
def test_bad_names_prefixes_and_counts_are_typed_errors(
    name: str, prefix: str, partitions: object
) -> None:
    from chronik.store.memory import MemoryEventStore

    async def handler(message: InboxMessage, tx: Any) -> None:
        pass

    try:
        PartitionedInbox(
            MemoryEventStore(), NATS_URL, name=name, stream="S", prefix=prefix,
            partitions=partitions, handler=handler,  # type: ignore[arg-type]
        )  # fmt: skip
    except (InvalidSubject, InvalidArgument):
        return
    except Exception as exc:  # the memory store has no SQL: only after the arguments passed
        assert type(exc).__name__ == "MissingCapability", repr(exc)
    assert name and prefix and type(partitions) is int and 1 <= partitions <= 1024


def test_relay_subject_partitions_are_checked() -> None:
    from chronik.store.memory import MemoryEventStore

    for bad in (0, -1, 1025, True, "4"):
        with pytest.raises(InvalidArgument):
            OutboxRelay(MemoryEventStore(), NATS_URL, name="r", stream="S", prefix="p",
                        subject_partitions=bad)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(InvalidArgument, match="needs a prefix"):
        OutboxRelay(MemoryEventStore(), NATS_URL, name="r", stream="S", prefix="",
                    subject_partitions=4)  # fmt: skip
    assert subject_for("a.b", "acct", "Added", 3) == "a.b.3.acct.Added"


@pytest.mark.postgres
async def test_an_inbox_group_cannot_be_resized(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as store:
        await Leases(store, inbox_group("x"), 4, member="m").join()
        with pytest.raises(InvalidArgument, match="is an inbox"):
            await resize(store, inbox_group("x"), 8)
        group = await Leases(store, inbox_group("x"), 4, member="m").group()
        assert (group.partitions, group.resize_to) == (4, None)


async def test_a_broker_down_at_start_is_waited_for_not_fatal(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The inbox starts while nats-server is down; once it is up, every message arrives."""
    broker = PrivateNats(tmp_path)  # not started yet
    async with await chronik.connect(sqlite_url) as store:
        async with require(store, SqlStore).transaction() as tx:
            await tx.execute(EFFECTS.format(serial=_serial(store)))
        for k in range(20):
            await store.append(f"acct-{k % 4}", [chronik.NewEvent("Added", {"n": k})])
        inbox = PartitionedInbox(
            store, broker.url, name=INBOX, stream="S", prefix="s", partitions=2,
            handler=effect, member="solo", lease_ttl=2.0, fetch_timeout=0.1,
        )  # fmt: skip
        try:
            async with inbox:
                await until(lambda: _true(len(inbox.owned()) == 2), "both partitions owned")
                await asyncio.sleep(1.0)
                assert inbox.failure() is None and await _effects(store) == []
                broker.start()
                import nats

                nc = await nats.connect(broker.url)
                await ensure_stream(nc.jetstream(), "S", ["s.>"])
                await nc.close()
                relay = OutboxRelay(
                    store, broker.url, name="S", stream="S", prefix="s", categories=["acct"],
                    subject_partitions=2, poll_interval=0.05,
                )  # fmt: skip
                await relay.start()
                try:

                    async def done() -> bool:
                        return len(await _effects(store)) >= 20

                    await until(done, "every message applied after the broker came up", 60)
                finally:
                    await relay.stop()
        finally:
            broker.stop()
        ids = {str(e.event_id): (e.stream_id, e.position)
               async for e in store.read_all(categories=["acct"])}  # fmt: skip
        check_effects(await _effects(store), ids)


async def _true(value: bool) -> bool:
    return value


# -- found by a reviewer trying to break it ------------------------------------------------


@given(st.text(max_size=3000))
def test_a_dedupe_key_is_short_storable_text_and_stable(message_id: str) -> None:
    key = dedupe_key(message_id)
    assert key == dedupe_key(message_id)
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES and "\x00" not in key
    ordinary = all(c != "\x00" and not 0xD800 <= ord(c) <= 0xDFFF for c in message_id)
    if ordinary and len(message_id.encode("utf-8")) <= 64:
        assert key == message_id  # ordinary ids are kept as they are


@given(st.binary(max_size=300))
def test_a_stored_payload_is_text_without_nul_and_gives_the_bytes_back(data: bytes) -> None:
    import base64

    stored = stored_payload(data)
    assert "\x00" not in stored
    if stored.startswith("base64:"):
        assert base64.b64decode(stored.removeprefix("base64:")) == data
    else:
        assert stored.encode("utf-8") == data


async def _publish(js: Any, stream: str, stream_id: str, position: int, **kw: Any) -> None:
    headers = {"Nats-Msg-Id": kw.pop("msg_id", str(uuid.uuid4())),
               "Chronik-Stream-Id": stream_id, "Chronik-Position": str(position)}  # fmt: skip
    if headers["Nats-Msg-Id"] is None:  # a publisher that sets no message id
        del headers["Nats-Msg-Id"]
    token = partition_of(stream_id, 2)
    await js.publish(f"{stream}.{token}.acct.Added", kw.pop("data", b"{}"), stream=stream,
                     headers=headers)  # fmt: skip


async def failing_on_fail(message: InboxMessage, tx: Tx) -> None:
    if message.data.startswith(b"FAIL"):
        raise ValueError("this message always fails")
    if message.data.startswith(b"HUGE"):  # over PostgreSQL's index row limit: class 54
        key = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(12000))
        await tx.execute("INSERT INTO keyed VALUES (:k)", {"k": key})
    await effect(message, tx)


def _solo(store: EventStore, nats_url: str, stream: str, partitions: int = 2, **kw: Any) -> Any:
    return PartitionedInbox(
        store, nats_url, name=INBOX, stream=stream, prefix=stream, partitions=partitions,
        handler=failing_on_fail, member="solo", lease_ttl=2.0, fetch_timeout=0.1, **kw,
    )  # fmt: skip


async def test_hostile_ids_and_binary_poison_neither_wedge_nor_vanish(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    js, stream = jetstream
    await _publish(js, stream, "acct-1", 0, msg_id=os.urandom(4000).hex())  # 8 kB id
    await _publish(js, stream, "acct-1", 1, data=b"FAIL\x00\xff binary")  # poison, NUL
    await _publish(js, stream, "acct-1", 2)
    async with _solo(store, nats_url, stream, max_deliver=2):

        async def done() -> bool:
            dead = await require(store, SqlStore).query(
                "SELECT data FROM inbox_dead_letters WHERE consumer = :c", {"c": INBOX}
            )
            return len(await _effects(store)) >= 2 and len(dead) == 1

        await until(done, "the long id applied, the poison dead-lettered, the next applied")
    rows = await _effects(store)
    assert [r[3] for r in rows] == [0, 2] and rows[0][1].startswith("sha256:")
    (data,) = (await require(store, SqlStore).query("SELECT data FROM inbox_dead_letters"))[0]
    assert data.startswith("base64:")


@pytest.mark.postgres
async def test_a_handler_hitting_a_program_limit_is_dead_lettered_not_retried_for_ever(
    pg_url: str, jetstream: tuple[Any, str], nats_url: str
) -> None:
    """A class-54 error of the handler's SQL is the message's failure (max_deliver, then a
    dead letter), not the store being down (retried holding the partition, for ever)."""
    js, stream = jetstream
    async with await chronik.connect(pg_url) as store:
        async with store.transaction() as tx:
            await tx.execute(EFFECTS.format(serial="BIGSERIAL"))
            await tx.execute("CREATE TABLE keyed (k text PRIMARY KEY)")
        await _publish(js, stream, "acct-1", 0, data=b"HUGE")
        await _publish(js, stream, "acct-1", 1)
        async with _solo(store, nats_url, stream, max_deliver=2):

            async def done() -> bool:
                dead = await require(store, SqlStore).query(
                    "SELECT error FROM inbox_dead_letters WHERE consumer = :c", {"c": INBOX}
                )
                return len(await _effects(store)) == 1 and len(dead) == 1

            await until(done, "the message dead-lettered and the next one applied")
        ((error,),) = await require(store, SqlStore).query("SELECT error FROM inbox_dead_letters")
        assert "ProgramLimitExceeded" in error


async def test_changed_consumer_settings_apply_on_restart(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    js, stream = jetstream
    async with _solo(store, nats_url, stream, ordered=False, max_deliver=2, ack_wait=30.0):
        await asyncio.sleep(0.5)
    async with _solo(store, nats_url, stream, max_deliver=5, ack_wait=2.0) as inbox:
        await until(lambda: _true(len(inbox.owned()) == 2), "both partitions owned")
        await asyncio.sleep(0.5)
    for p in range(2):
        info = await js.consumer_info(stream, f"{INBOX}_p{p}of2")
        assert info.config.max_deliver == 6 and info.config.max_ack_pending == 1
        assert abs(info.config.ack_wait - 2.0) < 1e-3
    async with _solo(store, nats_url, stream, ordered=False) as inbox:  # and back
        await until(lambda: _true(len(inbox.owned()) == 2), "both partitions owned")
        await asyncio.sleep(0.5)
    for p in range(2):
        info = await js.consumer_info(stream, f"{INBOX}_p{p}of2")
        assert info.config.max_ack_pending == UNORDERED_IN_FLIGHT


def test_a_stream_epoch_is_fixed_text_whatever_nats_py_gives() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    class Info:
        def __init__(self, created: object) -> None:
            self.created = created

    at = datetime(2026, 12, 6, 3, 13, 41, 799247, tzinfo=UTC)
    assert stream_epoch(Info(at)) == "20261206T031341.799247Z"
    assert stream_epoch(Info(at.astimezone(timezone(timedelta(hours=2))))) == stream_epoch(Info(at))
    assert stream_epoch(Info("2026-12-06T03:13:41.799247Z")) == "20261206T031341.799247Z"
    assert stream_epoch(object()) == ""  # nats-py 2.6: no created; the id stays STREAM:SEQ


async def test_restarting_under_one_name_with_another_count_is_refused(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    _, stream = jetstream
    async with _solo(store, nats_url, stream, partitions=2):
        pass
    with pytest.raises(InvalidArgument, match="created with 2 partitions, not 4"):
        await _solo(store, nats_url, stream, partitions=4).start()


# -- misconfiguration: a typo in the prefix, a stream not there yet ----------------------------


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or token not in ("*", s[i]):
            return False
    return len(s) == len(p)


def test_overlaps_examples() -> None:
    assert overlaps("orders.>", "orders.>") and overlaps("*.3.>", "orders.>")
    assert overlaps("orders.*.order.Placed", "orders.>") and overlaps(">", "a.b.>")
    assert not overlaps("ordres.>", "orders.>") and not overlaps("orders", "orders.>")
    assert not overlaps("orders.*", "orders.*.x")
    assert not overlaps("orders.*", "orders.*.>")  # two tokens: no room for a partition
    assert overlaps("orders.*", "orders.>") and overlaps("orders.a.>", "orders.*.>")


_filters = st.lists(st.sampled_from(["a", "b", "*", ">"]), min_size=1, max_size=4).filter(
    lambda t: ">" not in t[:-1]
)


@given(_filters, _filters, st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=5))
def test_overlaps_when_a_subject_matches_both(x: list[str], y: list[str], s: list[str]) -> None:
    a, b, subject = ".".join(x), ".".join(y), ".".join(s)
    if _matches(a, subject) and _matches(b, subject):
        assert overlaps(a, b)
    if not overlaps(a, b):  # no witness among the concrete subjects of both
        assert not (_matches(a, subject) and _matches(b, subject))


async def test_a_prefix_outside_the_streams_subjects_is_refused(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    _, stream = jetstream
    inbox = PartitionedInbox(
        store, nats_url, name=INBOX, stream=stream, prefix=f"{stream}x", partitions=2,
        handler=effect, member="solo",
    )  # fmt: skip
    with pytest.raises(InvalidArgument, match="none under"):
        await inbox.start()


async def test_a_stream_created_after_start_is_waited_for_with_a_hint(
    store: EventStore, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import nats

    stream = f"so_{uuid.uuid4().hex[:8]}"
    async with _solo(store, nats_url, stream) as inbox:
        await until(lambda: _true(len(inbox.owned()) == 2), "both partitions owned")

        async def hinted() -> bool:
            return "does not exist (yet)" in caplog.text

        await until(hinted, "a log line naming the missing stream")
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_stream(js, stream, [f"{stream}.>"])
            await _publish(js, stream, "acct-1", 0)

            async def applied() -> bool:
                return len(await _effects(store)) == 1

            await until(applied, "the message applied once the stream exists")
        finally:
            await js.delete_stream(stream)
            await nc.close()


async def test_without_msg_ids_a_recreated_stream_is_not_taken_for_duplicates(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str
) -> None:
    """Sequences start at 1 again in a stream created again under its name; the inbox's
    fallback id (no Nats-Msg-Id) must not take its messages for ones already processed."""
    js, stream = jetstream

    async def applied(n: int) -> None:
        async def enough() -> bool:
            return len(await _effects(store)) >= n

        await until(enough, f"{n} message(s) applied")

    await _publish(js, stream, "acct-1", 0, msg_id=None)
    async with _solo(store, nats_url, stream):
        await applied(1)
    await js.delete_stream(stream)
    await ensure_stream(js, stream, [f"{stream}.>"])
    await _publish(js, stream, "acct-2", 0, msg_id=None)  # sequence 1 again
    async with _solo(store, nats_url, stream):
        await applied(2)
    rows = await _effects(store)
    assert [r[2] for r in rows] == ["acct-1", "acct-2"]
    assert rows[0][1] != rows[1][1] and rows[0][1].startswith(f"{stream}@")


async def test_subjects_no_partition_takes_published_after_start_are_reported(
    store: EventStore, jetstream: tuple[Any, str], nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    js, stream = jetstream
    inbox = _solo(store, nats_url, stream, partitions=2)
    inbox.recheck_every = 0.2
    async with inbox:
        await until(lambda: _true(len(inbox.owned()) == 2), "both partitions owned")
        await js.publish(f"{stream}.7.acct.Added", b"{}", stream=stream)  # a relay with 8

        async def reported() -> bool:
            return "which no partition of 2 takes" in caplog.text

        await until(reported, "an error naming the subject no partition takes")
        assert f"{stream}.7.acct.Added" in (inbox.last_error or "")
        await js.purge_stream(stream, subject=f"{stream}.7.acct.Added")

        async def cleared() -> bool:
            return inbox.last_error is None

        await until(cleared, "the report gone with the subject")


def test_workers_status_shows_an_inbox_lag_from_jetstream(
    sqlite_url: str, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import nats

    from chronik.cli.main import main

    stream = f"so_{uuid.uuid4().hex[:8]}"

    async def prepare() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_stream(js, stream, [f"{stream}.>"])
        async with await chronik.connect(sqlite_url) as store:
            async with store.transaction() as tx:
                await tx.execute(EFFECTS.format(serial="INTEGER"))
            async with _solo(store, nats_url, stream) as inbox:  # makes both consumers
                await until(lambda: _true(len(inbox.owned()) == 2), "both partitions owned")
                await asyncio.sleep(0.3)
        for n in range(3):  # while no member runs
            await _publish(js, stream, "acct-1", n)
        await nc.close()

    async def cleanup() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(prepare())
    try:
        base = ["--store", sqlite_url, "workers", "status", f"inbox:{INBOX}", "--json"]
        assert main([*base, "--nats", nats_url, "--stream", stream]) == 0
        (group,) = json.loads(capsys.readouterr().out)
        lag = {p["partition"]: p["lag"] for p in group["partitions"]}
        assert lag == {partition_of("acct-1", 2): 3, 1 - partition_of("acct-1", 2): 0}
        assert main(base) == 0  # without the broker: no lag known
        (group,) = json.loads(capsys.readouterr().out)
        assert [p["lag"] for p in group["partitions"]] == [None, None]
        assert main([*base, "--nats", nats_url]) == 1
        assert "--stream" in capsys.readouterr().err
        # the broker cannot say: the store's side is still shown, with a line saying why
        for bad in (["--nats", "nats://127.0.0.1:1", "--stream", stream],
                    ["--nats", nats_url, "--stream", "NOPE"]):  # fmt: skip
            assert main([*base, *bad]) == 0
            captured = capsys.readouterr()
            (group,) = json.loads(captured.out)
            assert [p["lag"] for p in group["partitions"]] == [None, None]
            assert "lag unknown" in captured.err
    finally:
        asyncio.run(cleanup())
