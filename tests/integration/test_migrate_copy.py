"""``chronik migrate copy``: kill -9 mid-way and resume, SQLite ⇄ PostgreSQL, failing
transforms, verification (with a broken target it must catch), through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from examples import financial_transactions as fin

import chronik
from chronik.migrate import CHECKPOINT_PREFIX, copy_store, verify_copy
from chronik.store.protocol import ImportedEvent
from tests.conftest import PG_URL
from tests.integration import migrate_helpers

ROOT = Path(__file__).parent.parent.parent
APP = "examples.financial_transactions:app"


def history(n: int, *, streams: int = 97, poison_at: int | None = None) -> list[ImportedEvent]:
    """``n`` ledger events over ``streams`` accounts: v1 (before currencies) then v2."""
    start = datetime(2023, 1, 1, tzinfo=UTC)
    versions: dict[str, int] = {}
    out = []
    for i in range(n):
        account = str(i % streams)
        stream = f"account-{account}"
        version = versions.get(stream, -1) + 1
        versions[stream] = version
        description = "poison" if i == poison_at else f"tx {i}"
        data: dict[str, Any] = {"account_id": account, "amount_cents": (i * 37) % 5000 - 2000}
        data["description"] = description
        if i >= n // 2:
            data["currency"] = "USD" if i % 3 else "EUR"
        out.append(
            ImportedEvent(
                uuid.UUID(int=(1 << 120) + i),
                stream,
                version,
                "TransactionRecorded",
                1 if i < n // 2 else 2,
                msgspec.json.encode(data),
                msgspec.json.encode({"correlation_id": f"c-{i // 10}", "n": i}),
                start + timedelta(seconds=i, microseconds=i % 997),
            )
        )
    return out


async def fill(url: str, events: list[ImportedEvent]) -> None:
    async with await chronik.connect(url) as store:
        for begin in range(0, len(events), 5000):
            async with store.transaction() as tx:
                await tx.import_events(events[begin : begin + 5000])


async def dump(url: str) -> list[tuple[Any, ...]]:
    """Everything a copy must keep, in order (positions are the target's own)."""
    async with await chronik.connect(url) as store:
        return [
            (
                e.event_id,
                e.stream_id,
                e.version,
                e.type,
                e.schema_version,
                e.data,
                e.metadata,
                e.recorded_at,
            )
            async for e in store.read_all()
        ]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chronik", "migrate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@dataclass
class Stores:
    """Store URLs of one kind: SQLite files, or PostgreSQL schemas dropped afterwards."""

    kind: str
    tmp: Path
    pg_base: str | None
    made: list[str]

    def url(self, name: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp}/{name}.db"
        assert self.pg_base is not None
        schema = f"{self.pg_base}_{name}"
        self.made.append(schema)
        return f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"


@pytest.fixture
def stores(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Stores]]:
    made: list[str] = []
    pg_base = None
    if any(m.name == "postgres" for m in request.node.iter_markers()):
        pg_url = request.getfixturevalue("pg_url")
        pg_base = pg_url.rsplit("schema=", 1)[1]
    yield {
        "sqlite": Stores("sqlite", tmp_path, None, made),
        "postgres": Stores("postgres", tmp_path, pg_base, made),
    }
    if made:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for schema in made:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


PAIRS = [
    pytest.param("sqlite", "sqlite", id="sqlite-sqlite"),
    pytest.param("sqlite", "postgres", id="sqlite-postgres", marks=pytest.mark.postgres),
    pytest.param("postgres", "sqlite", id="postgres-sqlite", marks=pytest.mark.postgres),
]


@pytest.mark.parametrize("source_kind,target_kind", PAIRS)
def test_kill_9_inside_a_batch_then_resume_equals_an_uninterrupted_copy(
    stores: dict[str, Stores], source_kind: str, target_kind: str
) -> None:
    source = stores[source_kind].url("source")
    killed, clean = stores[target_kind].url("killed"), stores[target_kind].url("clean")
    asyncio.run(fill(source, history(3000)))
    options = ["--upcast", "--app", APP, "--batch-size", "100", "--json"]

    # SIGKILL after the 7th batch's events are written, before its COMMIT
    crashed = cli(
        "copy", "--from", source, "--to", killed, *options,
        env={"CHRONIK_FAILPOINT": "copy_before_commit#7"},
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    partial = asyncio.run(dump(killed))
    assert len(partial) == 600  # six whole batches, nothing of the seventh

    resumed = cli("copy", "--from", source, "--to", killed, *options)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed_after"] > 0 and report["read"] == 2400
    assert report["verification"]["ok"] is True

    uninterrupted = cli("copy", "--from", source, "--to", clean, *options)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert asyncio.run(dump(killed)) == asyncio.run(dump(clean))
    copied = asyncio.run(dump(clean))
    assert len(copied) == 3000 and {e[4] for e in copied} == {2}  # all upcast to v2
    assert copied[0][5] == {
        "account_id": "0",
        "amount_cents": -2000,
        "description": "tx 0",
        "currency": "EUR",
    }


def test_external_kill_9_at_any_moment_then_resume(stores: dict[str, Stores]) -> None:
    sqlite = stores["sqlite"]
    source, killed = sqlite.url("source"), sqlite.url("killed")
    events = history(20_000)
    asyncio.run(fill(source, events))
    target_file = sqlite.tmp / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronik", "migrate", "copy", "--from", source, "--to", killed,
         "--batch-size", "50", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        checkpoint = 0
        deadline = time.monotonic() + 120
        while checkpoint == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            if target_file.exists():
                try:
                    with sqlite3.connect(target_file, timeout=1) as conn:
                        row = conn.execute(
                            "SELECT position FROM checkpoints WHERE name LIKE ?",
                            (CHECKPOINT_PREFIX + "%",),
                        ).fetchone()
                except sqlite3.OperationalError:  # not migrated yet
                    continue
                checkpoint = row[0] if row else 0
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be killed"
    assert 0 < checkpoint < 20_000
    copied = asyncio.run(dump(killed))
    assert 0 < len(copied) < 20_000 and len(copied) % 50 == 0  # whole batches only
    resumed = cli("copy", "--from", source, "--to", killed, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["verification"]["ok"] is True
    assert asyncio.run(dump(killed)) == asyncio.run(dump(source))  # the exact copy


def test_a_failing_transform_stops_naming_the_event_and_resumes_after_the_fix(
    stores: dict[str, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite = stores["sqlite"]
    source, target, clean = sqlite.url("source"), sqlite.url("target"), sqlite.url("clean")
    events = history(1000, poison_at=421)
    asyncio.run(fill(source, events))
    transform = "tests.integration.migrate_helpers:cents_to_units"
    args = ["--transform", transform, "--upcast", "--app", APP, "--batch-size", "64"]

    failed = cli("copy", "--from", source, "--to", target, *args)
    assert failed.returncode == 1
    poison = events[421]
    assert "MigrationError" in failed.stderr
    message = " ".join(failed.stderr.split())
    for part in (
        str(poison.event_id),
        f"stream '{poison.stream_id}' version {poison.version}",
        "position 422",
        "'TransactionRecorded'",
        "ValueError: cannot convert a poisoned amount",
    ):
        assert part in message, part

    # the target is consistent: exactly the events before the poison, and the checkpoint
    before = asyncio.run(dump(target))
    assert [e[0] for e in before] == [e.event_id for e in events[:421]]
    assert {e[3] for e in before} == {"Transaction"}
    checkpoints = asyncio.run(_checkpoints(target))
    assert list(checkpoints.values()) == [421]

    fixed = {"CHRONIK_TEST_FIXED": "1"}
    resumed = cli("copy", "--from", source, "--to", target, *args, "--json", env=fixed)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["read"] == 579
    assert cli("copy", "--from", source, "--to", clean, *args, env=fixed).returncode == 0
    assert asyncio.run(dump(target)) == asyncio.run(dump(clean))
    monkeypatch.setenv("CHRONIK_TEST_FIXED", "1")
    converted = asyncio.run(dump(target))
    assert converted[421][5]["amount"] == (421 * 37 % 5000 - 2000) / 100


async def _checkpoints(url: str) -> dict[str, int]:
    async with await chronik.connect(url) as store:
        return await store.checkpoints()


async def test_split_renumbers_versions_with_stable_ids_and_verifies(tmp_path: Path) -> None:
    events = history(300, streams=7)
    async with (
        await chronik.connect("memory://") as source,
        await chronik.connect(f"sqlite:///{tmp_path}/t.db") as target,
    ):
        async with source.transaction() as tx:
            await tx.import_events(events)
        report = await copy_store(
            source,
            target,
            registry=fin.registry,
            upcast=True,
            transform=migrate_helpers.split_fees,
            batch_size=32,
        )
        assert report.verification is not None and report.verification.ok
        assert report.written > report.read == 300
        stream = [e async for e in target.read_stream("account-3")]
        assert [e.version for e in stream] == list(range(len(stream)))
        fees = [e for e in stream if e.type == "FeeCharged"]
        assert fees and all(e.event_id not in {x.event_id for x in events} for e in fees)
        again = await verify_copy(
            source,
            target,
            registry=fin.registry,
            upcast=True,
            transform=migrate_helpers.split_fees,
        )
        assert again.ok and again.target_checksum == report.verification.target_checksum


async def test_verification_catches_a_broken_target(tmp_path: Path) -> None:
    """The negative control: a copy that lost or gained an event must not verify."""
    source_url, target_url = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/t.db"
    await fill(source_url, history(200, streams=5))
    async with await chronik.connect(source_url) as source:
        async with await chronik.connect(target_url) as target:
            assert (await copy_store(source, target)).verification.ok  # type: ignore[union-attr]
        with sqlite3.connect(f"{tmp_path}/t.db") as conn:
            conn.execute("DELETE FROM events WHERE stream_id = 'account-2' AND version = 39")
        async with await chronik.connect(target_url) as target:
            lost = await verify_copy(source, target)
            assert not lost.ok
            assert lost.differences == [
                "account-2: expected 40 events to version 39, found 39 events to version 38"
            ]
            await target.append("account-2", [chronik.NewEvent("Forged", {})])
            forged = await verify_copy(source, target)
            assert not forged.ok and forged.differences == [
                "same counts and versions per stream, but other event ids or order"
            ]
    result = cli("verify", "--from", source_url, "--to", target_url, "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["ok"] is False


async def test_target_guards_and_incremental_catch_up(tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path}/s.db"
    await fill(source_url, history(120, streams=4))
    async with (
        await chronik.connect(source_url) as source,
        await chronik.connect(f"sqlite:///{tmp_path}/t.db") as target,
        await chronik.connect(f"sqlite:///{tmp_path}/busy.db") as busy,
    ):
        await busy.append("other-1", [chronik.NewEvent("Something", {})])
        with pytest.raises(chronik.MigrationError, match="holds 1 events and no copy checkpoint"):
            await copy_store(source, busy)
        with pytest.raises(chronik.MigrationError, match="same store"):
            await copy_store(source, source)
        first = await copy_store(source, target, categories=["account"])
        assert (first.read, first.resumed_after) == (120, 0)
        with pytest.raises(chronik.MigrationError, match="other options"):
            await copy_store(source, target)
        # the source goes on while the copy waits for the switch-over: copy the tail
        await source.append("account-1", [fin.registry.to_new_event(
            fin.TransactionRecorded("1", 5, "late", "EUR"))])  # fmt: skip
        tail = await copy_store(source, target, categories=["account"])
        assert (tail.read, tail.resumed_after) == (1, 120)
        assert tail.verification is not None and tail.verification.expected_events == 121


def test_cli_copy_prints_progress_and_a_summary(tmp_path: Path) -> None:
    source, target = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/t.db"
    asyncio.run(fill(source, history(500)))
    human = cli("copy", "--from", source, "--to", target, "--upcast", "--app", APP)
    assert human.returncode == 0, human.stderr
    assert "copied 500 events (500 written) from the start" in human.stdout
    assert "events/s" in human.stdout and "verified: 500 events in 97 streams" in human.stdout
    assert "500/500" in human.stderr and "ev/s" in human.stderr  # the progress bar
    same = cli("copy", "--from", source, "--to", source)
    assert same.returncode == 1 and "same store" in same.stderr
    no_app = cli("copy", "--from", source, "--to", f"sqlite:///{tmp_path}/u.db", "--upcast")
    assert no_app.returncode == 1 and "--upcast needs --app" in no_app.stderr
    assert not (tmp_path / "u.db").exists()


async def test_a_transform_returning_nan_stops_instead_of_writing_null(tmp_path: Path) -> None:
    """JSON has no NaN: a transform that makes one must not have it written as ``null``."""
    source_url, target_url = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/t.db"
    async with await chronik.connect(source_url) as source:
        await source.append("price-1", [chronik.NewEvent("Priced", {"amount": 1.5})])
        async with await chronik.connect(target_url) as target:

            def broken(event: chronik.RecordedEvent) -> dict[str, object]:
                return {"amount": float("nan")}

            with pytest.raises(
                chronik.MigrationError, match=r"NaN or infinite number at \$\.amount"
            ):
                await copy_store(source, target, transform=broken)
            assert [e async for e in target.read_all()] == []
