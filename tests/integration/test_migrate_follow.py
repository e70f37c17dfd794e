"""Zero-downtime migration: ``copy --follow`` under a live writer process, kill -9 of the
copier five times, then ``cutover`` while the writer keeps writing through
:class:`chronik.migrate.MigratingStore`; a dual-writer and the copier at once; cancellation
of the follower at any moment.

Checkers compare what the writer attempted, what either store acknowledged and what the
target holds (RELIABILITY.md): every acknowledged event exactly once, nothing unexpected,
per-stream versions gapless and in acknowledgement order; each checker is run on a broken
copy of the data too, which it must catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import chronik
import chronik.store
from chronik import NewEvent, RecordedEvent
from chronik.migrate import (
    CopyFollower,
    MigratingStore,
    cancel_cutover,
    copy_store,
    cutover,
    map_checkpoint,
    verify_copy,
)
from chronik.store.port import Fencing
from chronik.store.postgres import PostgresEventStore
from tests.integration.test_migrate_copy import fill, history

ROOT = Path(__file__).parent.parent.parent
APP = "examples.financial_transactions:app"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def follow(source: str, target: str, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "chronik", "--json", "migrate", "copy", "--follow"),
            *("--from", source, "--to", target, "--batch-size", "300"),
            *("--poll-interval", "0.5", "--report-interval", "0.2", *options),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chronik", "migrate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def writer(
    source: str, target: str, log: Path, stop: Path, name: str, *, dual: bool = False
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.integration.migrate_writer"),
            *(source, target, str(log), str(stop), name, *(["dual"] if dual else [])),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


@dataclass
class History:
    """A writer's history, read back from its JSONL log."""

    acknowledged: dict[str, list[list[str]]] = field(default_factory=dict)
    """stream -> the ids of each ok append, in order"""
    attempted: set[str] = field(default_factory=set)
    failed_last: set[str] = field(default_factory=set)
    """ids whose last outcome is a failure (never acknowledged afterwards)"""
    errors: Counter[str] = field(default_factory=Counter)
    acknowledged_after_switch: int = 0
    dual: int = 0

    @classmethod
    def read(cls, path: Path) -> History:
        h = cls()
        last: dict[str, str] = {}
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            ids = rec["ids"]
            if rec["op"] == "invoke":
                h.attempted.update(ids)
            elif rec["op"] == "ok":
                h.acknowledged.setdefault(rec["stream"], []).append(ids)
                h.acknowledged_after_switch += bool(rec["switched"])
                for i in ids:
                    last[i] = "ok"
            elif rec["op"] in ("fail", "info"):
                h.errors[rec["error"].split(":")[0]] += 1
                for i in ids:
                    last.setdefault(i, "fail")
            elif rec["op"] == "dual":
                h.dual += 1
        h.failed_last = {i for i, outcome in last.items() if outcome == "fail"}
        return h

    @property
    def ok_ids(self) -> set[str]:
        return {i for appends in self.acknowledged.values() for ids in appends for i in ids}


def check(h: History, stored: list[RecordedEvent], prefilled: set[str]) -> list[str]:
    """What is wrong with ``stored`` given the writer's history (empty: nothing)."""
    problems = []
    ids = [str(e.event_id) for e in stored]
    counts = Counter(ids)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if duplicated:
        problems.append(f"duplicated: {duplicated[:5]}")
    lost = h.ok_ids - set(ids)
    if lost:
        problems.append(f"lost (acknowledged, not stored): {sorted(lost)[:5]}")
    unexpected = set(ids) - h.attempted - prefilled
    if unexpected:
        problems.append(f"unexpected: {sorted(unexpected)[:5]}")
    failed = h.failed_last & set(ids)
    if failed:
        problems.append(f"reported failed, but stored: {sorted(failed)[:5]}")
    streams: dict[str, list[RecordedEvent]] = {}
    for e in stored:
        streams.setdefault(e.stream_id, []).append(e)
    for stream_id, events in streams.items():
        versions = sorted(e.version for e in events)
        if versions != list(range(len(events))):
            problems.append(f"{stream_id}: versions not 0..{len(events) - 1}: {versions[:10]}")
        if stream_id in h.acknowledged:
            want = [i for ids in h.acknowledged[stream_id] for i in ids]
            got = [str(e.event_id) for e in sorted(events, key=lambda e: e.version)]
            if got != want:
                problems.append(f"{stream_id}: stored order differs from acknowledged order")
    return problems


def check_catches_broken_copies(h: History, stored: list[RecordedEvent], pre: set[str]) -> None:
    """The negative controls: the checker must see a lost, a duplicated, a foreign event."""
    ok = [e for e in stored if str(e.event_id) in h.ok_ids]
    assert ok, "the writer had nothing acknowledged: the test proves nothing"
    dropped = [e for e in stored if e is not ok[-1]]
    assert any("lost" in p for p in check(h, dropped, pre))
    assert any("duplicated" in p for p in check(h, [*stored, ok[0]], pre))
    e = ok[0]
    foreign = RecordedEvent(
        event_id=uuid.uuid4(),
        stream_id=e.stream_id,
        version=10**6,
        position=e.position,
        type=e.type,
        schema_version=e.schema_version,
        raw_data=e.raw_data,
        raw_metadata=e.raw_metadata,
        recorded_at=e.recorded_at,
    )
    assert any("unexpected" in p for p in check(h, [*stored, foreign], pre))


async def read_all(url: str) -> list[RecordedEvent]:
    """Every stored event, stream by stream (not ``read_all``: on PostgreSQL it stops at the
    visibility horizon, which another test's open transaction may hold back)."""
    async with await chronik.connect(url, create=False) as store:
        found = [
            e async for info in store.streams() async for e in store.read_stream(info.stream_id)
        ]
    return sorted(found, key=lambda e: e.position)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ok_count(log: Path) -> int:
    if not log.exists():
        return 0
    return log.read_text().count('"op": "ok"')


@pytest.mark.parametrize("direction", ["sqlite->postgres", "postgres->sqlite+upcast"])
def test_follow_kill_9_then_cut_over_under_a_live_writer(
    direction: str, tmp_path: Path, pg_url: str
) -> None:
    sqlite_url = f"sqlite:///{tmp_path}/store.db"
    source, target = (
        (sqlite_url, pg_url) if direction.startswith("sqlite") else (pg_url, sqlite_url)
    )
    options = ["--upcast", "--app", APP] if direction.endswith("upcast") else []
    prefill = history(6000, streams=40)
    asyncio.run(fill(source, prefill))
    prefilled = {str(e.event_id) for e in prefill}
    log, stop = tmp_path / "writer.jsonl", tmp_path / "stop"
    w = writer(source, target, log, stop, "w1")
    rng = random.Random(20)
    try:
        _wait_for(lambda: _ok_count(log) >= 30, 30, "the writer's first appends")
        for _ in range(5):  # kill -9 of the copier, anywhere: catch-up, follow, a commit
            f = follow(source, target, *options)
            time.sleep(rng.uniform(0.8, 2.0))
            f.send_signal(signal.SIGKILL)
            f.communicate(timeout=10)
            assert f.returncode == -signal.SIGKILL
        f = follow(source, target, *options)
        lines: list[dict[str, Any]] = []
        time.sleep(2.5)  # caught up, following the live writer
        before_cut = _ok_count(log)
        cut = migrate("cutover", "--json", "--from", source, "--to", target, *options)
        assert cut.returncode == 0, cut.stderr
        report = json.loads(cut.stdout)
        assert report["verification"]["ok"] is True
        out, err = f.communicate(timeout=20)  # the follower retires by itself
        assert f.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-1]["event"] == "stopped"
        assert lines[-1]["cut_over_at"] == report["fenced_at_position"]
        progress = [x for x in lines if x["event"] == "progress"]
        assert progress and all("lag_events" in x and "lag_seconds" in x for x in progress)
        _wait_for(lambda: _ok_count(log) >= before_cut + 40, 30, "writes on the target")
    finally:
        stop.touch()
        w.wait(timeout=30)
    errors = w.stderr.read() if w.stderr else ""
    if w.stderr:
        w.stderr.close()
    assert w.returncode == 0, errors
    h = History.read(log)
    assert h.acknowledged_after_switch > 0, "no write reached the target after the switch"
    # only retryable errors (a refused or lost append, retried with the same ids)
    assert set(h.errors) <= {"StoreFenced", "StoreUnavailable"}, h.errors
    stored = asyncio.run(read_all(target))
    assert check(h, stored, prefilled) == []
    check_catches_broken_copies(h, stored, prefilled)
    switch = json.loads((tmp_path / "writer.jsonl.switch.json").read_text())
    assert switch is not None and switch["pause_seconds"] > 0
    verified = migrate("verify", "--json", "--from", source, "--to", target, *options)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    again = migrate("copy", "--from", source, "--to", target, *options)
    assert again.returncode != 0
    assert "this migration is complete (cut over at position" in again.stderr
    assert "DuplicateEventId" not in again.stderr


def test_a_dual_writer_and_the_copier_at_once(tmp_path: Path, pg_url: str) -> None:
    source, target = f"sqlite:///{tmp_path}/old.db", pg_url
    asyncio.run(fill(source, history(300, streams=20)))
    prefilled = {str(e.event_id) for e in history(300, streams=20)}
    f = follow(source, target)
    assert f.stdout is not None
    first = json.loads(f.stdout.readline())  # the copy started: its checkpoint is there
    assert first["event"] == "progress" and first["checkpoint"] > 0
    log, stop = tmp_path / "dual.jsonl", tmp_path / "stop"
    w = writer(source, target, log, stop, "d1", dual=True)
    try:
        _wait_for(lambda: _ok_count(log) >= 300, 60, "the dual-writer's appends")
        cut = migrate("cutover", "--json", "--from", source, "--to", target)
        if cut.returncode != 0:
            f.kill()
            raise AssertionError(cut.stderr + "\nfollower: " + f.communicate()[1])
        w.wait(timeout=30)  # it stops at the fence
        _, err = f.communicate(timeout=20)
        assert f.returncode == 0, err
    finally:
        stop.touch()
        for p in (w, f):
            if p.poll() is None:
                p.kill()
            p.communicate()
    h = History.read(log)
    assert h.dual > 20, "the dual-writer never got ahead of the copier: nothing was tested"
    stored = asyncio.run(read_all(target))
    assert check(h, stored, prefilled) == []
    check_catches_broken_copies(h, stored, prefilled)


async def test_cancelling_the_follower_at_any_moment_leaves_a_resumable_copy(
    tmp_path: Path,
) -> None:
    src_url, dst_url = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    await fill(src_url, history(2000, streams=30))
    rng = random.Random(7)
    async with await chronik.connect(src_url) as src, await chronik.connect(dst_url) as dst:
        for round_ in range(25):
            await src.append(f"live-{round_ % 3}", [NewEvent("Happened", {"n": round_})])
            if round_ % 2:
                follower = CopyFollower(src, dst, batch_size=97, poll_interval=0.05)
                task: asyncio.Task[Any] = asyncio.ensure_future(follower.run())
            else:  # the copy itself, cancelled mid-batch
                task = asyncio.ensure_future(copy_store(src, dst, batch_size=97, verify=False))
            await asyncio.sleep(rng.uniform(0, 0.08))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        report = await copy_store(src, dst, batch_size=97)
        assert report.verification is not None and report.verification.ok
        assert (await verify_copy(src, dst)).ok


async def test_the_fence_waits_for_a_postgres_append_in_flight(pg_url: str) -> None:
    """An append whose transaction is open when the fence comes commits first and is
    below the fence's position; appends after it are refused."""
    async with await chronik.connect(pg_url) as store:
        assert isinstance(store, PostgresEventStore)
        held, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            held.set()
            await release.wait()

        store._before_commit = hold
        append = asyncio.ensure_future(store.append("a-1", [NewEvent("E")]))
        await held.wait()
        store._before_commit = None
        fence = asyncio.ensure_future(store.fence("sqlite:///new.db"))
        await asyncio.sleep(0.3)
        assert not fence.done(), "the fence did not wait for the open append"
        release.set()
        result = await append
        fenced = await fence
        assert result.position <= fenced.position
        with pytest.raises(chronik.StoreFenced):
            await store.append("a-1", [NewEvent("E")])
        assert [e.position async for e in store.read_all()] == [result.position]


def test_ctrl_c_stops_the_follower_cleanly_and_it_resumes(tmp_path: Path) -> None:
    source, target = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    asyncio.run(fill(source, history(3000, streams=30)))
    f = follow(source, target)
    assert f.stdout is not None
    assert json.loads(f.stdout.readline())["event"] == "progress"  # copying
    f.send_signal(signal.SIGINT)
    out, err = f.communicate(timeout=20)
    assert f.returncode == 0, err
    stopped = json.loads(out.splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["cut_over_at"] is None
    resumed = migrate("copy", "--json", "--from", source, "--to", target)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed_after"] == stopped["checkpoint"] > 0
    assert report["verification"]["ok"] is True


async def test_a_cut_over_that_did_not_complete_can_be_given_back() -> None:
    async with (
        await chronik.connect("memory://") as old,
        await chronik.connect("memory://") as new,
    ):
        await old.append("a-1", [NewEvent("E")])
        await copy_store(old, new)
        fencing = chronik.store.require(old, Fencing)
        await fencing.fence("memory://new")  # a cut-over that stopped after the fence
        app = MigratingStore(old, new, switch_timeout=0.05)
        with pytest.raises(chronik.StoreFenced) as refused:  # retryable, nothing written
            await app.append("a-1", [NewEvent("E")], expected_version=0)
        assert refused.value.moved_to == "memory://new" and not app.switched
        elsewhere = MigratingStore(old, new, target_url="memory://other")
        with pytest.raises(chronik.StoreFenced):  # the fence names another store
            await elsewhere.append("a-1", [NewEvent("E")], expected_version=0)
        lifted = await cancel_cutover(old, new)
        assert lifted is not None and lifted.moved_to == "memory://new"
        await app.append("a-1", [NewEvent("E")], expected_version=0)  # the old store again
        report = await cutover(old, new, moved_to="memory://new")
        assert report.tail_read == 1
        with pytest.raises(chronik.MigrationError, match="is complete"):
            await cancel_cutover(old, new)
        async with await chronik.connect("memory://") as third:  # red team: another target
            with pytest.raises(chronik.MigrationError, match="is complete"):
                await cancel_cutover(old, third)  # must not lift the completed fence
        assert await chronik.store.require(old, Fencing).fence_state() is not None
        with pytest.raises(chronik.MigrationComplete, match="cut over at position"):
            await cutover(old, new, moved_to="memory://new")
        assert await map_checkpoint(old, new, 1) == 1  # before a-1 v1, copied at 2
        await app.append("a-1", [NewEvent("E")], expected_version=1)
        assert app.switched and await new.stream_version("a-1") == 2
        assert (await verify_copy(old, new)).ok  # up to the cut-over, not the new write


async def test_writers_waiting_on_a_fence_go_back_when_it_is_lifted() -> None:
    """Red team: waiting writers were serialised on one lock (4 writers failed 30 s apart)
    and never noticed `migrate unfence`, failing with "write to NEW" instead."""
    async with (
        await chronik.connect("memory://") as old,
        await chronik.connect("memory://") as new,
    ):
        await copy_store(old, new)
        await chronik.store.require(old, Fencing).fence("memory://new")  # cut-over stopped
        app = MigratingStore(old, new, switch_timeout=60, check_interval=0.01)
        writers = [
            asyncio.create_task(app.append(f"w-{n}", [NewEvent("E")], expected_version=-1))
            for n in range(4)
        ]
        await asyncio.sleep(0.1)  # all four are waiting now
        assert not any(w.done() for w in writers)
        await cancel_cutover(old, new)  # the operator gives writes back to the old store
        results = await asyncio.wait_for(asyncio.gather(*writers), 20)
        assert len(results) == 4 and not app.switched
        assert sorted([e.stream_id async for e in old.read_all()]) == [f"w-{n}" for n in range(4)]
