"""Partitioned outbox relay (scaleout/relay.py): three processes publishing to JetStream,
one killed with SIGKILL while events arrive: after deduplication by message id (what the
Inbox does) every event is there exactly once, each stream's messages in version order,
and the killed member's partitions are taken over."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import chronik
from chronik import NewEvent
from chronik.store.protocol import EventStore
from tests.conftest import NATS_URL, require_service
from tests.integration.conftest import stream_msg_ids
from tests.scaleout.cluster import Cluster, epochs, owners

pytestmark = [pytest.mark.postgres, pytest.mark.nats]
PARTS = 6


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(pg_url) as s:
        yield s


async def _until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def check_published(ids: list[str], appended: dict[str, tuple[str, int]]) -> None:
    """``ids``: the Nats-Msg-Id of every message in the JetStream stream, in stream order
    (after JetStream's own deduplication). Each appended event there exactly once, each
    stream's messages in version order."""
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert not twice, f"published twice: {twice}"
    assert sorted(ids) == sorted(appended), "lost or unknown messages"
    last: dict[str, int] = {}
    for i in ids:
        stream, version = appended[i]
        assert version > last.get(stream, -1), f"{stream} out of order at version {version}"
        last[stream] = version


def test_the_check_catches_a_loss_a_duplicate_and_a_reorder() -> None:
    appended = {"a": ("s-1", 0), "b": ("s-1", 1), "c": ("s-2", 0)}
    check_published(["a", "c", "b"], appended)
    with pytest.raises(AssertionError, match="twice"):
        check_published(["a", "c", "a", "b"], appended)
    with pytest.raises(AssertionError, match="lost"):
        check_published(["a", "c"], appended)
    with pytest.raises(AssertionError, match="out of order"):
        check_published(["b", "a", "c"], appended)


async def test_three_relays_one_killed_every_event_once_in_stream_order(
    pg_url: str, store: EventStore
) -> None:
    require_service("NATS", NATS_URL)
    import nats

    from chronik.nats import ensure_stream

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    name = f"chronik_so_{uuid.uuid4().hex[:10]}"
    await ensure_stream(js, name, [f"{name}.>"], duplicate_window=120)
    group = f"relay:{name}"
    cluster = Cluster(pg_url, PARTS, ttl=2.0, module="tests.scaleout.relay_worker",
                      extra=(NATS_URL, name))  # fmt: skip
    members = {"w0", "w1", "w2"}
    rng = random.Random(3)
    appended: dict[str, tuple[str, int]] = {}
    try:
        for m in sorted(members):
            cluster.start(m)

        async def balanced() -> bool:
            owned = await owners(store, group)
            return len(owned) == PARTS and set(owned.values()) == members

        await _until(balanced, "3 members owning 2 partitions each")
        orphaned = {p for p, o in (await owners(store, group)).items() if o == "w0"}
        before = await epochs(store, group)
        for n in range(300):
            if n == 150:
                cluster.kill("w0")
            stream = f"acct-{rng.randrange(25)}"
            event = NewEvent("Added", {"n": n})
            result = await store.append(stream, [event])
            appended[str(event.event_id)] = (stream, result.version)
            if n % 10 == 0:
                await asyncio.sleep(0.01)

        async def all_published() -> bool:
            return (await js.stream_info(name)).state.messages >= len(appended)

        await _until(all_published, "every event published")
        after = await epochs(store, group)
        assert orphaned and all(after[p] > before[p] for p in orphaned), (before, after)
        check_published(await stream_msg_ids(js, name), appended)
    finally:
        cluster.stop_all()
        await js.delete_stream(name)
        await nc.close()
