"""Wake-up latency of chronik's followers (issue 12, item 11).

    python -m benchmarks.wakeups [--quick | --smoke] [--backends memory,sqlite,postgres]

A *hop* is one event handed from one follower to the next: a
:class:`~chronik.workers.Follower`'s ``handle_page`` appends the event the next follower
waits for. Its latency runs from the moment that ``append`` returned (committed) to the
moment the receiving follower's ``handle_page`` is called with it. Both moments are
``time.monotonic()``: on Linux that is ``CLOCK_MONOTONIC``, one clock for every process of
the machine, so marks taken in two processes can be subtracted (W7 of
:mod:`benchmarks.run` does the same).

The cases, each on a fresh database (a new SQLite file or PostgreSQL schema; memory only
in one process):

- ``idle``: one follower, idle for at least ``IDLE_GAP`` (0.2 s), gets one event appended by
  another task of its process; ``idle-xproc``: the same with the appender in another
  process. The idle gap also gets a spread of up to one poll interval in the cross-process
  case, so a store that cannot signal across processes (SQLite) is caught at every phase of
  its poll timer, not always at the same one.
- ``pingpong``: two followers, A follows ``ping`` and appends ``pong-(n+1)``, B follows
  ``pong`` and appends ``ping-(n+1)``; ``pingpong-xproc``: A and B in two processes (the
  case of issue 12: the median hop should be close to the idle wake-up, not the poll
  interval).
- ``busy``: one follower whose ``handle_page`` appends the next event of its own category,
  while it is busy with the page (the case issue 12 fixed: the marker is taken before the
  read, so that append wakes it).

Each chain starts with a seed appended by the benchmark and runs ``WARM_UP`` unrecorded hops
(the first statements, PostgreSQL's first NOTIFY after its listener check) before the
``hops`` recorded ones; ``idle`` cases likewise skip their first ``WARM_UP`` samples.

Every follower notes each idle wait of its subscription (start, end, ended by
``poll_interval`` passing or not). From those: ``poll_expiries``, the waits of the case's
followers that ended by their poll interval between the first recorded append and the last
hop seen (the growth of :attr:`chronik.Subscription.poll_expiries` over the measurement),
and ``woken_by_expiry``, the hops the receiver picked up after a wait that expired instead of
being woken by a change. Cross-process on SQLite every hop is expected to be woken by
expiry (SQLite has no cross-process change signal); on PostgreSQL none.

Sizes: ``--full`` (the default) 100 hops, 20 idle samples, 3 repetitions; ``--quick`` 40
hops, 10 idle samples, 1 repetition (about 45 s); ``--smoke`` tiny (for the tests). Writes
every value to ``benchmarks/results/wakeups.json`` (``--json``). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import msgspec

import chronik
from benchmarks.common import PG_URL, pg_reachable
from benchmarks.projection_rates import percentile
from benchmarks.run import machine
from chronik import NewEvent
from chronik.store.protocol import EventStore
from chronik.subscriptions import Page, Subscription
from chronik.workers import Follower

__all__ = [
    "ALL_CASES",
    "CASES",
    "CONFIGS",
    "FULL",
    "QUICK",
    "SMOKE",
    "Sizes",
    "main",
    "measure_case",
]

Backend = Literal["memory", "sqlite", "postgres"]
Case = Literal["idle", "idle-xproc", "pingpong", "pingpong-xproc", "busy"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "wakeups.json"
IDLE_GAP = 0.2
"""Seconds a follower is idle before an ``idle`` sample's append (at least)."""
WARM_UP = 2
"""Unrecorded hops (or idle samples) before the recorded ones."""
BUSY_LOAD = 1.5


@dataclass(frozen=True)
class Sizes:
    hops: int = 100
    idle_samples: int = 20
    repetitions: int = 3


FULL = Sizes()
QUICK = Sizes(hops=40, idle_samples=10, repetitions=1)
SMOKE = Sizes(hops=4, idle_samples=2, repetitions=1)


@dataclass(frozen=True)
class Config:
    """A backend with a poll interval, and the cases measured on it."""

    label: str
    backend: Backend
    poll_interval: float
    cases: tuple[Case, ...]


ALL_CASES: tuple[Case, ...] = ("idle", "idle-xproc", "pingpong", "pingpong-xproc", "busy")
CONFIGS = (
    Config("memory", "memory", 0.5, ("idle", "pingpong", "busy")),
    Config("sqlite", "sqlite", 0.5, ALL_CASES),
    Config("sqlite poll=0.05", "sqlite", 0.05, ("idle-xproc", "pingpong-xproc")),
    Config("postgres", "postgres", 0.5, ALL_CASES),
)
CASES: dict[str, str] = {
    "idle": "idle follower, appender in the same process",
    "idle-xproc": "idle follower, appender in another process",
    "pingpong": "ping-pong, 2 followers in 1 process",
    "pingpong-xproc": "ping-pong, 2 followers in 2 processes",
    "busy": "self-loop: append while busy, 1 process",
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the followers -----------------------------------------------------------------------

Note = Callable[[str, str, int, float], None]
"""``note(kind, follower, n, monotonic)``: kind ``seen`` (handle_page got hop n) or
``appended`` (the append of hop n returned)."""
Wait = tuple[float, float, bool]
"""One idle wait of a subscription: started, ended (monotonic), ended by poll expiry."""


class TimedSubscription(Subscription):
    """A :class:`~chronik.Subscription` that notes each idle wait (start, end, expired)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wait_log: list[Wait] = []

    async def _wait(self, marker: asyncio.Event, timeout: float | None = None) -> None:
        started, expiries = time.monotonic(), self.poll_expiries
        await super()._wait(marker, timeout)
        self.wait_log.append((started, time.monotonic(), self.poll_expiries > expiries))


class Hopper(Follower):
    """Follows ``listen``; on hop ``n`` notes the time and, while ``n < last``, appends hop
    ``n + 1`` to ``reply`` (``None``: never replies)."""

    def __init__(
        self,
        store: EventStore,
        *,
        role: str,
        listen: str,
        reply: str | None,
        last: int,
        poll_interval: float,
        note: Note,
    ) -> None:
        super().__init__(
            store, checkpoint_name=f"wake-{role}", categories=[listen], poll_interval=poll_interval
        )
        self.role = role
        self.reply = reply
        self.last = last
        self.note = note
        self.subscriptions: list[TimedSubscription] = []

    def _subscribe(self) -> Subscription:
        sub = TimedSubscription(
            self.store,
            after=self.checkpoint,
            categories=self.categories,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
        )
        self.subscriptions.append(sub)
        return sub

    async def handle_page(self, page: Page) -> int:
        seen = time.monotonic()
        for event in page.events:
            n = int(event.data["n"])
            self.note("seen", self.role, n, seen)
            if self.reply is not None and n < self.last:
                await self.store.append(f"{self.reply}-{n + 1}", [NewEvent("Hop", {"n": n + 1})])
                self.note("appended", self.role, n + 1, time.monotonic())
        return len(page.events)

    def waits(self) -> tuple[list[Wait], int]:
        """Every idle wait noted, and the subscriptions' own ``poll_expiries`` count."""
        log = [w for sub in self.subscriptions for w in sub.wait_log]
        return log, sum(sub.poll_expiries for sub in self.subscriptions)


ROLES: dict[str, tuple[str, str | None]] = {
    # role: (follows, appends to)
    "ping": ("ping", "pong"),
    "pong": ("pong", "ping"),
    "self": ("hop", "hop"),
    "idle": ("idle", None),
}


def _hopper(store: EventStore, role: str, last: int, poll_interval: float, note: Note) -> Hopper:
    listen, reply = ROLES[role]
    return Hopper(
        store,
        role=role,
        listen=listen,
        reply=reply,
        last=last,
        poll_interval=poll_interval,
        note=note,
    )


# -- one case ----------------------------------------------------------------------------


@dataclass
class Record:
    """What the followers and the appender noted during one case."""

    appended: dict[int, float]
    seen: dict[int, tuple[str, float]]
    waits: dict[str, list[Wait]]
    counters: dict[str, int]

    def note(self, kind: str, role: str, n: int, at: float) -> None:
        if kind == "seen":
            self.seen[n] = (role, at)
        else:
            self.appended[n] = at


def _gap(k: int, spread: float) -> float:
    """The idle gap before sample ``k``: ``IDLE_GAP`` plus a fraction of ``spread`` that
    walks evenly over [0, 1) (golden-ratio steps), so every phase of a poll timer is hit."""
    return IDLE_GAP + ((k * 0.6180339887) % 1.0) * spread


async def _wait_seen(record: Record, n: int, timeout: float, pump: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while n not in record.seen:
        pump()
        if time.monotonic() > deadline:
            raise TimeoutError(f"hop {n} was not handled within {timeout:.0f} s")
        await asyncio.sleep(0.002)


def _stats(record: Record, measured: Sequence[int]) -> dict[str, Any]:
    """Latency of each measured hop, and the poll expiries around them."""
    latencies: list[float] = []
    by_expiry = 0
    for n in measured:
        role, seen = record.seen[n]
        sent = record.appended[n]
        latencies.append((seen - sent) * 1000)
        # the receiver's last wait before it saw the hop: did it end by the poll interval?
        before = [w for w in record.waits.get(role, []) if w[1] <= seen]
        if before and max(before, key=lambda w: w[1])[2]:
            by_expiry += 1
    start = record.appended[measured[0]]
    end = max(record.seen[n][1] for n in measured)
    expiries = sum(1 for log in record.waits.values() for w in log if w[2] and start <= w[1] <= end)
    return {
        "samples": len(latencies),
        "median_ms": statistics.median(latencies),
        "mean_ms": statistics.fmean(latencies),
        "p90_ms": percentile(latencies, 0.90),
        "max_ms": max(latencies),
        "min_ms": min(latencies),
        "poll_expiries": expiries,
        "woken_by_expiry": by_expiry,
        "poll_expiries_lifetime": sum(record.counters.values()),
        "latencies_ms": [round(v, 3) for v in latencies],
    }


def _check_counters(record: Record) -> None:
    for role, log in record.waits.items():
        noted = sum(1 for w in log if w[2])
        if noted != record.counters[role]:
            raise AssertionError(
                f"{role}: {noted} expired waits noted, Subscription.poll_expiries says "
                f"{record.counters[role]}"
            )


async def _in_process(url: str, case: Case, poll_interval: float, sizes: Sizes) -> dict[str, Any]:
    record = Record({}, {}, {}, {})
    last = WARM_UP + sizes.hops
    roles = {"idle": ["idle"], "pingpong": ["ping", "pong"], "busy": ["self"]}[case]
    async with await chronik.connect(url) as store:
        followers = [_hopper(store, r, last, poll_interval, record.note) for r in roles]
        for f in followers:
            await f.start()
        try:
            if case == "idle":
                measured = await _idle_samples(store, record, sizes, 0.0, lambda: None)
            else:
                await _seed(store, record, "ping" if case == "pingpong" else "hop")
                await _wait_seen(record, last, 60 + sizes.hops * poll_interval * 2, lambda: None)
                measured = list(range(WARM_UP + 1, last + 1))
        finally:
            for f in followers:
                await f.stop()
        for f in followers:
            record.waits[f.role], record.counters[f.role] = f.waits()
    _check_counters(record)
    return _stats(record, measured)


async def _seed(store: EventStore, record: Record, category: str) -> None:
    await store.append(f"{category}-0", [NewEvent("Hop", {"n": 0})])
    record.appended[0] = time.monotonic()


async def _idle_samples(
    store: EventStore, record: Record, sizes: Sizes, spread: float, pump: Callable[[], None]
) -> list[int]:
    total = WARM_UP + sizes.idle_samples
    for k in range(total):
        await asyncio.sleep(_gap(k, spread))
        await store.append(f"idle-{k}", [NewEvent("Hop", {"n": k})])
        record.appended[k] = time.monotonic()
        await _wait_seen(record, k, 30, pump)
    return list(range(WARM_UP, total))


def _child(
    url: str, roles: list[str], last: int, poll_interval: float, ready: Any, stop: Any, out: Any
) -> None:
    """A process running followers until ``stop`` is set; their notes go to ``out``."""

    def note(kind: str, role: str, n: int, at: float) -> None:
        out.put((kind, role, n, at))

    async def run() -> None:
        async with await chronik.connect(url) as store:
            followers = [_hopper(store, r, last, poll_interval, note) for r in roles]
            for f in followers:
                await f.start()
            await asyncio.sleep(0.2)  # the subscriptions are waiting (PostgreSQL: listening)
            ready.set()
            await asyncio.to_thread(stop.wait)
            for f in followers:
                await f.stop()
            for f in followers:
                log, counter = f.waits()
                out.put(("end", f.role, counter, log))

    asyncio.run(run())


async def _cross_process(
    url: str, case: Case, poll_interval: float, sizes: Sizes
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    record = Record({}, {}, {}, {})
    last = WARM_UP + sizes.hops
    groups = [["idle"]] if case == "idle-xproc" else [["ping"], ["pong"]]
    procs = []
    readies = []
    for roles in groups:
        ready = ctx.Event()
        readies.append(ready)
        procs.append(
            ctx.Process(
                target=_child,
                args=(url, roles, last, poll_interval, ready, stop, out),
                daemon=True,
            )
        )
    ended: set[str] = set()

    def pump() -> None:
        while True:
            try:
                item = out.get_nowait()
            except queue.Empty:
                return
            if item[0] == "end":
                _, role, counter, log = item
                record.counters[role] = counter
                record.waits[role] = [tuple(w) for w in log]
                ended.add(role)
            else:
                record.note(*item)

    async with await chronik.connect(url) as store:
        await store.get_checkpoint("wake-none")  # migrations done before the children start
        for p in procs:
            p.start()
        try:
            for ready, p in zip(readies, procs, strict=True):
                if not await asyncio.to_thread(ready.wait, 120):
                    raise RuntimeError(f"{case}: a follower process did not start ({p.exitcode})")
            if case == "idle-xproc":
                measured = await _idle_samples(store, record, sizes, poll_interval, pump)
            else:
                await _seed(store, record, "ping")
                await _wait_seen(record, last, 60 + sizes.hops * poll_interval * 2, pump)
                measured = list(range(WARM_UP + 1, last + 1))
        finally:
            stop.set()
            roles_all = {r for g in groups for r in g}
            deadline = time.monotonic() + 60
            while ended != roles_all and time.monotonic() < deadline:
                pump()
                if any(p.exitcode not in (None, 0) for p in procs):
                    break
                await asyncio.sleep(0.01)
            for p in procs:
                await asyncio.to_thread(p.join, 30)
                if p.is_alive():
                    p.kill()
        if ended != roles_all:
            codes = [p.exitcode for p in procs]
            raise RuntimeError(f"{case}: the follower processes did not report (exit {codes})")
    _check_counters(record)
    return _stats(record, measured)


# -- databases ---------------------------------------------------------------------------


class Database:
    """A fresh store for one case: a SQLite file in a new folder or a new PostgreSQL schema."""

    def __init__(self, backend: Backend, pg_url: str) -> None:
        self.backend = backend
        self.pg_url = pg_url
        self.folder = ""
        self.schema = ""

    def __enter__(self) -> str:
        if self.backend == "memory":
            return "memory://"
        if self.backend == "sqlite":
            self.folder = tempfile.mkdtemp(prefix="chronik-wake-")
            return f"sqlite:///{self.folder}/wake.db"
        import psycopg

        self.schema = f"bench_wake_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        sep = "&" if "?" in self.pg_url else "?"
        return f"{self.pg_url}{sep}schema={self.schema}"

    def __exit__(self, *exc: object) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.schema:
            import psycopg

            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def other_pg_sessions(pg_url: str) -> int:
    """Client sessions of the PostgreSQL cluster, other than this one, that are not idle
    (running a statement or inside a transaction): other work on the server. A transaction
    anywhere in the cluster that began before an append hides it from readers until it ends
    (docs/ordering.md), and that end wakes no follower."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND state <> 'idle'"
        ).fetchone()
    return int(row[0]) if row else 0


def measure_case(config: Config, case: Case, sizes: Sizes, pg_url: str = PG_URL) -> dict[str, Any]:
    """One case on a fresh database: the latency statistics and poll expiries."""
    with Database(config.backend, pg_url) as url:
        others = other_pg_sessions(pg_url) if config.backend == "postgres" else None
        if case.endswith("-xproc"):
            run = asyncio.run(_cross_process(url, case, config.poll_interval, sizes))
        else:
            run = asyncio.run(_in_process(url, case, config.poll_interval, sizes))
    if others is not None:
        run["pg_other_busy_sessions_before"] = others
    return run


# -- the run -----------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over repetitions of each latency figure (the range of the medians beside
    it, the largest max); the expiry counts of every repetition."""
    medians = [r["median_ms"] for r in runs]
    return {
        "runs": len(runs),
        "median_ms": statistics.median(medians),
        "median_ms_min": min(medians),
        "median_ms_max": max(medians),
        "mean_ms": statistics.median(r["mean_ms"] for r in runs),
        "p90_ms": statistics.median(r["p90_ms"] for r in runs),
        "max_ms": max(r["max_ms"] for r in runs),
        "poll_expiries": [r["poll_expiries"] for r in runs],
        "woken_by_expiry": [r["woken_by_expiry"] for r in runs],
        "samples": runs[0]["samples"],
    }


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| backend | case | hops | median ms (min-max of runs) | mean ms | p90 ms | max ms "
        "| poll expiries (each run) | hops woken by expiry (each run) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, cases in summary.items():
        for case, s in cases.items():
            spread = (
                f" ({s['median_ms_min']:.2f}-{s['median_ms_max']:.2f})" if s["runs"] > 1 else ""
            )
            lines.append(
                f"| {label} | {case}: {CASES[case]} | {s['samples']} "
                f"| {s['median_ms']:.2f}{spread} | {s['mean_ms']:.2f} | {s['p90_ms']:.2f} "
                f"| {s['max_ms']:.1f} "
                f"| {'/'.join(map(str, s['poll_expiries']))} "
                f"| {'/'.join(map(str, s['woken_by_expiry']))} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wakeups", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="100 hops, 3 repetitions (default)")
    mode.add_argument("--quick", action="store_true", help="40 hops, 1 repetition (~45 s)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not numbers")
    parser.add_argument("--backends", default="memory,sqlite,postgres", help="comma-separated")
    parser.add_argument("--repetitions", type=int, default=0, help="override the mode's count")
    parser.add_argument("--pg", default=PG_URL, help="PostgreSQL database (a schema per case)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    args = parser.parse_args(argv)

    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    sizes = {"full": FULL, "quick": QUICK, "smoke": SMOKE}[mode_name]
    if args.repetitions:
        sizes = replace(sizes, repetitions=args.repetitions)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for name in backends:
        if name not in ("memory", "sqlite", "postgres"):
            parser.error(f"unknown backend {name!r}")
    skipped: dict[str, str] = {}
    if "postgres" in backends and not pg_reachable(args.pg):
        skipped["postgres"] = f"PostgreSQL is not reachable at {args.pg}"
        say(f"skipping {skipped['postgres']}")
        backends.remove("postgres")
    configs = [c for c in CONFIGS if c.backend in backends]

    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    say(f"chronik wake-ups ({mode_name}): {asdict(sizes)}; load {load_at_start:.2f}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    loads: list[float] = []
    for rep in range(sizes.repetitions):
        for config in configs:
            for case in config.cases:
                load = os.getloadavg()[0]
                loads.append(load)
                t0 = time.perf_counter()
                run = measure_case(config, case, sizes, args.pg)
                run["load_before"] = load
                results.setdefault(config.label, {}).setdefault(case, []).append(run)
                others = run.get("pg_other_busy_sessions_before")
                pg = "" if others is None else f", {others} other busy PostgreSQL sessions"
                say(
                    f"  [{rep + 1}/{sizes.repetitions}] {config.label:17} {case:15} "
                    f"median {run['median_ms']:8.2f} ms  mean {run['mean_ms']:8.2f} ms  "
                    f"p90 {run['p90_ms']:8.2f} ms  expiries {run['poll_expiries']:3}  "
                    f"woken by expiry {run['woken_by_expiry']:3}  "
                    f"({time.perf_counter() - t0:.1f} s, load {load:.2f}{pg})"
                )
    summary = {
        label: {case: summarise(runs) for case, runs in cases.items()}
        for label, cases in results.items()
    }
    elapsed = time.perf_counter() - started
    report = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seconds": elapsed,
        "sizes": asdict(sizes),
        "warm_up": WARM_UP,
        "idle_gap_s": IDLE_GAP,
        "clock": "time.monotonic() (CLOCK_MONOTONIC: one clock for all processes)",
        "configs": {
            c.label: {"backend": c.backend, "poll_interval": c.poll_interval, "cases": c.cases}
            for c in configs
        },
        "skipped": skipped,
        "machine": machine(),
        "chronik": chronik.__version__,
        "load_at_start": load_at_start,
        "load_max_before_case": max(loads, default=load_at_start),
        "results": results,
        "summary": summary,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    print(table(summary))
    print(
        f"\n1-minute load average: {load_at_start:.2f} before the run, up to "
        f"{max(loads, default=load_at_start):.2f} before a case ({os.cpu_count()} CPUs)"
    )
    if load_at_start > BUSY_LOAD:
        print(f"warning: the load average was {load_at_start:.2f}: numbers are noisy")
    for backend, reason in skipped.items():
        print(f"skipped {backend}: {reason}")
    print(f"{elapsed:.0f} s; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
