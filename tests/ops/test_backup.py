"""Online backup, verify and restore: under 8 writer processes, across backends, corrupted,
truncated, killed and cancelled."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chronik
from chronik import NewEvent
from chronik.cli.main import main
from chronik.ops.backup import (
    EVENTS_FILE,
    MANIFEST_FILE,
    BackupCorrupted,
    BackupError,
    backup_store,
    verify_backup,
)
from chronik.ops.restore import half_restore, restore_backup
from chronik.store.horizon import events_after, read_horizon
from tests.integration.writers import Stored, check, run_writers

Row = tuple[Any, ...]


async def settle(store: Any) -> None:
    """Wait (up to 60 s) until no transaction elsewhere on the shared server hides committed
    events from readers: other tests run on the same cluster (docs/operations.md, the read
    horizon trap)."""
    for _ in range(600):
        horizon = await read_horizon(store)
        if horizon is None or horizon.invisible_events == 0:
            return
        await asyncio.sleep(0.1)


async def stored(store: Any) -> int:
    """Every committed event, visible to readers or not yet."""
    return (await events_after(store, 0, cap=10**9)).events


async def dump(url: str, *, positions: bool = False) -> list[Row]:
    """Every event as restore must keep it (with positions only when asked)."""
    async with await chronik.connect(url, create=False) as store:
        await settle(store)
        return [
            (
                *((e.position,) if positions else ()),
                e.event_id,
                e.stream_id,
                e.version,
                e.type,
                e.schema_version,
                e.raw_data,
                e.raw_metadata,
                e.recorded_at,
            )
            async for e in store.read_all()
        ]


async def fill(url: str, n: int, *, streams: int = 17) -> None:
    async with await chronik.connect(url) as store:
        for i in range(n):
            await store.append(
                f"cat{i % 3}-{i % streams}",
                [NewEvent("Noted", {"i": i, "text": 'é ☃ \\n "q"'}, {"who": f"w{i % 5}"})],
            )


def sqlite(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path}/{name}.db"


# -- under writers -----------------------------------------------------------------------------


@pytest.mark.parametrize("source_kind", ["sqlite", "postgresql"])
async def test_backup_under_8_writer_processes_restores_on_the_other_backend(
    tmp_path: Path, pg_url: str, source_kind: str
) -> None:
    pg_target = f"{pg_url}_r"
    source = sqlite(tmp_path, "source") if source_kind == "sqlite" else pg_url
    target = pg_target if source_kind == "sqlite" else sqlite(tmp_path, "target")
    async with await chronik.connect(source):
        pass
    backups: list[Any] = []
    done = threading.Event()

    def backups_while_writing() -> None:
        n = 0
        while not done.is_set() and n < 6:
            time.sleep(0.3)
            backups.append(backup_store(source, tmp_path / f"full-{n}"))
            n += 1

    taker = threading.Thread(target=backups_while_writing)
    taker.start()
    try:
        history = await asyncio.to_thread(run_writers, source, "spread", 8, 60, tmp_path)
    finally:
        done.set()
        taker.join()
    assert backups, "no backup was taken while the writers ran"
    full = backups[len(backups) // 2]
    everything = await dump(source, positions=True)
    # the backup is exactly the source's prefix up to its manifest position: nothing skipped
    prefix = [row[1:] for row in everything if row[0] <= full.position]
    assert full.events == len(prefix)
    incremental = backup_store(source, tmp_path / "incr", since=full.position)
    assert incremental.events == len(everything) - len(prefix)
    assert incremental.since_event_id == str(prefix[-1][0]) if prefix else True
    async with await chronik.connect(target) as store:
        await restore_backup(tmp_path / f"full-{backups.index(full)}", store)
    assert await dump(target) == prefix
    async with await chronik.connect(target) as store:
        await restore_backup(tmp_path / "incr", store)
    restored = await dump(target)
    _drop_schemas(pg_url, ["_r"])
    assert restored == [row[1:] for row in everything]
    # the set algebra of the writers' history holds on the restored store too (the acks
    # name source positions: restored event i is source event i, checked just above)
    stored = [
        Stored(str(r[0]), r[1], r[2], source_row[0])
        for r, source_row in zip(restored, everything, strict=True)
    ]
    verdict = check(history, stored)
    assert verdict.ok > 0 and verdict.clean, verdict


# -- across backends, identical -----------------------------------------------------------------


async def test_round_trip_sqlite_postgresql_sqlite_is_identical(
    tmp_path: Path, pg_url: str
) -> None:
    first, last = sqlite(tmp_path, "first"), sqlite(tmp_path, "last")
    await fill(first, 300)
    m1 = backup_store(first, tmp_path / "b1")
    async with await chronik.connect(pg_url) as pg:
        await restore_backup(tmp_path / "b1", pg)
        await settle(pg)  # a backup reads below the read horizon, as every reader does
    m2 = backup_store(pg_url, tmp_path / "b2")
    assert m2.backend == "postgresql" and m2.events == 300 and m2.categories == m1.categories
    async with await chronik.connect(last) as store:
        await restore_backup(tmp_path / "b2", store)
    m3 = backup_store(last, tmp_path / "b3")
    assert await dump(first, positions=True) == await dump(last, positions=True)
    assert (m3.sha256, m3.bytes) == (m1.sha256, m1.bytes)  # byte for byte the same content


async def test_incremental_chain_is_checked(tmp_path: Path) -> None:
    src = sqlite(tmp_path, "src")
    await fill(src, 20)
    base = backup_store(src, tmp_path / "base")
    await fill(src, 5)
    backup_store(src, tmp_path / "incr", since=base.position)
    empty = sqlite(tmp_path, "empty")
    async with await chronik.connect(empty) as store:
        with pytest.raises(BackupError, match="continues from event"):
            await restore_backup(tmp_path / "incr", store)
        assert await store.head_position() == 0
        await restore_backup(tmp_path / "base", store)
        with pytest.raises(BackupError, match="empty store only"):
            await restore_backup(tmp_path / "base", store)
        await restore_backup(tmp_path / "incr", store)
        with pytest.raises(BackupError, match="continues from event"):
            await restore_backup(tmp_path / "incr", store)
    assert await dump(empty) == await dump(src)
    with pytest.raises(BackupError, match="exists already"):
        backup_store(src, tmp_path / "base")


# -- corrupted and truncated --------------------------------------------------------------------


async def _refused(backup: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(BackupCorrupted):
        verify_backup(backup)
    url = sqlite(tmp_path, name)
    async with await chronik.connect(url) as store:
        with pytest.raises(BackupCorrupted):
            await restore_backup(backup, store)
        assert await store.head_position() == 0
        assert await store.checkpoints() == {}


@pytest.fixture
async def good_backup(tmp_path: Path) -> Path:
    src = sqlite(tmp_path, "src")
    await fill(src, 400)
    backup_store(src, tmp_path / "good")
    return tmp_path / "good"


async def test_truncated_files_are_refused(good_backup: Path, tmp_path: Path) -> None:
    data = (good_backup / EVENTS_FILE).read_bytes()
    for cut in (0, 1, len(data) // 3, len(data) - 9, len(data) - 1):
        (good_backup / EVENTS_FILE).write_bytes(data[:cut])
        await _refused(good_backup, tmp_path, f"t{cut}")
    (good_backup / EVENTS_FILE).write_bytes(data)
    verify_backup(good_backup)
    manifest = (good_backup / MANIFEST_FILE).read_bytes()
    (good_backup / MANIFEST_FILE).write_bytes(manifest[: len(manifest) // 2])
    await _refused(good_backup, tmp_path, "tm")
    (good_backup / MANIFEST_FILE).unlink()
    await _refused(good_backup, tmp_path, "nm")


async def test_a_restore_of_a_file_altered_after_its_check_writes_nothing(
    good_backup: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore checks the content again as it imports: a file replaced between the
    check and the import is refused at the end and the one transaction rolls back."""
    import chronik.ops.restore as restore_module

    real = verify_backup

    def check_then_swap(path: Path) -> Any:
        manifest = real(path)
        data = bytearray((path / EVENTS_FILE).read_bytes())
        import zstandard

        raw = bytearray(zstandard.ZstdDecompressor().stream_reader(bytes(data)).read())
        raw[raw.index(b'i\\":7') + 4] = ord("8")  # same length, other content
        (path / EVENTS_FILE).write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))
        return manifest

    monkeypatch.setattr(restore_module, "verify_backup", check_then_swap)
    async with await chronik.connect(sqlite(tmp_path, "swapped")) as store:
        with pytest.raises(BackupCorrupted):
            await restore_backup(good_backup, store)
        assert await store.head_position() == 0


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_flipped_bytes_are_refused(
    good_backup: Path, tmp_path: Path, data: st.DataObject
) -> None:
    which = data.draw(st.sampled_from([EVENTS_FILE, MANIFEST_FILE]))
    file = good_backup / which
    original = file.read_bytes()
    at = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    flipped = bytearray(original)
    flipped[at] ^= mask
    file.write_bytes(bytes(flipped))
    try:
        try:
            manifest = verify_backup(good_backup)
        except BackupCorrupted:
            return
        # only a flip that changes no meaning may pass: JSON whitespace of the manifest
        assert which == MANIFEST_FILE
        assert msgspec.json.decode(bytes(flipped)) == msgspec.json.decode(original)
        assert manifest.events == 400
    finally:
        file.write_bytes(original)


# -- kill -9 and cancellation -------------------------------------------------------------------

_BACKUP_CHILD = """
import sys
from chronik.ops.backup import backup_store
backup_store(sys.argv[1], sys.argv[2])
"""


async def test_kill_9_during_backup_leaves_nothing_that_verifies(tmp_path: Path) -> None:
    src = sqlite(tmp_path, "big")
    async with await chronik.connect(src) as store:
        for start in range(0, 30_000, 1_000):
            await store.append(
                f"big-{start}", [NewEvent("Filled", {"n": start + k}) for k in range(1_000)]
            )
    rng = random.Random(7)
    complete = killed = 0
    for attempt in range(6):
        out = tmp_path / f"killed-{attempt}"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BACKUP_CHILD, src, str(out)
        )
        await asyncio.sleep(rng.uniform(0.05, 1.2))
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
        if child.returncode == -signal.SIGKILL:
            killed += 1
        try:
            manifest = verify_backup(out)
        except BackupCorrupted:
            assert not out.exists(), "a folder under the asked-for name that does not verify"
        else:
            assert manifest.events == 30_000
            complete += 1
    assert killed > 0, "no backup was killed midway: the test proved nothing"
    leftovers = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(leftovers) <= killed  # a killed backup leaves only its .partial folder
    for name in leftovers:
        with pytest.raises(BackupCorrupted):
            verify_backup(tmp_path / name)


def _cancelled_after(k: int, backup: Path, store: Any) -> asyncio.Future[Any]:
    """A restore in transactions of 60 events, cancelled at its k-th progress call."""
    calls = 0

    def cancel_at_k(_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == k:
            task.cancel()

    task = asyncio.ensure_future(
        restore_backup(backup, store, transaction_events=60, progress=cancel_at_k)
    )
    return task


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_cancelled_restore_leaves_the_target_empty_or_a_refused_half_restore(
    tmp_path: Path, pg_url: str, backend: str
) -> None:
    src = sqlite(tmp_path, "src")
    await fill(src, 250)
    backup_store(src, tmp_path / "b")
    expected = await dump(src)
    outcomes = {"empty": 0, "half": 0}
    # k = 0: cancelled while the backup is checked; k >= 1: after the k-th of five
    # transactions of 60 events imported (the store finishes a transaction it is in the
    # middle of: the cancellation lands at the next await outside it)
    for k in range(0, 6):
        url = sqlite(tmp_path, f"t{k}") if backend == "sqlite" else f"{pg_url}_{k}"
        async with await chronik.connect(url) as store:
            task = _cancelled_after(k, tmp_path / "b", store)
            if k == 0:
                await asyncio.sleep(0)
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            half = await half_restore(store)
            if await stored(store) == 0:  # cancelled in the first transaction
                assert half is None and await store.checkpoints() == {}
                outcomes["empty"] += 1
                await restore_backup(tmp_path / "b", store)
                assert await dump(url) == expected
                continue
            assert half is not None and 0 < half.done < half.expected == 250
            assert await stored(store) == half.done  # whole transactions only
            outcomes["half"] += 1
            with pytest.raises(BackupError, match="half restore"):
                await restore_backup(tmp_path / "b", store)
            report = await restore_backup(tmp_path / "b", store, resume=True)
            assert report.resumed_from == half.done
        assert await dump(url) == expected
    assert outcomes["empty"] >= 1 and outcomes["half"] >= 1, outcomes
    if backend == "postgresql":
        _drop_schemas(pg_url, [f"_{k}" for k in range(0, 6)])


def _drop_schemas(pg_url: str, suffixes: list[str]) -> None:
    import psycopg

    from chronik.store.pg_support import split_schema

    conninfo, schema = split_schema(pg_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for suffix in suffixes:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}{suffix}" CASCADE')


async def test_a_target_with_events_not_yet_visible_is_not_empty(
    tmp_path: Path, pg_url: str, other_database: str
) -> None:
    """A transaction held open elsewhere hides a stored event from head_position(): the
    restore still sees that the target is not empty and refuses it."""
    import psycopg

    src = sqlite(tmp_path, "src")
    await fill(src, 5)
    backup_store(src, tmp_path / "b")
    async with await chronik.connect(pg_url) as store:
        holder = await psycopg.AsyncConnection.connect(other_database)
        try:
            await holder.execute("SELECT pg_current_xact_id()")
            await store.append("hidden-1", [NewEvent("Hidden", {})])
            assert await store.head_position() == 0
            with pytest.raises(BackupError, match="holds events already"):
                await restore_backup(tmp_path / "b", store)
        finally:
            await holder.rollback()
            await holder.close()
        assert [e.stream_id async for e in store.read_all()] == ["hidden-1"]


async def test_memory_store_cannot_be_backed_up(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="memory"):
        backup_store("memory://", tmp_path / "m")
    assert not (tmp_path / "m").exists()


# -- the CLI ------------------------------------------------------------------------------------


async def test_cli_backup_verify_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = sqlite(tmp_path, "src"), sqlite(tmp_path, "dst")
    await fill(src, 50)
    out = str(tmp_path / "cli-backup")
    code = await asyncio.to_thread(main, ["backup", out, "--store", src, "--json"])
    assert code == 0
    manifest = msgspec.json.decode(capsys.readouterr().out)
    assert manifest["events"] == 50 and manifest["categories"] == {
        "cat0": 17,
        "cat1": 17,
        "cat2": 16,
    }
    assert await asyncio.to_thread(main, ["verify-backup", out, "--json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["ok"] is True
    assert await asyncio.to_thread(main, ["restore", out, "--store", dst]) == 3  # no store
    assert "StoreNotFound" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["init", "--store", dst]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["restore", out, "--store", dst, "--json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["restored"] == 50
    assert await dump(dst) == await dump(src)
    # an incremental backup after the first one, named by its folder
    await fill(src, 4, streams=2)
    incr = str(tmp_path / "cli-incr")
    assert await asyncio.to_thread(main, ["backup", incr, "--since", out, "--store", src]) == 0
    assert "incremental after position 50" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["restore", incr, "--store", dst]) == 0
    assert "restored 4 events" in capsys.readouterr().out
    assert await dump(dst) == await dump(src)
    assert await asyncio.to_thread(main, ["check", "--store", dst]) == 0  # nothing ahead
    capsys.readouterr()
    events = Path(out) / EVENTS_FILE
    events.write_bytes(events.read_bytes()[:-5])
    assert await asyncio.to_thread(main, ["verify-backup", out, "--json"]) == 1
    err = msgspec.json.decode(capsys.readouterr().err)
    assert err["error"]["type"] == "BackupCorrupted"
    assert await asyncio.to_thread(main, ["verify-backup", out]) == 1
    assert "corrupted or incomplete" in capsys.readouterr().err
    assert os.path.exists(out)


def test_backup_without_zstandard_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` raises
    out = str(tmp_path / "never")
    assert main(["backup", out, "--store", sqlite(tmp_path, "x")]) == 1
    assert "chronik[ops]" in capsys.readouterr().err
    assert not os.path.exists(out)
