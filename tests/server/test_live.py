"""Live push (issue 15 item 3): SSE and WebSocket feeds against a real uvicorn server.

The server runs in the test's own event loop (so a test can look at the tasks a connection
leaves behind), on a free loopback port; clients are plain httpx streaming readers (SSE)
and the ``websockets`` client. The resume test appends through a second store connection,
as another process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import chronik
import chronik.server.live
from chronik import NewEvent, RecordedEvent
from chronik.projections import Projection, ProjectionRunner
from chronik.server import create_app
from chronik.server.live import live_routes
from chronik.store.protocol import EventStore, Tx

# -- harness --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in this event loop on a free port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "the test server did not start"
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class Sse:
    id: str | None
    kind: str
    data: dict[str, Any]


@dataclass
class SseParser:
    """Reads ``text/event-stream`` bytes as a browser's EventSource does: a message counts
    once its blank line arrives; ``last_id`` is what a reconnect sends as Last-Event-ID."""

    last_id: str | None = None
    heartbeats: int = 0
    retry: int | None = None
    _buffer: bytes = b""
    _fields: dict[str, str] = field(default_factory=dict)

    def feed(self, chunk: bytes) -> list[Sse]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        out = []
        for raw in lines:
            line = raw.decode()
            if not line:
                if "id" in self._fields:
                    self.last_id = self._fields["id"]
                if "data" in self._fields:
                    data = json.loads(self._fields["data"])
                    out.append(Sse(self._fields.get("id"), self._fields.get("event", ""), data))
                self._fields = {}
            elif line.startswith(":"):
                self.heartbeats += "heartbeat" in line
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                else:
                    self._fields[name] = value
        return out


async def read_sse(
    client: httpx.AsyncClient,
    url: str,
    count: int,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[list[Sse], SseParser]:
    """The first ``count`` messages of an SSE stream (then the connection is closed)."""
    parser = SseParser()
    got: list[Sse] = []
    async with asyncio.timeout(timeout), client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.aiter_raw():
            got += parser.feed(chunk)
            if len(got) >= count:
                break
    return got, parser


def live_tasks() -> list[asyncio.Task[Any]]:
    return [
        t for t in asyncio.all_tasks() if t.get_name().startswith("chronik-live") and not t.done()
    ]


async def no_live_tasks(within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while live_tasks():
        assert time.monotonic() < deadline, f"still running: {live_tasks()}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(sqlite_url) as s:
        yield s


async def append(store: EventStore, stream_id: str, *types: str, **data: Any) -> int:
    result = await store.append(stream_id, [NewEvent(t, dict(data)) for t in types])
    return result.position


# -- resume: every event exactly once, in order, through 50 cuts ----------------------------


def check_delivery(received: Sequence[tuple[int, str]], stored: Sequence[tuple[int, str]]) -> None:
    """Set algebra over (position, event id): nothing lost, nothing twice, nothing made up,
    and the order of the log."""
    got, want = [e for _, e in received], {e for _, e in stored}
    lost = want - set(got)
    duplicated = len(got) - len(set(got))
    unexpected = set(got) - want
    assert not lost, f"lost {len(lost)} events"
    assert not duplicated, f"{duplicated} events delivered twice"
    assert not unexpected, f"{len(unexpected)} events that were never stored"
    assert list(received) == list(stored), "delivered out of order"


async def resume_run(
    url: str, events: int, cuts: int, *, seed: int, broken: bool = False
) -> tuple[list[tuple[int, str]], list[tuple[int, str]], int, int]:
    """Append ``events`` (four writers at once) through a second connection while an SSE
    client reading the log is cut ``cuts`` times at random bytes and reconnects with
    Last-Event-ID (``broken``: it resumes one position too far, the negative control).
    Returns what the client received, what the store holds, the number of connections and
    of the cuts made while the writers were still appending."""
    rng = random.Random(seed)
    cut_at = sorted(rng.sample(range(1, events - events // 50), cuts))
    async with (
        await chronik.connect(url) as served,
        await chronik.connect(url) as writer,
        serving(Starlette(routes=live_routes(served, heartbeat=0.2))) as base,
        httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client,
    ):
        head: list[int] = []  # the last append's position, once all are written

        async def write_some(worker: int, count: int) -> None:
            left = count
            while left:
                n = min(left, rng.randint(1, 20))
                batch = [NewEvent("Ticked", {"w": worker, "n": count - left + i}) for i in range(n)]
                await writer.append(f"clock-{worker}_{rng.randrange(5)}", batch)
                left -= n
                await asyncio.sleep(rng.random() * 0.016)  # spread over ~2 s: cuts fall among them

        async def write() -> None:
            # four writers at once: on PostgreSQL their commits interleave out of order
            await asyncio.gather(*(write_some(w, events // 4) for w in range(4)))
            head.append(await writer.head_position())

        def finished(last: str | None) -> bool:
            return len(received) >= events or bool(head and last and int(last) >= head[0])

        writing = asyncio.create_task(write())
        received: list[tuple[int, str]] = []
        last: str | None = None
        connections = cuts_while_writing = 0
        async with asyncio.timeout(60):
            while not finished(last):
                headers = {} if last is None else {"Last-Event-ID": last}
                # a reconnecting EventSource keeps its URL's ?after=: the header must win
                params = {"after": "0"} if last is None or connections % 2 else {}
                connections += 1
                async with client.stream(
                    "GET", f"{base}/live/events", params=params, headers=headers
                ) as response:
                    assert response.status_code == 200
                    parser = SseParser(last_id=last)
                    cut = False
                    async for chunk in response.aiter_raw():
                        # a chunk may hold a whole page: look for a due cut every 4 KiB
                        for start in range(0, len(chunk), 4096):
                            piece = chunk[start : start + 4096]
                            cut = bool(cut_at) and len(received) >= cut_at[0]
                            if cut:  # at a random byte, often inside a message
                                piece = piece[: rng.randrange(len(piece) + 1)]
                            for m in parser.feed(piece):
                                received.append((int(m.data["position"]), m.data["event_id"]))
                            if cut:
                                cut_at.pop(0)
                                cuts_while_writing += not writing.done()
                                break
                        if cut or finished(parser.last_id):  # heartbeats carry ids too
                            break
                    last = parser.last_id
                if broken and last is not None and not finished(last):
                    last = str(int(last) + 1)
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.random() * 0.02)  # appends land while cut
        await writing
        stored = [(e.position, str(e.event_id)) async for e in writer.read_all()]
    assert not cut_at, "not every planned cut happened"
    return received, stored, connections, cuts_while_writing


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_sse_resume_through_50_cuts_delivers_every_event_once_in_order(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    started = time.monotonic()
    received, stored, connections, cuts_while_writing = await resume_run(url, 10_000, 50, seed=15)
    elapsed = time.monotonic() - started
    assert len(stored) == 10_000
    assert connections == 51
    assert cuts_while_writing >= 40  # the cuts fell among the appends, not after them
    check_delivery(received, stored)
    print(
        f"\n{backend}: 10,000 events, 50 cuts ({cuts_while_writing} while appending): "
        f"{elapsed:.1f}s"
    )
    assert elapsed < 45


async def test_resume_checker_catches_a_client_that_resumes_one_too_far(
    sqlite_url: str,
) -> None:
    received, stored, _, _ = await resume_run(sqlite_url, 600, 5, seed=3, broken=True)
    with pytest.raises(AssertionError, match="lost"):
        check_delivery(received, stored)


def test_checker_catches_duplicates_and_reordering() -> None:
    stored = [(1, "a"), (2, "b"), (3, "c")]
    check_delivery(stored, stored)
    with pytest.raises(AssertionError, match="twice"):
        check_delivery([(1, "a"), (2, "b"), (2, "b"), (3, "c")], stored)
    with pytest.raises(AssertionError, match="order"):
        check_delivery([(1, "a"), (3, "c"), (2, "b")], stored)


# -- feeds and filters ----------------------------------------------------------------------


async def test_filters_by_type_category_and_stream(store: EventStore) -> None:
    await append(store, "order-1", "Placed", "Paid")
    await append(store, "invoice-1", "Placed")
    await append(store, "order-2", "Placed", "Shipped")
    await append(store, "order-1", "Shipped")
    await append(store, "order", "Placed")  # the stream "order" is in category "order" too
    async with serving(create_app(store)) as base, httpx.AsyncClient() as client:

        async def ids(path: str, count: int) -> list[tuple[str, str, str]]:
            got, _ = await read_sse(client, f"{base}{path}", count)
            assert all(m.kind == "event" and m.id == m.data["position"] for m in got)
            return [(m.data["stream_id"], m.data["type"], m.id or "") for m in got]

        placed = await ids("/live/events?after=0&types=Placed", 4)
        assert [s for s, _, _ in placed] == ["order-1", "invoice-1", "order-2", "order"]
        mixed = await ids("/live/events?after=0&categories=invoice&types=Placed,Paid", 1)
        assert mixed[0][:2] == ("invoice-1", "Placed")
        category = await ids("/live/categories/order?after=0&types=Shipped", 2)
        assert [s for s, _, _ in category] == ["order-2", "order-1"]
        stream = await ids("/live/streams/order-1?after=0", 3)
        assert [t for _, t, _ in stream] == ["Placed", "Paid", "Shipped"]
        after_first = await ids(f"/live/streams/order-1?after={stream[0][2]}", 2)
        assert after_first == stream[1:]
        only = await ids("/live/streams/order?after=0", 1)
        assert only[0][:2] == ("order", "Placed")


async def test_without_after_a_feed_starts_at_the_head(store: EventStore) -> None:
    await append(store, "order-1", "Old")
    async with serving(create_app(store)) as base, httpx.AsyncClient() as client:
        reading = asyncio.create_task(read_sse(client, f"{base}/live/events", 1))
        await asyncio.sleep(0.3)  # connected by now: the head is the Old event
        await append(store, "order-1", "New")
        got, parser = await reading
        assert [m.data["type"] for m in got] == ["New"]
        assert parser.retry == 1000  # EventSource is told to reconnect after a second
    await no_live_tasks()


async def test_event_data_is_the_json_api_event_shape(store: EventStore) -> None:
    position = await append(store, "order-1", "Placed", total=3)
    async with serving(create_app(store)) as base, httpx.AsyncClient() as client:
        (message,), _ = await read_sse(client, f"{base}/live/events?after=0", 1)
        page = (await client.get(f"{base}/events?after=0")).json()
    assert message.id == str(position)
    assert message.data == page["events"][0]
    assert message.data["data"] == {"total": 3}


async def test_saga_state_events(store: EventStore) -> None:
    await append(store, "saga_checkout-t1", "CheckoutStarted", order="o1")
    await append(store, "saga_refund-t1", "RefundStarted")
    await append(store, "saga_checkout-t2", "CheckoutStarted", order="o2")
    await append(store, "saga_checkout-t1", "SagaCompleted")
    async with serving(create_app(store)) as base, httpx.AsyncClient() as client:
        got, _ = await read_sse(client, f"{base}/live/sagas/checkout?after=0", 3)
    assert {m.kind for m in got} == {"saga"}
    assert [(m.data["saga"], m.data["key"], m.data["type"]) for m in got] == [
        ("checkout", "t1", "CheckoutStarted"),
        ("checkout", "t2", "CheckoutStarted"),
        ("checkout", "t1", "SagaCompleted"),
    ]
    assert got[0].data["stream_id"] == "saga_checkout-t1"
    assert got[0].data["data"] == {"order": "o1"}


class Totals(Projection):
    name = "totals"
    event_types = ["Placed"]

    async def setup(self, tx: Tx) -> None:
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {self.table('totals')} (n INTEGER)")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        await tx.execute(f"INSERT INTO {self.table('totals')} (n) VALUES (:n)", {"n": 1})


async def test_projection_checkpoint_messages(store: EventStore) -> None:
    async with store.transaction() as tx:
        await tx.set_checkpoint("mailer", 0)  # a plain subscription: not a projection
    async with (
        serving(Starlette(routes=live_routes(store, checkpoint_interval=0.02))) as base,
        httpx.AsyncClient() as client,
        ProjectionRunner(store, [Totals()], poll_interval=0.05) as runner,
    ):
        first = await append(store, "order-1", "Placed")
        await runner.wait_for(first, timeout=5)
        # a new listener gets the current position of each checkpoint at once
        got, _ = await read_sse(client, f"{base}/live/projections", 2)
        by_name = {m.data["name"]: m for m in got}
        assert by_name["totals:v1"].data == {
            "name": "totals:v1", "position": str(first), "projection": "totals", "version": 1,
            "active": True,
        }  # fmt: skip
        assert by_name["totals:v1"].id == str(first)
        assert by_name["mailer"].data["projection"] is None

        # then a message each time the checkpoint moves (filtered by name)
        async def moves() -> list[Sse]:
            got, _ = await read_sse(client, f"{base}/live/projections?names=totals", 2)
            return got

        listening = asyncio.create_task(moves())
        await asyncio.sleep(0.2)
        second = await append(store, "order-2", "Placed")
        seen = await listening
        assert [m.data["position"] for m in seen] == [str(first), str(second)]
        assert {m.data["name"] for m in seen} == {"totals:v1"}
    await no_live_tasks()


# -- WebSocket ------------------------------------------------------------------------------


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/live/ws"


async def ws_messages(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            message = json.loads(await ws.recv())
            if message["kind"] != "heartbeat":
                got.append(message)
    return got


async def test_websocket_subscribe_and_resume(store: EventStore) -> None:
    for i in range(5):
        await append(store, f"order-{i % 2}", "Placed", i=i)
    async with serving(create_app(store)) as base:
        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "events", "after": "0"}))
            first = await ws_messages(ws, 3)
        assert [m["kind"] for m in first] == ["event"] * 3
        assert all(m["id"] == m["data"]["position"] for m in first)
        await append(store, "order-1", "Placed", i=5)
        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "events", "after": first[-1]["id"]}))
            rest = await ws_messages(ws, 3)
        assert [m["data"]["data"]["i"] for m in first + rest] == [0, 1, 2, 3, 4, 5]

        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "stream", "stream_id": "order-1",
                                      "after": "0"}))  # fmt: skip
            stream = await ws_messages(ws, 3)
        assert [m["data"]["data"]["i"] for m in stream] == [1, 3, 5]

        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "category", "category": "order",
                                      "types": ["Placed"], "after": stream[0]["id"]}))  # fmt: skip
            category = await ws_messages(ws, 4)
        assert [m["data"]["data"]["i"] for m in category] == [2, 3, 4, 5]

        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "projections"}))
            async with store.transaction() as tx:
                await tx.set_checkpoint("mailer", 7)
            (checkpoint,) = await ws_messages(ws, 1)
        assert checkpoint == {
            "id": "7", "kind": "checkpoint",
            "data": {"name": "mailer", "position": "7", "projection": None, "version": None,
                     "active": False},
        }  # fmt: skip
    await no_live_tasks()


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("not json", "InvalidSubscribe"),
        ('{"subscribe": "everything"}', "InvalidSubscribe"),
        ('{"subscribe": "stream"}', "InvalidSubscribe"),  # no stream_id
        ('{"subscribe": "events", "after": "x"}', "InvalidSubscribe"),
        ('{"subscribe": "events", "after": "99999999999999999999"}', "InvalidSubscribe"),
        ('{"subscribe": "events", "after": "9999999999999999999"}', "InvalidQuery"),
        ('{"subscribe": "events", "colour": "red"}', "InvalidSubscribe"),
        ('{"subscribe": "stream", "stream_id": ""}', "InvalidStreamId"),
        ('{"subscribe": "saga", "saga": "a-b"}', "InvalidSaga"),
    ],
)
async def test_websocket_bad_subscribe_gets_a_typed_error(
    store: EventStore, message: str, kind: str
) -> None:
    async with serving(create_app(store)) as base, ws_connect(ws_url(base)) as ws:
        await ws.send(message)
        error = json.loads(await ws.recv())
        assert error["kind"] == "error" and error["id"] is None
        assert error["data"]["error"]["type"] == kind
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_websocket_without_subscribe_is_closed(store: EventStore) -> None:
    app = Starlette(routes=live_routes(store, subscribe_timeout=0.2))
    async with serving(app) as base, ws_connect(ws_url(base)) as ws:
        error = json.loads(await ws.recv())
        assert error["data"]["error"]["type"] == "SubscribeTimeout"
        with pytest.raises(ConnectionClosed):
            await ws.recv()


# -- heartbeats, disconnects, back-pressure -------------------------------------------------


async def test_heartbeats_carry_the_position_a_filtered_feed_has_passed(
    store: EventStore,
) -> None:
    wanted = await append(store, "order-1", "Placed")
    app = Starlette(routes=live_routes(store, heartbeat=0.05))
    async with serving(app) as base, httpx.AsyncClient() as client:
        parser = SseParser()
        got: list[Sse] = []
        url = f"{base}/live/events?after=0&types=Placed"
        async with asyncio.timeout(10), client.stream("GET", url) as response:
            chunks = response.aiter_raw()
            while not got:
                got += parser.feed(await anext(chunks))
            assert parser.last_id == str(wanted)
            skipped = await append(store, "order-1", "Paid", "Paid")  # filtered out
            while parser.heartbeats < 3 or parser.last_id != str(skipped):
                got += parser.feed(await anext(chunks))
        assert [m.data["type"] for m in got] == ["Placed"]
        # resuming from the heartbeat's id skips nothing: the next Placed comes
        reading = asyncio.create_task(
            read_sse(client, url, 1, headers={"Last-Event-ID": parser.last_id})
        )
        await asyncio.sleep(0.2)
        last = await append(store, "order-1", "Placed")
        (message,), _ = await reading
        assert message.id == str(last)

        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "events", "after": str(last)}))
            beats = [json.loads(await ws.recv()) for _ in range(2)]
        assert {b["kind"] for b in beats} == {"heartbeat"}
    await no_live_tasks()


@pytest.mark.parametrize("path", ["/live/events", "/live/streams/order-1", "/live/projections"])
async def test_client_disconnect_stops_the_server_side_follower(
    store: EventStore, path: str
) -> None:
    await append(store, "order-1", "Placed")
    async with store.transaction() as tx:
        await tx.set_checkpoint("mailer", 1)
    url = path if "projections" in path else f"{path}?after=0"
    async with serving(create_app(store)) as base:
        for _ in range(3):
            async with httpx.AsyncClient() as client:
                got, _ = await read_sse(client, f"{base}{url}", 1)
                assert got
                names = {t.get_name() for t in live_tasks()}
                assert "chronik-live" in names  # following (idle: waiting for a change)
            await no_live_tasks(within=1.0)  # the client left: nothing of it runs on
        async with ws_connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"subscribe": "events", "after": "0"}))
            await ws_messages(ws, 1)
            assert live_tasks()
        await no_live_tasks(within=1.0)


async def test_disconnect_check_catches_a_server_that_does_not_watch_for_it(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = chronik.server.live._forward

    async def deaf_pump(
        feed: Any, sink: Any, heartbeat: float, gone: Any, stopping: Any = None
    ) -> None:
        await forward(feed, sink, heartbeat)  # the broken variant: learns of it on a write

    monkeypatch.setattr(chronik.server.live, "_pump", deaf_pump)
    await append(store, "order-1", "Placed")
    async with serving(create_app(store)) as base:
        async with httpx.AsyncClient() as client:
            await read_sse(client, f"{base}/live/events?after=0", 1)
        with pytest.raises(AssertionError, match="still running"):
            await no_live_tasks(within=1.0)
        for task in live_tasks():
            task.cancel()


class CountingStore:
    """A store that counts the pages read from it."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.pages = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read_page(self, **kwargs: Any) -> Any:
        self.pages += 1
        return await self._store.read_page(**kwargs)


async def _read_ahead(feed: Any, sink: Any, heartbeat: float) -> None:
    """The broken variant: a forwarder that reads pages as fast as the store gives them."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def fill() -> None:
        async for batch in feed:
            await queue.put(batch)

    filling = asyncio.create_task(fill(), name="chronik-live-read")
    try:
        while True:
            batch = await queue.get()
            if batch.messages:
                await sink.send(batch.messages)
    finally:
        filling.cancel()
        await asyncio.gather(filling, return_exceptions=True)


@pytest.mark.parametrize("broken", [False, True], ids=["bounded", "negative-control"])
async def test_a_slow_client_holds_the_server_to_a_page_or_two(
    broken: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if broken:
        monkeypatch.setattr(chronik.server.live, "_forward", _read_ahead)
    async with await chronik.connect("memory://") as store:
        blob = "x" * 100_000
        for i in range(40):
            batch = [NewEvent("Big", {"blob": blob, "i": i}) for _ in range(10)]
            await store.append(f"blob-{i}", batch)
        counting = CountingStore(store)
        app = Starlette(routes=live_routes(counting, batch_size=10))
        async with serving(app) as base, httpx.AsyncClient() as client:
            url = f"{base}/live/events?after=0"
            async with client.stream("GET", url) as response:
                await asyncio.sleep(1.0)  # not reading: the socket buffers fill up
                stalled = counting.pages
                await asyncio.sleep(0.5)
                if broken:  # the check below can fail: it does for a read-ahead forwarder
                    assert stalled > 20
                    return
                assert counting.pages == stalled, "reading on while nothing is sent"
                assert stalled <= 20, f"{stalled} of 40 pages read for a client reading nothing"
                parser, got = SseParser(), 0
                async with asyncio.timeout(20):
                    async for chunk in response.aiter_raw():
                        got += len(parser.feed(chunk))
                        if got == 400:
                            break
            assert got == 400
        await no_live_tasks()


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "kind"),
    [
        ("/live/events", {"Last-Event-ID": "abc"}, "InvalidLastEventId"),
        ("/live/events", {"Last-Event-ID": "-1"}, "InvalidLastEventId"),
        ("/live/events", {"Last-Event-ID": "99999999999999999999"}, "InvalidLastEventId"),
        ("/live/events", {"Last-Event-ID": "9223372036854775808"}, "InvalidLastEventId"),
        ("/live/streams/order-1", {"Last-Event-ID": "1.5"}, "InvalidLastEventId"),
        ("/live/projections", {"Last-Event-ID": "x"}, "InvalidLastEventId"),
        ("/live/events?after=x", {}, "InvalidQuery"),
        ("/live/events?after=-3", {}, "InvalidQuery"),
        ("/live/events?after=9223372036854775808", {}, "InvalidQuery"),
        ("/live/events?colour=red", {}, "InvalidQuery"),
        ("/live/sagas/checkout?after=1e3", {}, "InvalidQuery"),
        ("/live/projections?after=1", {}, "InvalidQuery"),
        ("/live/sagas/a-b", {}, "InvalidSaga"),
        ("/live/streams/%24all", {}, "InvalidStreamId"),
    ],
)
async def test_bad_positions_and_queries_give_a_typed_400(
    store: EventStore, path: str, headers: dict[str, str], kind: str
) -> None:
    async with serving(create_app(store)) as base, httpx.AsyncClient() as client:
        response = await client.get(f"{base}{path}", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == kind


# -- the pending helper ---------------------------------------------------------------------


async def test_pending_js_is_served(store: EventStore) -> None:
    async with serving(create_app(store)) as base, httpx.AsyncClient() as client:
        response = await client.get(f"{base}/static/chronik-pending.js")
        head = await client.head(f"{base}/static/chronik-pending.js")
    assert response.status_code == 200 and head.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "function chronikPending(options)" in response.text
    assert "http://" not in response.text and "https://" not in response.text  # no CDN


NODE_HARNESS = r"""
// a minimal EventSource over fetch (Node has none), enough for chronik-pending.js
globalThis.EventSource = class {
  static CLOSED = 2;
  constructor(url) {
    this.readyState = 0; this.listeners = {}; this.abort = new AbortController();
    globalThis.sseUrls.push(url); this.run(url);
  }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  emit(type, event) { for (const fn of this.listeners[type] || []) fn(event); }
  close() { this.readyState = 2; this.abort.abort(); }
  async run(url) {
    try {
      const response = await fetch(url, { signal: this.abort.signal });
      if (!response.ok) { this.readyState = 2; this.emit("error", {}); return; }
      this.readyState = 1; this.emit("open", {});
      const decoder = new TextDecoder(); let buffer = ""; let kind = "message"; let data = [];
      for await (const chunk of response.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let i;
        while ((i = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, i); buffer = buffer.slice(i + 1);
          if (line === "") {
            if (data.length) this.emit(kind, { data: data.join("\n") });
            kind = "message"; data = [];
          } else if (!line.startsWith(":")) {
            const c = line.indexOf(":"); const name = line.slice(0, c);
            const value = line.slice(c + 1).replace(/^ /, "");
            if (name === "event") kind = value; else if (name === "data") data.push(value);
          }
        }
      }
    } catch (e) { if (this.readyState !== 2) { this.readyState = 2; this.emit("error", {}); } }
  }
};
globalThis.sseUrls = [];
const [script, base, projection, position, transport] = process.argv.slice(2);
require(script);
const classes = new Set();
const element = {
  textContent: "old", dataset: {}, attributes: {},
  classList: { add: (c) => classes.add(c), remove: (c) => classes.delete(c) },
  setAttribute(k, v) { this.attributes[k] = v; }, removeAttribute(k) { delete this.attributes[k]; },
};
const wait = chronikPending({
  projection, position, element, transport, baseUrl: base, timeout: 15000,
  fetch: base + "/streams/order-1",
  render: (value, el) => { el.textContent = "events: " + value.events.length; },
  onApplied: (info) => { globalThis.via = info.via; },
});
console.log(JSON.stringify({ state: element.dataset.chronikState, text: element.textContent,
                             busy: element.attributes["aria-busy"], classes: [...classes] }));
wait.promise.then(
  () => console.log(JSON.stringify({ state: element.dataset.chronikState, via: globalThis.via,
    text: element.textContent, busy: element.attributes["aria-busy"] || null,
    classes: [...classes], sse: globalThis.sseUrls.length })),
  (e) => { console.log(JSON.stringify({ error: e.kind, message: e.message })); },
);
"""

PENDING_JS = Path(__file__).parents[2] / "src/chronik/server/static/chronik-pending.js"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
@pytest.mark.parametrize("transport", ["auto", "poll"])
async def test_pending_js_shows_pending_until_the_projection_applied(
    store: EventStore, tmp_path: Path, transport: str
) -> None:
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    async with ProjectionRunner(store, [Totals()], poll_interval=0.05):
        pass  # sets the projection up (active version 1), then stops it
    position = await append(store, "order-1", "Placed")
    async with serving(create_app(store)) as base:

        async def node(projection: str) -> list[dict[str, Any]]:
            proc = await asyncio.create_subprocess_exec(
                "node", str(harness), str(PENDING_JS), base, projection, str(position), transport,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            first = json.loads(await proc.stdout.readline())
            assert first == {"state": "pending", "text": "pending…", "busy": "true",
                             "classes": ["chronik-pending"]}  # fmt: skip
            if projection == "totals":
                await asyncio.sleep(0.5)  # still pending: the projection is not running
                async with ProjectionRunner(store, [Totals()], poll_interval=0.05) as runner:
                    await runner.wait_for(position, timeout=5)
                    out, err = await asyncio.wait_for(proc.communicate(), 15)
            else:
                out, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, err.decode()
            return [first, json.loads(out)]

        _, done = await node("totals")
        assert done == {
            "state": "applied", "via": "sse" if transport == "auto" else "poll",
            "text": "events: 1", "busy": None, "classes": [],
            "sse": 1 if transport == "auto" else 0,
        }  # fmt: skip
        _, unknown = await node("nope")
        assert unknown["error"] == "unknown-projection"
    await no_live_tasks()
