"""A secured server for the security tests: a SQLite store seeded with one stream per
category, a policy written as TOML, a token per role, uvicorn in the test's event loop.

The expected answers come from :data:`READS`, :data:`APPENDS` and :data:`OPERATORS`,
written out by hand (categories listed, no globs), never from the policy code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

import chronik
from chronik import NewEvent
from chronik.security import load_policy, token_store
from chronik.server import create_app
from chronik.store.protocol import EventStore

CATEGORIES = ("orders", "invoices", "secret", "public")
POLICY_TOML = """
[roles.clerk]
read = ["orders", "public"]
append = ["orders"]

[roles.auditor]
read = ["inv*", "public"]
read_metadata = ["*"]

[roles.ops]
read = ["public"]
operate = ["*"]

[roles.nothing]
"""
ALL = frozenset(CATEGORIES)
READS: dict[str, frozenset[str]] = {
    "admin": ALL, "reader": ALL, "writer": ALL,
    "clerk": frozenset({"orders", "public"}), "auditor": frozenset({"invoices", "public"}),
    "ops": frozenset({"public"}), "nothing": frozenset(),
}  # fmt: skip
APPENDS: dict[str, frozenset[str]] = {
    "admin": ALL, "reader": frozenset(), "writer": ALL, "clerk": frozenset({"orders"}),
    "auditor": frozenset(), "ops": frozenset(), "nothing": frozenset(),
}  # fmt: skip
OPERATORS = frozenset({"admin", "ops"})
ROLES = tuple(READS)
CORRELATION = "c0ffee00-0000-4000-8000-000000000001"


@dataclass
class Secured:
    base: str
    store: EventStore
    tokens: dict[str, str]
    """role → a live token holding only that role."""
    policy_path: Path

    def headers(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}


async def seed(store: EventStore) -> None:
    for category in CATEGORIES:
        meta = {"correlation_id": CORRELATION}
        await store.append(f"{category}-1", [NewEvent("Seeded", {"c": category}, meta)])
    letter = await anext(aiter(store.read_stream("secret-1")))
    shown = await anext(aiter(store.read_stream("public-1")))
    async with store.transaction() as tx:
        await tx.add_dead_letter("p:v1", letter, "boom in secret", 1)
        await tx.add_dead_letter("p:v1", shown, "boom in public", 1)
    await store.append("public-last", [NewEvent("Sentinel", {})])  # the log's last event


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2, ws_ping_interval=None)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "the test server did not start"
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def secured(
    tmp_path: Path, extra_toml: str = "", *, url: str | None = None, **options: Any
) -> AsyncIterator[Secured]:
    """A seeded store (SQLite in ``tmp_path``, or ``url``) served under the test policy."""
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY_TOML + extra_toml)
    policy = load_policy(policy_path)
    store = await chronik.connect(url or f"sqlite:///{tmp_path / 'sec.db'}")
    try:
        await seed(store)
        tokens = {}
        for role in ROLES:
            _, token = await token_store(store).create(f"t-{role}", [role])
            tokens[role] = token
        app = create_app(store, policy=policy, **options)
        async with serving(app) as base:
            yield Secured(base, store, tokens, policy_path)
    finally:
        await store.close()


async def sse_messages(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], until_kind_type: str
) -> tuple[int, list[dict[str, Any]]]:
    """The status and the events of an SSE feed read until an event of type
    ``until_kind_type`` (or the end of a refusal)."""
    events: list[dict[str, Any]] = []
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, events
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                data = [line[6:] for line in frame.split("\n") if line.startswith("data: ")]
                if data:
                    event = json.loads(data[0])
                    events.append(event)
                    if event.get("type") == until_kind_type:
                        return 200, events
    return 200, events
