"""Cost of crypto-shredding (issue 19 item 2) on W1/W2/W3-shaped workloads, SQLite and PostgreSQL.

``python -m benchmarks.shredding [--reps 3] [--backend sqlite --backend postgres]``. Two
modes on the same event classes, the same data, a fresh database each time:

- **plain**: the registry declares no personal fields; a plain store.
- **shredded**: the registry declares one personal field per event (the payer's name and
  e-mail, both events of every stream carry them) and the writes and reads go through a
  :class:`~chronik.security.ShreddingStore` (one subject per stream: a key created and
  wrapped per stream, AES-256-GCM per event).

Workloads (sizes below): **W1** ``--w1-streams`` streams x 10 events, one append each;
**W2** one event per append (``--w2-streams`` x 10); **W3** 8 concurrent asyncio tasks in
one process, each appending single events to its own stream (``--w3-events`` each; the
shape of run.py's W3, which uses 8 processes); **R** reading the W1 log decoded into the
typed events. The modes alternate inside each repetition (plain first on even
repetitions); each number is the median of the repetitions with min-max. The ratio is
shredded events/s over plain events/s (1.00 = no cost). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Backend, create_target, drop_target, pg_reachable
from chronik import EventRegistry, connect
from chronik.security import LocalKeyEncryptionKey, Shredder, ShreddingStore, generate_kek

__all__ = ["main", "measure"]


@dataclasses.dataclass(frozen=True)
class Opened:
    account: str
    owner: str
    currency: str


@dataclasses.dataclass(frozen=True)
class Deposited:
    account: str
    amount: int
    payer: str


def _registry(personal: bool) -> EventRegistry:
    reg = EventRegistry()
    if personal:
        reg.register(Opened, "Opened", personal=("owner",), subject="account")
        reg.register(Deposited, "Deposited", personal=("payer",), subject="account")
    else:
        reg.register(Opened, "Opened")
        reg.register(Deposited, "Deposited")
    return reg


def _events(index: int, count: int) -> list[Any]:
    acc = f"a{index:06d}"
    out: list[Any] = [Opened(acc, f"Owner Number {index} <owner{index}@example.org>", "EUR")]
    out += [Deposited(acc, i, f"Payer {i} <payer{i}@example.org>") for i in range(1, count)]
    return out


async def _run(url: str, personal: bool, sizes: argparse.Namespace) -> dict[str, float]:
    reg = _registry(personal)
    base = await connect(url)
    store: Any = base
    if personal:
        kek = LocalKeyEncryptionKey.from_text(generate_kek(), source="bench")
        store = ShreddingStore(base, Shredder(reg, kek))
    rates: dict[str, float] = {}
    try:
        n = sizes.w1_streams
        start = time.perf_counter()
        for i in range(n):
            await store.append(f"acc-{i}", reg.to_new_events(_events(i, 10)), expected_version=-1)
        rates["W1"] = n * 10 / (time.perf_counter() - start)

        start = time.perf_counter()
        for i in range(sizes.w2_streams):
            for version, ev in enumerate(_events(100_000 + i, 10)):
                await store.append(f"one-{i}", [reg.to_new_event(ev)], expected_version=version - 1)
        rates["W2"] = sizes.w2_streams * 10 / (time.perf_counter() - start)

        async def writer(task: int) -> None:
            for version, ev in enumerate(_events(200_000 + task, sizes.w3_events)):
                await store.append(
                    f"conc-{task}", [reg.to_new_event(ev)], expected_version=version - 1
                )

        start = time.perf_counter()
        await asyncio.gather(*(writer(t) for t in range(8)))
        rates["W3"] = 8 * sizes.w3_events / (time.perf_counter() - start)

        start = time.perf_counter()
        count = 0
        async for recorded in store.read_all(categories=["acc"]):
            reg.decode(recorded)
            count += 1
        rates["R"] = count / (time.perf_counter() - start)
        if count != n * 10:
            raise AssertionError(f"read {count} events, wrote {n * 10}")
    finally:
        await base.close()
    return rates


def measure(backend: Backend, sizes: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per mode and workload, the events/s of every repetition."""
    out: dict[str, dict[str, list[float]]] = {"plain": {}, "shredded": {}}
    for rep in range(sizes.reps):
        order = ["plain", "shredded"] if rep % 2 == 0 else ["shredded", "plain"]
        for mode in order:
            target = create_target(backend, f"shred{mode[0]}")
            try:
                rates = asyncio.run(_run(target.chronik_url(), mode == "shredded", sizes))
            finally:
                drop_target(target)
            for name, rate in rates.items():
                out[mode].setdefault(name, []).append(rate)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shredding")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--w1-streams", type=int, default=500)
    parser.add_argument("--w2-streams", type=int, default=100)
    parser.add_argument("--w3-events", type=int, default=100)
    args = parser.parse_args(argv)
    backends: list[Backend] = args.backend or ["sqlite", "postgres"]
    print("workload backend   plain ev/s (min-max)        shredded ev/s (min-max)     ratio")
    for backend in backends:
        if backend == "postgres" and not pg_reachable():
            print("postgres: not reachable, skipped", file=sys.stderr)
            continue
        got = measure(backend, args)
        for name in ("W1", "W2", "W3", "R"):
            plain, shredded = got["plain"][name], got["shredded"][name]
            p, s = statistics.median(plain), statistics.median(shredded)
            print(
                f"{name:<8} {backend:<8} {p:>10.0f} ({min(plain):.0f}-{max(plain):.0f})"
                f"   {s:>10.0f} ({min(shredded):.0f}-{max(shredded):.0f})   {s / p:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
