"""Pausing a projection: its runners hold, in this process and in others; resume goes on
from the checkpoint with nothing skipped and nothing applied twice; a stop while paused
applies nothing; bad requests are typed errors that change nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import chronik
from chronik.projections import ProjectionRunner
from chronik.projections.control import (
    pause_projection,
    paused_projections,
    resume_projection,
)
from chronik.store.protocol import EventStore
from tests.integration.test_projections import Balances, applied_counts, deposit, read_model

ROOT = Path(__file__).parent.parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/p.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    async with await chronik.connect(store_url) as s:
        yield s


async def _until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_pause_holds_the_runner_and_resume_applies_the_rest_once(store: EventStore) -> None:
    p = Balances()
    runner = ProjectionRunner(store, [p], batch_size=7, poll_interval=0.05)
    follower = runner.follower(p.name)
    async with runner:
        for n in range(1, 21):
            await deposit(store, f"acct-{n % 3}", n)
        await runner.wait_for(await store.head_position(), timeout=20)
        before = await read_model(store, p)

        paused = await pause_projection(store, p.name, by="test: maintenance")
        assert paused.by == "test: maintenance"
        assert (await paused_projections(store))[p.name].by == "test: maintenance"
        held_at = follower.checkpoint
        for n in range(21, 61):
            await deposit(store, f"acct-{n % 3}", n)

        async def holding() -> bool:
            return follower.state == "paused"

        await _until(holding, "the runner to hold")
        assert follower.checkpoint == held_at  # nothing applied past the pause...
        assert await read_model(store, p) == before  # ...and nothing half-applied
        (status,) = await runner.status()
        assert status.state == "paused" and status.lag_events == 40

        # a second pause keeps the first one's time and reason
        again = await pause_projection(store, p.name, by="someone else")
        assert again.paused_at == paused.paused_at and again.by == "test: maintenance"

        assert await resume_projection(store, p.name) is True
        assert await resume_projection(store, p.name) is False  # not paused any more
        await runner.wait_for(await store.head_position(), timeout=20)
        assert follower.state == "running"
    expected: dict[str, int] = {}
    for n in range(1, 61):
        expected[f"acct-{n % 3}"] = expected.get(f"acct-{n % 3}", 0) + n
    assert await read_model(store, p) == expected
    assert sorted(set(await applied_counts(store, p))) == [1]  # every event exactly once


async def test_stop_while_paused_applies_nothing_and_a_new_runner_resumes(
    store: EventStore,
) -> None:
    p = Balances()
    runner = ProjectionRunner(store, [p], batch_size=5, poll_interval=0.05)
    follower = runner.follower(p.name)
    await runner.start()
    await deposit(store, "acct-1", 1)
    await runner.wait_for(await store.head_position(), timeout=20)
    await pause_projection(store, p.name)
    for n in range(2, 12):
        await deposit(store, "acct-1", n)

    async def holding() -> bool:
        return follower.state == "paused"

    await _until(holding, "the runner to hold")
    await runner.stop(grace=10)  # ends at once: the held page is left unapplied
    assert follower.state == "stopped"
    assert await store.get_checkpoint(p.checkpoint_name) == follower.checkpoint
    assert await read_model(store, p) == {"acct-1": 1}

    await resume_projection(store, p.name)
    second = ProjectionRunner(store, [Balances()], poll_interval=0.05)
    async with second:
        await second.wait_for(await store.head_position(), timeout=20)
    assert await read_model(store, p) == {"acct-1": sum(range(1, 12))}
    assert sorted(set(await applied_counts(store, p))) == [1]


async def test_catch_up_and_rebuild_are_not_held(store: EventStore) -> None:
    """Direct calls are operator actions: a paused projection can still be rebuilt."""
    p = Balances()
    runner = ProjectionRunner(store, [p])
    await runner.setup()
    await deposit(store, "acct-1", 5)
    await pause_projection(store, p.name)
    assert await asyncio.wait_for(runner.catch_up(), 20) == 1
    assert await asyncio.wait_for(runner.rebuild(p.name), 20) == 1
    assert await read_model(store, p) == {"acct-1": 5}
    assert p.name in await paused_projections(store)  # still paused for the runners


async def test_bad_requests_are_typed_and_change_nothing(store: EventStore) -> None:
    p = Balances()
    await ProjectionRunner(store, [p]).setup()
    with pytest.raises(chronik.UnknownProjection, match="nope"):
        await pause_projection(store, "nope")
    with pytest.raises(chronik.UnknownProjection):
        await resume_projection(store, "nope")
    with pytest.raises(chronik.InvalidArgument, match="by"):
        await pause_projection(store, p.name, by="x" * 501)
    for text in ("a\x00b", "a\ud800b"):
        with pytest.raises(chronik.InvalidArgument, match="by"):
            await pause_projection(store, p.name, by=text)
        with pytest.raises(chronik.InvalidArgument, match="name"):
            await pause_projection(store, text)
        with pytest.raises(chronik.InvalidArgument, match="name"):
            await resume_projection(store, text)
    assert await paused_projections(store) == {}
    async with await chronik.connect("memory://") as memory:
        with pytest.raises(chronik.MissingCapability):
            await pause_projection(memory, p.name)
        assert await paused_projections(memory) == {}


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chronik", "--store", url, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_pause_from_the_cli_holds_a_runner_in_another_process(store_url: str) -> None:
    from examples import loyalty

    async def setup() -> None:
        async with await chronik.connect(store_url) as store:
            await ProjectionRunner(store, loyalty.projections()).setup()

    async def order(n: int) -> None:
        async with await chronik.connect(store_url) as store:
            placed = chronik.NewEvent("OrderPlaced", {"customer": "c", "total_eur": 1})
            await store.append(f"order-{n}", [placed])

    async def points() -> int:
        async with await chronik.connect(store_url) as store:
            return await loyalty.points_of(store, "c")

    def until_points(expected: int) -> None:
        deadline = time.monotonic() + 20
        while asyncio.run(points()) != expected:
            assert time.monotonic() < deadline, f"timed out waiting for {expected} points"
            time.sleep(0.05)

    asyncio.run(setup())
    # paused before any runner committed a checkpoint: status still lists it (red team)
    done = _cli(store_url, "--json", "projections", "pause", "loyalty_points")
    listed = json.loads(_cli(store_url, "--json", "projections", "status").stdout)
    assert [(r["name"], r["checkpoint"]) for r in listed] == [("loyalty_points", 0)]
    assert listed[0]["paused_at"] is not None
    _cli(store_url, "projections", "resume", "loyalty_points")
    runner = subprocess.Popen(
        [sys.executable, "-m", "chronik", "--store", store_url, "projections", "run",
         "examples.loyalty:projections", "--interval", "0.05"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        asyncio.run(order(1))
        until_points(10)

        done = _cli(store_url, "--json", "projections", "pause", "loyalty_points", "--by", "ops")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["paused_by"] == "ops"
        status = _cli(store_url, "--json", "projections", "status")
        assert json.loads(status.stdout)[0]["paused_at"] is not None
        asyncio.run(order(2))
        asyncio.run(order(3))
        time.sleep(1.0)  # the runner had time to apply them, and must not
        assert asyncio.run(points()) == 10

        done = _cli(store_url, "--json", "projections", "resume", "loyalty_points")
        assert json.loads(done.stdout) == {
            "name": "loyalty_points", "paused": False, "was_paused": True,
        }  # fmt: skip
        until_points(30)
        unknown = _cli(store_url, "projections", "pause", "nope")
        assert unknown.returncode == 1 and "no projection 'nope'" in unknown.stderr
    finally:
        runner.terminate()
        out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0, out
    assert b"Traceback" not in out
