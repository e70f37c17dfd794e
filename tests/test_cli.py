"""The command line, on a SQLite file made by the bank-account example."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from examples.bank_account import run

import chronik
from chronik.cli.main import build_parser, main


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    asyncio.run(run(url, say=lambda *_: None))
    return url


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_init_creates_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    assert _json(capsys, ["--store", url, "init", "--json"]) == {
        "store": url,
        "ready": True,
        "events": 0,
    }
    assert (tmp_path / "new.db").exists()


def test_streams_events_stats_json(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    streams = _json(capsys, ["streams", "--store", url, "--json"])
    assert streams == [{"stream_id": "account-alice", "version": 4, "last_position": 5}]
    events = _json(capsys, ["--json", "--store", url, "events", "account-alice"])
    assert isinstance(events, list)
    assert [e["type"] for e in events] == [
        "AccountOpened",
        "Deposited",
        "Withdrawn",
        "Deposited",
        "Deposited",
    ]
    assert events[0]["metadata"]["correlation_id"] == "demo-session-1"
    assert events[3]["metadata"]["actor"] == "teller-2"
    back = _json(
        capsys, ["--store", url, "events", "account-alice", "--backwards", "--limit", "2", "--json"]
    )
    assert [e["version"] for e in back] == [4, 3]
    stats = _json(capsys, ["--store", url, "stats", "--json"])
    assert stats["events"] == 5 and stats["streams"] == 1
    assert stats["categories"] == {"account": 5}
    assert stats["size_bytes"] > 0


def test_human_output(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", url, "events", "account-alice"]) == 0
    out = capsys.readouterr().out
    assert "AccountOpened" in out and "demo-session-1" in out
    assert main(["--store", url, "stats"]) == 0
    assert "account" in capsys.readouterr().out
    assert main(["--store", url, "tail", "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "account-alice@4" in out and "account-alice@2" not in out


def test_store_from_environment(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHRONIK_STORE", url)
    assert len(_json(capsys, ["streams", "--json"])) == 1


def test_errors_are_one_line_and_exit_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", url, "events", "account-nobody"]) == 1
    assert "StreamNotFound" in capsys.readouterr().err
    assert main(["--store", url, "events", "$bad", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "InvalidStreamId"
    assert main(["--store", "mysql://x", "stats"]) == 1
    assert "UnsupportedStoreUrl" in capsys.readouterr().err


def test_tail_follow_prints_new_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/follow.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chronik",
            "--store",
            url,
            "tail",
            "--follow",
            "--json",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "follow.db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        async def write() -> None:
            async with await chronik.connect(url) as store:
                for n in range(3):
                    await store.append(f"live-{n}", [chronik.NewEvent("Ping", {"n": n})])

        asyncio.run(write())
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [line["data"]["n"] for line in lines] == [0, 1, 2]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_every_command_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices is not None
    for name in sub.choices:
        assert f"chronik {name}" in docs, f"docs/cli.md does not document `chronik {name}`"
