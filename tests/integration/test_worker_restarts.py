"""Every kind of worker, each in a process of its own, while PostgreSQL crashes and restarts.

A private cluster (see ``private_pg``) is restarted with ``pg_ctl restart -m immediate``
(a crash: no shutdown checkpoint, recovery on start) again and again while this process
appends. An append lost to a restart is retried with the same event ids (idempotent), so
what is stored is exactly what was appended. The workers must retry the lost store and go
on from their stored checkpoints. At the end each one must catch up, still be running, and
stop gracefully (exit 0) on SIGTERM; and:

- projection (``chronik projections run`` with crash_app.Totals): every event applied once;
- snapshotter: a snapshot at every stream's last version, each equal to a replay;
- sagas (runner, dispatcher, deadlines): every transfer in exactly one terminal state, each
  command executed once, balances as the outcomes say, no deadline left;
- outbox relay: JetStream holds the event ids in store order, none twice;
- inbox (of the relay's stream): every message's effect exactly once, nothing dead-lettered
  (it runs with ``max_deliver=1``: a lost store taken for a failing message would show).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from examples import funds_transfer as ft

import chronik
from chronik import NewEvent
from chronik.sagas import COMPENSATED, COMPLETED, TERMINAL, saga_instance
from chronik.snapshots import snapshot_store, verify_snapshots
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore
from tests.conftest import NATS_URL, require_service
from tests.integration import restart_worker as rw
from tests.integration.conftest import PrivatePg
from tests.integration.crash_app import Totals

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).parent.parent.parent
RESTARTS = 8
CATCH_UP = 60.0
STREAMS = 12


@dataclass
class Proc:
    """A worker process; its stderr goes to ``log``."""

    kind: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.kind} (exit {self.popen.poll()}) ---\n" + "\n".join(text[-lines:])

    def count(self, needle: str) -> int:
        return self.log.read_text(errors="replace").count(needle)


def _spawn(kind: str, url: str, tmp_path: Path, *extra: str) -> Proc:
    if kind == "projections":
        argv = ["-m", "chronik", "--store", url, "projections", "run",
                "tests.integration.crash_app:projections", "--batch-size", "40",
                "--interval", "0.05"]  # fmt: skip
    else:
        argv = ["-m", "tests.integration.restart_worker", kind, url, *extra]
    log = tmp_path / f"{kind}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    return Proc(kind, popen, log)


async def _running(procs: Sequence[Proc], timeout: float = 30) -> None:
    """Until each process said "running" (its SIGTERM handler is installed by then)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        said = "running totals" if p.kind == "projections" else f"running {p.kind}"
        while said not in p.log.read_text(errors="replace"):
            assert p.popen.poll() is None, p.tail()
            assert time.monotonic() < deadline, p.tail()
            await asyncio.sleep(0.05)


@dataclass
class Appender:
    """Appends ``Added`` events and transfer requests; retries a lost append unchanged."""

    store: EventStore
    rng: random.Random
    added: dict[str, int] = field(default_factory=dict)
    """event id → n, of every Added event appended."""
    totals: Counter[str] = field(default_factory=Counter)
    transfers: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    """transfer id → (target, amount, short timeout)."""
    retried: int = 0

    async def append(
        self, stream: str, events: list[NewEvent], expected: int = chronik.ANY
    ) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.store.append(stream, events, expected_version=expected)
                return
            except chronik.StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not come back"
                self.retried += 1
                await asyncio.sleep(0.05)

    async def run(self, stop: asyncio.Event, transfers: bool) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if transfers and i % 8 == 0:
                await self.transfer(f"r{i}")
                continue
            stream = f"acct-{self.rng.randrange(STREAMS)}"
            ns = [self.rng.randrange(1, 100) for _ in range(self.rng.randint(1, 3))]
            events = [NewEvent("Added", {"n": n}) for n in ns]
            await self.append(stream, events)
            for ev, n in zip(events, ns, strict=True):
                self.added[str(ev.event_id)] = n
                self.totals[stream] += n
            await asyncio.sleep(0.015)

    async def transfer(self, key: str) -> None:
        n = len(self.transfers)
        target = "carol" if n % 4 == 0 else "bob"  # carol's account is closed: compensated
        short = n % 7 == 3  # a timeout that may expire first: the deadline worker's part
        amount = 1 + n % 5
        data = {"source": "alice", "target": target, "amount": amount,
                "timeout": 0.2 if short else 300.0}  # fmt: skip
        await self.append(
            f"transfer-{key}", [NewEvent("TransferRequested", data)], chronik.NO_STREAM
        )
        self.transfers[key] = (target, amount, short)


async def _restarts(pg: PrivatePg, rng: random.Random, times: list[float]) -> None:
    for _ in range(RESTARTS):
        await asyncio.sleep(rng.uniform(0.5, 1.2))
        started = time.monotonic()
        await asyncio.to_thread(pg.restart, "immediate")
        times.append(time.monotonic() - started)


Check = Callable[[EventStore, int], Awaitable[bool]]


def _checkpoint_at_head(name: str) -> Check:
    async def check(store: EventStore, head: int) -> bool:
        return (await store.get_checkpoint(name) or 0) >= head

    return check


async def _caught_up(store: EventStore, procs: dict[str, Proc], checks: dict[str, Check]) -> None:
    """Until every check holds at one head, within CATCH_UP seconds (any process that
    exits meanwhile fails the test at once)."""
    deadline = time.monotonic() + CATCH_UP
    pending = dict(checks)
    while True:
        for kind, p in procs.items():
            assert p.popen.poll() is None, f"the {kind} worker exited:\n{p.tail()}"
        head = await store.head_position()
        for kind in list(pending):
            if await pending[kind](store, head):
                del pending[kind]
        if not pending:
            if await store.head_position() == head:
                return
            pending = dict(checks)  # something appended meanwhile: all again
        elif time.monotonic() > deadline:
            raise AssertionError(
                f"not caught up in {CATCH_UP:.0f}s: {sorted(pending)}\n"
                + "\n".join(procs[k].tail() for k in pending)
            )
        await asyncio.sleep(0.1)


async def _stop(procs: dict[str, Proc]) -> None:
    for p in procs.values():
        assert p.popen.poll() is None, f"the {p.kind} worker exited:\n{p.tail()}"
    for p in procs.values():
        p.popen.send_signal(signal.SIGTERM)
    for p in procs.values():
        code = await asyncio.to_thread(p.popen.wait, 30)
        assert code == 0, f"the {p.kind} worker did not stop cleanly:\n{p.tail()}"


@dataclass
class Run:
    procs: dict[str, Proc]
    restart_seconds: list[float]
    seconds: float


async def _run(
    pg: PrivatePg,
    tmp_path: Path,
    appender: Appender,
    kinds: dict[str, tuple[str, ...]],
    checks: dict[str, Check],
    *,
    transfers: bool = False,
) -> Run:
    """Start the workers, append through RESTARTS restarts, wait until every check holds
    with every worker still running, then stop them with SIGTERM (each must exit 0)."""
    started = time.monotonic()
    rng = random.Random()
    procs: dict[str, Proc] = {}
    try:
        for kind, extra in kinds.items():
            procs[kind] = _spawn(kind, pg.url, tmp_path, *extra)
        await _running(list(procs.values()))
        stop = asyncio.Event()
        writing = asyncio.create_task(appender.run(stop, transfers))
        times: list[float] = []
        try:
            await _restarts(pg, rng, times)
            await asyncio.sleep(0.5)  # appends after the last restart too
        finally:
            stop.set()
            await writing
        await _caught_up(appender.store, procs, checks)
        await _stop(procs)
        for p in procs.values():  # a worker the restarts missed would prove nothing
            assert p.count("retrying"), f"the {p.kind} worker never lost the store:\n{p.tail()}"
    finally:
        for p in procs.values():
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
    return Run(procs, times, time.monotonic() - started)


async def _stored_ids(store: EventStore, appender: Appender) -> list[str]:
    """The ``acct`` events in store order; exactly the ones appended, each once."""
    ids = [str(e.event_id) async for e in store.read_all(categories=["acct"])]
    assert len(ids) == len(set(ids)), "an event is stored twice"
    assert set(ids) == set(appender.added), "the store lost or invented an append"
    return ids


# -- the tests ------------------------------------------------------------------------------------


async def test_store_workers_survive_postgres_restarts(
    private_pg: PrivatePg, tmp_path: Path
) -> None:
    """Projection (CLI), snapshotter and the saga workers, each in its own process."""
    async with await chronik.connect(private_pg.url) as store:
        accounts = chronik.CommandHandler(store, ft.account, registry=ft.registry)
        for name in ("alice", "bob", "carol"):
            await accounts.handle(f"account-{name}", {"type": "Open", "owner": name})
        await accounts.handle("account-alice", {"type": "Credit", "amount": 1_000_000})
        await accounts.handle("account-carol", {"type": "Close"})
        appender = Appender(store, random.Random())

        async def sagas_done(store: EventStore, head: int) -> bool:
            ended = await require(store, SqlStore).query(
                "SELECT count(*) FROM saga_instances WHERE status IN "
                "('completed', 'compensated', 'failed')"
            )
            pending = await require(store, SqlStore).query(
                "SELECT count(*) FROM saga_commands WHERE status = 'pending'"
            )
            at_head = await _checkpoint_at_head("saga:transfer")(store, head)
            return at_head and ended[0][0] == len(appender.transfers) and pending[0][0] == 0

        run = await _run(
            private_pg,
            tmp_path,
            appender,
            {"projections": (), "snapshots": (), "sagas": ()},
            {
                "projections": _checkpoint_at_head("totals:v1"),
                "snapshots": _checkpoint_at_head(f"snapshotter:{rw.SNAPSHOTTER}"),
                "sagas": sagas_done,
            },
            transfers=True,
        )
        assert len(run.restart_seconds) == RESTARTS
        await _stored_ids(store, appender)

        # projection: every Added event applied exactly once, totals as appended
        live = Totals(version=1)
        applied = dict(
            await require(store, SqlStore).query(f"SELECT event_id, n FROM {live.table('applied')}")
        )
        assert set(applied) == set(appender.added), "the projection lost or invented an event"
        assert set(applied.values()) == {1}, "an event was applied twice"
        totals = dict(
            await require(store, SqlStore).query(
                f"SELECT stream, total FROM {live.table('totals')}"
            )
        )
        assert totals == dict(appender.totals)

        # snapshotter: a snapshot at every stream's last version, each equal to a replay
        newest: dict[str, int] = {}
        for snap in await snapshot_store(store).find():
            newest[snap.stream_id] = max(newest.get(snap.stream_id, -1), snap.version)
        versions = {s: await store.stream_version(s) for s in appender.totals}
        assert newest == versions, "a stream's last version has no snapshot"
        assert await verify_snapshots(store, rw.TARGETS, registry=rw.registry) == []

        # sagas: one terminal state each, each command once, balances as the outcomes say
        statuses: dict[str, str] = {}
        for key, (target, _amount, short) in appender.transfers.items():
            inst = await saga_instance(store, ft.transfer_saga, key)
            assert inst is not None and inst.status in TERMINAL, (key, inst)
            assert sum(e.type in ("SagaCompleted", "SagaCompensated", "SagaFailed")
                       for e in inst.events) == 1, (key, inst.events)  # fmt: skip
            statuses[key] = inst.status
            if target == "carol":
                assert inst.status == COMPENSATED, (key, inst.status)
            elif not short:
                assert inst.status == COMPLETED, (key, inst.status)
            else:
                assert inst.status in (COMPLETED, COMPENSATED), (key, inst.status)
        per_command: Counter[str] = Counter()
        for name in ("alice", "bob", "carol"):
            async for ev in store.read_stream(f"account-{name}"):
                if "command_id" in ev.metadata:
                    per_command[ev.metadata["command_id"]] += 1
        assert per_command and set(per_command.values()) == {1}, "a command ran twice"
        moved = {k: a for k, (_t, a, _s) in appender.transfers.items()
                 if statuses[k] == COMPLETED}  # fmt: skip
        balances = {n: (await accounts.load(f"account-{n}")).state.balance
                    for n in ("alice", "bob", "carol")}  # fmt: skip
        assert balances == {
            "alice": 1_000_000 - sum(moved.values()),
            "bob": sum(moved.values()),
            "carol": 0,
        }
        assert await require(store, SqlStore).query("SELECT count(*) FROM saga_deadlines") == [(0,)]
        assert await require(store, SqlStore).query(
            "SELECT count(*) FROM saga_commands WHERE status <> 'done' AND status <> 'rejected'"
        ) == [(0,)]
        assert len(appender.transfers) >= 10
        _report(run, appender)


@pytest.mark.nats
async def test_nats_workers_survive_postgres_restarts(
    private_pg: PrivatePg, tmp_path: Path
) -> None:
    """The outbox relay and an inbox of what it publishes, each in its own process."""
    require_service("NATS", NATS_URL)
    import nats

    from chronik.nats import ensure_stream

    name = f"chronik_r_{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, name, [f"{name}.>"], duplicate_window=120)
    try:
        async with await chronik.connect(private_pg.url) as store:
            async with store.transaction() as tx:
                await tx.execute(
                    "CREATE TABLE inbox_effects (message_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
                )
            appender = Appender(store, random.Random())

            async def inbox_done(store: EventStore, head: int) -> bool:
                """Every message processed or dead-lettered (which the test then fails)."""
                rows = await require(store, SqlStore).query(
                    "SELECT (SELECT count(*) FROM processed_messages WHERE consumer = :c) "
                    "+ (SELECT count(*) FROM inbox_dead_letters WHERE consumer = :c)",
                    {"c": rw.INBOX},
                )
                return bool(rows[0][0] == len(appender.added))

            run = await _run(
                private_pg,
                tmp_path,
                appender,
                {"relay": (NATS_URL, name), "inbox": (NATS_URL, name)},
                {"relay": _checkpoint_at_head(f"relay:{name}"), "inbox": inbox_done},
            )
            ids = await _stored_ids(store, appender)

            # relay: JetStream holds the event ids in store order, each once
            info = await js.stream_info(name)
            published: list[str] = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                published.append((msg.headers or {})["Nats-Msg-Id"])
            assert len(published) == len(set(published)), "a message is in JetStream twice"
            assert published == ids, "JetStream lost, reordered or invented a message"

            # inbox: every message's effect exactly once, nothing dead-lettered
            dead = await require(store, SqlStore).query(
                "SELECT message_id, error FROM inbox_dead_letters"
            )
            assert dead == [], "a lost store was taken for a failing message"
            effects = dict(
                await require(store, SqlStore).query("SELECT message_id, n FROM inbox_effects")
            )
            assert set(effects) == set(ids)
            assert set(effects.values()) == {1}, "a message took effect twice"
            _report(run, appender)
    finally:
        await js.delete_stream(name)
        await nc.close()


def _report(run: Run, appender: Appender) -> None:
    """What happened (shown with ``pytest -rP``)."""
    restarts = ", ".join(f"{s:.1f}s" for s in run.restart_seconds)
    print(f"{len(run.restart_seconds)} restarts ({restarts}); {len(appender.added)} events, "
          f"{len(appender.transfers)} transfers, {appender.retried} appends retried; "
          f"{run.seconds:.1f}s")  # fmt: skip
    for kind, p in run.procs.items():
        print(f"  {kind}: {p.count('retrying')} retries logged, "
              f"{p.count('resum')} resumptions")  # fmt: skip
