"""An inbox's dead letters: listed (library and ``chronik inbox dead-letters``), retried
through a fixed handler (applied once, removed; failing again: kept with the new error),
discarded. No broker needed: a dead letter lives in the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import chronik
from chronik.cli.main import main
from chronik.nats import (
    Inbox,
    InboxMessage,
    discard_inbox_dead_letter,
    inbox_dead_letters,
    retry_inbox_dead_letters,
)
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx
from tests.scaleout.inbox_worker import EFFECTS, effect

pytest.importorskip("nats")

NAME = "billing"


async def still_broken(message: InboxMessage, tx: Tx) -> None:
    raise ValueError(f"still broken: {message.message_id}")


def _message(n: int, data: bytes = b'{"n": 1}') -> InboxMessage:
    headers = {"Chronik-Stream-Id": "acct-1", "Chronik-Position": str(n), "Chronik-Type": "Added"}
    return InboxMessage(f"m-{n}", "orders.0.acct.Added", "Added", data, headers, 5)


async def _park(store: EventStore, *messages: InboxMessage, name: str = NAME) -> None:
    inbox = Inbox(store, [], name=name, stream="S", subject="orders.>", handler=effect)
    for message in messages:
        await inbox._dead_letter(message, ValueError("boom"))


async def _effects(store: EventStore) -> list[tuple[Any, ...]]:
    return await require(store, SqlStore).query(
        "SELECT message_id, position FROM inbox_effects ORDER BY seq"
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    async with await chronik.connect(url) as s:
        serial = "BIGSERIAL" if require(s, SqlStore).dialect == "postgresql" else "INTEGER"
        async with s.transaction() as tx:
            await tx.execute(EFFECTS.format(serial=serial))
        yield s


async def test_listed_with_payload_headers_and_error(store: EventStore) -> None:
    await _park(store, _message(1), _message(2, b"\x00\xff binary"))
    await _park(store, _message(9), name="other")
    letters = await inbox_dead_letters(store, NAME)
    assert [d.message_id for d in letters] == ["m-1", "m-2"]
    assert letters[1].data == b"\x00\xff binary"  # kept whole, not as text
    assert letters[0].headers["Chronik-Position"] == "1" and "boom" in letters[0].error
    assert letters[0].message() == _message(1)
    assert len(await inbox_dead_letters(store)) == 3


async def test_retry_applies_once_and_removes_what_was_applied(store: EventStore) -> None:
    await _park(store, _message(1), _message(2))
    assert await retry_inbox_dead_letters(store, NAME, handler=still_broken) == (0, 2)
    letters = await inbox_dead_letters(store, NAME)
    assert [d.error for d in letters] == ["ValueError('boom')"] * 2  # the parked diagnosis
    assert await _effects(store) == []
    assert await retry_inbox_dead_letters(store, NAME, handler=effect) == (2, 0)
    assert await inbox_dead_letters(store, NAME) == []
    assert await _effects(store) == [("m-1", 1), ("m-2", 2)]
    # parked again (a second inbox gave up on a copy): recorded as processed, not re-applied
    await _park(store, _message(1))
    assert await retry_inbox_dead_letters(store, NAME, handler=effect) == (1, 0)
    assert await _effects(store) == [("m-1", 1), ("m-2", 2)]


async def test_discard(store: EventStore) -> None:
    await _park(store, _message(1))
    assert await discard_inbox_dead_letter(store, NAME, "m-1") is True
    assert await discard_inbox_dead_letter(store, NAME, "m-1") is False
    assert await inbox_dead_letters(store) == []


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """A store URL holding two dead letters of NAME (for the CLI, which runs its own loop)."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")

    async def prepare() -> None:
        async with await chronik.connect(url) as s:
            serial = "BIGSERIAL" if require(s, SqlStore).dialect == "postgresql" else "INTEGER"
            async with s.transaction() as tx:
                await tx.execute(EFFECTS.format(serial=serial))
            await _park(s, _message(1), _message(2))

    asyncio.run(prepare())
    return url


def test_cli_lists_retries_and_discards(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--store", url, "inbox", "dead-letters"]
    assert main([*base, NAME, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["message_id"] for r in rows] == ["m-1", "m-2"] and rows[0]["deliveries"] == 5
    assert main([*base, NAME]) == 0
    assert "2 dead letter(s)" in capsys.readouterr().out
    broken = "tests.integration.test_inbox_dead_letters:still_broken"
    assert main([*base, NAME, "--retry", broken, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"fixed": 0, "still_failing": 2}
    assert main([*base, NAME, "--discard", "m-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"discarded": True}
    fixed = "tests.scaleout.inbox_worker:effect"
    assert main([*base, NAME, "--retry", fixed, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"fixed": 1, "still_failing": 0}
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    async def effects() -> list[tuple[Any, ...]]:
        async with await chronik.connect(url) as s:
            return await _effects(s)

    assert asyncio.run(effects()) == [("m-1", 1)]


class CallableHandler:
    async def __call__(self, message: InboxMessage, tx: Tx) -> None:
        await effect(message, tx)


callable_handler = CallableHandler()


def test_cli_edges(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--store", url, "inbox", "dead-letters"]
    assert main([*base, NAME, "--appends"]) == 1
    assert "--appends" in capsys.readouterr().err

    async def park_binary() -> None:
        async with await chronik.connect(url) as s:
            await _park(s, _message(3, b"\x00\xff"))

    asyncio.run(park_binary())
    assert main([*base, NAME, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["data"] == "base64:AP8="  # not text
    handler = "tests.integration.test_inbox_dead_letters:callable_handler"
    assert main([*base, NAME, "--retry", handler, "--json"]) == 0  # an async __call__
    assert json.loads(capsys.readouterr().out) == {"fixed": 3, "still_failing": 0}


def test_cli_refuses_retry_without_a_name(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--store", sqlite_url, "init"]) == 0
    args = ["--store", sqlite_url, "inbox", "dead-letters", "--retry", "x:y"]
    assert main(args) == 1
    assert "NAME" in capsys.readouterr().err


async def slow_effect(message: InboxMessage, tx: Tx) -> None:
    await asyncio.sleep(0.2)
    await effect(message, tx)


async def test_two_retries_at_once_apply_each_message_once_and_report_no_failure(
    store: EventStore,
) -> None:
    await _park(store, _message(1), _message(2), _message(3))
    results = await asyncio.gather(
        retry_inbox_dead_letters(store, NAME, handler=slow_effect),
        retry_inbox_dead_letters(store, NAME, handler=slow_effect),
    )
    assert [failing for _, failing in results] == [0, 0]
    assert sorted(await _effects(store)) == [("m-1", 1), ("m-2", 2), ("m-3", 3)]
    assert await inbox_dead_letters(store, NAME) == []


async def slow_broken(message: InboxMessage, tx: Tx) -> None:
    await asyncio.sleep(0.3)
    raise ValueError("still broken")


async def test_a_failing_retry_racing_a_fixed_one_applies_once_and_leaves_nothing(
    store: EventStore,
) -> None:
    """The broken run may report the message as failing (it was not applied when that run
    ended: on SQLite the fixed run's transaction waits for the broken one's); what holds is
    that it is applied once and the dead letter is gone."""
    await _park(store, _message(1))
    results = await asyncio.gather(
        retry_inbox_dead_letters(store, NAME, handler=slow_broken),
        retry_inbox_dead_letters(store, NAME, handler=slow_effect),
    )
    assert results[0][0] == 0 and results[1] == (1, 0)
    assert await _effects(store) == [("m-1", 1)]
    assert await inbox_dead_letters(store, NAME) == []


async def test_a_malformed_row_does_not_hide_the_others(store: EventStore) -> None:
    await _park(store, _message(1))
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO inbox_dead_letters (consumer, message_id, subject, data, headers, "
            "error, deliveries, created_at) VALUES (:c, 'bad', 's', 'base64:hello!', "
            "'not json', 'e', 1, 0)",
            {"c": NAME},
        )
    good, bad = await inbox_dead_letters(store, NAME)
    assert good.message() == _message(1)
    assert bad.headers == {"": "not json"} and bad.data == b"base64:hello!"
