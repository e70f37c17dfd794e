"""Live subscriptions on PostgreSQL under out-of-order commits, killed connections and restarts.

- Writer processes hold their transactions open for random times (some roll back) while
  subscriptions with batch sizes 1, 10 and 100 follow live: each must deliver exactly the
  committed events, in increasing position order, none skipped. A naive reader over an
  insertion-order sequence runs in the same run and must be caught skipping.
- ``pg_terminate_backend`` on the subscription's connections: it reconnects and goes on.
- A private PostgreSQL (initdb + pg_ctl, own port and folder) restarted under a live
  subscription and a writer: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

import chronik
from chronik import NewEvent
from chronik.subscriptions import Subscription
from tests.integration.conftest import PrivatePg
from tests.integration.pg_held_writers import held_writer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _schema(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


async def _follow(sub: Subscription, into: list[tuple[int, str]]) -> None:
    async for page in sub.pages():
        into.extend((e.position, str(e.event_id)) for e in page.events)


async def _drain(store: chronik.EventStore, subs: list[Subscription], timeout: float) -> None:
    """Wait until every subscription has read up to the store's head, then stop them."""
    head = await store.head_position()
    deadline = asyncio.get_running_loop().time() + timeout
    while any(s.position < head for s in subs):
        assert asyncio.get_running_loop().time() < deadline, "subscriptions did not catch up"
        await asyncio.sleep(0.02)
    for s in subs:
        s.stop()


async def _naive(url: str, schema: str, seen: list[str], stop: asyncio.Event) -> None:
    """Reads by an insertion-order key with `> last` and no visibility rule (the known bug)."""
    last = 0
    conninfo = url.split("?")[0]
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                f"SELECT naive_seq, event_id FROM {schema}.events WHERE naive_seq > %s "
                "ORDER BY naive_seq",
                (last,),
            )
            rows = await cur.fetchall()
            for seq, event_id in rows:
                seen.append(str(event_id))
                last = seq
            if stop.is_set() and not rows:
                return
            await asyncio.sleep(0.002)


async def test_live_subscriptions_never_skip_while_writer_processes_hold_transactions(
    pg_url: str, tmp_path: Path
) -> None:
    schema = _schema(pg_url)
    async with await chronik.connect(pg_url) as store:
        await store.append("seed-1", [NewEvent("Seed", {})])
        async with store.transaction() as tx:
            await tx.execute(f"ALTER TABLE {schema}.events ADD COLUMN naive_seq bigserial")
        delivered: dict[int, list[tuple[int, str]]] = {1: [], 10: [], 100: []}
        done = asyncio.Event()
        subs = {
            size: Subscription(store, after=0, batch_size=size, poll_interval=0.02)
            for size in delivered
        }
        followers = [asyncio.create_task(_follow(subs[s], delivered[s])) for s in subs]
        naive_seen: list[str] = []
        naive = asyncio.create_task(_naive(pg_url, schema, naive_seen, done))

        ctx = multiprocessing.get_context("spawn")
        seed = int.from_bytes(os.urandom(2), "big")
        procs = []
        for w in range(6):
            out = tmp_path / f"w{w}.json"
            p = ctx.Process(target=held_writer, args=(pg_url, w, 50, str(out), seed))
            p.start()
            procs.append((p, out))
        for p, _ in procs:
            await asyncio.to_thread(p.join, 240)
            assert p.exitcode == 0
        done.set()
        await _drain(store, list(subs.values()), 120)
        await asyncio.wait_for(asyncio.gather(*followers, naive), 60)

        ok: set[str] = {"seed"}
        rolled_back: set[str] = set()
        for _, out in procs:
            record = json.loads(out.read_text())
            assert record["unknown"] == []
            ok.update(record["ok"])
            rolled_back.update(record["rolled_back"])
        committed = [(e.position, str(e.event_id)) async for e in store.read_all()]
        committed_ids = {i for _, i in committed}
        assert ok - {"seed"} <= committed_ids
        assert not rolled_back & committed_ids
        assert rolled_back, "no append was rolled back: the test did not exercise rollbacks"
        for size, got in delivered.items():
            positions = [p for p, _ in got]
            assert positions == sorted(set(positions)), f"batch {size}: out of order or twice"
            assert got == committed, f"batch {size}: delivered != committed"
        skipped = committed_ids - set(naive_seen)
        assert skipped, "the naive reader skipped nothing: the run did not reorder commits"


async def test_subscription_survives_pg_terminate_backend(pg_url: str) -> None:
    app = f"chronik-sub-{uuid.uuid4().hex[:8]}"
    sub_url = f"{pg_url}&application_name={app}"
    async with await chronik.connect(pg_url) as writer, await chronik.connect(sub_url) as reader:
        got: list[str] = []
        sub = Subscription(reader, after=0, batch_size=7, poll_interval=0.02)
        follower = asyncio.create_task(_follow_ids(sub, got))
        sent: list[str] = []
        conninfo = pg_url.split("?")[0]
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            for round_ in range(5):
                for n in range(20):
                    ev = NewEvent("Tick", {"round": round_, "n": n})
                    await writer.append(f"tick-{n % 3}", [ev])
                    sent.append(str(ev.event_id))
                await asyncio.sleep(0.05)
                cur = await admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (app,),
                )
                killed = (await cur.fetchone() or (0,))[0]
                assert killed >= 1, "the subscription had no connection to kill"
        await _drain(writer, [sub], 60)
        await asyncio.wait_for(follower, 60)
        assert got == sent


async def _follow_ids(sub: Subscription, into: list[str]) -> None:
    async for page in sub.pages():
        into.extend(str(e.event_id) for e in page.events)


async def test_subscription_and_writer_survive_a_postgres_restart(
    private_pg: PrivatePg,
) -> None:
    url = private_pg.url
    async with await chronik.connect(url) as writer, await chronik.connect(url) as reader:
        got: list[str] = []
        sub = Subscription(reader, after=0, batch_size=50, poll_interval=0.05)
        follower = asyncio.create_task(_follow_ids(sub, got))
        acked: list[str] = []
        unknown: list[str] = []

        async def write(count: int) -> None:
            for n in range(count):
                ev = NewEvent("Tick", {"n": n})
                try:
                    await writer.append(f"tick-{n % 4}", [ev])
                except chronik.StoreUnavailable:
                    unknown.append(str(ev.event_id))
                    await asyncio.sleep(0.05)
                else:
                    acked.append(str(ev.event_id))

        for mode in ("fast", "immediate", "fast"):
            writing = asyncio.create_task(write(150))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(private_pg.restart, mode)
            await writing
        await _drain(writer, [sub], 120)
        await asyncio.wait_for(follower, 60)
        stored = [str(e.event_id) async for e in writer.read_all()]
        assert len(stored) == len(set(stored))
        assert set(acked) <= set(stored), "an acknowledged append was lost"
        assert set(stored) <= set(acked) | set(unknown)
        assert got == stored, "the subscription skipped or repeated events across restarts"
        assert acked, "nothing was written"


async def test_listen_notify_wakes_a_follower_in_another_store_instance(pg_url: str) -> None:
    """With polling effectively off (60 s), only NOTIFY can deliver these events in time."""
    async with await chronik.connect(pg_url) as writer, await chronik.connect(pg_url) as reader:
        await writer.append("seed-1", [NewEvent("Seed", {})])
        got: list[str] = []
        sub = Subscription(reader, after=await reader.head_position(), poll_interval=60)
        follower = asyncio.create_task(_follow_ids(sub, got))
        await asyncio.sleep(0.2)  # let it go idle (LISTENing)
        sent = []
        for n in range(3):
            ev = NewEvent("Ping", {"n": n})
            await writer.append("ping-1", [ev])
            sent.append(str(ev.event_id))
            while len(got) < n + 1:
                await asyncio.sleep(0.01)
        sub.stop()
        await asyncio.wait_for(follower, 10)
        assert got == sent
