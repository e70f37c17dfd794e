"""Concurrency over the wire: 8 client processes on one hot stream and on spread streams,
judged by the set-algebra checker of the store tests; a ``$all`` subscriber that receives
every committed event exactly once while writers commit out of order on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.writers import Stored, check
from tests.kurrent.conftest import ServerThread
from tests.kurrent.wire_writers import join_history, start_wire_writers

WRITERS = 8


async def _everything(store: Any) -> list[Stored]:
    return [
        Stored(str(e.event_id), e.stream_id, e.version, e.position) async for e in store.read_all()
    ]


@pytest.mark.slow
@pytest.mark.feature("concurrency")
@pytest.mark.parametrize("mode,attempts", [("hot", 25), ("spread", 25)])
def test_writer_processes_over_the_wire(
    kurrent: ServerThread, tmp_path: Path, mode: str, attempts: int
) -> None:
    history = join_history(start_wire_writers(kurrent.uri, mode, WRITERS, attempts, tmp_path))
    stored = kurrent.call(_everything(kurrent.store))
    verdict = check(history, stored)
    assert verdict.ok > 0 and verdict.indeterminate == 0, [
        h for h in history if h["type"] == "info"
    ][:3]
    assert verdict.clean, verdict
    acked = sum(len(h["ids"]) for h in history if h["type"] == "ok")
    assert len(stored) == acked
    if mode == "hot":
        assert verdict.conflicts > 0, "no contention was produced"


def judge_delivery(
    got: list[tuple[str, int]],
    stored: list[Stored],
    extra: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """What is wrong with what a ``$all`` subscriber received, against a full read: an event
    twice, a committed event skipped, one never committed, or positions out of order."""
    delivered = [i for i, _ in got]
    positions = [p for _, p in got]
    stored_ids = {s.event_id for s in stored}
    problems = []
    if len(delivered) != len(set(delivered)):
        problems.append("duplicated")
    if not stored_ids <= set(delivered):
        problems.append(f"skipped {len(stored_ids - set(delivered))}")
    if set(delivered) - stored_ids - extra:
        problems.append("unexpected")
    if positions != sorted(positions) or len(set(positions)) != len(positions):
        problems.append("disorder")
    return problems


def test_delivery_judge_catches_broken_deliveries() -> None:
    """The negative controls: each broken delivery is named."""
    stored = [Stored("a", "s-1", 0, 1), Stored("b", "s-1", 1, 2), Stored("c", "s-2", 0, 5)]
    good = [("a", 1), ("b", 2), ("c", 5)]
    assert judge_delivery(good, stored) == []
    assert judge_delivery([("a", 1), ("c", 5)], stored) == ["skipped 1"]  # the naive reader
    assert judge_delivery([*good, ("c", 5)], stored) == ["duplicated", "disorder"]
    assert judge_delivery([*good, ("z", 6)], stored) == ["unexpected"]
    assert judge_delivery([("b", 2), ("a", 1), ("c", 5)], stored) == ["disorder"]


def _subscribe(uri: str, want: int, got: list[Any], done: threading.Event) -> None:
    from kurrentdbclient import KurrentDBClient

    with KurrentDBClient(uri) as client:
        sub = client.subscribe_to_all(filter_exclude=[r"\$.+"])
        try:
            for event in sub:
                got.append((str(event.id), event.commit_position))
                if len(got) >= want or done.is_set():
                    break
        finally:
            sub.stop()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.feature("concurrency")
@pytest.mark.parametrize("backend_url", ["postgres"], indirect=True)
def test_all_subscriber_sees_every_event_once_under_out_of_order_commits(
    kurrent: ServerThread, tmp_path: Path
) -> None:
    from tests.integration.pg_held_writers import held_writer

    ctx = multiprocessing.get_context("spawn")
    seed = int.from_bytes(os.urandom(2), "big")
    held = []
    for w in range(4):  # transactions held open 0-300 ms, 5 % rolled back: out-of-order commits
        out = tmp_path / f"held-{w}.json"
        p = ctx.Process(target=held_writer, args=(kurrent.url, w, 30, str(out), seed))
        p.start()
        held.append((p, out))
    wire = start_wire_writers(kurrent.uri, "spread", 4, 25, tmp_path)
    got: list[Any] = []
    done = threading.Event()
    reader = threading.Thread(target=_subscribe, args=(kurrent.uri, 10**9, got, done))
    reader.start()
    history = join_history(wire)
    rolled_back: set[str] = set()
    for p, out in held:
        p.join(timeout=240)
        assert p.exitcode == 0
        result = json.loads(out.read_text())
        assert not result["unknown"]
        rolled_back.update(result["rolled_back"])
    stored = kurrent.call(_everything(kurrent.store))
    deadline = threading.Event()
    for _ in range(600):  # until the subscriber has the whole store (or 60 s)
        if len(got) >= len(stored):
            break
        deadline.wait(0.1)
    done.set()
    kurrent.call(_append_wakeup(kurrent.store))  # wakes the live subscription so it can stop
    reader.join(30)
    problems = judge_delivery(got, stored, extra=_wakeup_ids(kurrent))
    assert problems == [], problems
    assert not rolled_back & {i for i, _ in got}
    assert check(history, [s for s in stored if s.stream_id.startswith("acct-")]).clean


async def _append_wakeup(store: Any) -> None:
    import chronik

    await store.append("wakeup-1", [chronik.NewEvent("Wakeup", {})])


def _wakeup_ids(kurrent: ServerThread) -> set[str]:
    async def ids() -> set[str]:
        try:
            return {str(e.event_id) async for e in kurrent.store.read_stream("wakeup-1")}
        except Exception:
            return set()

    return kurrent.call(ids())  # type: ignore[no-any-return]


def _serve(url: str, port: int) -> subprocess.Popen[bytes]:
    chronik_bin = str(Path(sys.executable).parent / "chronik")
    proc = subprocess.Popen(
        [chronik_bin, "--store", url, "serve", "--kurrent-grpc", f"127.0.0.1:{port}", "--no-http"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return proc
        except OSError:
            assert proc.poll() is None, "chronik serve exited"
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("chronik serve --kurrent-grpc did not listen")


@pytest.mark.slow
@pytest.mark.feature("crash")
def test_kill_9_of_the_server_mid_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 of ``chronik serve --kurrent-grpc`` twice while 4 client processes append;
    the server restarts on the same port, the clients reconnect and retry (same event ids).
    Every acknowledged event is stored once; an indeterminate one is stored once or not at
    all; no batch is partial; versions stay gapless."""
    import chronik

    url = f"sqlite:///{tmp_path}/crash.db"
    asyncio.run(_init(url))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = _serve(url, port)
    uri = f"kurrentdb://127.0.0.1:{port}?tls=false&MaxDiscoverAttempts=50"
    writers = start_wire_writers(uri, "spread", 4, 60, tmp_path)
    try:
        for _ in range(2):
            time.sleep(0.6)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
            time.sleep(0.2)
            server = _serve(url, port)
        history = join_history(writers)
    finally:
        server.terminate()
        server.wait(20)

    async def everything() -> list[Stored]:
        async with await chronik.connect(url) as store:
            return await _everything(store)

    stored = asyncio.run(everything())
    verdict = check(history, stored)
    print("crash verdict:", verdict.ok, verdict.conflicts, verdict.indeterminate, len(stored))
    assert verdict.ok > 0
    assert not (verdict.lost or verdict.duplicated or verdict.unexpected), verdict
    assert not (verdict.partial_batches or verdict.version_gaps or verdict.failed_but_stored)
    assert not verdict.position_disorder and not verdict.reused_expected


async def _init(url: str) -> None:
    import chronik

    async with await chronik.connect(url):
        pass


@pytest.mark.postgres
@pytest.mark.feature("read-all")
@pytest.mark.parametrize("backend_url", ["postgres"], indirect=True)
def test_reads_wait_for_an_older_transaction_still_open(kurrent: ServerThread, client: Any) -> None:
    """An append whose transaction began first commits last: a read of ``$all`` made after
    a later append was acknowledged waits for it, and sees both, in position order."""
    import chronik

    release = threading.Event()

    async def slow_append() -> Any:
        store = await chronik.connect(kurrent.url)
        try:

            async def hold() -> None:
                await asyncio.to_thread(release.wait, 20)

            store._before_commit = hold  # type: ignore[attr-defined]  # the testing hook
            return await store.append("slow-1", [chronik.NewEvent("Slow", {})])
        finally:
            await store.close()

    slow = asyncio.run_coroutine_threadsafe(slow_append(), kurrent.loop)
    time.sleep(0.3)  # its transaction (and its position) is taken
    from kurrentdbclient import NewEvent, StreamState

    fast = client.append_to_stream(
        "fast-1", events=NewEvent(type="Fast", data=b"{}"), current_version=StreamState.NO_STREAM
    )
    threading.Timer(0.5, release.set).start()
    forwards = [(e.type, e.commit_position) for e in client.read_all()]
    slow_result = slow.result(30)
    assert ("Fast", fast) in forwards and ("Slow", slow_result.position) in forwards
    assert [p for _, p in forwards] == sorted(p for _, p in forwards)
    assert client.get_commit_position() == max(fast, slow_result.position)
