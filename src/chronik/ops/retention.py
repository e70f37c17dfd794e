"""Retention per category, applied by a scavenger that never removes unprocessed events.

A :class:`RetentionPolicy` is kept in the store (``retention_policies``, migration 0014),
one per category, with up to three rules; an event may go when ANY rule says so:

- ``max_age``: it was recorded longer ago than this;
- ``max_count``: its stream has more than this many newer events... keeping the newest
  ``max_count`` of each stream;
- ``truncate_before``: its position is below this one.

:func:`scavenge` applies them. Whatever the rules say, it never removes

- a stream's **last event**: it carries the stream's version, so the next append continues
  the numbering (and its hash chain, where there is one);
- the events after a stream's newest **snapshot**: an aggregate loads from the snapshot and
  folds them (the event the snapshot was taken after may go; the loader knows it was
  removed by policy). A stream without snapshots loses its oldest events for good: loading
  it folds only what is retained, so set retention on categories whose state is
  snapshotted or whose readers need only recent events;
- an event some reader has not processed yet: the lowest of every checkpoint (projections,
  partitioned workers, sagas, the outbox relay, the snapshotter), every dead letter (its
  event must stay for a retry) and every consumer group's position. The report names the
  one that holds removal back (:attr:`ScavengeReport.held_by`).

Each removal is one transaction of at most ``batch_size`` events: the ``DELETE`` and its
record in ``truncations`` commit together, so a scavenge cancelled or killed at any point
leaves a store where every missing event is recorded and every record is true, and running
it again finishes the job. Short transactions also matter on PostgreSQL: one long write
transaction holds back every reader's horizon (docs/operations.md).

Example::

    await set_policy(store, "cart", max_age=timedelta(days=30))
    report = await scavenge(store, dry_run=True)   # what would go, and what holds it back
    report = await scavenge(store)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chronik.errors import ChronikError, InvalidArgument
from chronik.events import validate_stream_id
from chronik.store.capabilities import require
from chronik.store.port import BOOKKEEPING_CHECKPOINTS, SqlStore, Tx
from chronik.store.protocol import EventStore
from chronik.store.truncations import as_datetime

__all__ = [
    "CategoryRemoval",
    "Holder",
    "RetentionPolicy",
    "ScavengeReport",
    "clear_policy",
    "holders",
    "parse_age",
    "policies",
    "scavenge",
    "set_policy",
]

DEFAULT_BATCH = 1000
"""Events removed per transaction."""

_MAX_AGE_SECONDS = 100 * 365 * 86400
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What retention may remove from one category (``None``: that rule is off)."""

    category: str
    max_age: timedelta | None = None
    max_count: int | None = None
    truncate_before: int | None = None
    updated_at: datetime | None = None

    def describe(self) -> str:
        rules = []
        if self.max_age is not None:
            rules.append(f"max age {_age_text(self.max_age)}")
        if self.max_count is not None:
            rules.append(f"max count {self.max_count:,} per stream")
        if self.truncate_before is not None:
            rules.append(f"truncate before position {self.truncate_before}")
        return ", ".join(rules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "max_age_seconds": None if self.max_age is None else int(self.max_age.total_seconds()),
            "max_count": self.max_count,
            "truncate_before": self.truncate_before,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True, slots=True)
class Holder:
    """A reader that has not processed past ``position``: events above it must stay."""

    kind: str
    """``checkpoint``, ``dead_letter`` or ``consumer_group``"""
    name: str
    position: int

    def describe(self) -> str:
        what = {"checkpoint": "checkpoint", "dead_letter": "a dead letter of",
                "consumer_group": "consumer group"}[self.kind]  # fmt: skip
        return f"{what} {self.name!r} at position {self.position}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "position": self.position}


@dataclass(slots=True)
class CategoryRemoval:
    """What one category's policy removed (or, in a dry run, would remove)."""

    category: str
    policy: str
    streams: int = 0
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None
    held_back: int = 0
    """events the policy allows to remove that a reader still needs (kept this time)"""

    def _saw(self, events: int, first: int, last: int) -> None:
        self.events += events
        self.first_position = (
            first if self.first_position is None else min(self.first_position, first)
        )
        self.last_position = last if self.last_position is None else max(self.last_position, last)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "policy": self.policy,
            "streams": self.streams,
            "events": self.events,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "held_back": self.held_back,
        }


@dataclass(slots=True)
class ScavengeReport:
    """The result of :func:`scavenge`."""

    dry_run: bool
    limit: int
    """events at or below this position may go (the lowest reader, or the head)"""
    held_by: Holder | None
    """the reader at ``limit``, when one holds removal back"""
    categories: list[CategoryRemoval] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(c.events for c in self.categories)

    @property
    def held_back(self) -> int:
        return sum(c.held_back for c in self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "events": self.events,
            "held_back": self.held_back,
            "limit": self.limit,
            "held_by": self.held_by.to_dict() if self.held_by else None,
            "categories": [c.to_dict() for c in self.categories],
        }


# -- policies ----------------------------------------------------------------------------


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or plain seconds) as a timedelta.

    Raises:
        InvalidArgument: not a positive whole number with one of those units.
    """
    raw = text.strip().lower() if isinstance(text, str) else ""
    unit = raw[-1:] if raw[-1:] in _AGE_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _AGE_UNITS else raw
    if not number.isdigit() or len(number) > 12 or int(number) <= 0:
        raise InvalidArgument(
            "max_age", f"{text!r} is not an age: use a positive whole number with s, m, h, d or w"
        )
    return timedelta(seconds=int(number) * _AGE_UNITS[unit])


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _check_category(category: object) -> str:
    if not isinstance(category, str) or not category:
        raise InvalidArgument("category", f"must be a non-empty string, not {category!r}")
    if "-" in category:
        raise InvalidArgument(
            "category",
            f"{category!r} is a stream id: a category is the part before the first '-' "
            f"({category.partition('-')[0]!r})",
        )
    if any(c in category for c in "*?["):
        raise InvalidArgument(
            "category", f"{category!r}: a policy names one category; patterns are not supported"
        )
    try:
        validate_stream_id(category)  # NUL, control characters, length: the stream id rules
    except ChronikError as bad:
        raise InvalidArgument("category", f"{category!r}: {bad}") from None
    return category


def _check_positive(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**62:
        raise InvalidArgument(name, f"must be a positive int, not {value!r}")
    return value


async def set_policy(
    store: EventStore,
    category: str,
    *,
    max_age: timedelta | None = None,
    max_count: int | None = None,
    truncate_before: int | None = None,
) -> RetentionPolicy:
    """Keep (replace) the retention policy of ``category``; returns it.

    Raises:
        InvalidArgument: a bad category (a stream id, a pattern, empty), a rule that is not
            positive, or no rule at all (use :func:`clear_policy`).
        MissingCapability: the store has no SQL (``memory://`` keeps everything).
    """
    sql = require(store, SqlStore)
    category = _check_category(category)
    if max_age is not None and (
        not isinstance(max_age, timedelta) or not 1 <= max_age.total_seconds() <= _MAX_AGE_SECONDS
    ):
        raise InvalidArgument("max_age", f"must be from 1 second to 100 years, not {max_age!r}")
    count = _check_positive("max_count", max_count)
    before = _check_positive("truncate_before", truncate_before)
    if max_age is None and count is None and before is None:
        raise InvalidArgument(
            "policy", "needs max_age, max_count or truncate_before (clear_policy removes one)"
        )
    seconds = None if max_age is None else int(max_age.total_seconds())
    now = datetime.now(UTC)
    async with sql.transaction() as tx:
        await tx.execute("DELETE FROM retention_policies WHERE category = :c", {"c": category})
        await tx.execute(
            "INSERT INTO retention_policies (category, max_age_seconds, max_count, "
            "truncate_before, updated_at) VALUES (:c, :age, :count, :before, :at)",
            {"c": category, "age": seconds, "count": count, "before": before,
             "at": tx.timestamp(now)},
        )  # fmt: skip
    return RetentionPolicy(
        category, None if seconds is None else timedelta(seconds=seconds), count, before, now
    )


async def policies(store: EventStore) -> list[RetentionPolicy]:
    """Every category's policy, by category."""
    rows = await require(store, SqlStore).query(
        "SELECT category, max_age_seconds, max_count, truncate_before, updated_at "
        "FROM retention_policies ORDER BY category"
    )
    return [
        RetentionPolicy(
            str(c),
            None if age is None else timedelta(seconds=int(age)),
            None if count is None else int(count),
            None if before is None else int(before),
            as_datetime(at),
        )
        for c, age, count, before, at in rows
    ]


async def clear_policy(store: EventStore, category: str) -> bool:
    """Drop ``category``'s policy (its events are kept from now on); whether there was one."""
    category = _check_category(category)
    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        found = await tx.fetchone(
            "SELECT 1 FROM retention_policies WHERE category = :c", {"c": category}
        )
        await tx.execute("DELETE FROM retention_policies WHERE category = :c", {"c": category})
    return found is not None


# -- who holds removal back ----------------------------------------------------------------


async def _holders(run: Callable[[str], Any]) -> list[Holder]:
    found = [
        Holder("checkpoint", str(name), int(position))
        for name, position in await run("SELECT name, position FROM checkpoints")
        if not str(name).startswith(BOOKKEEPING_CHECKPOINTS)
    ]
    found += [
        Holder("dead_letter", str(name), int(position) - 1)
        for name, position in await run(
            "SELECT subscription, min(position) FROM dead_letters GROUP BY subscription"
        )
    ]
    found += [
        Holder("consumer_group", str(name), int(position))
        for name, position in await run("SELECT name, position FROM consumer_groups")
    ]
    return sorted(found, key=lambda h: (h.position, h.kind, h.name))


async def holders(store: EventStore) -> list[Holder]:
    """Every reader that keeps events, lowest position first."""
    return await _holders(require(store, SqlStore).query)


# -- the scavenger -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    stream_id: str
    first: int
    through: int
    held_back: int


def _candidates_sql(policy: RetentionPolicy) -> str:
    rules = ["NULL"]
    if policy.max_age is not None:
        rules.append("max(CASE WHEN recorded_at < :cutoff THEN version END)")
    if policy.truncate_before is not None:
        rules.append("max(CASE WHEN position < :before THEN version END)")
    return (
        "SELECT stream_id, min(version), max(version), "
        + ", ".join(rules)
        + ", max(CASE WHEN position <= :hold THEN version END) "
        "FROM events WHERE category = :category GROUP BY stream_id ORDER BY stream_id"
    )


def _plan(policy: RetentionPolicy, row: Sequence[Any], snapshot: int | None) -> _Plan | None:
    stream_id, first, last, _null, *rules, allowed = row
    first, last = int(first), int(last)
    wanted = [int(v) for v in rules if v is not None]
    if policy.max_count is not None:
        wanted.append(last - policy.max_count)
    if not wanted:
        return None
    desired = min(max(wanted), last - 1)  # the last event stays: it carries the version
    if snapshot is not None:  # the events after the newest snapshot stay: loads need them
        desired = min(desired, snapshot)
    through = desired if allowed is None else min(desired, int(allowed))
    if allowed is None:
        through = first - 1  # nothing of this stream is below the readers' limit
    held = max(desired - max(through, first - 1), 0)
    if through < first and not held:
        return None
    return _Plan(str(stream_id), first, through, held)


async def scavenge(
    store: EventStore,
    *,
    dry_run: bool = False,
    categories: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
    now: datetime | None = None,
    progress: Callable[[ScavengeReport], None] | None = None,
) -> ScavengeReport:
    """Apply the retention policies (those of ``categories`` only, when given).

    Returns what was removed (``dry_run``: what would be), per category, and which reader
    holds removal back. Safe to cancel or kill at any point, and to run in several processes
    at once: every removal is recorded in its own transaction, and a rerun finishes.

    Raises:
        InvalidArgument: ``batch_size`` is not a positive int, a category is not one.
        MissingCapability: the store has no SQL.
    """
    sql = require(store, SqlStore)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument("batch_size", f"must be a positive int, not {batch_size!r}")
    wanted = None if categories is None else {_check_category(c) for c in categories}
    now = now or datetime.now(UTC)
    readers = await holders(store)
    head = await store.head_position()
    limit = min([head, *(h.position for h in readers)])
    held_by = readers[0] if readers and readers[0].position < head else None
    report = ScavengeReport(dry_run, limit, held_by)
    for policy in await policies(store):
        if wanted is not None and policy.category not in wanted:
            continue
        removal = CategoryRemoval(policy.category, policy.describe())
        report.categories.append(removal)
        params: dict[str, Any] = {"category": policy.category, "hold": limit}
        async with sql.transaction() as tx:  # read the plan in one transaction
            if policy.max_age is not None:
                params["cutoff"] = tx.timestamp(now - policy.max_age)
            if policy.truncate_before is not None:
                params["before"] = policy.truncate_before
            rows = await tx.fetchall(_candidates_sql(policy), params)
            snapshots = {
                str(stream): int(version)
                for stream, version in await tx.fetchall(
                    "SELECT stream_id, max(version) FROM snapshots WHERE category = :category "
                    "GROUP BY stream_id",
                    {"category": policy.category},
                )
            }
        plans = [
            p for p in (_plan(policy, r, snapshots.get(str(r[0]))) for r in rows) if p is not None
        ]
        removal.held_back = sum(p.held_back for p in plans)
        todo = [p for p in plans if p.through >= p.first]
        removal.streams = len(todo)
        if dry_run:
            for plan in todo:
                first, last, n = await _extent(sql.query, plan.stream_id, plan.first, plan.through)
                if n:
                    removal._saw(n, first, last)
            continue
        await _remove(sql, policy, todo, removal, batch_size, now)
        if progress is not None:
            progress(report)
    return report


async def _extent(
    run: Callable[..., Any], stream_id: str, first: int, through: int
) -> tuple[int, int, int]:
    ((low, high, n),) = await run(
        "SELECT min(position), max(position), count(*) FROM events "
        "WHERE stream_id = :s AND version >= :a AND version <= :b",
        {"s": stream_id, "a": first, "b": through},
    )
    return (int(low or 0), int(high or 0), int(n))


def _chunks(plans: Sequence[_Plan], batch_size: int) -> list[list[tuple[str, int, int]]]:
    """The removals split into transactions of at most ``batch_size`` versions."""
    chunks: list[list[tuple[str, int, int]]] = [[]]
    room = batch_size
    for plan in plans:
        start = plan.first
        while start <= plan.through:
            if room == 0:
                chunks.append([])
                room = batch_size
            end = min(plan.through, start + room - 1)
            chunks[-1].append((plan.stream_id, start, end))
            room -= end - start + 1
            start = end + 1
    return [c for c in chunks if c]


async def _remove(
    sql: SqlStore,
    policy: RetentionPolicy,
    plans: Sequence[_Plan],
    removal: CategoryRemoval,
    batch_size: int,
    now: datetime,
) -> None:
    reason = f"retention: {policy.describe()}"
    for chunk in _chunks(plans, batch_size):
        async with sql.transaction() as tx:
            # the readers again, inside the removing transaction: a checkpoint set back
            # (a rebuild started) since the plan was made keeps its events
            limit = min([math.inf, *(h.position for h in await _holders(tx.fetchall))])
            for stream_id, first, through in chunk:
                await _remove_range(tx, stream_id, policy.category, first, through, limit,
                                    reason, now, removal)  # fmt: skip


async def _remove_range(
    tx: Tx,
    stream_id: str,
    category: str,
    first: int,
    through: int,
    limit: float,
    reason: str,
    now: datetime,
    removal: CategoryRemoval,
) -> None:
    bounds: dict[str, Any] = {"s": stream_id, "a": first, "b": through}
    if limit != math.inf:
        bounds["b"] = min(
            through,
            int(
                (
                    await tx.fetchone(
                        "SELECT coalesce(max(version), -1) FROM events "
                        "WHERE stream_id = :s AND position <= :limit",
                        {"s": stream_id, "limit": int(limit)},
                    )
                    or (-1,)
                )[0]
            ),
        )
    if bounds["b"] < first:
        return
    deleted = await tx.fetchall(
        "DELETE FROM events WHERE stream_id = :s AND version >= :a AND version <= :b "
        "RETURNING version, position",
        bounds,
    )
    if not deleted:  # another scavenger was first
        return
    versions = [int(v) for v, _ in deleted]
    positions = [int(p) for _, p in deleted]
    await tx.execute(
        "INSERT INTO truncations (stream_id, category, from_version, through_version, "
        "first_position, last_position, events, reason, removed_at) "
        "VALUES (:s, :c, :a, :b, :p0, :p1, :n, :reason, :at)",
        {"s": stream_id, "c": category, "a": min(versions), "b": max(versions),
         "p0": min(positions), "p1": max(positions), "n": len(deleted), "reason": reason,
         "at": tx.timestamp(now)},
    )  # fmt: skip
    removal._saw(len(deleted), min(positions), max(positions))
