from __future__ import annotations

import asyncio

import chronik
from chronik.context import metadata_for_append


def test_context_nests_and_restores() -> None:
    assert chronik.current_context().correlation_id is None
    with chronik.context(correlation_id="c1", actor="alice", tenant="t1"):
        with chronik.context(causation_id="e9", region="eu"):
            meta = metadata_for_append()
            assert meta == {
                "correlation_id": "c1",
                "causation_id": "e9",
                "actor": "alice",
                "tenant": "t1",
                "region": "eu",
            }
        assert "causation_id" not in metadata_for_append()
    assert chronik.current_context().actor is None


def test_a_new_correlation_id_when_none_is_set() -> None:
    a = metadata_for_append()["correlation_id"]
    b = metadata_for_append()["correlation_id"]
    assert a and b and a != b


async def test_context_follows_tasks() -> None:
    async def inner() -> str | None:
        await asyncio.sleep(0)
        return chronik.current_context().correlation_id

    with chronik.context(correlation_id="req-1"):
        task = asyncio.create_task(inner())
    assert await task == "req-1"
