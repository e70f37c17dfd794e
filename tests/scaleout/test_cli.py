"""``chronik workers status|resize --json`` on a store with a partitioned group."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import chronik
from chronik.cli.main import main
from chronik.scaleout import PartitionedProjectionRunner
from tests.scaleout.app import StreamOrder, append_ticks
from tests.scaleout.test_leases import _applied, until


async def _run_group(url: str) -> None:
    async with await chronik.connect(url) as store:
        runner = PartitionedProjectionRunner(store, StreamOrder(), partitions=2, member="solo")
        async with runner:
            await append_ticks(store, 4, 2)
            await until(lambda: _applied(store, 8), "applied")


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_workers_status_and_resize_json(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_run_group(sqlite_url))
    (group,) = _json(capsys, ["--store", sqlite_url, "workers", "status", "--json"])
    assert group["name"] == "projection:so:v1"
    assert group["members"] == []  # stopped gracefully: left the group
    parts = group["partitions"]
    assert [(x["partition"], x["owner"], x["epoch"]) for x in parts] == [(0, None, 1), (1, None, 1)]
    assert all(x["lag"] == 0 and x["checkpoint"].startswith("so:v1/p") for x in parts)
    done = _json(capsys, ["--store", sqlite_url, "workers", "resize", "projection:so:v1", "3",
                          "--json"])  # fmt: skip
    assert (done["partitions"], done["resize_to"]) == (2, 3)
    capsys.readouterr()
    assert main(["--store", sqlite_url, "workers", "resize", "projection:nope:v1", "3"]) == 1
    assert "no worker group" in capsys.readouterr().err


def test_workers_sagas_runs_partitions_and_status_names_them(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    async def create() -> None:
        async with await chronik.connect(sqlite_url):
            pass

    asyncio.run(create())
    root = Path(__file__).parent.parent.parent
    env = dict(os.environ, PYTHONPATH=f"{root / 'src'}{os.pathsep}{root}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronik", "--store", sqlite_url, "workers", "sagas",
         "examples.funds_transfer:workers", "--partitions", "2", "--member", "solo", "--json"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            capsys.readouterr()
            if main(["--store", sqlite_url, "workers", "status", "saga:transfer", "--json"]) == 0:
                groups = json.loads(capsys.readouterr().out or "[]")
                owners = [x["owner"] for g in groups for x in g["partitions"]]
                if owners == ["solo", "solo"]:
                    break
            assert time.monotonic() < deadline, "the partitions were never owned"
            time.sleep(0.2)
        (group,) = groups
        assert [x["checkpoint"] for x in group["partitions"]] == [
            "saga:transfer/p0of2",
            "saga:transfer/p1of2",
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out.decode().strip().splitlines()[-1]) == [
        {"name": "saga:transfer@solo", "rebalances": 2, "leases_lost": 0}
    ]


def _plain_handler(message: object, tx: object) -> None:
    """Not async: would run, return no awaitable and fail every message."""


def test_workers_inbox_refuses_a_plain_function_as_handler(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nats")
    assert main(["--store", sqlite_url, "init"]) == 0
    handler = "tests.scaleout.test_cli:_plain_handler"
    args = ["--store", sqlite_url, "workers", "inbox", handler, "--stream", "S",
            "--prefix", "s", "--name", "n", "--nats", "nats://127.0.0.1:1"]  # fmt: skip
    assert main(args) != 0
    assert "not an async function" in capsys.readouterr().err


def test_workers_inbox_batch_size_needs_unordered(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nats")
    assert main(["--store", sqlite_url, "init"]) == 0
    handler = "tests.scaleout.inbox_worker:effect"
    args = ["--store", sqlite_url, "workers", "inbox", handler, "--stream", "S",
            "--prefix", "s", "--name", "n", "--nats", "nats://127.0.0.1:1",
            "--batch-size", "10"]  # fmt: skip
    assert main(args) == 1
    assert "--batch-size" in capsys.readouterr().err
