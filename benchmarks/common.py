"""What every side of a benchmark shares: sizes, where a run's database is, timing helpers.

A :class:`Target` names one fresh database: a SQLite file, or a PostgreSQL schema in the
``test`` database. The runner creates it before a measurement and removes it afterwards, so
every system starts from an empty store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

__all__ = [
    "run_threads",
    "PG_URL",
    "Backend",
    "Sizes",
    "System",
    "Target",
    "create_target",
    "drop_target",
    "pg_reachable",
    "timer",
]

Backend = Literal["sqlite", "postgres"]
System = Literal["chronik", "eventsourcing", "raw", "raw-chronik-sql"]
"""``raw`` is the plain-table baseline, ``raw-chronik-sql`` the driver running chronik's own
SQL on chronik's tables (the baseline of runs before issue 13)."""

PG_URL = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Sizes:
    """How big each workload is (``--quick`` and ``--full`` differ only here)."""

    w1_streams: int = 2000
    w1_events: int = 10
    w2_streams: int = 200
    w2_events: int = 10
    w3_writers: int = 8
    w3_seconds: float = 5.0
    w5_events: int = 10_000
    w5_loads: int = 3
    w7_samples: int = 500
    w8_tasks: int = 64
    w8_events: int = 200
    """W8: events per concurrent appender (each on its own stream, the first one ``Opened``)."""
    m1_small: int = 100_000
    m1_large: int = 1_000_000
    repetitions: int = 5


@dataclass(frozen=True)
class Target:
    """One fresh database for one system and one repetition."""

    backend: Backend
    sqlite_path: str = ""
    pg_url: str = ""
    schema: str = ""

    def chronik_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        return f"{self.pg_url}?schema={self.schema}"


def pg_reachable(url: str = PG_URL) -> bool:
    """True when a PostgreSQL server answers a query at ``url``."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        return False
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def create_target(backend: Backend, label: str, workdir: str | None = None) -> Target:
    """A new empty database: a file in a new folder, or a new schema."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix=f"chronik-bench-{label}-", dir=workdir)
        return Target("sqlite", sqlite_path=str(Path(folder) / "bench.db"))
    import psycopg

    schema = f"bench_{label}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return Target("postgres", pg_url=PG_URL, schema=schema)


def drop_target(target: Target) -> None:
    """Remove what :func:`create_target` made (and everything in it)."""
    if target.backend == "sqlite":
        shutil.rmtree(Path(target.sqlite_path).parent, ignore_errors=True)
        return
    import psycopg

    with psycopg.connect(target.pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')


def pg_params(url: str) -> dict[str, str]:
    """Host, port, user, password and database name of a ``postgresql://`` URL."""
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": str(parts.port or 5432),
        "user": parts.username or "postgres",
        "password": parts.password or "",
        "dbname": parts.path.lstrip("/") or "postgres",
    }


class timer:
    """``with timer() as t: ...`` then ``t.seconds``."""

    seconds: float

    def __enter__(self) -> timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def run_threads(writers: int, work: Callable[[int, threading.Barrier], None]) -> float:
    """Start ``writers`` threads running ``work(index, barrier)``; each waits at the barrier
    after its untimed set-up. Returns the seconds from the barrier's release to the last
    thread's end; the first failure is raised."""
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(writers)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a writer failed: raised below
        barrier.wait(timeout=120)
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds
