"""A chronik KurrentDB-protocol server on a free port, on SQLite and on PostgreSQL.

The server runs in its own thread and event loop, so the blocking ``kurrentdbclient`` and
its asyncio client (in the test's loop) both talk to it over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

pytest.importorskip("kurrentdbclient")
pytest.importorskip("grpc")

import chronik
from chronik.kurrent import KurrentServer
from tests.conftest import PG_URL, require_service


class ServerThread:
    """A store and a :class:`KurrentServer` living in a background thread's loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store: Any = self.call(chronik.connect(url))
        self.server = KurrentServer(self.store, port=0)
        self.call(self.server.start())

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=60)

    @property
    def uri(self) -> str:
        return self.server.connection_string

    def close(self) -> None:
        try:
            self.call(self.server.stop(grace=0.2))
            self.call(self.store.close())
            self.call(_cancel_the_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def _cancel_the_rest() -> None:
    """Cancel what the stopped server left (live calls' tasks) and let them finish."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/kurrent.db"
        return
    require_service("PostgreSQL", PG_URL)
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def kurrent(backend_url: str) -> Iterator[ServerThread]:
    server = ServerThread(backend_url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def client(kurrent: ServerThread) -> Iterator[Any]:
    from kurrentdbclient import KurrentDBClient

    c = KurrentDBClient(kurrent.uri)
    try:
        yield c
    finally:
        c.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "feature(name): the KurrentDB protocol feature a test covers (make conformance)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    out = os.environ.get("CHRONIK_CONFORMANCE_OUT")
    recorded = report.when == "call" or report.failed or (report.when == "setup" and report.skipped)
    if out and recorded:
        marker = item.get_closest_marker("feature")
        if marker is not None:
            line = {"feature": marker.args[0], "test": item.nodeid, "outcome": report.outcome}
            with open(out, "a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
    return report
