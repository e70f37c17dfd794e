"""``chronik check``: read-only integrity checks of an event store.

Each check names what it looks for; :func:`check` runs them all and returns a
:class:`CheckReport` (``ok`` when no check found anything):

=========================  ==================================================================
``version_gap``            a stream's versions are not 0..n-1: some are missing
``duplicate_version``      a stream has two events at one version
``duplicate_event_id``     one event id is stored twice
``position_order``         in a stream, an event comes after a higher version in the global order
``unknown_type``           an event type the registry does not know (needs a registry)
``decode_error``           a stored event that does not decode or upcast (needs a registry)
``missing_correlation_id`` an event without a correlation id in its metadata
``snapshot_ahead``         a snapshot of a version its stream does not have (yet)
``snapshot_invalid``       a snapshot taken after another event than the one its stream has at
                           its version (or recording none); with ``snapshots=``, also one that
                           does not decode or is not what a replay gives
``checkpoint_ahead``       a subscription checkpoint above the store's head position
=========================  ==================================================================

On a store with the SQL capability (SQLite, PostgreSQL) the structural checks are SQL
aggregates (one pass over an index each); other stores are checked in one pass over
``read_all``. Decoding reads every event of a registered type once. Nothing is written.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chronik.codec import EventRegistry
from chronik.decider import Decider
from chronik.errors import ChronikError, RegistryError, UnknownEventType
from chronik.events import RecordedEvent
from chronik.store.capabilities import require, supports
from chronik.store.horizon import read_horizon
from chronik.store.port import BOOKKEEPING_CHECKPOINTS, EventStore, SqlStore
from chronik.store.truncations import TruncationSummary, truncated_through, truncation_summary

__all__ = ["CHECKS", "CheckReport", "Problem", "check"]

CHECKS: dict[str, str] = {
    "version_gap": "versions missing in a stream",
    "duplicate_version": "two events at one version of a stream",
    "duplicate_event_id": "one event id stored twice",
    "position_order": "positions that do not grow with versions",
    "unknown_type": "event types the registry does not know",
    "decode_error": "events that do not decode or upcast",
    "missing_correlation_id": "events without a correlation id",
    "snapshot_ahead": "snapshots ahead of their stream",
    "snapshot_invalid": "snapshots that do not match their stream",
    "checkpoint_ahead": "checkpoints ahead of the store",
}
"""Every check by name, with what it looks for."""

DEFAULT_MAX_DETAILS = 20


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing a check found."""

    check: str
    message: str
    stream_id: str | None = None
    version: int | None = None
    position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "message": self.message,
            "stream_id": self.stream_id,
            "version": self.version,
            "position": self.position,
        }


@dataclass
class CheckReport:
    """What :func:`check` found: counts per check, and the first problems of each."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    problems: list[Problem] = field(default_factory=list)
    """At most ``max_details`` per check (``counts`` has the totals)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Checks that did not run, with the reason."""
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)
    """``unknown_type`` and ``decode_error`` counted per ``"Type vN"``."""
    events: int = 0
    streams: int = 0
    decoded: int = 0
    max_details: int = DEFAULT_MAX_DETAILS
    truncated: TruncationSummary | None = None
    """What retention removed (recorded in the store): policy, not gaps."""
    warnings: list[str] = field(default_factory=list)
    """What is not a problem of the stored data but stalls its readers (a held read
    horizon: ``read horizon held back since T by PID/xid ...``); ``ok`` stays true."""

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def add(self, problem: Problem, count: int = 1) -> None:
        """Count ``count`` problems of ``problem.check`` and keep this one as a detail."""
        self.counts[problem.check] = self.counts.get(problem.check, 0) + count
        if sum(1 for p in self.problems if p.check == problem.check) < self.max_details:
            self.problems.append(problem)

    def count(self, check: str, count: int) -> None:
        """Count problems found without details (past the ones kept)."""
        self.counts[check] = self.counts.get(check, 0) + count

    def details(self, check: str) -> list[Problem]:
        return [p for p in self.problems if p.check == check]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "streams": self.streams,
            "decoded": self.decoded,
            "summary": dict(self.counts),
            "skipped": dict(self.skipped),
            "breakdown": {k: dict(v) for k, v in self.breakdown.items()},
            "problems": [p.to_dict() for p in self.problems],
            "warnings": list(self.warnings),
            "truncated": self.truncated.to_dict() if self.truncated else None,
        }


def _where(stream_id: str, version: int, position: int) -> str:
    return f"{stream_id}@{version} (position {position})"


def _version_problems(
    report: CheckReport, stream_id: str, counts: Sequence[tuple[int, int]], start: int = 0
) -> None:
    """Gaps and duplicates from a stream's ``(version, how many events)``, by version;
    versions below ``start`` were removed by retention (recorded, not a gap)."""
    expected = start
    for version, n in counts:
        if version > expected:
            missing = (
                f"version {expected}"
                if version == expected + 1
                else (f"versions {expected}..{version - 1}")
            )
            report.add(
                Problem("version_gap", f"{stream_id}: {missing} missing", stream_id, expected)
            )
        if n > 1:
            report.add(
                Problem(
                    "duplicate_version",
                    f"{stream_id}: version {version} stored {n} times",
                    stream_id,
                    version,
                )
            )
        expected = max(expected, version + 1)


def _order_problem(stream_id: str, version: int, position: int, higher: int) -> Problem:
    return Problem(
        "position_order",
        f"{stream_id}: version {version} has position {position}, after version {higher} "
        f"in the global order",
        stream_id,
        version,
        position,
    )


def _type_name(type_: str, schema_version: int) -> str:
    return f"{type_} v{schema_version}"


async def check(
    store: EventStore,
    *,
    registry: EventRegistry | None = None,
    decode: bool = True,
    max_details: int = DEFAULT_MAX_DETAILS,
    snapshots: Mapping[str, tuple[Decider[Any, Any, Any], Any]] | None = None,
) -> CheckReport:
    """Run every integrity check on ``store``; read-only.

    Args:
        registry: the application's event types; without it ``unknown_type`` and
            ``decode_error`` are skipped (reported in ``skipped``).
        decode: decode (and upcast) every event of a registered type; ``False`` skips it.
        max_details: problems kept per check (all are counted).
        snapshots: category → ``(decider, SnapshotConfig)`` (``snapshot_targets(app)``):
            snapshots of those categories are also decoded and compared with a replay.
    """
    report = CheckReport(max_details=max_details)
    sql = require(store, SqlStore) if supports(store, SqlStore) else None
    if sql is None:
        await _scan(store, report, registry)
    else:
        await _sql_checks(sql, report, registry)
    if registry is None:
        reason = "no registry (give --app MODULE:OBJECT)"
        report.skipped["unknown_type"] = reason
        report.skipped["decode_error"] = reason
    else:
        report.counts["unknown_type"] = sum(report.breakdown.get("unknown_type", {}).values())
        if decode:
            await _decode_all(store, report, registry)
        else:
            report.skipped["decode_error"] = "decoding turned off"
    await _snapshot_checks(store, report, registry, snapshots)
    head = await store.head_position()
    for name, position in sorted((await store.checkpoints()).items()):
        if position > head and not name.startswith(BOOKKEEPING_CHECKPOINTS):
            report.add(
                Problem(
                    "checkpoint_ahead",
                    f"checkpoint {name!r} is at position {position}, above the store's "
                    f"head position {head}",
                    position=position,
                )
            )
    horizon = await read_horizon(store)
    if horizon is not None and horizon.held:
        report.warnings.append(horizon.describe())
    return report


# -- stores without SQL: one pass over read_all ----------------------------------------------


async def _scan(store: EventStore, report: CheckReport, registry: EventRegistry | None) -> None:
    per_stream: dict[str, list[tuple[int, int]]] = {}
    ids: Counter[uuid.UUID] = Counter()
    types: Counter[tuple[str, int]] = Counter()
    unknown_examples: list[RecordedEvent] = []
    readable = None if registry is None else _readable_types(registry)
    async for ev in store.read_all():
        report.events += 1
        per_stream.setdefault(ev.stream_id, []).append((ev.version, ev.position))
        ids[ev.event_id] += 1
        types[(ev.type, ev.schema_version)] += 1
        if (
            readable is not None
            and ev.type not in readable
            and len(unknown_examples) < report.max_details
        ):
            unknown_examples.append(ev)
        if ev.correlation_id is None:
            _missing_correlation(report, ev.stream_id, ev.version, ev.position)
    report.streams = len(per_stream)
    for stream_id, rows in sorted(per_stream.items()):
        _version_problems(report, stream_id, sorted(Counter(v for v, _ in rows).items()))
        _position_order(report, stream_id, sorted(rows, key=lambda r: r[1]))
    for event_id, n in ids.items():
        if n > 1:
            report.add(Problem("duplicate_event_id", f"event id {event_id} stored {n} times"))
    if registry is not None:
        _unknown_types(report, _readable_types(registry), types.items())
        for ev in unknown_examples:
            _unknown_example(report, ev.stream_id, ev.version, ev.position, ev.type)


def _position_order(report: CheckReport, stream_id: str, rows: Iterable[tuple[int, int]]) -> None:
    """``(version, position)`` by position: each version must be above all before it (a
    second copy of a version is a duplicate, reported as such, not here)."""
    highest = -1
    seen: set[int] = set()
    for version, position in rows:
        if version in seen:
            continue
        seen.add(version)
        if version < highest:
            report.add(_order_problem(stream_id, version, position, highest))
        highest = max(highest, version)


def _missing_correlation(report: CheckReport, stream_id: str, version: int, position: int) -> None:
    report.add(
        Problem(
            "missing_correlation_id",
            f"{_where(stream_id, version, position)}: no correlation_id in its metadata",
            stream_id,
            version,
            position,
        )
    )


def _unknown_types(
    report: CheckReport, readable: set[str], types: Iterable[tuple[tuple[str, int], int]]
) -> None:
    """Count unknown types per type and version (their details are added separately)."""
    for (type_, schema_version), n in sorted(types):
        if type_ not in readable:
            report.breakdown.setdefault("unknown_type", {})[_type_name(type_, schema_version)] = n


def _unknown_example(
    report: CheckReport, stream_id: str, version: int, position: int, type_: str
) -> None:
    report.add(
        Problem(
            "unknown_type",
            f"{_where(stream_id, version, position)}: type {type_!r} is not registered",
            stream_id,
            version,
            position,
        ),
        count=0,
    )


# -- SQLite and PostgreSQL: aggregates in SQL --------------------------------------------------

_STREAMS = (
    "SELECT stream_id, count(*), count(DISTINCT version), min(version), max(version) "
    "FROM events GROUP BY stream_id "
    "HAVING count(*) <> max(version) + 1 OR count(DISTINCT version) <> count(*) "
    "OR min(version) <> 0 ORDER BY stream_id"
)
_STREAM_VERSIONS = (
    "SELECT version, count(*) FROM events WHERE stream_id = :stream_id "
    "GROUP BY version ORDER BY version"
)
_DUPLICATE_IDS = (
    "SELECT event_id, count(*) FROM events GROUP BY event_id HAVING count(*) > 1 ORDER BY event_id"
)
# in position order, the highest version before each event's first copy must be below it
_ORDER = (
    "SELECT stream_id, version, position, higher FROM ("
    " SELECT stream_id, version, position,"
    "  max(version) OVER (PARTITION BY stream_id ORDER BY position"
    "   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS higher,"
    "  row_number() OVER (PARTITION BY stream_id, version ORDER BY position) AS nth"
    " FROM events"
    ") AS t WHERE nth = 1 AND higher > version ORDER BY stream_id, version"
)
_TYPES = "SELECT type, schema_version, count(*) FROM events GROUP BY type, schema_version"
_TYPE_EXAMPLES = (
    "SELECT stream_id, version, position, type FROM events WHERE type = :type "
    "ORDER BY position LIMIT :n"
)
# the expressions of the correlation index (migration 0004), so these are index lookups
_CORRELATION = {
    "sqlite": "json_extract(metadata, '$.correlation_id')",
    "postgresql": "(metadata->>'correlation_id')",
}


async def _sql_checks(sql: SqlStore, report: CheckReport, registry: EventRegistry | None) -> None:
    query = sql.query
    ((events, streams),) = await query("SELECT count(*), count(DISTINCT stream_id) FROM events")
    report.events, report.streams = int(events), int(streams)
    removed = await truncated_through(sql)
    for stream_id, *_ in await query(_STREAMS):
        rows = await query(_STREAM_VERSIONS, {"stream_id": stream_id})
        start = removed.get(stream_id, -1) + 1
        _version_problems(report, stream_id, [(int(v), int(n)) for v, n in rows], start)
    report.truncated = await truncation_summary(sql)
    for event_id, n in await query(_DUPLICATE_IDS):
        report.add(Problem("duplicate_event_id", f"event id {event_id} stored {n} times"))
    for stream_id, version, position, higher in await query(_ORDER):
        report.add(_order_problem(stream_id, int(version), int(position), int(higher)))
    expr = _CORRELATION[sql.dialect]  # SQL text only
    ((missing,),) = await query(f"SELECT count(*) FROM events WHERE {expr} IS NULL")
    if missing:
        rows = await query(
            f"SELECT stream_id, version, position FROM events WHERE {expr} IS NULL "
            "ORDER BY position LIMIT :n",
            {"n": report.max_details},
        )
        for stream_id, version, position in rows:
            _missing_correlation(report, stream_id, int(version), int(position))
        report.count("missing_correlation_id", int(missing) - len(rows))
    if registry is None:
        return
    types = [((str(t), int(v)), int(n)) for t, v, n in await query(_TYPES)]
    readable = _readable_types(registry)
    _unknown_types(report, readable, types)
    for type_ in sorted({t for (t, _), _ in types if t not in readable}):
        rows = await query(_TYPE_EXAMPLES, {"type": type_, "n": report.max_details})
        for stream_id, version, position, _ in rows:
            _unknown_example(report, stream_id, int(version), int(position), type_)


# -- decoding and upcasting ------------------------------------------------------------------


def _readable_types(registry: EventRegistry) -> set[str]:
    """The stored type names the registry reads: its types and those upcast into them."""
    names = [t.name for t in registry.types()]
    stored_types = getattr(registry, "stored_types", None)
    if stored_types is None:
        return set(names)
    try:
        return set(names) | set(stored_types(names))
    except ChronikError:  # broken upcaster chains: the decode check reports them
        return set(names)


async def _decode_all(store: EventStore, report: CheckReport, registry: EventRegistry) -> None:
    """Decode (and upcast) every event of a readable type; failures are counted per stored
    type and schema version."""
    known = sorted(_readable_types(registry))
    if not known:
        return
    decode = getattr(registry, "decode_many", registry.decode)
    failures: dict[str, int] = {}
    async for ev in store.read_all(types=known):
        report.decoded += 1
        try:
            decode(ev)
        except UnknownEventType:  # pragma: no cover - filtered by type above
            continue
        except RegistryError as exc:
            report.add(Problem("decode_error", f"the upcaster chains are broken: {exc}"))
            break
        except Exception as exc:
            name = _type_name(ev.type, ev.schema_version)
            failures[name] = failures.get(name, 0) + 1
            report.add(
                Problem(
                    "decode_error",
                    f"{_where(ev.stream_id, ev.version, ev.position)}: {type(exc).__name__}: {exc}",
                    ev.stream_id,
                    ev.version,
                    ev.position,
                )
            )
    if failures:
        report.breakdown["decode_error"] = dict(sorted(failures.items()))


# -- snapshots ---------------------------------------------------------------------------------


async def _snapshot_checks(
    store: EventStore,
    report: CheckReport,
    registry: EventRegistry | None,
    targets: Mapping[str, tuple[Decider[Any, Any, Any], Any]] | None,
) -> None:
    from chronik.codec import default_registry
    from chronik.snapshots import snapshot_store, verify_snapshots

    try:
        if targets:
            problems = await verify_snapshots(store, targets, registry=registry or default_registry)
        else:
            problems = await snapshot_store(store).invalid()
    except Exception as exc:  # a table this chronik cannot read; an evolve that raises
        for name in ("snapshot_ahead", "snapshot_invalid"):
            report.skipped[name] = f"cannot check snapshots: {exc}"
        return
    for problem in problems:
        report.add(
            Problem(
                "snapshot_ahead" if problem.kind == "ahead" else "snapshot_invalid",
                f"{problem.stream_id}: snapshot at version {problem.version} (state version "
                f"{problem.state_version}): {problem.reason}",
                problem.stream_id,
                problem.version,
            )
        )
