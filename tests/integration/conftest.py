"""Fixtures shared by the integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest

from chronik.nats import ensure_stream
from chronik.store.postgres import split_schema
from tests.conftest import IN_CI, NATS_URL, require_service


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
    """A plain autocommit psycopg connection to the test database (outside chronik)."""
    conninfo, _ = split_schema(pg_url)
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


# -- a private PostgreSQL cluster (initdb + pg_ctl), for tests that restart the server ----------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    base = Path("/usr/lib/postgresql")
    versions = sorted(base.glob("*/bin/pg_ctl")) if base.exists() else []
    return versions[-1].parent if versions else None


AS_POSTGRES = ["runuser", "-u", "postgres", "--"]


class PrivatePg(NamedTuple):
    """A cluster of one test's own: its URL (schema ``chronik``), bin and data folders."""

    url: str
    bindir: Path
    data: Path

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        # the postmaster must not inherit our pipes, or waiting for pg_ctl never ends
        subprocess.run(
            [*AS_POSTGRES, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``, waiting until the server accepts connections again."""
        self.pg_ctl("-m", mode, "-w", "-l", str(self.data.parent / "log"), "restart")


@pytest.fixture
def private_pg() -> Iterator[PrivatePg]:
    """A PostgreSQL cluster of this test's own (another port and folder), stopped after."""
    bindir = _pg_bin()
    runuser = shutil.which("runuser")
    if bindir is None or runuser is None or os.geteuid() != 0:
        reason = (
            "needs the PostgreSQL server binaries and root (runuser) to start a private cluster"
        )
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="chronik-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    port = free_port()
    subprocess.run(
        [*AS_POSTGRES, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres?schema=chronik"
    pg = PrivatePg(url, bindir, data)
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on"
    pg.pg_ctl("-o", opts, "-l", str(folder / "log"), "-w", "start")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def js_stream() -> AsyncIterator[tuple[Any, str]]:
    """A unique JetStream stream on the shared server (deleted afterwards)."""
    require_service("NATS", NATS_URL)
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    name = f"chronik_t_{uuid.uuid4().hex[:10]}"
    await ensure_stream(js, name, [f"{name}.>"], duplicate_window=120)
    try:
        yield js, name
    finally:
        await js.delete_stream(name)
        await nc.close()


async def stream_msg_ids(js: Any, name: str) -> list[str]:
    """Every message's Nats-Msg-Id in stream order (an ephemeral ordered read)."""
    info = await js.stream_info(name)
    ids: list[str] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(name, seq)
        ids.append((msg.headers or {})["Nats-Msg-Id"])
    return ids
