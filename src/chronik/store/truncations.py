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

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chronik.store.capabilities import require, supports
from chronik.store.port import SqlStore

__all__ = [
    "TruncationSummary",
    "as_datetime",
    "stream_truncated_through",
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


async def truncation_summary(store: object) -> TruncationSummary:
    """Totals of what retention removed (all zero for stores without SQL)."""
    if not supports(store, SqlStore):
        return TruncationSummary(0, 0, 0, None)
    ((events, streams, last, when),) = await require(store, SqlStore).query(
        "SELECT coalesce(sum(events), 0), count(DISTINCT stream_id), "
        "coalesce(max(last_position), 0), max(removed_at) FROM truncations"
    )
    return TruncationSummary(int(events), int(streams), int(last), as_datetime(when))
