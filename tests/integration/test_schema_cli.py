"""``chronik schema`` and ``chronik schema check`` through the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from examples import financial_transactions as fin

import chronik
from chronik.cli.main import main

APP = "examples.financial_transactions:app"


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> Any:
    assert main(argv) == code
    return json.loads(capsys.readouterr().out)


def test_schema_lists_types_versions_and_chains(capsys: pytest.CaptureFixture[str]) -> None:
    listed = run_json(capsys, ["schema", "--app", APP, "--json"])
    assert listed["ok"] is True and listed["problems"] == []
    (tx,) = [t for t in listed["types"] if t["type"] == "TransactionRecorded"]
    assert tx["version"] == 2 and tx["class"] == "TransactionRecorded"
    assert tx["steps"] == [
        {
            "from_version": 1,
            "to": [{"type": "TransactionRecorded", "version": 2}],
            "kind": "upcaster",
            "function": "v1_to_v2",
        }
    ]
    assert main(["schema", "list", "--app", "examples.crm_contacts:registry"]) == 0
    out = capsys.readouterr().out
    assert "ContactRegistered" in out and "v1 →(split_name) v2" in out and "downcast" in out


def test_schema_names_the_missing_step_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    broken = "tests.integration.migrate_helpers:broken"
    listed = run_json(capsys, ["schema", "--app", broken, "--json"], code=1)
    assert listed["ok"] is False
    assert any("missing step OrderPlaced v1" in p for p in listed["problems"])
    assert main(["schema", "--app", broken]) == 1
    assert "missing step OrderPlaced v1" in capsys.readouterr().err
    assert main(["schema"]) == 1
    assert "--app MODULE:OBJECT is needed" in capsys.readouterr().err


def test_schema_check_replays_every_stored_event_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/check.db"

    async def write() -> None:
        async with await chronik.connect(url) as store:
            await fin.record_last_year(store, "1")
            await store.append(
                "account-1",
                [fin.registry.to_new_event(fin.TransactionRecorded("1", 5, "ok", "USD"))],
            )
            await store.append(
                "account-2", [chronik.NewEvent("TransactionRecorded", {"x": 1}, schema_version=7)]
            )
            await store.append("account-2", [chronik.NewEvent("Mystery", {})])
            await store.append(
                "account-3",
                [chronik.NewEvent("TransactionRecorded", {"amount_cents": "no"}, schema_version=2)],
            )

    asyncio.run(write())
    before = (tmp_path / "check.db").read_bytes()
    report = run_json(capsys, ["--store", url, "schema", "check", "--app", APP, "--json"], 1)
    assert (report["ok"], report["events"], report["failed"]) == (False, 7, 3)
    by_key = {(t["type"], t["schema_version"]): t for t in report["types"]}
    assert by_key[("TransactionRecorded", 1)]["ok"] == 3
    assert by_key[("TransactionRecorded", 1)]["becomes"] == ["TransactionRecorded v2"]
    (future,) = by_key[("TransactionRecorded", 7)]["errors"]
    assert future["stream_id"] == "account-2" and future["version"] == 0
    assert "UpcastError" in future["error"] and "newer" in future["error"]
    assert "UnknownEventType" in by_key[("Mystery", 1)]["errors"][0]["error"]
    (misfit,) = by_key[("TransactionRecorded", 2)]["errors"]
    assert misfit["stream_id"] == "account-3" and "SerializationError" in misfit["error"]

    tolerant = run_json(
        capsys,
        ["--store", url, "schema", "check", "--app", APP, "--allow-unknown", "--json"],
        1,
    )
    assert (tolerant["failed"], tolerant["unknown"]) == (2, 1)
    only = run_json(
        capsys,
        ["--store", url, "schema", "check", "--app", APP, "--category", "account", "--json"],
        1,
    )
    assert only["events"] == 7
    assert main(["--store", url, "schema", "check", "--app", APP]) == 1
    human = capsys.readouterr().out
    assert "TransactionRecorded v7" in human and "FAILED" in human
    assert (tmp_path / "check.db").read_bytes() == before  # nothing changed
