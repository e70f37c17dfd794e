"""kill -9 of a real projection worker, many times: nothing lost, nothing applied twice.

The worker is ``chronik projections run`` in its own process. It is killed at random moments
and at named failpoints (inside the batch transaction before and after the handlers, and
right after commit) while a writer keeps appending. After a final clean run, the read model
must equal a from-scratch rebuild and every event's applied-count must be exactly 1.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import chronik
from chronik import NewEvent
from chronik.projections import ProjectionRunner
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore
from tests.integration.crash_app import Totals

ROOT = Path(__file__).parent.parent.parent


def _worker(url: str, failpoint: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CHRONIK_FAILPOINT", None)
    if failpoint:
        env["CHRONIK_FAILPOINT"] = failpoint
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chronik",
            "--store",
            url,
            "projections",
            "run",
            "tests.integration.crash_app:projections",
            "--batch-size",
            "40",
            "--interval",
            "0.05",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _append_some(store: EventStore, rng: random.Random, count: int) -> None:
    for _ in range(count):
        stream = f"acct-{rng.randrange(25)}"
        events = [
            NewEvent("Added", {"n": rng.randrange(1, 100)}) for _ in range(rng.randint(1, 20))
        ]
        if rng.random() < 0.2:
            events.append(NewEvent("Ignored", {"n": 0}))
        await store.append(stream, events)


async def _running(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the worker's "running ..." line on stderr."""
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 60)
        if not line or b"running" in line:
            return


async def _crash_many_times(url: str, rounds: int) -> None:
    rng = random.Random()
    async with await chronik.connect(url) as store:
        await _append_some(store, rng, 60)
        kills = 0
        for round_ in range(rounds):
            failpoint = [None, "before_handle:0.3", "after_handle:0.3", "after_commit:0.3"][
                round_ % 4
            ]
            proc = _worker(url, failpoint)
            writer = asyncio.create_task(_append_some(store, rng, 15))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            if proc.stderr:
                proc.stderr.close()
            kills += proc.returncode == -signal.SIGKILL
            await writer
        assert kills >= rounds // 2, f"only {kills} of {rounds} rounds ended in a kill"
        # a final clean run catches up and stops gracefully on SIGTERM (sent only once it
        # says it is running: before that its SIGTERM handler is not installed yet)
        proc = _worker(url)
        await _running(proc)
        head = await store.head_position()
        for _ in range(600):
            if (await store.get_checkpoint("totals:v1") or 0) >= head:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        assert (await store.get_checkpoint("totals:v1") or 0) >= head

        live = Totals(version=1)
        fresh = Totals(version=99)
        fresh.name = "totals_rebuild"
        await ProjectionRunner(store, [fresh]).catch_up()
        expected = sorted(
            await require(store, SqlStore).query(
                f"SELECT stream, total FROM {fresh.table('totals')}"
            )
        )
        actual = sorted(
            await require(store, SqlStore).query(
                f"SELECT stream, total FROM {live.table('totals')}"
            )
        )
        assert actual == expected
        counts = [
            row[0]
            for row in await require(store, SqlStore).query(
                f"SELECT n FROM {live.table('applied')}"
            )
        ]
        handled = await store.count_events(types=["Added"])
        assert len(counts) == handled
        assert set(counts) == {1}


@pytest.mark.slow
async def test_kill_9_sqlite_worker(tmp_path: Path) -> None:
    await _crash_many_times(f"sqlite:///{tmp_path}/crash.db", rounds=12)


@pytest.mark.slow
@pytest.mark.postgres
async def test_kill_9_postgres_worker(pg_url: str) -> None:
    await _crash_many_times(pg_url, rounds=12)
