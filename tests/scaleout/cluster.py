"""Worker processes of a partitioned projection for the process-level tests and the
benchmark: start, SIGSTOP/SIGCONT, kill -9, restart, and the lease table as the truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from chronik.store.protocol import EventStore
from tests.scaleout.app import StreamOrder

ROOT = Path(__file__).parent.parent.parent
GROUP = f"projection:{StreamOrder().checkpoint_name}"


class Cluster:
    def __init__(
        self,
        url: str,
        partitions: int,
        ttl: float,
        *,
        batch: int = 100,
        handler_ms: float = 0,
        blocking: bool = False,
        shared: bool = True,
        module: str = "tests.scaleout.worker",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.module = module
        self.extra = extra
        self.blocking = blocking
        self.shared = shared
        self.url, self.partitions, self.ttl, self.batch = url, partitions, ttl, batch
        self.handler_ms = handler_ms
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.log_dir = Path(os.environ.get("TMPDIR", "/tmp"))

    def start(self, member: str, *, handler_ms: float | None = None) -> None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        )  # this checkout
        env["CHRONIK_SO_HANDLER_MS"] = str(self.handler_ms if handler_ms is None else handler_ms)
        env["CHRONIK_SO_BLOCKING"] = "1" if self.blocking else "0"
        env["CHRONIK_SO_SHARED"] = "1" if self.shared else "0"
        log = self.log_dir / f"scaleout-{os.getpid()}-{member}.log"
        self.logs[member] = log
        with open(log, "ab") as err:
            self.procs[member] = subprocess.Popen(
                [sys.executable, "-m", self.module, self.url, str(self.partitions),
                 str(self.ttl), member, str(self.batch), *self.extra],
                cwd=ROOT, env=env, stderr=err, stdout=subprocess.DEVNULL,
            )  # fmt: skip

    def signal(self, member: str, sig: signal.Signals) -> None:
        self.procs[member].send_signal(sig)

    def kill(self, member: str) -> None:
        proc = self.procs.pop(member)
        proc.kill()
        proc.wait()

    def log(self, member: str) -> str:
        return self.logs[member].read_text(errors="replace")

    def stop_all(self) -> list[int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        codes = [proc.wait(timeout=60) for proc in self.procs.values()]
        self.procs.clear()
        for log in self.logs.values():
            log.unlink(missing_ok=True)
        return codes


async def owners(store: EventStore, group: str = GROUP) -> dict[int, str | None]:
    """partition -> owner whose lease is live (None: free or expired)."""
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT partition, owner, expires_at > "
            f"CAST(({tx.clock_sql}) * 1000000 AS BIGINT) FROM worker_leases WHERE name = :g",
            {"g": group},
        )
    return {int(p): (o if live else None) for p, o, live in rows}


async def epochs(store: EventStore, group: str = GROUP) -> dict[int, int]:
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT partition, epoch FROM worker_leases WHERE name = :g", {"g": group}
        )
    return {int(p): int(e) for p, e in rows}
