"""Archive with read-through on both SQL backends: reads over archive + store equal reads of
the original store (streams, read_all, pages, a projection rebuild); a lagging reader holds
events back; appends go on; check and restore work; a missing or altered file is a typed
error naming it; cancelled or killed archives lose nothing and read nothing twice; hostile
CLI input changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

import chronik
from chronik import NewEvent
from chronik.cli.main import main
from chronik.errors import ArchiveCorrupted, InvalidArgument, MissingCapability
from chronik.integrity import check
from chronik.ops import archive
from chronik.ops.chain import verify as verify_chain
from chronik.store.archived import ArchiveReadThrough, load_segment
from chronik.store.truncations import truncation_summary

ROOT = Path(__file__).parent.parent.parent

Key = tuple[str, int, int, str, str, bytes, bytes, int]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/archive.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    async with await connect(url) as s:
        yield s


async def connect(url: str) -> Any:
    return await chronik.connect(url)


def key(e: chronik.RecordedEvent) -> Key:
    return (e.stream_id, e.version, e.position, str(e.event_id), e.type, e.raw_data,
            e.raw_metadata, e.schema_version)  # fmt: skip


async def fill(store: Any, streams: int = 4, per_stream: int = 10) -> None:
    for v in range(per_stream):
        for s in range(streams):
            await store.append(f"order-{s}", [NewEvent("Placed", {"s": s, "v": v, "é": "ü"})])
            await store.append(f"audit-{s}", [NewEvent("Seen", {"v": v}, metadata={"m": v})])


async def everything(store: Any) -> dict[str, Any]:
    """Every read a client can make, for comparing a store with its archived self."""
    out: dict[str, Any] = {"all": [key(e) async for e in store.read_all()]}
    positions = [k[2] for k in out["all"]]
    for after in (0, positions[3], positions[len(positions) // 2], positions[-1]):
        for limit in (None, 1, 7):
            for cats in (None, ["order"], ["audit"]):
                out[f"all {after} {limit} {cats}"] = [
                    key(e) async for e in store.read_all(after=after, limit=limit, categories=cats)
                ]
    out["types"] = [key(e) async for e in store.read_all(types=["Placed"])]
    for s in range(4):
        sid = f"order-{s}"
        for frm in (None, 0, 3, 9, 20):
            for limit in (None, 2):
                for back in (False, True):
                    out[f"{sid} {frm} {limit} {back}"] = [
                        key(e)
                        async for e in store.read_stream(
                            sid, from_version=frm, limit=limit, backwards=back
                        )
                    ]
        out[f"v {sid}"] = await store.stream_version(sid)
    pages: list[Key] = []
    after = 0
    while True:
        events, caught_up_to, more = await store.read_page(after=after, limit=5)
        pages += [key(e) for e in events]
        assert caught_up_to >= after
        after = caught_up_to
        if not more and not events:
            break
    out["pages"] = pages
    return out


async def archived(url: str, tmp_path: Path, **options: Any) -> archive.ArchiveReport:
    async with await connect(url) as s:
        head = await s.head_position()
        return await archive.archive_category(
            s, "order", tmp_path / "archive", before=head + 1, **options
        )


async def test_reads_through_the_archive_equal_the_original(
    store: Any, url: str, tmp_path: Path
) -> None:
    await fill(store)
    before = await everything(store)
    report = await archived(url, tmp_path, batch_size=7)
    assert report.events == 4 * 9  # all but each stream's last event
    (segment,) = report.segments
    name = Path(segment.file).name.removesuffix(".ndjson.zst")
    manifest = msgspec.json.decode((tmp_path / "archive" / f"{name}.json").read_bytes())
    assert manifest["events"] == 36 and manifest["versions"]["order-0"] == [0, 8]
    async with await connect(url) as reopened:
        stored = await reopened.query("SELECT count(*) FROM events WHERE category = 'order'")
        assert int(stored[0][0]) == 4  # the rows are gone from the table
        assert await everything(reopened) == before
        checked = await check(reopened)
        assert checked.ok  # the versions archived are recorded: not gaps
        # ... and not "removed by retention": rebuilds read them through the archive
        assert checked.truncated is not None and checked.truncated.events == 0
        assert (await truncation_summary(reopened)).events == 0
        # the numbering goes on
        result = await reopened.append("order-0", [NewEvent("Placed", {})], expected_version=9)
        assert result.version == 10


async def test_negative_control_a_store_opened_without_read_through_misses_them(
    store: Any, url: str, tmp_path: Path
) -> None:
    """The comparison above can fail: the bare store does not return archived events."""
    await fill(store)
    before = await everything(store)
    await archived(url, tmp_path)
    async with await connect(url) as reopened:
        assert await everything(reopened.wrapped) != before


async def test_a_projection_rebuild_over_archive_and_store_equals_the_original(
    store: Any, url: str, tmp_path: Path
) -> None:
    seen: list[Key] = []

    class Seen(chronik.Projection):
        name = "seen"

        async def setup(self, tx: Any) -> None: ...

        async def handle(self, event: chronik.RecordedEvent, tx: Any) -> None:
            seen.append(key(event))

    await fill(store)
    await chronik.ProjectionRunner(store, [Seen()]).catch_up()
    original = list(seen)
    await archived(url, tmp_path)
    seen.clear()
    async with await connect(url) as reopened:
        await chronik.ProjectionRunner(reopened, [Seen()]).rebuild("seen")
    assert seen == original


async def test_a_lagging_checkpoint_holds_events_back_and_is_named(
    store: Any, url: str, tmp_path: Path
) -> None:
    await fill(store)
    events = [e async for e in store.read_all()]
    positions = [e.position for e in events]
    expected = {e.position for e in events[:10] if e.stream_id.startswith("order-")}
    async with store.transaction() as tx:
        await tx.set_checkpoint("slow:v1/p0of2", positions[9])
    report = await archived(url, tmp_path)
    assert report.held_by is not None and "slow:v1/p0of2" in report.held_by
    assert report.limit == positions[9]
    moved = [e for s in report.segments for e in load_segment(s)]
    assert moved and all(e.position <= positions[9] for e in moved)
    assert {e.position for e in moved} == expected


async def test_restore_puts_back_the_same_events_and_forgets_the_segment(
    store: Any, url: str, tmp_path: Path
) -> None:
    await fill(store)
    rows = [key(e) async for e in store.read_all()]
    await archived(url, tmp_path)
    async with await connect(url) as reopened:
        report = await archive.restore_archive(reopened, batch_size=5)
        assert report.events == 36
        assert await archive.segments(reopened) == []
        assert [key(e) async for e in reopened.wrapped.read_all()] == rows
        assert await reopened.query("SELECT count(*) FROM truncations") == [(0,)]
        assert (await check(reopened)).ok
        # the hash chain holds through archive and restore (the same hashes come back)
        assert (await verify_chain(reopened.wrapped)).ok
    async with await connect(url) as plain:
        assert not isinstance(plain, ArchiveReadThrough)
        assert [key(e) async for e in plain.read_all()] == rows


@pytest.mark.parametrize("damage", ["missing", "altered"])
async def test_a_missing_or_altered_file_is_a_typed_error_naming_it(
    store: Any, url: str, tmp_path: Path, damage: str
) -> None:
    await fill(store)
    (segment,) = (await archived(url, tmp_path)).segments
    path = Path(segment.file)
    if damage == "missing":
        path.unlink()
    else:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    async with await connect(url) as reopened:  # opens: the files are read on use
        await reopened.append("audit-0", [NewEvent("Seen", {})])
        with pytest.raises(ArchiveCorrupted) as found:
            [e async for e in reopened.read_all()]
        assert found.value.path == str(path)
        with pytest.raises(ArchiveCorrupted):
            [e async for e in reopened.read_stream("order-1")]
        with pytest.raises(ArchiveCorrupted):
            await archive.restore_archive(reopened)
        assert len(await archive.segments(reopened)) == 1  # nothing restored, nothing lost


async def test_cancelled_at_random_points_nothing_is_lost_or_read_twice(
    store: Any, url: str, tmp_path: Path
) -> None:
    await fill(store, streams=5, per_stream=12)
    before = [key(e) async for e in store.read_all()]
    rng = random.Random(11)
    cancelled = 0
    head = await store.head_position()
    for attempt in range(16):
        async with await connect(url) as s:
            job: Any
            if attempt % 4 == 3:
                job = archive.restore_archive(s, batch_size=2)
            else:
                job = archive.archive_category(
                    s, "order", tmp_path / "archive", before=head + 1, batch_size=2
                )
            task: asyncio.Future[Any] = asyncio.ensure_future(job)
            await asyncio.sleep(rng.uniform(0, 0.02))
            if not task.done():
                task.cancel()
                cancelled += 1
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with await connect(url) as s:
            assert [key(e) async for e in s.read_all()] == before
    assert cancelled > 0, "nothing was cancelled midway: the test proved nothing"
    async with await connect(url) as s:
        await archive.archive_category(s, "order", tmp_path / "archive", before=head + 1)
        assert {seg.state for seg in await archive.segments(s)} == {"archived"}
    async with await connect(url) as s:
        assert [key(e) async for e in s.read_all()] == before
        assert int((await s.query("SELECT count(*) FROM events"))[0][0]) == len(before) - 5 * 11
        assert (await check(s)).ok


ARCHIVER = """
import asyncio, sys
import chronik
from chronik.ops import archive

async def main():
    async with await chronik.connect(sys.argv[1]) as store:
        print("ready", flush=True)
        await archive.archive_category(store, "order", sys.argv[2], before=2**60, batch_size=1)

asyncio.run(main())
"""


async def test_kill_9_mid_archive_loses_nothing_and_a_rerun_finishes(
    store: Any, url: str, tmp_path: Path
) -> None:
    await fill(store, streams=6, per_stream=80)
    before = [key(e) async for e in store.read_all()]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    midway = 0
    for attempt in range(4):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ARCHIVER, url, str(tmp_path / "archive"),
            env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None
        assert (await child.stdout.readline()).startswith(b"ready")
        async with await connect(url) as s:  # kill it once some rows are gone
            for _ in range(2000):
                left = int((await s.query("SELECT count(*) FROM events"))[0][0])
                if child.returncode is not None or left < len(before) - 3 * attempt:
                    break
                await asyncio.sleep(0.005)
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
        async with await connect(url) as s:
            assert [key(e) async for e in s.read_all()] == before
            left = int((await s.query("SELECT count(*) FROM events"))[0][0])
            if len(before) - 6 * 79 < left < len(before):
                midway += 1
    assert midway > 0, "no archive was killed midway: the test proved nothing"
    async with await connect(url) as s:
        await archive.archive_category(s, "order", tmp_path / "archive", before=2**60)
    async with await connect(url) as s:
        assert [key(e) async for e in s.read_all()] == before
        assert (await check(s)).ok


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's usage errors
        return int(exit.code or 0)


async def test_cli_refuses_hostile_input_and_changes_nothing(
    url: str, store: Any, tmp_path: Path, capsys: Any
) -> None:
    await fill(store)
    rows = [key(e) async for e in store.read_all()]
    where = ["--store", url, "--dir", str(tmp_path / "a")]
    for bad in (
        ["--category", "order", "--older-than=-3d"],
        ["--category", "order", "--older-than", "ten days"],
        ["--category", "order", "--older-than", "0s"],
        ["--category", "order", "--before", "-1"],
        ["--category", "order", "--before", "0"],
        ["--category", "ord*", "--before", "5"],
        ["--category", "order-1", "--before", "5"],
        ["--category", "order"],
        ["--category", "order", "--before", "5", "--older-than", "1d"],
        ["--category", "order", "--before", "5", "--batch-size", "-2"],
    ):
        assert await asyncio.to_thread(cli, ["archive", *where, *bad]) != 0, bad
    assert await asyncio.to_thread(cli, ["archive", "restore", "--store", url, "--segment",
                                         "7"]) != 0  # fmt: skip
    capsys.readouterr()
    assert [key(e) async for e in store.read_all()] == rows
    assert await archive.segments(store) == []
    assert (
        await asyncio.to_thread(
            main, ["archive", *where, "--category", "order", "--older-than", "1d", "--json"]
        )
        == 0
    )
    assert msgspec.json.decode(capsys.readouterr().out)["events"] == 0  # nothing that old
    head = await store.head_position()
    args = ["archive", *where, "--category", "order", "--before", str(head + 1), "--json"]
    assert await asyncio.to_thread(main, args) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["events"] == 36
    assert await asyncio.to_thread(main, ["archive", "list", "--store", url, "--json"]) == 0
    assert len(msgspec.json.decode(capsys.readouterr().out)["segments"]) == 1
    assert await asyncio.to_thread(main, ["archive", "restore", "--store", url, "--json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["events"] == 36
    assert [key(e) async for e in store.read_all()] == rows


async def test_older_than_and_closed_streams(store: Any, url: str, tmp_path: Path) -> None:
    await fill(store)
    await store.append("order-9", [NewEvent("Placed", {})])
    report = await archive.archive_category(
        store, "order", tmp_path / "a", older_than=timedelta(days=1),
        now=chronik_now() + timedelta(days=2),
    )  # fmt: skip
    assert report.events == 36
    await store.append("order-0", [NewEvent("Placed", {})])
    await store.append("order-8", [NewEvent("Placed", {}) for _ in range(3)])
    head = await store.head_position()
    last_of_8 = head
    closed = await archive.archive_category(
        store, "order", tmp_path / "a", before=last_of_8, closed_streams=True
    )
    moved = {e.stream_id for s in closed.segments for e in load_segment(s)}
    assert moved == {"order-0"}  # order-8's last event is not below the position


def chronik_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_memory_store_has_no_archive(tmp_path: Path) -> None:
    async with await chronik.connect("memory://") as memory:
        with pytest.raises(MissingCapability):
            await archive.archive_category(memory, "order", tmp_path, before=5)
    with pytest.raises(InvalidArgument):
        async with await chronik.connect(f"sqlite:///{tmp_path}/x.db") as s:
            await archive.archive_category(s, "order", tmp_path, before=5, older_than=timedelta(1))


async def test_an_open_store_picks_up_a_later_segment(store: Any, url: str, tmp_path: Path) -> None:
    await fill(store)
    original = await everything(store)
    positions = [e.position async for e in store.read_all()]
    async with await connect(url) as first:
        await archive.archive_category(first, "order", tmp_path / "a", before=positions[20])
    async with await connect(url) as open_store, await connect(url) as other:
        assert isinstance(open_store, ArchiveReadThrough)
        assert await everything(open_store) == original  # the first segment is cached
        report = await archive.archive_category(
            other, "order", tmp_path / "a", before=positions[-1] + 1
        )
        assert report.events > 0
        assert await everything(open_store) == original  # and the second one is read too
