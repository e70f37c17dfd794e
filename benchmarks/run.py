"""chronik against ``eventsourcing`` 9.5 and two raw-driver baselines, same run, same database.

``python -m benchmarks.run --quick`` (``make bench``, a few minutes) or ``--full``
(``make bench-full``). Every measurement starts from a fresh database (a new SQLite file or
a new PostgreSQL schema) in a fresh interpreter; the systems take turns in a rotating order
in every repetition. Prints one table of medians with the ratios chronik/peer,
chronik/raw (the plain baseline: the simplest driver code on a plain table) and
chronik/raw-chronik-sql (the driver running chronik's own SQL on chronik's tables, the
baseline before issue 13), and writes everything measured to
``benchmarks/results/latest.json``.

Workloads: W1 (append), W2 (one event per transaction), W3 (concurrent writers, PostgreSQL),
W4 (rebuild aggregates), W5 (load a 10,000-event aggregate) and W5S (the same from a snapshot
plus 100 newer events), W6 (read the log decoded) and W6P (a projection catching up into an
in-database read model), W7 (PostgreSQL, chronik only: an event committed → applied by a
live projection in another process, p99 and p50, next to a bare LISTEN/NOTIFY round trip
measured in the same job), W8 (a server's pattern: 64 concurrent single-event appenders in
one process, and chronik's own sequential single writer in the same job), and M1
(read_all's peak memory, chronik only).

A ratio is always "how many times faster chronik is": events/s divided by events/s, or for
a time (W5, W5S, W7) the other system's milliseconds divided by chronik's. W7's target is the
other way round: chronik's p99 at most 3 times the bare round trip's. W8's second target is
a ratio chronik's job measures itself: its 64 concurrent appenders over its sequential
writer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.common import (
    PG_URL,
    Backend,
    Sizes,
    System,
    create_target,
    drop_target,
    pg_reachable,
)
from benchmarks.worker import RESULT_PREFIX, Job

__all__ = ["FULL", "QUICK", "SMOKE", "TARGETS", "main"]

QUICK = Sizes(
    w3_seconds=3.0,
    w7_samples=200,
    w8_events=100,
    m1_small=20_000,
    m1_large=200_000,
    repetitions=3,
)
FULL = Sizes(w3_seconds=6.0, w7_samples=500, m1_small=100_000, m1_large=1_000_000, repetitions=5)
SMOKE = Sizes(
    w1_streams=20,
    w2_streams=5,
    w2_events=4,
    w3_writers=2,
    w3_seconds=0.5,
    w5_events=1200,
    w5_loads=1,
    w7_samples=20,
    w8_tasks=4,
    w8_events=3,
    m1_small=2000,
    m1_large=6000,
    repetitions=1,
)
"""Tiny sizes that only prove every workload runs (the tests use them); numbers mean nothing."""
SYSTEMS: tuple[System, ...] = ("chronik", "eventsourcing", "raw", "raw-chronik-sql")
PEERS: tuple[System, ...] = ("eventsourcing", "raw", "raw-chronik-sql")
"""The columns chronik is compared with (``raw``: the plain baseline)."""
SHORT = {"eventsourcing": "es", "raw": "raw", "raw-chronik-sql": "raw-sql"}
"""The peers' names in the table's target column."""
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"


@dataclass(frozen=True)
class Row:
    """One line of the table: one number of a workload on one backend."""

    workload: str
    metric: str
    unit: str
    higher_is_better: bool = True


ROWS = (
    Row("W1", "events_per_s", "events/s"),
    Row("W2", "events_per_s", "events/s"),
    Row("W3", "events_per_s", "events/s"),
    Row("W4", "aggregates_per_s", "aggregates/s"),
    Row("W4", "events_per_s", "events/s"),
    Row("W5", "ms", "ms", higher_is_better=False),
    Row("W5S", "ms", "ms", higher_is_better=False),
    Row("W6", "events_per_s", "events/s"),
    Row("W6P", "events_per_s", "events/s"),
    Row("W7", "p99_ms", "ms p99", higher_is_better=False),
    Row("W7", "p50_ms", "ms p50", higher_is_better=False),
    Row("W8", "events_per_s", "events/s"),
    Row("W8", "sequential_events_per_s", "events/s, 1 writer"),
)
"""The first row of a workload carries its targets (unless a goal names its metric)."""
LABELS = {
    "W1": "append 10 events/stream, one append each",
    "W2": "append 1 event per transaction",
    "W3": "8 writer processes, 1 event/append (raw: unprotected INSERT)",
    "W4": "rebuild every W1 aggregate into typed state",
    "W5": "load one 10,000-event aggregate, no snapshot",
    "W5S": "load 10,000-event aggregate from a snapshot + 100 events",
    "W6": "read whole log decoded into typed events",
    "W6P": "projection catch-up into an in-database read model",
    "W7": "commit → applied by a live projection in another process (raw: bare NOTIFY)",
    "W8": "64 concurrent appenders in one process, 1 event/append",
}
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W5S", "W6", "W6P", "W7", "W8", "M1")
CHAIN = {"W1", "W4", "W5", "W5S", "W6", "W6P"}
"""The workloads of the ``chain`` job (one database per system and repetition)."""
W8_SYSTEMS: tuple[System, ...] = ("chronik", "eventsourcing", "raw")
"""W8 has no raw-chronik-sql baseline (it is new: there is no history to keep)."""


@dataclass(frozen=True)
class Goal:
    """chronik at least ``ratio`` times faster than ``peer`` (the ratio of the table), or with
    ``at_most``: chronik's number at most ``ratio`` times the peer's (W7's latency), or with
    ``own``: a ratio chronik's job measured itself at least ``ratio`` (``peer`` is then
    ``"chronik"``)."""

    workload: str
    backend: Backend
    peer: System
    ratio: float
    metric: str = ""
    """The row's metric (default: the workload's first row)."""
    at_most: bool = False
    own: str = ""
    """The metric of chronik's own medians that is the ratio: W8's ``vs_sequential`` (64
    concurrent appenders' rate over the same job's sequential single writer's)."""


BOTH: tuple[Backend, Backend] = ("sqlite", "postgres")
TARGETS = tuple(
    # issue 13 (``raw`` is the plain baseline)
    [Goal("W1", b, "eventsourcing", 2.0) for b in BOTH]
    + [Goal("W2", "sqlite", "raw", 0.8), Goal("W2", "sqlite", "eventsourcing", 1.5)]
    + [Goal("W3", "postgres", "raw", 0.7)]
    + [Goal("W4", "sqlite", "eventsourcing", 4.0)]
    + [Goal("W8", b, "eventsourcing", 5.0) for b in BOTH]
    + [Goal("W8", b, "chronik", 3.0, own="vs_sequential") for b in BOTH]
    # older targets that still apply; those against the raw driver were set against
    # chronik's own SQL, so they stay on that column
    + [Goal("W1", b, "raw-chronik-sql", 0.8) for b in BOTH]
    + [Goal("W2", "postgres", "raw-chronik-sql", 0.8)]
    + [Goal("W3", "postgres", "eventsourcing", 2.5)]
    + [Goal("W4", "postgres", "eventsourcing", 2.5)]
    + [Goal("W6", b, "eventsourcing", 2.0) for b in BOTH]
    + [Goal("W6", b, "raw-chronik-sql", 0.8) for b in BOTH]
    + [Goal("W5S", b, "eventsourcing", 2.0) for b in BOTH]
    + [Goal("W6P", b, "eventsourcing", 2.0) for b in BOTH]
    + [Goal("W7", "postgres", "raw", 3.0, metric="p99_ms", at_most=True)]
)
"""Superseded by issue 13 and removed: W2 SQLite ≥0.8x raw-chronik-sql (now ≥0.8x the plain
baseline) and W3 ≥0.9x the unprotected insert into a copy of chronik's table (now ≥0.7x the
plain INSERT)."""
BUSY_LOAD = 1.5
"""A 1-minute load average above this before a measurement means other work was running."""
M1_FLAT = 1.5
"""M1 passes when the peak at the long log is at most this many times the short log's."""

# results[backend][workload][system] = one metrics dict per repetition
Results = dict[str, dict[str, dict[str, list[dict[str, float]]]]]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_worker(job: Job, *, timeout: float = 1800) -> dict[str, Any]:
    """Run one job in a fresh interpreter and return its result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", msgspec.json.encode(job).decode()],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{job.kind} {job.system} on {job.target.backend} failed "
            f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = msgspec.json.decode(lines[-1][len(RESULT_PREFIX) :])
    return result


def rotated(rep: int) -> list[System]:
    k = rep % len(SYSTEMS)
    return list(SYSTEMS[k:] + SYSTEMS[:k])


def _one(
    kind: str, system: System, backend: Backend, sizes: Sizes, workdir: str | None
) -> dict[str, Any]:
    target = create_target(backend, system[:6].replace("-", "_"), workdir)
    load = os.getloadavg()[0]
    try:
        out = run_worker(Job(kind=kind, system=system, target=target, sizes=sizes))
    finally:
        drop_target(target)
    if kind == "w3":
        out["load_before"] = load
    else:
        for metrics in out.values():
            metrics["load_before"] = load
    return out


def measure(
    sizes: Sizes,
    backends: Sequence[Backend],
    workloads: set[str],
    workdir: str | None,
    errors: list[str],
) -> Results:
    """Every workload, repetition and system; a failed measurement is reported in ``errors``
    and left out (the others still run), so one broken part does not lose the whole run."""
    results: Results = {b: {} for b in backends}

    def keep(backend: Backend, system: System, out: dict[str, Any]) -> None:
        for workload, metrics in out.items():
            if workload in workloads:
                results[backend].setdefault(workload, {}).setdefault(system, []).append(metrics)

    def attempt(label: str, kind: str, system: System, backend: Backend) -> dict[str, Any] | None:
        start = time.perf_counter()
        try:
            out = _one(kind, system, backend, sizes, workdir)
        except Exception as exc:
            errors.append(f"{label} {backend} {kind} {system}: {exc}")
            say(f"{label} {backend:8} {kind:5} {system:13} FAILED: {str(exc)[-2000:]}")
            return None
        if kind == "w3":
            brief = f"{out['events_per_s']:,.0f} events/s"
        elif kind == "w7":
            brief = (
                f"W7 p50/p99 {out['chronik']['p50_ms']:.2f}/{out['chronik']['p99_ms']:.2f} ms "
                f"(from the append call {out['chronik']['p50_from_call_ms']:.2f}/"
                f"{out['chronik']['p99_from_call_ms']:.2f}), "
                f"bare NOTIFY {out['raw']['p50_ms']:.2f}/{out['raw']['p99_ms']:.2f} ms"
            )
        else:
            brief = _brief(out)
        say(
            f"{label} {backend:8} {kind:5} {system:13} {time.perf_counter() - start:5.1f}s  {brief}"
        )
        return out

    kinds = []
    if workloads & CHAIN:
        kinds.append("chain")
    if "W2" in workloads:
        kinds.append("w2")
    if "W8" in workloads:
        kinds.append("w8")
    for rep in range(sizes.repetitions):
        label = f"[{rep + 1}/{sizes.repetitions}]"
        for backend in backends:
            for kind in kinds:
                for system in rotated(rep):
                    if kind == "w8" and system not in W8_SYSTEMS:
                        continue
                    out = attempt(label, kind, system, backend)
                    if out is not None:
                        keep(backend, system, out)
    if "W3" in workloads and "postgres" in backends:
        for rep in range(sizes.repetitions):
            label = f"[{rep + 1}/{sizes.repetitions}]"
            for system in rotated(rep):
                out = attempt(label, "w3", system, "postgres")
                if out is not None:
                    keep("postgres", system, {"W3": out})
    if "W7" in workloads and "postgres" in backends:
        for rep in range(sizes.repetitions):
            label = f"[{rep + 1}/{sizes.repetitions}]"
            out = attempt(label, "w7", "chronik", "postgres")
            if out is not None:  # {"chronik": ..., "raw": ...}: both measured in one job
                for system in SYSTEMS:
                    if system in out:
                        keep("postgres", system, {"W7": out[system]})
    return results


def _brief(out: dict[str, Any]) -> str:
    parts = []
    for workload, metrics in sorted(out.items()):
        if "ms" in metrics:
            parts.append(f"{workload} {metrics['ms']:,.1f} ms")
        elif "aggregates_per_s" in metrics:
            parts.append(f"{workload} {metrics['aggregates_per_s']:,.0f} agg/s")
        elif "vs_sequential" in metrics:
            parts.append(
                f"{workload} {metrics['events_per_s']:,.0f} ev/s, sequential "
                f"{metrics['sequential_events_per_s']:,.0f} ev/s ({metrics['vs_sequential']:.2f}x)"
            )
        else:
            parts.append(f"{workload} {metrics['events_per_s']:,.0f} ev/s")
    return ", ".join(parts)


def measure_m1(sizes: Sizes, backends: Sequence[Backend], workdir: str | None) -> dict[str, Any]:
    """M1 for chronik: read_all's peak memory at a short and a ten-times-longer log."""
    out: dict[str, Any] = {}
    for backend in backends:
        target = create_target(backend, "m1", workdir)
        try:
            rows: dict[str, Any] = {}
            for n in (sizes.m1_small, sizes.m1_large):
                fill = run_worker(
                    Job(kind="m1_fill", system="chronik", target=target, sizes=sizes, events=n)
                )
                traced = run_worker(
                    Job(kind="m1_read", system="chronik", target=target, sizes=sizes, trace=True)
                )
                rss = run_worker(Job(kind="m1_read", system="chronik", target=target, sizes=sizes))
                rows[str(n)] = {
                    "events": traced["events"],
                    "fill_seconds": fill["seconds"],
                    "tracemalloc_peak_mib": traced["tracemalloc_peak_mib"],
                    "rss_growth_mib": rss["rss_growth_mib"],
                    "rss_peak_mib": rss["rss_peak_mib"],
                    "read_events_per_s": rss["events"] / rss["seconds"],
                }
                say(
                    f"M1 {backend:8} {n:>9,} events: tracemalloc peak "
                    f"{traced['tracemalloc_peak_mib']:.2f} MiB, process peak RSS "
                    f"{rss['rss_peak_mib']:.1f} MiB"
                )
            out[backend] = rows
        finally:
            drop_target(target)
    return out


# -- summary --------------------------------------------------------------------------------


def medians(results: Results) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``medians[backend][workload][system][metric]``."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for backend, workloads in results.items():
        for workload, systems in workloads.items():
            for system, runs in systems.items():
                metrics = {k for run in runs for k in run}
                out.setdefault(backend, {}).setdefault(workload, {})[system] = {
                    k: statistics.median(run[k] for run in runs if k in run) for k in metrics
                }
    return out


def speed_ratio(row: Row, ours: float | None, theirs: float | None) -> float | None:
    if not ours or not theirs:
        return None
    return ours / theirs if row.higher_is_better else theirs / ours


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit.startswith("ms"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def goal_row(goal: Goal) -> Row:
    """The row a goal is measured on."""
    return next(
        r
        for r in ROWS
        if r.workload == goal.workload and (not goal.metric or r.metric == goal.metric)
    )


def goals_for(row: Row, backend: str, peer: str) -> list[Goal]:
    return [g for g in TARGETS if g.backend == backend and g.peer == peer and goal_row(g) == row]


def measured_for(goal: Goal, row: Row, ours: float | None, theirs: float | None) -> float | None:
    """The table's ratio, or for an ``at_most`` goal chronik's number over the peer's."""
    if not goal.at_most:
        return speed_ratio(row, ours, theirs)
    if not ours or not theirs:
        return None
    return ours / theirs


def measure_goal(goal: Goal, systems: dict[str, dict[str, float]]) -> float | None:
    """What ``goal`` measured in one backend's medians of its workload (None: not measured)."""
    if goal.own:
        return systems.get("chronik", {}).get(goal.own)
    row = goal_row(goal)
    ours = systems.get("chronik", {}).get(row.metric)
    theirs = systems.get(goal.peer, {}).get(row.metric)
    return measured_for(goal, row, ours, theirs)


def is_met(goal: Goal, measured: float | None) -> bool:
    if measured is None:
        return False
    return measured <= goal.ratio if goal.at_most else measured >= goal.ratio


def evaluate(med: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the ratio measured and whether it is met."""
    out = []
    for goal in TARGETS:
        systems = med.get(goal.backend, {}).get(goal.workload)
        if not systems:
            continue
        measured = measure_goal(goal, systems)
        out.append({**asdict(goal), "measured": measured, "met": is_met(goal, measured)})
    return out


def goal_text(goal: dict[str, Any]) -> str:
    """One target's line: ``met    W1 sqlite   ≥2x eventsourcing: 2.31x``."""
    status = "met   " if goal["met"] else "MISSED"
    measured = "-" if goal["measured"] is None else f"{goal['measured']:.2f}x"
    if goal["workload"] == "M1":
        return (
            f"{status} M1 {goal['backend']:8} peak memory flat (≤{goal['ratio']:g}x growth): "
            f"{measured}"
        )
    if goal.get("at_most"):
        return (
            f"{status} {goal['workload']} {goal['backend']:8} p99 ≤{goal['ratio']:g}x bare "
            f"LISTEN/NOTIFY: {measured}"
        )
    if goal.get("own"):
        return (
            f"{status} {goal['workload']} {goal['backend']:8} ≥{goal['ratio']:g}x chronik's own "
            f"sequential single writer: {measured}"
        )
    return (
        f"{status} {goal['workload']} {goal['backend']:8} ≥{goal['ratio']:g}x {goal['peer']}: "
        f"{measured}"
    )


def evaluate_m1(m1: dict[str, Any]) -> list[dict[str, Any]]:
    """M1's target per backend: the peak grows at most ``M1_FLAT`` times for a 10x log."""
    out = []
    for backend, rows in m1.items():
        _small, _large, growth = m1_growth(rows)
        out.append(
            {
                "workload": "M1",
                "backend": backend,
                "peer": None,
                "ratio": M1_FLAT,
                "measured": growth,
                "met": growth <= M1_FLAT,
            }
        )
    return out


def table(med: dict[str, Any], backends: Sequence[str]) -> str:
    """The medians, chronik's ratio to each peer, and the targets of each row. ``raw`` is the
    plain baseline, ``raw-chronik-sql`` the driver running chronik's own SQL."""
    head = (
        "| workload | backend | unit | chronik | eventsourcing | raw driver "
        "| raw, chronik's SQL | chronik/eventsourcing | chronik/raw | chronik/raw-chronik-sql "
        "| target |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in ROWS:
        for backend in backends:
            systems = med.get(backend, {}).get(row.workload)
            if not systems:
                continue
            values = {s: systems.get(s, {}).get(row.metric) for s in SYSTEMS}
            ratios = [speed_ratio(row, values["chronik"], values[p]) for p in PEERS]
            marks = []
            for peer in (*PEERS, "chronik"):
                for goal in goals_for(row, backend, peer):
                    measured = measure_goal(goal, systems)
                    verdict = "met" if is_met(goal, measured) else "MISSED"
                    if goal.at_most:
                        marks.append(f"≤{goal.ratio:g}x bare {verdict} ({_fmt_ratio(measured)})")
                    elif goal.own:
                        marks.append(
                            f"≥{goal.ratio:g}x own sequential {verdict} ({_fmt_ratio(measured)})"
                        )
                    else:
                        marks.append(f"≥{goal.ratio:g}x {SHORT[peer]} {verdict}")
            label = f"{row.workload} {LABELS[row.workload]}"
            cells = " | ".join(_fmt(values[s], row.unit) for s in SYSTEMS)
            shown = " | ".join(_fmt_ratio(r) for r in ratios)
            lines.append(
                f"| {label} | {backend} | {row.unit} | {cells} | {shown} | {'; '.join(marks)} |"
            )
    return "\n".join(lines)


def m1_growth(rows: dict[str, Any]) -> tuple[int, int, float]:
    """The two log lengths and how many times the peak grew between them (worst of both)."""
    (small_n, small), (large_n, large) = sorted(rows.items(), key=lambda kv: int(kv[0]))
    growth = max(
        large["tracemalloc_peak_mib"] / max(small["tracemalloc_peak_mib"], 1e-9),
        large["rss_peak_mib"] / max(small["rss_peak_mib"], 1e-9),
    )
    return int(small_n), int(large_n), growth


def m1_table(m1: dict[str, Any]) -> str:
    lines = [
        "| M1 read_all + decode, chronik | backend | short log | long log "
        "| tracemalloc peak short → long | process peak RSS short → long | flat? |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for backend, rows in m1.items():
        small_n, large_n, growth = m1_growth(rows)
        small, large = rows[str(small_n)], rows[str(large_n)]
        flat = growth <= M1_FLAT
        lines.append(
            f"| peak memory | {backend} | {small_n:,} | {large_n:,} "
            f"| {small['tracemalloc_peak_mib']:.2f} → {large['tracemalloc_peak_mib']:.2f} MiB "
            f"| {small['rss_peak_mib']:.1f} → {large['rss_peak_mib']:.1f} MiB "
            f"| {'yes' if flat else 'NO'} ({growth:.2f}x) |"
        )
    return "\n".join(lines)


def busiest_load(results: Results) -> float:
    """The highest load average seen just before any measurement (0 when none recorded)."""
    loads = [
        run.get("load_before", 0.0)
        for workloads in results.values()
        for systems in workloads.values()
        for runs in systems.values()
        for run in runs
    ]
    return max(loads, default=0.0)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            total_kib = int(fh.readline().split()[1])
        info["memory_gib"] = round(total_kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def versions(backends: Sequence[str]) -> dict[str, Any]:
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"sqlite": sqlite3.sqlite_version}
    for dist in ("chronik", "eventsourcing", "psycopg", "msgspec"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    if "postgres" in backends:
        import psycopg

        with psycopg.connect(PG_URL) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            out["postgresql"] = row[0] if row else None
            settings = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'wal_sync_method', 'shared_buffers', "
                "'max_connections') ORDER BY name"
            ).fetchall()
            out["postgresql_settings"] = dict(settings)
    return out


def _check_postgres() -> str | None:
    """Why PostgreSQL workloads cannot run, or None when they can."""
    if not pg_reachable():
        return f"PostgreSQL is not reachable at {PG_URL}"
    import asyncio

    import chronik

    target = create_target("postgres", "probe")
    try:

        async def probe() -> None:
            store = await chronik.connect(target.chronik_url())
            await store.close()

        asyncio.run(probe())
    except Exception as exc:
        return f"chronik's PostgreSQL backend is not usable: {type(exc).__name__}: {exc}"
    finally:
        drop_target(target)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes (the default)")
    mode.add_argument("--full", action="store_true", help="more repetitions, M1 at 1M events")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not numbers")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--only", default="", help="workloads, e.g. W1,W4,M1 (default: all)")
    parser.add_argument("--repetitions", type=int, default=0, help="override the mode's count")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    parser.add_argument("--workdir", default=None, help="folder for SQLite files (default tmp)")
    args = parser.parse_args(argv)

    mode_name = "full" if args.full else "smoke" if args.smoke else "quick"
    sizes = {"full": FULL, "smoke": SMOKE, "quick": QUICK}[mode_name]
    if args.repetitions:
        sizes = replace(sizes, repetitions=args.repetitions)
    workloads = {w.strip().upper() for w in args.only.split(",") if w.strip()} or set(WORKLOADS)
    unknown = workloads - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    backends: list[Backend] = []
    for name in (b.strip() for b in args.backends.split(",") if b.strip()):
        if name not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {name!r}")
        backends.append(name)
    try:
        import eventsourcing  # noqa: F401
    except ImportError:
        parser.error("eventsourcing is not installed: pip install 'eventsourcing[postgres]~=9.5.0'")
    skipped: dict[str, str] = {}
    if "postgres" in backends:
        reason = _check_postgres()
        if reason:
            say(f"skipping PostgreSQL: {reason}")
            skipped["postgres"] = reason
            backends.remove("postgres")

    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    say(f"chronik benchmarks ({mode_name}): {asdict(sizes)}")
    errors: list[str] = []
    results = measure(sizes, backends, workloads, args.workdir, errors)
    m1: dict[str, Any] = {}
    if "M1" in workloads:
        try:
            m1 = measure_m1(sizes, backends, args.workdir)
        except Exception as exc:
            errors.append(f"M1: {exc}")
            say(f"M1 FAILED: {str(exc)[-2000:]}")
    med = medians(results)
    goals = evaluate(med) + evaluate_m1(m1)
    elapsed = time.perf_counter() - started
    busiest = busiest_load(results)

    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    report = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command.strip(),
        "mode": mode_name,
        "seconds": elapsed,
        "sizes": asdict(sizes),
        "backends": backends,
        "skipped": skipped,
        "errors": errors,
        "machine": machine(),
        "versions": versions(backends),
        "durability": {
            "sqlite": "WAL, synchronous=FULL for all of them (eventsourcing: SQLite's default, "
            "FULL, checked by PRAGMA)",
            "postgres": "stock settings, one transaction per append for all of them",
            "projections": "W6P: chronik and raw one transaction per page of 500 (read model "
            "and checkpoint), eventsourcing one per event (its Projection's design)",
        },
        "load_at_start": load_at_start,
        "busiest_load_before": busiest,
        "results": results,
        "medians": med,
        "targets": goals,
        "m1": m1,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")

    print()
    print(table(med, backends))
    if m1:
        print()
        print(m1_table(m1))
    print()
    for g in goals:
        print(goal_text(g))
    for backend, reason in skipped.items():
        print(f"skipped {backend}: {reason}")
    for error in errors:
        print(f"FAILED (left out of the table): {error.splitlines()[0]}")
    # The load average before each measurement includes this run's own previous jobs (W3's
    # eight writers, the server), so only the one before the first job tells of other work.
    print(
        f"\n1-minute load average: {load_at_start:.1f} before the run, up to {busiest:.1f} "
        f"before a measurement (with this run's own jobs; {os.cpu_count()} CPUs)"
    )
    if load_at_start > BUSY_LOAD:
        print(
            f"warning: the load average was {load_at_start:.1f} before the run started: "
            "something else was running, numbers are noisy"
        )
    met = sum(1 for g in goals if g["met"])
    print(f"\n{met}/{len(goals)} targets met; {elapsed:.0f}s; JSON: {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
