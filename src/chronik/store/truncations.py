"""What retention removed from the log, as recorded in ``truncations`` (migration 0014).

The scavenger (:mod:`chronik.ops.retention`) deletes a stream's oldest events and records
each removal in the same transaction, so the record and the deletion never disagree. The
readers of the record are here, in the store layer, because checks and rebuilds below the
tools layer need them: ``chronik check`` reads a stream that starts above version 0 as
truncated by policy when the records cover the missing versions, and a rebuild says that it
starts from the retained events.

Stores without SQL (``memory://``) have no retention: every function answers "nothing
removed" there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chronik.events import category_of
from chronik.store.capabilities import require, supports
from chronik.store.port import SqlStore, Tx

__all__ = [
    "TruncationSummary",
    "as_datetime",
    "record_truncated",
    "stream_truncated_through",
    "truncated_streams",
    "truncated_through",
    "truncation_summary",
]


@dataclass(frozen=True, slots=True)
class TruncationSummary:
    """How much of the log retention removed: ``events`` in ``streams`` streams, the last
    removed position (every removed event is at or below it) and when it last ran."""

    events: int
    streams: int
    last_position: int
    last_removed_at: datetime | None

    def describe(self) -> str:
        if not self.events:
            return ""
        when = self.last_removed_at.strftime("%Y-%m-%d %H:%M UTC") if self.last_removed_at else "?"
        return (
            f"{self.events:,} events of {self.streams:,} streams were removed by retention "
            f"(last on {when}, at or below position {self.last_position})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "streams": self.streams,
            "last_position": self.last_position,
            "last_removed_at": self.last_removed_at.isoformat() if self.last_removed_at else None,
        }


def as_datetime(stored: datetime | int | None) -> datetime | None:
    """A stored time as a UTC datetime: PostgreSQL gives a datetime, SQLite microseconds."""
    if stored is None or isinstance(stored, datetime):
        return stored
    return datetime.fromtimestamp(int(stored) / 1_000_000, UTC)


async def truncated_through(store: object) -> dict[str, int]:
    """stream id -> the highest version retention removed from it (versions 0..that one are
    gone by policy). Empty for stores without SQL."""
    if not supports(store, SqlStore):
        return {}
    rows = await require(store, SqlStore).query(
        "SELECT stream_id, max(through_version) FROM truncations GROUP BY stream_id"
    )
    return {str(stream): int(through) for stream, through in rows}


async def stream_truncated_through(store: object, stream_id: str) -> int:
    """The highest version retention removed from ``stream_id`` (-1: none)."""
    if not supports(store, SqlStore):
        return -1
    rows = await require(store, SqlStore).query(
        "SELECT max(through_version) FROM truncations WHERE stream_id = :s", {"s": stream_id}
    )
    return -1 if not rows or rows[0][0] is None else int(rows[0][0])


async def truncated_streams(store: object) -> list[tuple[str, int, int, int]]:
    """Per stream: ``(stream_id, through_version, events, last_position)`` of what retention
    removed (what a copy or a backup carries over)."""
    if not supports(store, SqlStore):
        return []
    rows = await require(store, SqlStore).query(
        "SELECT stream_id, max(through_version), sum(events), max(last_position) "
        "FROM truncations GROUP BY stream_id ORDER BY stream_id"
    )
    return [(str(s), int(v), int(n), int(p)) for s, v, n, p in rows]


async def record_truncated(tx: Tx, truncated: Sequence[Sequence[Any]], reason: str) -> None:
    """Record in ``tx``'s store what retention removed from another store (a backup's
    source, a copy's source): ``(stream_id, through_version, events, last_position)`` each.
    Idempotent (a resumed restore or copy finds it recorded). Imported streams then continue
    at their versions, and ``chronik check`` reads the missing versions as policy."""
    known = {
        str(stream): int(through)
        for stream, through in await tx.fetchall(
            "SELECT stream_id, max(through_version) FROM truncations GROUP BY stream_id"
        )
    }
    now = tx.timestamp(datetime.now(UTC))
    for stream_id, through, events, last_position in truncated:
        if known.get(str(stream_id), -1) >= int(through):
            continue
        await tx.execute(
            "INSERT INTO truncations (stream_id, category, from_version, through_version, "
            "first_position, last_position, events, reason, removed_at) "
            "VALUES (:s, :c, 0, :b, 0, :p, :n, :reason, :at)",
            {"s": str(stream_id), "c": category_of(str(stream_id)), "b": int(through),
             "p": int(last_position), "n": int(events), "reason": reason, "at": now},
        )  # fmt: skip


async def truncation_summary(store: object) -> TruncationSummary:
    """Totals of what retention removed (all zero for stores without SQL)."""
    if not supports(store, SqlStore):
        return TruncationSummary(0, 0, 0, None)
    ((events, streams, last, when),) = await require(store, SqlStore).query(
        "SELECT coalesce(sum(events), 0), count(DISTINCT stream_id), "
        "coalesce(max(last_position), 0), max(removed_at) FROM truncations "
        "WHERE reason NOT LIKE 'archived:%'"  # archived events are read through (0015)
    )
    return TruncationSummary(int(events), int(streams), int(last), as_datetime(when))
