"""Fixtures of the operations tests: a second database on the shared server, and a private
cluster that allows prepared transactions (the shared one has max_prepared_transactions=0)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import IN_CI, PG_URL, require_service
from tests.integration.conftest import AS_POSTGRES, PrivatePg, _pg_bin, free_port

OTHER_DB = "chronik_ops_other"


@pytest.fixture
def other_database() -> str:
    """The URL of a database other than the store's, on the same cluster."""
    require_service("PostgreSQL", PG_URL)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (OTHER_DB,))
        if found.fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{OTHER_DB}"')
    return PG_URL.rsplit("/", 1)[0] + f"/{OTHER_DB}"


@pytest.fixture
def prepared_pg() -> Iterator[PrivatePg]:
    """A private cluster with max_prepared_transactions = 4 (initdb + pg_ctl as postgres)."""
    import os

    bindir = _pg_bin()
    if bindir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        reason = "needs the PostgreSQL server binaries and root (runuser) for a private cluster"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="chronik-pg-prep-"))
    shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    port = free_port()
    subprocess.run(
        [*AS_POSTGRES, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    pg = PrivatePg(f"postgresql://postgres@127.0.0.1:{port}/postgres?schema=chronik", bindir, data)
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_prepared_transactions=4"
    pg.pg_ctl("-o", opts, "-l", str(folder / "log"), "-w", "start")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
