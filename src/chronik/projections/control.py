"""Pause and resume a projection in every process that runs it.

The flag lives in the store (``projection_versions.paused_at``, migration 0010), so the
console, the HTTP API and ``chronik projections pause`` reach runners anywhere. A runner
looks at it at most four times a second, before each batch and before going idle: a pause
takes effect after the batch in flight, which commits whole (a batch is one transaction
with its checkpoint, so nothing is half applied). While paused the runner applies nothing
and its status says ``paused``; on resume it reads its checkpoint again and goes on from
there: nothing skipped, nothing applied twice.

Example::

    await pause_projection(store, "loyalty_points", by="ops: reindexing points table")
    ...
    await resume_projection(store, "loyalty_points")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from chronik.errors import ChronikError, InvalidArgument, ProjectionPaused, UnknownProjection
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx

__all__ = [
    "PausedProjection",
    "pause_projection",
    "paused_projections",
    "resume_projection",
]

MAX_BY_LENGTH = 500
"""Longest ``by`` text kept with a pause."""


@dataclass(frozen=True, slots=True)
class PausedProjection:
    name: str
    paused_at: datetime
    """When it was paused (UTC, the database's clock)."""
    by: str
    """Who or why, as given to :func:`pause_projection` (may be empty)."""


async def pause_projection(store: EventStore, name: str, *, by: str = "") -> PausedProjection:
    """Pause projection ``name`` everywhere; pausing a paused one keeps its first pause.

    Raises:
        UnknownProjection: no runner ever set it up in this store.
        InvalidArgument: ``by`` is longer than :data:`MAX_BY_LENGTH` characters.
        MissingCapability: the store runs no SQL (``memory://``).
    """
    _text("name", name)
    _text("by", by)
    if len(by) > MAX_BY_LENGTH:
        raise InvalidArgument("by", f"at most {MAX_BY_LENGTH} characters, got {len(by)}")
    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        row = await tx.fetchone(
            "UPDATE projection_versions "
            f"SET paused_at = COALESCE(paused_at, CAST(({tx.clock_sql}) * 1000000 AS BIGINT)), "
            "paused_by = CASE WHEN paused_at IS NULL THEN :by ELSE paused_by END "
            "WHERE name = :name RETURNING paused_at, paused_by",
            {"name": name, "by": by},
        )
    if row is None:
        raise UnknownProjection(name)
    return PausedProjection(name, _time(row[0]), row[1] or "")


async def resume_projection(store: EventStore, name: str) -> bool:
    """Resume projection ``name``; ``False`` if it was not paused.

    Raises:
        UnknownProjection: no runner ever set it up in this store.
        MissingCapability: the store runs no SQL (``memory://``).
    """
    _text("name", name)
    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        was = await tx.fetchone(
            "SELECT paused_at FROM projection_versions WHERE name = :name", {"name": name}
        )
        if was is None:
            raise UnknownProjection(name)
        await tx.execute(
            "UPDATE projection_versions SET paused_at = NULL, paused_by = NULL WHERE name = :name",
            {"name": name},
        )
    return was[0] is not None


async def paused_projections(store: EventStore) -> dict[str, PausedProjection]:
    """The paused projections by name (empty on a store that runs no SQL)."""
    try:
        sql = require(store, SqlStore)
    except ChronikError:
        return {}
    rows = await sql.query(
        "SELECT name, paused_at, paused_by FROM projection_versions "
        "WHERE paused_at IS NOT NULL ORDER BY name"
    )
    return {name: PausedProjection(name, _time(at), by or "") for name, at, by in rows}


_UNPAUSED = {
    # a server function raising SQLSTATE CK002, which arrives at COMMIT as ProjectionPaused:
    # nothing to fetch, so no extra round trip in the pipelined batch
    "postgresql": ("SELECT chronik_check_unpaused(:name)", False),
    # a local read (no round trip to save), raised here
    "sqlite": (
        "SELECT 1 FROM projection_versions WHERE name = :name AND paused_at IS NOT NULL",
        True,
    ),
}


async def check_unpaused(tx: Tx, name: str) -> None:
    """In a runner's batch, right before its checkpoint moves: fail the transaction when
    projection ``name`` is paused (:class:`~chronik.ProjectionPaused`, at COMMIT on
    PostgreSQL, here on SQLite). A store without SQL has no pause: nothing to check."""
    sql, fetch = _UNPAUSED.get(tx.dialect, ("", False))
    if not sql:
        return
    if not fetch:
        await tx.execute(sql, {"name": name})
    elif await tx.fetchone(sql, {"name": name}) is not None:
        raise ProjectionPaused(name)


async def is_paused(store: EventStore, name: str) -> bool:
    """Whether projection ``name`` is paused (what a runner asks)."""
    try:
        sql = require(store, SqlStore)
    except ChronikError:
        return False
    rows = await sql.query(
        "SELECT 1 FROM projection_versions WHERE name = :name AND paused_at IS NOT NULL",
        {"name": name},
    )
    return bool(rows)


def _text(argument: str, value: object) -> None:
    """A text a database can store: a str without NUL or lone surrogates."""
    if not isinstance(value, str):
        raise InvalidArgument(argument, f"must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidArgument(argument, "holds a NUL character (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(argument, "holds a lone surrogate (not UTF-8)") from None


def _time(micros: int) -> datetime:
    return datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
