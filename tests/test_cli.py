"""The command line, on a SQLite file made by the bank-account example."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from examples.bank_account import run

import chronik
from chronik.cli._common import Output, load_object, run_until_signal
from chronik.cli.main import build_parser, main
from chronik.workers import Poller


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


def test_errors_are_one_line_with_their_exit_status(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--store", url, "events", "account-nobody"]) == 3
    assert "StreamNotFound" in capsys.readouterr().err
    assert main(["--store", url, "events", "$bad", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["error"]["type"] == "InvalidStreamId"
    assert main(["--store", "mysql://x", "stats"]) == 2
    assert "UnsupportedStoreUrl" in capsys.readouterr().err


def test_tail_follow_prints_new_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/follow.db"
    assert main(["--store", url, "init"]) == 0  # tail, like every command but init, creates none
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


async def _relay_state(url: str) -> None:
    """Two relays' checkpoints and a dead letter, as `chronik relay run` leaves them."""
    async with await chronik.connect(url) as store:
        (first,) = [e async for e in store.read_all(limit=1)]
        async with store.transaction() as tx:
            await tx.set_checkpoint("relay:orders", 2)
            await tx.set_checkpoint("relay:audit", 5)
            await tx.set_checkpoint("totals:v1", 1)  # a projection: not shown
            await tx.add_dead_letter("relay:orders", first, "InvalidSubject: bad token", 1)
        await store.append("order-1", [chronik.NewEvent("OrderPlaced", {"total": 3})])


def test_relay_status(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_relay_state(url))
    rows = _json(capsys, ["--store", url, "relay", "status", "--json"])
    assert rows == [
        {
            "name": "audit",
            "checkpoint": 5,
            "head": 6,
            "lag_events": 1,
            "lag_filter": None,
            "dead_letters": 0,
        },
        {
            "name": "orders",
            "checkpoint": 2,
            "head": 6,
            "lag_events": 4,
            "lag_filter": None,
            "dead_letters": 1,
        },
    ]
    rows = _json(
        capsys, ["--store", url, "relay", "status", "orders", "--category", "order", "--json"]
    )
    assert [(r["name"], r["lag_events"]) for r in rows] == [("orders", 1)]
    assert rows[0]["lag_filter"] == {"categories": ["order"], "types": None}
    assert main(["--store", url, "relay", "status"]) == 0
    out = capsys.readouterr().out
    assert "orders" in out and "audit" in out and "totals" not in out and "unfiltered" in out


def test_relay_status_without_relays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    assert main(["--store", url, "init"]) == 0
    capsys.readouterr()
    assert _json(capsys, ["--store", url, "relay", "status", "--json"]) == []
    assert main(["--store", url, "relay", "status"]) == 0
    assert "no relay has a checkpoint yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "write MODULE:OBJECT"),
        ("chronik_no_such_module:workers", "no module named 'chronik_no_such_module'"),
        ("chronik.no_such_module:workers", "no module named 'chronik.no_such_module'"),
        ("examples.bank_account:no_such_name", "module examples.bank_account has no attribute"),
        ("examples.bank_account:run.nope", "examples.bank_account:run has no attribute 'nope'"),
        ("broken_app:workers", "importing module 'broken_app' failed: No module named 'absent_x'"),
    ],
)
def test_module_object_errors_are_one_line(
    spec: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "broken_app.py").write_text("import absent_x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{tmp_path}/loader.db"
    assert main(["--store", url, "init"]) == 0
    capsys.readouterr()
    assert main(["--store", url, "sagas", "run", spec]) == 1
    err = capsys.readouterr().err
    assert f"LoadError: sagas run {spec!r}: " in err and message in err, err
    assert len(err.strip().splitlines()) == 1  # no traceback, not wrapped


def test_load_object_finds_dotted_names_and_checks_kinds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert load_object("examples.bank_account:run.__name__", "--app") == "run"
    argv = ["--store", "memory://", "migrate", "copy", "--from", "memory://", "--to"]
    assert main([*argv, "memory://x", "--transform", "examples.bank_account:__doc__"]) == 1
    assert "LoadError: --transform 'examples.bank_account:__doc__': str is not a function" in (
        capsys.readouterr().err
    )


WORKERS_SCRIPT = """
import asyncio, sys
from chronik.cli._common import Output, run_until_signal
from chronik.workers import Poller

class Loud(Poller):
    async def _starting(self): print(self.name, "started", flush=True)
    async def run_once(self): return 0
    async def _stopped(self): print(self.name, "stopped", flush=True)

workers = [Loud(name="one", poll_interval=60.0), Loud(name="two", poll_interval=60.0)]
sys.exit(asyncio.run(run_until_signal(workers, Output(False), "two workers")))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_until_signal_stops_every_worker(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKERS_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None and proc.stdout is not None
    assert b"running two workers" in proc.stderr.readline()  # the handlers are installed
    started = {proc.stdout.readline(), proc.stdout.readline()}
    assert started == {b"one started\n", b"two started\n"}
    proc.send_signal(sig)
    assert proc.wait(20) == 0
    assert set(proc.stdout.read().splitlines()) == {b"one stopped", b"two stopped"}
    proc.stdout.close()
    proc.stderr.close()


def test_run_until_signal_stops_the_others_when_one_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Failing(Poller):
        async def run_once(self) -> int:
            raise RuntimeError("broker gone")

    class Waiting(Poller):
        stopped = False

        async def run_once(self) -> int:
            return 0

        async def _stopped(self) -> None:
            self.stopped = True

    waiting = Waiting(name="waiting", poll_interval=60.0)
    failing = Failing(name="failing", poll_interval=60.0)
    assert asyncio.run(run_until_signal([failing, waiting], Output(False), "both")) == 1
    assert waiting.stopped
    assert "broker gone" in capsys.readouterr().err
