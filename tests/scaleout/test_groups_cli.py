"""``chronik groups ...``: create, update, list, info, parked, replay-parked, delete, with
--json, typed errors and exit statuses (3 for a missing group), the store unchanged by a
refused command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik.cli.main import main
from chronik.scaleout.groups import ConsumerGroup


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/groups.db"
    assert main(["--store", url, "init"]) == 0
    return url


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 0) -> Any:
    capsys.readouterr()
    assert main(argv) == status
    out = capsys.readouterr()
    return json.loads(out.out if status == 0 else out.err)


async def _park_one(url: str) -> None:
    async with await chronik.connect(url) as store:
        await store.append("order-1", [chronik.NewEvent("Placed", {"n": 1})], expected_version=-1)
        group = await ConsumerGroup.load(store, "mail")
        (m,) = await group.receive("m1")
        await group.nack(m, "park", reason="bad address")


def test_groups_commands(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--store", url, "--json", "groups"]
    made = _json(capsys, [*base, "create", "mail", "--category", "order", "--strategy",
                          "pinned", "--max-retries", "3"])  # fmt: skip
    assert (made["name"], made["categories"], made["strategy"], made["max_retries"]) == (
        "mail", ["order"], "pinned", 3,
    )  # fmt: skip
    error = _json(capsys, [*base, "create", "mail"], status=1)
    assert error["error"]["type"] == "GroupExists"
    updated = _json(capsys, [*base, "update", "mail", "--message-timeout", "5"])
    assert (updated["message_timeout"], updated["max_retries"], updated["categories"]) == (
        5.0, 3, ["order"],
    )  # fmt: skip
    asyncio.run(_park_one(url))
    assert [g["name"] for g in _json(capsys, [*base, "list"])["groups"]] == ["mail"]
    assert _json(capsys, [*base, "info", "mail"])["parked"] == 1
    (parked,) = _json(capsys, [*base, "parked", "mail"])
    assert (parked["stream_id"], parked["error"]) == ("order-1", "bad address")
    assert _json(capsys, [*base, "replay-parked", "mail"])["replayed"] == 1
    assert _json(capsys, [*base, "info", "mail"])["parked"] == 0
    assert _json(capsys, [*base, "delete", "mail"]) == {"name": "mail", "deleted": True}
    for argv in (["info", "mail"], ["delete", "mail"], ["update", "mail"], ["parked", "mail"]):
        assert _json(capsys, [*base, *argv], status=3)["error"]["type"] == "GroupNotFound"
    assert _json(capsys, [*base, "list"]) == {"groups": []}


@pytest.mark.parametrize(
    "argv",
    [
        ["create", ""],
        ["create", "a\x00b"],
        ["create", "x" * 5000],
        ["create", "g", "--category", "a", "--stream", "a-1"],
    ],
)
def test_bad_input_is_a_typed_error_and_changes_nothing(
    url: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    error = _json(capsys, ["--store", url, "--json", "groups", *argv], status=1)
    assert error["error"]["type"] == "InvalidArgument"
    assert _json(capsys, ["--store", url, "--json", "groups", "list"]) == {"groups": []}


def test_usage_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--strategy", "random"], ["--max-retries", "0"]):
        with pytest.raises(SystemExit) as caught:
            main(["--store", url, "groups", "create", "g", *bad])
        assert caught.value.code == 2
