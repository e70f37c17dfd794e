"""Consumer groups: 4 member processes, 100 streams x 20 events (x 100 behind `make soak`),
random kill -9 of members:
nothing lost, each effect once (acked with it), pinned keeps per-stream order, parked count
equals the injected poison count; and the ack / nack / park / skip / replay rules in one
process, with typed errors for bad arguments."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

import chronik
from chronik.errors import GroupNotFound, InvalidArgument
from chronik.scaleout.groups import ConsumerGroup
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore
from tests.scaleout.cluster import ROOT
from tests.scaleout.test_leases import until

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


def _member(url: str, group: str, strategy: str, member: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.scaleout.group_member", url, group, strategy, member],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)])),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "per_stream"),
    [
        ("pinned", 20),
        ("round_robin", 30),
        pytest.param("pinned", 100, marks=pytest.mark.soak),  # the 100 x 100
        pytest.param("round_robin", 100, marks=pytest.mark.soak),
    ],
)
async def test_four_members_with_kills_lose_nothing_and_park_the_poison(
    pg_url: str, store: EventStore, strategy: str, per_stream: int
) -> None:
    rng = random.Random(11)
    sql = require(store, SqlStore)
    async with store.transaction() as tx:
        await tx.execute(
            "CREATE TABLE cg_effects (seq BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, "
            "stream_id TEXT NOT NULL, version BIGINT NOT NULL, member TEXT NOT NULL)"
        )
    poison: set[tuple[int, int]] = {(rng.randrange(100), rng.randrange(per_stream))
                                     for _ in range(25)}  # fmt: skip
    for s in range(100):
        await store.append(f"cg-{s}", [
            chronik.NewEvent("Job", {"poison": (s, v) in poison}) for v in range(per_stream)
        ])  # fmt: skip
    group = ConsumerGroup(store, "workers", categories=["cg"], strategy=strategy,  # type: ignore[arg-type]
                          max_retries=3, message_timeout=1.0, buffer=400)  # fmt: skip
    await group.create()
    members = {f"g{i}": _member(pg_url, "workers", strategy, f"g{i}") for i in range(4)}
    wanted = 100 * per_stream - len(poison)
    try:
        for _ in range(6):  # random kill -9 of members while they work
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            victim = rng.choice(sorted(members))
            members[victim].kill()
            members[victim].wait()
            members[victim] = _member(pg_url, "workers", strategy, victim)

        async def done() -> bool:
            info = await group.info()
            effects = (await sql.query("SELECT count(*) FROM cg_effects"))[0][0]
            return bool(effects >= wanted and info["parked"] >= len(poison))

        await until(done, "every message handled or parked", timeout=120)
    finally:
        for proc in members.values():
            proc.terminate()
        for proc in members.values():
            proc.wait(30)
    events = {str(e.event_id): (e.stream_id, e.version)
              async for e in store.read_all(categories=["cg"])}  # fmt: skip
    rows = await sql.query("SELECT event_id, stream_id, version FROM cg_effects ORDER BY seq")
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "a message took effect twice"
    expected = {i for i, (s, v) in events.items() if (int(s[3:]), v) not in poison}
    assert set(ids) == expected, "a message was lost"
    parked = await group.parked()
    assert len(parked) == len(poison)
    assert {(int(m.stream_id[3:]), m.version) for m in parked} == poison
    assert all(m.attempts == 3 for m in parked)
    if strategy == "pinned":
        last: dict[str, int] = {}
        for _, stream, version in rows:
            assert version > last.get(stream, -1), f"{stream}: {version} after {last[stream]}"
            last[stream] = version
    info = await group.info()
    assert (info["pending"], info["in_flight"]) == (0, 0)


async def test_ack_nack_park_skip_replay_and_timeout(store: EventStore) -> None:
    for v in range(4):
        await store.append("cg-1", [chronik.NewEvent("Job", {"v": v})])
    group = ConsumerGroup(store, "one", categories=["cg"], strategy="pinned", max_retries=2,
                          message_timeout=0.3)  # fmt: skip
    await group.create()
    (m0,) = await group.receive("a", limit=10)  # pinned: one of the stream at a time
    assert (m0.version, m0.attempts) == (0, 1)
    assert await group.receive("b") == []
    await group.nack(m0, "retry")
    (again,) = await group.receive("b")
    assert (again.version, again.attempts) == (0, 2)
    await group.nack(again, "retry")  # second delivery failed: max_retries reached
    assert [m.version for m in await group.parked()] == [0]
    (m1,) = await group.receive("a")
    assert m1.version == 1
    await group.nack(m1, "skip")
    (_m2,) = await group.receive("a")
    await asyncio.sleep(0.4)  # not acked in time: handed out again
    (m2b,) = await group.receive("b")
    assert (m2b.version, m2b.attempts, m2b.member) == (2, 2, "b")
    await group.nack(m2b, "park", reason="bad data")
    assert [(m.version, m.error) for m in await group.parked()] == [(0, "retry"), (2, "bad data")]
    (m3,) = await group.receive("a")
    await group.ack(m3)
    assert await group.replay_parked() == 2
    replayed = await group.receive("a", limit=10)
    assert [m.version for m in replayed] == [0]  # pinned: 2 waits for 0
    await group.ack(*replayed)
    (last,) = await group.receive("a")
    assert last.version == 2
    await group.ack(last)
    assert await group.info() == {
        "name": "one", "strategy": "pinned", "categories": ["cg"], "stream_id": None,
        "max_retries": 2, "message_timeout": 0.3, "position": await store.head_position(),
        "pending": 0, "in_flight": 0, "parked": 0, "settings": {},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"name": ""}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"strategy": "random"}, "strategy"),
        ({"max_retries": 0}, "max_retries"),
        ({"message_timeout": 0}, "message_timeout"),
        ({"buffer": 0}, "buffer"),
    ],
)
async def test_bad_settings_are_typed_errors(
    store: EventStore, kwargs: dict[str, object], argument: str
) -> None:
    settings: dict[str, object] = {"name": "g", **kwargs}
    name = settings.pop("name")
    with pytest.raises(InvalidArgument, match=argument):
        ConsumerGroup(store, name, **settings)  # type: ignore[arg-type]
    assert await require(store, SqlStore).query("SELECT count(*) FROM consumer_groups") == [(0,)]


async def test_receive_from_an_unknown_group_or_with_bad_arguments(store: EventStore) -> None:
    group = ConsumerGroup(store, "nope")
    with pytest.raises(GroupNotFound, match="no consumer group"):
        await group.receive("a")
    await group.create()
    for member, limit in (("", 1), ("a", 0)):
        with pytest.raises(InvalidArgument):
            await group.receive(member, limit=limit)
