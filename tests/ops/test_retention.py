"""Retention and the scavenger on both SQL backends: each policy removes exactly what it
says and nothing a reader still needs; every removal is recorded (check reads it as policy,
a deletion without record is still a gap); the last event and the events after a stream's
newest snapshot stay; cancelled or killed scavenges leave a recorded, resumable store;
hostile input is refused with the store unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chronik
from chronik import NewEvent
from chronik.cli.main import main
from chronik.errors import InvalidArgument, MissingCapability
from chronik.integrity import check
from chronik.ops import retention
from chronik.store.truncations import truncated_through

ROOT = Path(__file__).parent.parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/retention.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    async with await chronik.connect(url) as s:
        yield s


@dataclass(frozen=True)
class Row:
    stream_id: str
    version: int
    position: int
    recorded_at: datetime


async def rows(store: Any) -> dict[tuple[str, int], Row]:
    return {
        (e.stream_id, e.version): Row(e.stream_id, e.version, e.position, e.recorded_at)
        async for e in store.read_all()
    }


async def records(store: Any) -> list[tuple[str, int, int, int]]:
    found = await store.query(
        "SELECT stream_id, from_version, through_version, events FROM truncations ORDER BY id"
    )
    return [(str(s), int(a), int(b), int(n)) for s, a, b, n in found]


async def assert_recorded(store: Any, before: dict[tuple[str, int], Row]) -> set[tuple[str, int]]:
    """Every missing event is covered by exactly one record of its stream, every record
    covers only missing events, and the counts agree. Returns the missing keys."""
    now = await rows(store)
    assert set(now) <= set(before), "the scavenger made events up"
    missing = set(before) - set(now)
    covered: list[tuple[str, int]] = []
    for stream_id, first, through, n in await records(store):
        keys = [(stream_id, v) for v in range(first, through + 1) if (stream_id, v) in before]
        assert n == len(keys), (stream_id, first, through, n)
        covered += keys
    assert sorted(covered) == sorted(missing), "a removal without record, or a record twice"
    return missing


async def fill(store: Any, streams: int = 4, per_stream: int = 12) -> None:
    for i in range(per_stream):
        for s in range(streams):
            await store.append(f"log-{s}", [NewEvent("Logged", {"i": i})])
    await store.append("keep-1", [NewEvent("Kept", {"n": n}) for n in range(5)])


# -- each policy removes exactly what it says ------------------------------------------------


async def test_max_count_keeps_the_newest_n_of_each_stream(store: Any) -> None:
    await fill(store)
    before = await rows(store)
    await retention.set_policy(store, "log", max_count=3)
    dry = await retention.scavenge(store, dry_run=True)
    assert await rows(store) == before  # a dry run removes nothing
    report = await retention.scavenge(store)
    assert report.events == dry.events == 4 * 9
    missing = await assert_recorded(store, before)
    assert missing == {(f"log-{s}", v) for s in range(4) for v in range(9)}
    assert (await retention.scavenge(store)).events == 0  # nothing left to do


async def test_truncate_before_removes_below_the_position_only(store: Any) -> None:
    await fill(store)
    before = await rows(store)
    cut = sorted(r.position for r in before.values())[20]
    await retention.set_policy(store, "log", truncate_before=cut)
    await retention.scavenge(store)
    missing = await assert_recorded(store, before)
    last = {s: max(v for (sid, v) in before if sid == s) for s, _ in before}
    expected = {
        k for k, r in before.items()
        if r.stream_id.startswith("log-") and r.position < cut and k[1] < last[r.stream_id]
    }  # fmt: skip
    assert missing == expected and expected


async def test_max_age_removes_what_is_older(store: Any) -> None:
    await fill(store)
    before = await rows(store)
    times = sorted({r.recorded_at for r in before.values()})
    middle = times[len(times) // 2]
    await retention.set_policy(store, "log", max_age=timedelta(days=1))
    now = middle + timedelta(days=1)  # "older than a day" = recorded before `middle`
    await retention.scavenge(store, now=now)
    missing = await assert_recorded(store, before)
    expected = {
        k for k, r in before.items()
        if r.stream_id.startswith("log-") and r.recorded_at < middle and k[1] < 11
    }  # fmt: skip
    assert missing == expected and expected


async def test_the_last_event_stays_and_the_stream_numbering_goes_on(store: Any) -> None:
    await store.append("log-1", [NewEvent("Logged", {"n": n}) for n in range(5)])
    await retention.set_policy(store, "log", truncate_before=2**40)
    await retention.scavenge(store)
    assert [e.version async for e in store.read_stream("log-1")] == [4]
    assert await store.stream_version("log-1") == 4
    result = await store.append("log-1", [NewEvent("Logged", {})], expected_version=4)
    assert result.version == 5
    with pytest.raises(chronik.ConcurrencyError):  # and the old versions cannot come back
        await store.append("log-1", [NewEvent("Logged", {})], expected_version=2)


# -- readers hold removal back -----------------------------------------------------------------


async def test_a_checkpoint_dead_letter_or_group_holds_events_back(store: Any) -> None:
    await fill(store)
    before = await rows(store)
    ordered = sorted(before.values(), key=lambda r: r.position)
    behind = ordered[10].position
    async with store.transaction() as tx:
        await tx.set_checkpoint("slow-projection", behind)
        await tx.set_checkpoint("fast-projection", ordered[-1].position)
    await retention.set_policy(store, "log", max_count=1)
    report = await retention.scavenge(store)
    assert report.held_by is not None and report.held_by.name == "slow-projection"
    assert report.held_back > 0
    missing = await assert_recorded(store, before)
    assert missing and all(before[k].position <= behind for k in missing)
    # a dead letter below the checkpoint keeps its event (and those after it) for a retry
    async with store.transaction() as tx:
        await tx.set_checkpoint("slow-projection", ordered[-1].position)
        letter = next(r for r in ordered if (r.stream_id, r.version) not in missing
                      and r.stream_id.startswith("log-") and r.version < 11)  # fmt: skip
        reading = store.read_stream(letter.stream_id, from_version=letter.version, limit=1)
        (event,) = [e async for e in reading]
        await tx.add_dead_letter("slow-projection", event, "boom", 3)
    report = await retention.scavenge(store)
    assert report.held_by is not None and report.held_by.kind == "dead_letter"
    assert (letter.stream_id, letter.version) in await rows(store)
    await assert_recorded(store, before)


async def test_projection_and_check_keep_working_after_truncation(
    store: Any, url: str, capsys: Any
) -> None:
    seen: list[tuple[str, int]] = []

    class Seen(chronik.Projection):
        name = "seen"

        async def setup(self, tx: Any) -> None: ...

        async def handle(self, event: chronik.RecordedEvent, tx: Any) -> None:
            seen.append((event.stream_id, event.version))

    await fill(store)
    before = await rows(store)
    runner = chronik.ProjectionRunner(store, [Seen()])
    await runner.catch_up()
    assert len(seen) == len(before)
    await retention.set_policy(store, "log", max_count=2)
    await retention.scavenge(store)
    missing = await assert_recorded(store, before)
    report = await check(store)
    assert report.ok and report.truncated is not None
    assert report.truncated.events == len(missing)
    await store.append("log-0", [NewEvent("Logged", {"after": True})])
    await runner.catch_up()  # the live projection goes on
    assert seen[-1] == ("log-0", 12) and len(seen) == len(before) + 1
    seen.clear()
    await runner.rebuild("seen")  # from the retained events
    assert sorted(seen) == sorted(set(before) - missing | {("log-0", 12)})
    # the CLI says what the rebuild starts from
    assert await asyncio.to_thread(main, ["check", "--store", url]) == 0
    assert "removed by retention" in capsys.readouterr().out


async def test_a_deletion_without_record_is_still_a_gap(store: Any) -> None:
    """Negative control for the two tests above: check does not wave every gap through."""
    await fill(store)
    await retention.set_policy(store, "log", max_count=3)
    await retention.scavenge(store)
    async with store.transaction() as tx:  # someone deletes an event by hand
        await tx.execute("DELETE FROM events WHERE stream_id = 'log-2' AND version = 10")
        await tx.execute("DELETE FROM events WHERE stream_id = 'keep-1' AND version = 0")
    report = await check(store)
    assert not report.ok and report.counts["version_gap"] == 2


# -- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deposited:
    cents: int


def evolve(state: int, event: Deposited) -> int:
    return state + event.cents


async def test_a_snapshot_stays_usable_and_the_events_after_it_stay(store: Any) -> None:
    from chronik.snapshots import SnapshotConfig, load_from_snapshot, take_snapshot

    registry = chronik.EventRegistry()
    registry.register(Deposited, "Deposited")
    for cents in range(1, 21):
        await store.append("acct-1", [registry.to_new_event(Deposited(cents))])
    config = SnapshotConfig(int)
    snap = await take_snapshot(
        store, "acct-1", evolve=evolve, initial_state=lambda: 0, config=config,
        registry=registry, upto=14,
    )  # fmt: skip
    assert snap is not None and snap.version == 14
    await retention.set_policy(store, "acct", max_count=1)
    report = await retention.scavenge(store)
    assert report.events == 15  # versions 0..14: the snapshot's own event may go
    assert report.held_back == 0  # 15..18 stay for the snapshot: no reader holds them
    assert [e.version async for e in store.read_stream("acct-1")] == list(range(15, 20))
    state, version, used = await load_from_snapshot(
        store, "acct-1", evolve, lambda: 0, config, registry=registry
    )
    assert (state, version) == (sum(range(1, 21)), 19)
    assert used is not None and used.version == 14
    assert (await check(store)).ok


# -- cancelled, killed, concurrent ---------------------------------------------------------------


async def test_cancelled_at_any_point_every_removal_is_recorded_and_a_rerun_finishes(
    store: Any,
) -> None:
    await fill(store, streams=6, per_stream=15)
    before = await rows(store)
    await retention.set_policy(store, "log", max_count=2)
    rng = random.Random(7)
    cancelled = 0
    for _ in range(25):
        task = asyncio.ensure_future(retention.scavenge(store, batch_size=3))
        await asyncio.sleep(rng.uniform(0, 0.01))
        if not task.done():
            task.cancel()
            cancelled += 1
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await assert_recorded(store, before)
        async with store.transaction() as tx:  # the store still takes writes
            await tx.set_checkpoint("probe", 1)
            await tx.execute("DELETE FROM checkpoints WHERE name = 'probe'")
    assert cancelled > 0, "no scavenge was cancelled midway: the test proved nothing"
    await retention.scavenge(store)
    missing = await assert_recorded(store, before)
    assert missing == {(f"log-{s}", v) for s in range(6) for v in range(13)}


async def test_two_scavengers_at_once_record_each_removal_once(store: Any) -> None:
    await fill(store, streams=5, per_stream=20)
    before = await rows(store)
    await retention.set_policy(store, "log", max_count=1)
    a, b = await asyncio.gather(
        retention.scavenge(store, batch_size=2), retention.scavenge(store, batch_size=3)
    )
    missing = await assert_recorded(store, before)
    assert a.events + b.events == len(missing) == 5 * 19


SCAVENGER = """
import asyncio, sys
import chronik
from chronik.ops import retention

async def main():
    async with await chronik.connect(sys.argv[1]) as store:
        print("ready", flush=True)
        await retention.scavenge(store, batch_size=1)

asyncio.run(main())
"""


async def test_kill_9_mid_scavenge_leaves_a_recorded_store_and_a_rerun_finishes(
    store: Any, url: str
) -> None:
    await fill(store, streams=8, per_stream=40)
    before = await rows(store)
    await retention.set_policy(store, "log", max_count=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    killed_midway = 0
    for attempt in range(4):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCAVENGER, url, env=env, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        assert (await child.stdout.readline()).startswith(b"ready")
        await asyncio.sleep(0.05 + 0.05 * attempt)
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
        missing = await assert_recorded(store, before)
        if 0 < len(missing) < 8 * 39:
            killed_midway += 1
    assert killed_midway > 0, "no scavenge was killed midway: the test proved nothing"
    await retention.scavenge(store)
    assert len(await assert_recorded(store, before)) == 8 * 39
    assert (await check(store)).ok


# -- hostile input -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    category=st.one_of(
        st.text(max_size=30), st.sampled_from(["", "a-b", "lo*", "x\x00", "\ud800"])
    ),
    count=st.one_of(st.none(), st.integers(-5, 3), st.booleans(), st.floats(allow_nan=True)),
    before=st.one_of(st.none(), st.integers(-(2**70), 2**70)),
)
async def test_hostile_policies_are_refused_and_change_nothing(
    store: Any, category: Any, count: Any, before: Any
) -> None:
    await retention.set_policy(store, "keep", max_count=5)
    kept = await retention.policies(store)
    try:
        await retention.set_policy(store, category, max_count=count, truncate_before=before)
    except InvalidArgument as refused:
        assert refused.argument in ("category", "max_count", "truncate_before", "policy",
                                    "stream_id")  # fmt: skip
        assert await retention.policies(store) == kept
    else:
        assert category and "-" not in category
        await retention.clear_policy(store, category)


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's usage errors
        return int(exit.code or 0)


async def test_cli_refuses_bad_rules_and_reports_as_json(url: str, store: Any, capsys: Any) -> None:
    await fill(store)
    for bad in (["--max-age", "0d"], ["--max-age", "ten days"], ["--max-count", "-1"],
                ["--truncate-before", "0"], []):  # fmt: skip
        assert await asyncio.to_thread(cli, ["retention", "set", "log", "--store", url, *bad]), bad
    assert await retention.policies(store) == []
    args = ["retention", "set", "log", "--max-age", "30d", "--max-count", "3", "--json"]
    assert await asyncio.to_thread(main, [*args, "--store", url]) == 0
    policy = msgspec.json.decode(capsys.readouterr().out)
    assert policy["max_age_seconds"] == 30 * 86400 and policy["max_count"] == 3
    assert await asyncio.to_thread(main, ["scavenge", "--dry-run", "--json", "--store", url]) == 0
    dry = msgspec.json.decode(capsys.readouterr().out)
    assert dry["dry_run"] and dry["events"] == 4 * 9
    assert await asyncio.to_thread(main, ["scavenge", "--json", "--store", url]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["events"] == 4 * 9
    assert (await truncated_through(store)) == {f"log-{s}": 8 for s in range(4)}


async def test_memory_store_has_no_retention() -> None:
    async with await chronik.connect("memory://") as store:
        with pytest.raises(MissingCapability, match="SqlStore"):
            await retention.set_policy(store, "log", max_count=1)
        with pytest.raises(MissingCapability):
            await retention.scavenge(store)


def test_ages_parse() -> None:
    assert retention.parse_age("90d") == timedelta(days=90)
    assert retention.parse_age("12h") == timedelta(hours=12)
    assert retention.parse_age("45") == timedelta(seconds=45)
    for bad in ("", "d", "-1d", "1.5h", "1y", "9" * 20):
        with pytest.raises(InvalidArgument):
            retention.parse_age(bad)


# -- a truncated store moves: backup and restore, migrate copy ---------------------------------


async def test_a_truncated_store_backs_up_restores_and_copies_to_the_other_backend(
    store: Any, url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from chronik.migrate import copy_store
    from chronik.ops.backup import backup_store
    from chronik.ops.restore import restore_backup

    await fill(store)
    await retention.set_policy(store, "log", max_count=4)
    await retention.scavenge(store)
    kept = await rows(store)
    other = (
        str(request.getfixturevalue("pg_url"))
        if url.startswith("sqlite")
        else f"sqlite:///{tmp_path}/other.db"
    )
    await asyncio.to_thread(backup_store, url, tmp_path / "bk")
    copied_url = f"sqlite:///{tmp_path}/copied.db"
    async with await chronik.connect(other) as target:
        await restore_backup(tmp_path / "bk", target)
        async with await chronik.connect(copied_url) as copied:
            await copy_store(store, copied)
            for moved in (target, copied):
                assert set(await rows(moved)) == set(kept)
                checked = await check(moved)
                assert checked.ok, checked.problems
                assert await truncated_through(moved) == {f"log-{s}": 7 for s in range(4)}
                # bookkeeping rows of the restore and the copy hold nothing back
                assert await retention.holders(moved) == []
                result = await moved.append("log-0", [NewEvent("Logged", {})], expected_version=11)
                assert result.version == 12
    async with await chronik.connect("memory://") as memory:
        with pytest.raises(chronik.errors.BackupError, match="retention"):
            await restore_backup(tmp_path / "bk", memory)
