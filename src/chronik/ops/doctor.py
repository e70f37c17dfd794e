"""``chronik doctor``: check a store's environment and say what is wrong and how to fix it.

Each :class:`Finding` has a level (``ok``, ``warn``, ``error``), what was found, why it
matters and how to fix it. :func:`diagnose` runs every check that applies to the backend:

- PostgreSQL: the read horizon and the oldest transaction of the whole cluster (any
  database, ``pg_stat_activity``) and prepared transactions (``pg_prepared_xacts``), with
  age, PID/xid, user, database and state; ``fsync``, ``synchronous_commit``,
  ``full_page_writes``; ``idle_in_transaction_session_timeout``; autovacuum on the events
  table; the NOTIFY queue (``pg_notification_queue_usage()``);
- SQLite: ``journal_mode`` and ``synchronous``;
- both: disk headroom (where the database's files are visible from here), the lag of every
  projection and worker (one per checkpoint), dead letters, the saga command outbox.

Example::

    report = await diagnose(store, url)
    for f in report.findings:
        print(f.level, f.check, f.what)
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chronik.ops.restore import DONE_PREFIX, EXPECTED_PREFIX, half_restore
from chronik.store.capabilities import supports
from chronik.store.horizon import LAG_CAP, events_after, horizon_transactions, read_horizon
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore
from chronik.store.urls import parse_store_url

__all__ = ["EXIT_CODES", "DoctorReport", "Finding", "Level", "diagnose"]

Level = Literal["ok", "warn", "error"]

EXIT_CODES = {"ok": 0, "error": 1, "warn": 5}
"""``chronik doctor``'s exit status by the worst finding (2, 3, 4, 130 as every command)."""

HORIZON_WARN_SECONDS = 5.0
"""A transaction older than this that holds the horizon is reported."""
LAG_WARN_SECONDS = 60.0
DISK_WARN = 0.10
DISK_ERROR = 0.02
NOTIFY_WARN = 0.5


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``level``, ``what`` was found, ``why`` it matters, ``fix``."""

    check: str
    level: Level
    what: str
    why: str = ""
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "what": self.what,
            "why": self.why,
            "fix": self.fix,
            "data": self.data,
        }


@dataclass
class DoctorReport:
    backend: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def level(self) -> Level:
        levels = {f.level for f in self.findings}
        return "error" if "error" in levels else "warn" if "warn" in levels else "ok"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.level]

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "level": self.level,
            "findings": [f.to_dict() for f in self.findings],
        }


async def diagnose(store: EventStore, url: str) -> DoctorReport:
    """Run every check that applies to ``store`` (opened from ``url``)."""
    parsed = parse_store_url(url)
    report = DoctorReport(parsed.scheme)
    if parsed.scheme == "postgresql":
        await _postgres(store, report)
    elif parsed.scheme == "sqlite":
        _sqlite(parsed.target, parsed.options, report)
    await _lag(store, report)
    if supports(store, SqlStore):
        await _outbox(store, report)
    half = await half_restore(store)
    if half is not None:
        report.add(
            Finding(
                "restore",
                "error",
                f"a restore of backup {half.backup_id} stopped at {half.done:,} of "
                f"{half.expected:,} events",
                "the store holds part of a backup",
                "chronik restore BACKUP --resume, or restore into a new empty store",
            )
        )
    return report


# -- PostgreSQL -------------------------------------------------------------------------


async def _setting(store: Any, name: str) -> str:
    # reset_val: what a new session gets (chronik's own connections SET some of these)
    rows = await store.query(
        "SELECT reset_val, unit FROM pg_settings WHERE name = :name", {"name": name}
    )
    return str(rows[0][0]) if rows else "?"


async def _postgres(store: Any, report: DoctorReport) -> None:
    horizon = await read_horizon(store)
    holders = await horizon_transactions(store, 5)
    oldest = holders[0] if holders else None
    if horizon is not None and horizon.held and horizon.age_seconds >= HORIZON_WARN_SECONDS:
        report.add(
            Finding(
                "horizon",
                "error",
                horizon.describe(),
                "readers (read_all, subscriptions, projections, relays) see no event "
                "committed after that transaction began until it ends, whatever database "
                "it is in",
                _end_it(horizon.holder),
                horizon.to_dict(),
            )
        )
    elif oldest is not None and oldest.age_seconds >= HORIZON_WARN_SECONDS:
        report.add(
            Finding(
                "horizon",
                "warn",
                f"the oldest transaction of the cluster is {oldest.age_seconds:,.0f} s old "
                f"({oldest.describe()}); no event is waiting behind it yet",
                "the next event committed will stay invisible to readers until it ends",
                _end_it(oldest),
                oldest.to_dict(),
            )
        )
    else:
        report.add(
            Finding(
                "horizon",
                "ok",
                "no transaction holds the read horizon back"
                + (" (beyond appends running now)" if horizon and horizon.held else ""),
                data=horizon.to_dict() if horizon else {},
            )
        )
    prepared = [h for h in holders if h.kind == "prepared"]
    rows = await store.query("SELECT count(*) FROM pg_prepared_xacts")
    if rows[0][0]:
        report.add(
            Finding(
                "prepared_transactions",
                "warn",
                f"{rows[0][0]} prepared transaction(s)"
                + (f", the oldest {prepared[0].describe()}" if prepared else ""),
                "a prepared transaction survives restarts and holds the read horizon and "
                "vacuum until it is committed or rolled back",
                "COMMIT PREPARED 'gid' or ROLLBACK PREPARED 'gid' (see pg_prepared_xacts); "
                "set max_prepared_transactions = 0 if nothing uses two-phase commit",
                {"prepared": [h.to_dict() for h in prepared]},
            )
        )
    else:
        report.add(Finding("prepared_transactions", "ok", "no prepared transaction"))
    for name, good, why in (
        ("fsync", {"on"}, "with fsync off a crash of the machine can corrupt the database"),
        (
            "full_page_writes",
            {"on"},
            "with full_page_writes off a crash during a page write can corrupt it",
        ),
        (
            "synchronous_commit",
            {"on", "remote_apply", "remote_write", "local"},
            "with synchronous_commit off an acknowledged append can be lost in a crash",
        ),
    ):
        value = await _setting(store, name)
        if value in good:
            report.add(Finding(name, "ok", f"{name} = {value}"))
        else:
            report.add(
                Finding(
                    name,
                    "error" if name != "synchronous_commit" else "warn",
                    f"{name} = {value}",
                    why,
                    f"ALTER SYSTEM SET {name} = on; SELECT pg_reload_conf();",
                )
            )
    timeout = await _setting(store, "idle_in_transaction_session_timeout")
    if timeout in ("0", "?"):
        report.add(
            Finding(
                "idle_in_transaction_session_timeout",
                "warn",
                "idle_in_transaction_session_timeout = 0 (no limit) for sessions other than "
                "chronik's own",
                "a session left idle in a transaction (a debugger, psql without COMMIT) "
                "holds the read horizon back for as long as it stays",
                "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
                "SELECT pg_reload_conf();",
            )
        )
    else:
        report.add(
            Finding(
                "idle_in_transaction_session_timeout",
                "ok",
                f"idle_in_transaction_session_timeout = {timeout} ms",
            )
        )
    auto = await _setting(store, "autovacuum")
    rows = await store.query(
        "SELECT coalesce(array_to_string(c.reloptions, ','), ''), s.last_autovacuum, "
        "s.n_dead_tup FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE c.oid = to_regclass('events')"
    )
    options = str(rows[0][0]) if rows else ""
    if auto != "on" or "autovacuum_enabled=false" in options:
        report.add(
            Finding(
                "autovacuum",
                "warn",
                f"autovacuum is off for the events table (autovacuum = {auto}; {options})",
                "without vacuum, index-only scans and the visibility map decay and xid "
                "wraparound protection forces an emergency vacuum",
                "ALTER TABLE events RESET (autovacuum_enabled); ALTER SYSTEM SET autovacuum = on",
            )
        )
    else:
        last = rows[0][1] if rows else None
        report.add(
            Finding(
                "autovacuum",
                "ok",
                "autovacuum is on for the events table"
                + (f" (last run {last:%Y-%m-%d %H:%M})" if last else ""),
            )
        )
    (usage,) = (await store.query("SELECT pg_notification_queue_usage()"))[0]
    usage = float(usage)
    report.add(
        Finding(
            "notify_queue",
            "warn" if usage >= NOTIFY_WARN else "ok",
            f"NOTIFY queue {usage:.1%} full",
            "a full queue makes every NOTIFY (every append's wake-up) fail"
            if usage >= NOTIFY_WARN
            else "",
            "find the session that LISTENs and does not read (pg_stat_activity, "
            "state 'idle in transaction')"
            if usage >= NOTIFY_WARN
            else "",
            {"usage": usage},
        )
    )
    try:
        (data_dir,) = (await store.query("SELECT current_setting('data_directory')"))[0]
    except Exception:  # no privilege to read it
        data_dir = None
    _disk(report, str(data_dir) if data_dir else None, "PostgreSQL's data directory")


def _end_it(holder: Any) -> str:
    if holder is None:
        return ""
    if holder.kind == "prepared":
        return f"COMMIT PREPARED '{holder.gid}' or ROLLBACK PREPARED '{holder.gid}'"
    return (
        f"end that session's transaction, or SELECT pg_terminate_backend({holder.pid}); "
        "and set idle_in_transaction_session_timeout"
    )


# -- SQLite -----------------------------------------------------------------------------


def _sqlite(path: str, options: dict[str, Any], report: DoctorReport) -> None:
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    if str(mode).lower() == "wal":
        report.add(Finding("journal_mode", "ok", "journal_mode = wal"))
    else:
        report.add(
            Finding(
                "journal_mode",
                "error",
                f"journal_mode = {mode}",
                "chronik needs WAL: readers and the writer would block each other",
                "open the store with chronik (it sets WAL), or PRAGMA journal_mode = wal",
            )
        )
    sync = str(options.get("synchronous", "FULL")).upper()
    if sync in ("FULL", "EXTRA"):
        report.add(Finding("synchronous", "ok", f"synchronous = {sync} (from the store URL)"))
    else:
        report.add(
            Finding(
                "synchronous",
                "warn",
                f"synchronous = {sync} (from the store URL)",
                "WAL with synchronous NORMAL or OFF can lose the last acknowledged appends "
                "on power loss",
                "drop ?synchronous= from the store URL (chronik's default is FULL)",
            )
        )
    _disk(report, str(Path(path).resolve().parent), "the SQLite file's folder")


def _disk(report: DoctorReport, folder: str | None, what: str) -> None:
    if folder is None or not os.path.isdir(folder):
        report.add(
            Finding(
                "disk",
                "ok",
                f"disk headroom not measured: {what} is not visible from this machine",
                fix="watch the database server's disk with your monitoring",
            )
        )
        return
    usage = shutil.disk_usage(folder)
    free = usage.free / usage.total if usage.total else 1.0
    level: Level = "error" if free < DISK_ERROR else "warn" if free < DISK_WARN else "ok"
    report.add(
        Finding(
            "disk",
            level,
            f"{usage.free / 2**30:,.1f} GiB free of {usage.total / 2**30:,.1f} GiB "
            f"({free:.0%}) where {what} is",
            "" if level == "ok" else "a full disk stops every append",
            "" if level == "ok" else "free space or grow the volume",
            {"free_bytes": usage.free, "total_bytes": usage.total, "path": folder},
        )
    )


# -- both -------------------------------------------------------------------------------


async def _lag(store: EventStore, report: DoctorReport) -> None:
    marks = await store.checkpoints()
    letters = await store.dead_letters()
    per: dict[str, int] = {}
    for letter in letters:
        per[letter.subscription] = per.get(letter.subscription, 0) + 1
    names = [n for n in sorted(marks) if not n.startswith((EXPECTED_PREFIX, DONE_PREFIX))]
    if not names:
        report.add(Finding("lag", "ok", "no projection or worker has a checkpoint yet"))
    for name in names:
        lag = await events_after(store, marks[name])
        more = "~" if lag.estimated else ""
        slow = lag.events and lag.seconds >= LAG_WARN_SECONDS
        report.add(
            Finding(
                f"lag:{name}",
                "warn" if slow else "ok",
                f"{name}: {more}{lag.events:,} events behind, oldest {lag.seconds:,.0f} s old"
                if lag.events
                else f"{name}: caught up (checkpoint {marks[name]})",
                "its worker is stopped, failing or too slow" if slow else "",
                "chronik projections status; check the worker's logs and --metrics-port"
                if slow
                else "",
                {
                    "checkpoint": marks[name],
                    "lag_events": lag.events,
                    "lag_estimated": lag.estimated,
                    "lag_seconds": round(lag.seconds, 3),
                    "counted_up_to": LAG_CAP,
                },
            )
        )
    for name, n in sorted(per.items()):
        report.add(
            Finding(
                f"dead_letters:{name}",
                "warn",
                f"{name}: {n} dead letter(s)",
                "events its handler gave up on are not in its read model",
                "fix the handler, then chronik projections retry (or the worker's retry)",
                {"dead_letters": n},
            )
        )


async def _outbox(store: Any, report: DoctorReport) -> None:
    from chronik.sagas.status import saga_counts

    try:
        counts = await saga_counts(store)
    except Exception:  # no saga tables in an old schema: nothing to report
        return
    backlog = sum(n for _s, status, n in counts.commands if status in ("pending", "running"))
    report.add(
        Finding(
            "outbox",
            "ok" if backlog < 1000 else "warn",
            f"saga command outbox: {backlog} command(s) pending or running",
            "" if backlog < 1000 else "the command dispatcher is stopped or failing",
            "" if backlog < 1000 else "start chronik sagas dispatch; check its logs",
            {"backlog": backlog},
        )
    )
