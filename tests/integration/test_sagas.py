"""Sagas: steps, compensation in reverse order, durable deadlines, idempotent redelivery,
and kill -9 of the saga workers (every saga ends in exactly one terminal state, every
command executed exactly once)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from examples import funds_transfer as ft

import chronik
from chronik.sagas import (
    COMPENSATED,
    COMPLETED,
    CommandDispatcher,
    DeadlineWorker,
    IssuedCommand,
    Reaction,
    Saga,
    SagaCommand,
    SagaRunner,
    command_id_for,
    saga_instance,
)
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore

ROOT = Path(__file__).parent.parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sagas.db"
    return str(request.getfixturevalue("pg_url"))


Handler = chronik.CommandHandler[dict[str, Any], object, ft.Account]


async def _accounts(store: EventStore) -> Handler:
    handler = chronik.CommandHandler(store, ft.account, registry=ft.registry)
    for name in ("alice", "bob", "carol"):
        await handler.handle(f"account-{name}", {"type": "Open", "owner": name})
    await handler.handle("account-alice", {"type": "Credit", "amount": 100})
    await handler.handle("account-carol", {"type": "Close"})
    return handler


async def _balance(handler: Handler, n: str) -> int:
    return (await handler.load(f"account-{n}")).state.balance


async def test_transfer_completes_and_rejected_credit_is_compensated(url: str) -> None:
    async with await chronik.connect(url) as store:
        handler = await _accounts(store)
        await ft.request_transfer(store, "t1", "alice", "bob", 30)
        await ft.request_transfer(store, "t2", "alice", "carol", 20)
        assert await saga_instance(store, ft.transfer_saga, "t1") is None  # pending
        await ft.settle(store)
        t1 = await saga_instance(store, ft.transfer_saga, "t1")
        t2 = await saga_instance(store, ft.transfer_saga, "t2")
        assert t1 is not None and t1.status == COMPLETED
        assert t2 is not None and t2.status == COMPENSATED
        assert [e.type for e in t2.events][-2:] == ["SagaCompensating", "SagaCompensated"]
        assert (await _balance(handler, "alice"), await _balance(handler, "bob")) == (70, 30)
        assert await _balance(handler, "carol") == 0
        # the whole flow shares the request's correlation id (chronik trace)
        first = await anext(aiter(store.read_stream("transfer-t2")))
        flow = await store.read_correlation(str(first.correlation_id))
        assert {e.type for e in flow} >= {"TransferRequested", "Debited", "Credited"}
        assert any(e.type == "SagaCommandRejected" for e in flow)


async def test_redelivered_events_issue_nothing_new(url: str) -> None:
    async with await chronik.connect(url) as store:
        await _accounts(store)
        await ft.request_transfer(store, "t1", "alice", "bob", 30)
        await ft.settle(store)
        rows_before = await require(store, SqlStore).query("SELECT count(*) FROM saga_commands")
        # a second runner without the checkpoint re-reads everything: nothing new issued
        await require(store, SqlStore).query("SELECT 1")
        runner = SagaRunner(store, ft.transfer_saga)
        async with store.transaction() as tx:
            await tx.set_checkpoint(runner.checkpoint_name, 0)
        while await runner.run_once():
            pass
        assert (
            await require(store, SqlStore).query("SELECT count(*) FROM saga_commands")
            == rows_before
        )
        inst = await saga_instance(store, ft.transfer_saga, "t1")
        assert inst is not None and inst.status == COMPLETED


async def test_compensation_runs_in_reverse_order(url: str) -> None:
    executed: list[str] = []

    def react(state: object, event: chronik.RecordedEvent) -> Reaction:
        if event.type == "Go":
            return Reaction(
                commands=[
                    SagaCommand(f"thing-{n}", "Do", {"n": n}, step=f"s{n}",
                                compensation=SagaCommand(f"thing-{n}", "Undo", {"n": n}))
                    for n in (1, 2, 3)
                ] + [SagaCommand("thing-4", "Fail", step="s4")]
            )  # fmt: skip
        return Reaction()

    saga: Saga[None] = Saga(
        name="multi",
        categories=["job"],
        correlate=lambda e: e.stream_id.partition("-")[2],
        react=react,
        initial_state=lambda: None,
    )

    async def execute(cmd: IssuedCommand) -> None:
        executed.append(f"{cmd.type}{cmd.data.get('n', '')}")
        if cmd.type == "Fail":
            raise chronik.sagas.CommandRejected("no")

    async with await chronik.connect(url) as store:
        await store.append("job-1", [chronik.NewEvent("Go", {})])
        runner = SagaRunner(store, saga)
        dispatcher = CommandDispatcher(store, [saga], execute)
        for _ in range(10):
            if not (await runner.run_once() + await dispatcher.run_once()):
                break
        assert executed == ["Do1", "Do2", "Do3", "Fail", "Undo3", "Undo2", "Undo1"]
        inst = await saga_instance(store, saga, "1")
        assert inst is not None and inst.status == COMPENSATED


async def test_deadline_is_durable_fires_and_is_cancelled(url: str) -> None:
    now = [1000.0]
    async with await chronik.connect(url) as store:
        await _accounts(store)
        await store.append(
            "transfer-slow",
            [chronik.NewEvent("TransferRequested",
                              {"source": "alice", "target": "bob", "amount": 5, "timeout": 60})],
        )  # fmt: skip
        await store.append(
            "transfer-fast",
            [chronik.NewEvent("TransferRequested",
                              {"source": "alice", "target": "bob", "amount": 5, "timeout": 60})],
        )  # fmt: skip
        runner = SagaRunner(store, ft.transfer_saga, clock=lambda: now[0])
        await runner.run_once()
        assert len(await require(store, SqlStore).query("SELECT name FROM saga_deadlines")) == 2
    # a restart: the deadlines are in the database
    async with await chronik.connect(url) as store:
        runner = SagaRunner(store, ft.transfer_saga, clock=lambda: now[0])
        dispatcher = CommandDispatcher(
            store, [ft.transfer_saga], ft.account_executor(store),
            rejected_by=(ft.AccountRejected,),
        )  # fmt: skip
        deadlines = DeadlineWorker(store, [ft.transfer_saga], clock=lambda: now[0])
        assert await deadlines.run_once() == 0  # not due yet
        # "fast" runs to completion, which cancels its deadline
        await dispatcher.run_once(limit=1)  # debit of slow
        await dispatcher.run_once(limit=1)  # debit of fast
        await runner.run_once()
        # only fast's credit is executed before the deadline
        rows = await require(store, SqlStore).query(
            "SELECT command_id FROM saga_commands WHERE status = 'pending' AND saga_key = 'fast'"
        )
        assert len(rows) == 1
        await require(store, SqlStore).query("SELECT 1")
        async with store.transaction() as tx:  # hold slow's credit back (as if stuck)
            await tx.execute("UPDATE saga_commands SET status = 'held' WHERE saga_key = 'slow'")
        await dispatcher.run_once()
        await runner.run_once()
        fast = await saga_instance(store, ft.transfer_saga, "fast")
        assert fast is not None and fast.status == COMPLETED
        assert [
            r[0]
            for r in await require(store, SqlStore).query("SELECT saga_key FROM saga_deadlines")
        ] == ["slow"]
        now[0] += 61
        assert await deadlines.run_once() == 1
        await runner.run_once()
        inst = await saga_instance(store, ft.transfer_saga, "slow")
        assert inst is not None and inst.status == "compensating"  # the credit is in flight
        async with store.transaction() as tx:  # the stuck credit gets through after all
            await tx.execute("UPDATE saga_commands SET status = 'pending' WHERE status = 'held'")
        for _ in range(5):
            await runner.run_once()
            await dispatcher.run_once()
        slow = await saga_instance(store, ft.transfer_saga, "slow")
        assert slow is not None and slow.status == COMPENSATED
        assert slow.record["reason"] == "timed out"
        handler = chronik.CommandHandler(store, ft.account, registry=ft.registry)
        assert (await _balance(handler, "alice"), await _balance(handler, "bob")) == (95, 5)


def test_command_ids_are_deterministic() -> None:
    a = command_id_for("transfer", "e1", "debit")
    assert a == command_id_for("transfer", "e1", "debit")
    assert a != command_id_for("transfer", "e2", "debit")


def test_saga_names_are_checked() -> None:
    with pytest.raises(ValueError):
        Saga(name="a-b", categories=[], correlate=lambda e: None,
             react=lambda s, e: Reaction(), initial_state=lambda: None)  # fmt: skip


# -- kill -9 ------------------------------------------------------------------------------


def _worker(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.saga_worker", url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_kill_9_saga_workers(url: str) -> None:
    rng = random.Random(8)
    n = 40
    async with await chronik.connect(url) as store:
        handler = await _accounts(store)
        await handler.handle("account-alice", {"type": "Credit", "amount": 10_000})
        for i in range(n):
            target = "carol" if i % 4 == 0 else "bob"  # every 4th credit is rejected
            await ft.request_transfer(store, f"k{i}", "alice", target, 1 + i % 3)
        kills = 0
        for _ in range(12):
            proc = _worker(url)
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = _worker(url)
        try:
            for _ in range(600):
                rows = await require(store, SqlStore).query(
                    "SELECT count(*) FROM saga_instances WHERE status IN "
                    "('completed', 'compensated', 'failed')"
                )
                if rows[0][0] == n:
                    break
                await asyncio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        statuses: Counter[str] = Counter()
        for i in range(n):
            inst = await saga_instance(store, ft.transfer_saga, f"k{i}")
            assert inst is not None
            statuses[inst.status] += 1
        assert statuses == {COMPLETED: 30, COMPENSATED: 10}, statuses
        # every command executed exactly once: count the events carrying each command id
        per_command: Counter[str] = Counter()
        for name in ("alice", "bob", "carol"):
            async for ev in store.read_stream(f"account-{name}"):
                if "command_id" in ev.metadata:
                    per_command[ev.metadata["command_id"]] += 1
        assert per_command and set(per_command.values()) == {1}
        done = await require(store, SqlStore).query(
            "SELECT count(*) FROM saga_commands WHERE status = 'done' AND type IN "
            "('Debit', 'Credit')"
        )
        assert done[0][0] == len(per_command)
        expected_alice = 10_100 - sum(1 + i % 3 for i in range(n) if i % 4 != 0)
        assert await _balance(handler, "alice") == expected_alice
        assert kills == 12


def test_cli_sagas_status_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from chronik.cli.main import main

    url = f"sqlite:///{tmp_path}/cli.db"
    asyncio.run(ft.main(url))
    capsys.readouterr()
    assert main(["--store", url, "sagas", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {(r["status"], r["count"]) for r in status["instances"]} == {
        ("completed", 1),
        ("compensated", 1),
    }
    # `chronik sagas run` starts the workers and stops cleanly on SIGTERM
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronik", "--store", url, "sagas", "run",
         "examples.funds_transfer:workers"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "running 3 saga workers ..."
    assert b"running 3 saga workers" in first
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    proc.stderr.close()


async def test_saga_state_is_events_in_the_instance_stream(url: str) -> None:
    from chronik.integrity import check

    async with await chronik.connect(url) as store:
        await _accounts(store)
        await ft.request_transfer(store, "t2", "alice", "carol", 20)  # carol is closed
        await ft.settle(store)
        own = [e async for e in store.read_stream("saga_transfer-t2")]
        types = [e.type for e in own if not e.type.startswith("SagaCommand")]
        assert types == ["TransferStarted", "TransferDebited", "SagaCompensating",
                         "SagaCompensated"]  # fmt: skip
        instance = await saga_instance(store, ft.transfer_saga, "t2")
        assert instance is not None and [e.type for e in instance.events] == types
        # caused by its trigger, in the request's correlation: chronik trace shows them
        request = await anext(aiter(store.read_stream("transfer-t2")))
        started = own[0]
        assert started.causation_id == str(request.event_id)
        flow = {e.event_id for e in await store.read_correlation(str(request.correlation_id))}
        assert {e.event_id for e in own} <= flow
        report = await check(store)
        assert report.ok, report
        assert await require(store, SqlStore).query("SELECT count(*) FROM saga_events") == [(0,)]


async def test_a_store_with_saga_events_rows_is_upgraded_and_keeps_running(url: str) -> None:
    # a transfer that was running when the store was written by chronik 0.1: its own events
    # live in saga_events rows; the runner moves them to the stream when it starts
    async with await chronik.connect(url) as store:
        await _accounts(store)
        await ft.request_transfer(store, "t1", "alice", "bob", 30)
        runner = SagaRunner(store, ft.transfer_saga)
        await runner.run_once()  # the request: TransferStarted, the debit issued
        started = [e async for e in store.read_stream("saga_transfer-t1")]
        assert [e.type for e in started] == ["TransferStarted"]
        # rewrite it the 0.1 way: no stream, a saga_events row
        async with store.transaction() as tx:
            await tx.execute(
                "INSERT INTO saga_events (saga, saga_key, seq, type, data, position) "
                "VALUES ('transfer', 't1', 1, 'TransferStarted', :data, :position)",
                {"data": started[0].raw_data.decode(), "position": started[0].position},
            )
            await tx.execute(  # test-only surgery: chronik never deletes an event
                "DELETE FROM events WHERE stream_id = 'saga_transfer-t1'"
            )
        await ft.settle(store)  # a new runner: upgrades, then goes on
        t1 = await saga_instance(store, ft.transfer_saga, "t1")
        assert t1 is not None and t1.status == COMPLETED
        assert [e.type for e in t1.events] == ["TransferStarted", "TransferDebited",
                                               "TransferCredited", "SagaCompleted"]  # fmt: skip
        assert await require(store, SqlStore).query("SELECT count(*) FROM saga_events") == [(0,)]


def test_saga_specification_without_a_database() -> None:
    from chronik.sagas import Deadline, SagaEvent
    from chronik.testing import SagaSpecification, recorded

    spec = SagaSpecification(ft.transfer_saga)
    request = recorded(
        "transfer-t9", "TransferRequested", {"source": "a", "target": "b", "amount": 5}
    )
    reaction = (
        spec.given()
        .when(request)
        .then_events([SagaEvent("TransferStarted", {"source": "a", "target": "b", "amount": 5})])
    )
    assert reaction.schedule == [Deadline("timeout", 30.0)]
    debit_done = recorded("saga_transfer-t9", "SagaCommandSucceeded", {"step": "debit"})
    spec.given(request).when(debit_done).then_commands(
        [
            SagaCommand("account-b", "Credit", {"amount": 5, "transfer_id": "t9"},
                        step="credit",
                        compensation=SagaCommand("account-b", "Debit",
                                                 {"amount": 5, "transfer_id": "t9"},
                                                 step="reverse-credit"))
        ]
    )  # fmt: skip
    spec.given(request).when(recorded("saga_transfer-t9", "SagaDeadlineExpired")).then_compensates(
        "timed out"
    )
    with pytest.raises(AssertionError, match="expected commands"):
        spec.given().when(request).then_commands([])  # the specification can fail


async def test_an_event_the_saga_cannot_handle_is_dead_lettered_and_others_go_on(
    url: str,
) -> None:
    def react(state: None, event: chronik.RecordedEvent) -> Reaction:
        if event.data.get("bad"):
            raise RuntimeError("cannot react to this one")
        return Reaction(events=[chronik.sagas.SagaEvent("Seen", {})], complete=True)

    def correlate(event: chronik.RecordedEvent) -> str | None:
        return {"job-odd": "", "job-long": "x" * 300}.get(event.stream_id, event.stream_id[4:])

    saga: Saga[None] = Saga(name="picky", categories=["job"], correlate=correlate,
                            react=react, initial_state=lambda: None)  # fmt: skip
    async with await chronik.connect(url) as store:
        for stream, data in [("job-1", {}), ("job-2", {"bad": True}), ("job-odd", {}),
                             ("job-long", {}), ("job-3", {})]:  # fmt: skip
            last = await store.append(stream, [chronik.NewEvent("Go", data)])
        runner = SagaRunner(store, saga)
        runner.retry_backoff = 0.0
        assert await runner.catch_up() == 5
        letters = await store.dead_letters("saga:picky")
        assert sorted(d.stream_id for d in letters) == ["job-2", "job-long", "job-odd"]
        assert runner.dead_lettered == 3 and runner.state == "idle"
        for key in ("1", "3"):  # the instances after the poison ran
            inst = await saga_instance(store, saga, key)
            assert inst is not None and inst.status == COMPLETED
        assert (await store.get_checkpoint("saga:picky") or 0) >= last.position
        stopper = SagaRunner(store, saga)
        stopper.on_poison = "stop"
        stopper.retry_backoff = 0.0
        await store.append("job-4", [chronik.NewEvent("Go", {"bad": True})])
        with pytest.raises(chronik.FollowerFailed, match="cannot react"):
            await stopper.catch_up()


async def test_a_failing_command_is_retried_with_backoff_while_others_go_on(url: str) -> None:
    """Before, a failed command was released and run again at the next poll (0.2 s): five
    attempts in about a second, too fast for the other service to come back."""
    failures = Counter[str]()
    executed: list[str] = []
    now = [100.0]

    def react(state: None, event: chronik.RecordedEvent) -> Reaction:
        return Reaction(
            commands=[SagaCommand("thing-1", "Flaky", step="a"),
                      SagaCommand("thing-2", "Fine", step="b")]
        )  # fmt: skip

    async def execute(cmd: IssuedCommand) -> None:
        executed.append(cmd.type)
        if cmd.type == "Flaky" and failures[cmd.type] < 2:
            failures[cmd.type] += 1
            raise ConnectionError("the other service is down")

    saga: Saga[None] = Saga(name="flaky", categories=["job"], react=react,
                            correlate=lambda e: e.stream_id[4:],
                            initial_state=lambda: None)  # fmt: skip
    async with await chronik.connect(url) as store:
        await store.append("job-1", [chronik.NewEvent("Go", {})])
        await SagaRunner(store, saga).run_once()
        dispatcher = CommandDispatcher(store, [saga], execute, clock=lambda: now[0])
        assert [dispatcher.retry_delay(n) for n in range(1, 9)] == [
            0.5, 1, 2, 4, 8, 16, 30, 30
        ]  # fmt: skip
        assert await dispatcher.run_once() == 1  # Flaky failed, Fine done
        assert executed == ["Flaky", "Fine"]
        for step, done in [(0.0, 0), (0.49, 0), (0.01, 0), (0.99, 0), (0.01, 1)]:
            now[0] += step
            assert await dispatcher.run_once() == done
        # runs at +0.5 (failed again: waits 1 s) and +1.5 (succeeded)
        assert executed == ["Flaky", "Fine", "Flaky", "Flaky"]
        rows = await require(store, SqlStore).query(
            "SELECT type, status, attempts FROM saga_commands ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [("Flaky", "done", 3), ("Fine", "done", 1)]


async def test_a_command_that_keeps_failing_is_rejected_after_max_attempts(url: str) -> None:
    saga: Saga[None] = Saga(
        name="doomed", categories=["job"], correlate=lambda e: e.stream_id[4:],
        react=lambda s, e: Reaction(commands=[SagaCommand("thing-1", "Never", step="a")])
        if e.type == "Go" else Reaction(), initial_state=lambda: None,
    )  # fmt: skip

    async def execute(cmd: IssuedCommand) -> None:
        raise RuntimeError("always")

    async with await chronik.connect(url) as store:
        await store.append("job-1", [chronik.NewEvent("Go", {})])
        runner = SagaRunner(store, saga)
        await runner.run_once()
        dispatcher = CommandDispatcher(store, [saga], execute, max_attempts=3, retry_backoff=0)
        assert [await dispatcher.run_once() for _ in range(4)] == [0, 0, 1, 0]
        await runner.run_once()
        events = {e.type: e async for e in store.read_stream("saga_doomed-1")}
        assert list(events)[-1] == "SagaCompensated"  # nothing to undo: the saga ends
        reason = events["SagaCommandRejected"].data["reason"]
        assert reason == "failed 3 times: RuntimeError('always')"
        with pytest.raises(ValueError):
            CommandDispatcher(store, [saga], execute, retry_backoff=2, max_backoff=1)


async def test_two_dispatchers_execute_each_command_once(url: str) -> None:
    """A rolling deploy overlaps two `chronik sagas run`: the claim keeps each command to
    one dispatcher (before claims, 150 orders gave 291 executions)."""
    executed: Counter[str] = Counter()

    async def execute(cmd: IssuedCommand) -> None:
        executed[str(cmd.command_id)] += 1
        await asyncio.sleep(0.001)  # let the other dispatcher interleave

    def react(state: None, event: chronik.RecordedEvent) -> Reaction:
        n = event.stream_id.partition("-")[2]
        return Reaction(commands=[SagaCommand(f"stock-{n}", "Reserve", step="reserve")])

    saga: Saga[None] = Saga(name="twice", categories=["order"],
                            correlate=lambda e: e.stream_id.partition("-")[2],
                            react=react, initial_state=lambda: None)  # fmt: skip
    async with await chronik.connect(url) as store, await chronik.connect(url) as other:
        for n in range(30):
            await store.append(f"order-{n}", [chronik.NewEvent("Placed", {})])
        assert await SagaRunner(store, saga).catch_up() == 30
        first = CommandDispatcher(store, [saga], execute, remote=True)
        second = CommandDispatcher(other, [saga], execute, remote=True)
        for _ in range(20):
            done = await asyncio.gather(first.run_once(limit=7), second.run_once(limit=7))
            if not any(done):
                break
    assert len(executed) == 30
    assert set(executed.values()) == {1}
