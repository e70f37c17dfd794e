"""Archive a category's old events into compressed files, read through, restore.

:func:`archive_category` moves events out of the events table into segment files under an
archive directory: zstd-compressed NDJSON in a backup's line format
(:class:`~chronik.store.archived.ArchivedEvent`), each with a manifest beside it
(``<segment>.json``: category, positions, per-stream versions, counts, sha256). In order:

1. the file is written under a temporary name, synced and renamed, then its manifest;
2. the segment is recorded in ``archive_segments`` (state ``removing``), with the file's
   absolute path, size and sha256;
3. its rows are deleted in transactions of at most ``batch_size`` events, each recording
   what it deleted in ``truncations`` (so ``chronik check`` reads it as policy);
4. the segment becomes ``archived``.

Cancelled or killed anywhere, nothing is lost: before step 2 the file is unknown to the
store (and the rows are all there); after it, reads merge the segment with what is left
(an event in both is read once) and the next run finishes step 3 first. An archive never
moves a stream's last event (it carries the stream's version: ``stream_version`` and
appends work as before) nor an event some checkpoint, dead letter or consumer group has not
processed (:func:`chronik.ops.retention.holders`).

Reads of a store opened by :func:`chronik.connect` after a segment was recorded go through
the archive (:mod:`chronik.store.archived`). :func:`restore_archive` puts a segment's events
back with their positions, ids and versions, and forgets the segment (the file stays).

Example::

    report = await archive_category(store, "order", "/var/chronik/archive",
                                    older_than=timedelta(days=365))
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from chronik.errors import ArchiveError, InvalidArgument
from chronik.ops.retention import _check_category, holders
from chronik.store.archived import (
    ArchivedEvent,
    Segment,
    archived_segments,
    bare,
    load_segment,
    refresh,
    reinsert,
    select_for_archive,
)
from chronik.store.capabilities import require
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore

__all__ = [
    "ArchiveReport",
    "RestoreReport",
    "archive_category",
    "restore_archive",
    "segments",
]

DEFAULT_BATCH = 1000
"""Rows deleted (or put back) per transaction."""
SEGMENT_EVENTS = 100_000
"""Events per segment file at most."""
_MAX_POSITION = 2**62


@dataclass(slots=True)
class ArchiveReport:
    """What :func:`archive_category` moved."""

    category: str
    directory: str
    limit: int
    """events at or below this position could go (the lowest reader, or the head)"""
    held_by: str | None
    segments: list[Segment] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    """half-done segments of an earlier archive (rows deleted) or restore (rows put back)
    this run finished first"""

    @property
    def events(self) -> int:
        return sum(s.events for s in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "directory": self.directory,
            "events": self.events,
            "limit": self.limit,
            "held_by": self.held_by,
            "segments": [s.to_dict() for s in self.segments],
            "finished": self.finished,
        }


@dataclass(slots=True)
class RestoreReport:
    """What :func:`restore_archive` put back."""

    segments: list[int] = field(default_factory=list)
    events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"segments": self.segments, "events": self.events}


async def segments(store: EventStore) -> list[Segment]:
    """The archived segments the store recorded, oldest first."""
    require(store, SqlStore)
    return await archived_segments(bare(store))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_segment(
    directory: Path, category: str, events: Sequence[ArchivedEvent], level: int,
    recorded: set[str],
) -> tuple[Path, str, int]:  # fmt: skip
    import zstandard

    name = f"{category}-{events[0].position}-{events[-1].position}"
    final = directory / f"{name}.ndjson.zst"
    if str(final) in recorded:
        raise ArchiveError(f"{final} holds a recorded segment: not overwritten")
    # a file there that the store does not know is left by a run stopped before it recorded
    # the segment (or by a restore): nothing reads it, it is written again
    body = b"".join(msgspec.json.encode(e) + b"\n" for e in events)
    raw = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(body)
    partial = directory / f".{name}.partial"
    with open(partial, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, final)
    digest = hashlib.sha256(raw).hexdigest()
    streams: dict[str, list[int]] = {}
    for e in events:
        span = streams.setdefault(e.stream_id, [e.version, e.version])
        span[0], span[1] = min(span[0], e.version), max(span[1], e.version)
    manifest = {
        "file": final.name,
        "category": category,
        "events": len(events),
        "streams": len(streams),
        "first_position": events[0].position,
        "last_position": events[-1].position,
        "versions": streams,
        "bytes": len(raw),
        "uncompressed_bytes": len(body),
        "sha256": digest,
        "format": "chronik backup event lines (events.ndjson.zst), zstd",
    }
    text = msgspec.json.format(msgspec.json.encode(manifest), indent=2)
    with open(directory / f"{name}.json", "wb") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(directory)
    return final, digest, len(raw)


async def _record(sql: SqlStore, category: str, path: Path, digest: str, size: int,
                  events: Sequence[ArchivedEvent]) -> Segment:  # fmt: skip
    async with sql.transaction() as tx:
        await tx.execute(
            "INSERT INTO archive_segments (category, file, sha256, bytes, events, "
            "first_position, last_position, state, created_at) "
            "VALUES (:c, :f, :h, :b, :n, :p0, :p1, 'removing', :at)",
            {"c": category, "f": str(path), "h": digest, "b": size, "n": len(events),
             "p0": events[0].position, "p1": events[-1].position,
             "at": tx.timestamp(datetime.now(UTC))},
        )  # fmt: skip
        row = await tx.fetchone("SELECT id FROM archive_segments WHERE file = :f", {"f": str(path)})
    assert row is not None
    return Segment(int(row[0]), category, str(path), digest, size, len(events),
                   events[0].position, events[-1].position, "removing")  # fmt: skip


def _reason(segment: Segment) -> str:
    return f"archived: segment {segment.id} ({segment.file})"


async def _remove(sql: SqlStore, segment: Segment, batch_size: int) -> None:
    """Delete the rows of a recorded segment, recording each batch; then mark it archived."""
    events = load_segment(segment)  # checked: only what the file really holds is deleted
    # by stream and version: a batch then spans few streams, one record each
    events.sort(key=lambda e: (e.stream_id, e.version))
    now = datetime.now(UTC)
    for start in range(0, len(events), batch_size):
        positions = [e.position for e in events[start : start + batch_size]]
        marks = ", ".join(f":p{i}" for i in range(len(positions)))
        async with sql.transaction() as tx:
            deleted = await tx.fetchall(
                f"DELETE FROM events WHERE category = :c AND position IN ({marks}) "
                "RETURNING stream_id, version, position",
                {"c": segment.category, **{f"p{i}": p for i, p in enumerate(positions)}},
            )
            by_stream: dict[str, list[tuple[int, int]]] = {}
            for stream_id, version, position in deleted:
                by_stream.setdefault(str(stream_id), []).append((int(version), int(position)))
            for stream_id, rows in sorted(by_stream.items()):
                await tx.execute(
                    "INSERT INTO truncations (stream_id, category, from_version, "
                    "through_version, first_position, last_position, events, reason, "
                    "removed_at) VALUES (:s, :c, :a, :b, :p0, :p1, :n, :reason, :at)",
                    {"s": stream_id, "c": segment.category, "a": min(v for v, _ in rows),
                     "b": max(v for v, _ in rows), "p0": min(p for _, p in rows),
                     "p1": max(p for _, p in rows), "n": len(rows), "reason": _reason(segment),
                     "at": tx.timestamp(now)},
                )  # fmt: skip
    async with sql.transaction() as tx:
        await tx.execute(
            "UPDATE archive_segments SET state = 'archived' WHERE id = :id AND state = 'removing'",
            {"id": segment.id},
        )


async def _restore_one(sql: SqlStore, segment: Segment, batch_size: int) -> int:
    events = load_segment(segment)  # checked whole before anything is put back
    async with sql.transaction() as tx:
        await tx.execute(
            "UPDATE archive_segments SET state = 'restoring' WHERE id = :id", {"id": segment.id}
        )
    n = 0
    for start in range(0, len(events), batch_size):
        async with sql.transaction() as tx:
            n += await reinsert(tx, events[start : start + batch_size])
    async with sql.transaction() as tx:  # the records and the segment go together
        await tx.execute("DELETE FROM truncations WHERE reason = :r", {"r": _reason(segment)})
        await tx.execute("DELETE FROM archive_segments WHERE id = :id", {"id": segment.id})
    return n


def _prepare(directory: str | os.PathLike[str]) -> Path:
    try:
        root = Path(directory).resolve()
        root.mkdir(parents=True, exist_ok=True)
    except (OSError, TypeError) as exc:
        raise ArchiveError(f"archive directory {directory!r}: {exc}") from None
    return root


def _check_batch(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument("batch_size", f"must be a positive int, not {batch_size!r}")
    return batch_size


async def archive_category(
    store: EventStore,
    category: str,
    directory: str | os.PathLike[str],
    *,
    before: int | None = None,
    older_than: timedelta | None = None,
    closed_streams: bool = False,
    batch_size: int = DEFAULT_BATCH,
    segment_events: int = SEGMENT_EVENTS,
    level: int = 3,
    now: datetime | None = None,
) -> ArchiveReport:
    """Move ``category``'s events below position ``before`` (or recorded longer ago than
    ``older_than``) into segment files under ``directory``; returns what moved.

    With ``closed_streams`` only streams whose last event is itself that old give events.
    A stream's last event and anything a reader has not processed stay. Half-done segments
    of an earlier (cancelled, killed) archive or restore are finished first.

    Raises:
        InvalidArgument: a bad category, not exactly one of ``before`` and ``older_than``,
            or a value that is not positive.
        ArchiveError: the directory cannot be created or written.
        ArchiveCorrupted: a half-done segment's file is missing or altered.
        MissingCapability: the store has no SQL (``memory://``).
    """
    sql = require(store, SqlStore)
    plain = bare(store)
    category = _check_category(category)
    batch_size = _check_batch(batch_size)
    segment_events = _check_batch(segment_events)
    if (before is None) == (older_than is None):
        raise InvalidArgument("before", "give exactly one of before (a position) and older_than")
    if before is not None and (
        isinstance(before, bool) or not isinstance(before, int) or not 0 < before < _MAX_POSITION
    ):
        raise InvalidArgument("before", f"must be a position (an int > 0), not {before!r}")
    if older_than is not None and (
        not isinstance(older_than, timedelta) or older_than.total_seconds() < 1
    ):
        raise InvalidArgument("older_than", f"must be at least 1 second, not {older_than!r}")
    root = _prepare(directory)
    cutoff = None if older_than is None else (now or datetime.now(UTC)) - older_than
    readers = await holders(store)
    head = await store.head_position()
    limit = min([head, *(h.position for h in readers)])
    held_by = readers[0].describe() if readers and readers[0].position < head else None
    report = ArchiveReport(category, str(root), limit, held_by)
    for segment in await archived_segments(plain):
        if segment.category != category:
            continue
        if segment.state == "removing":
            await _remove(sql, segment, batch_size)
            report.finished.append(segment.id)
        elif segment.state == "restoring":  # a restore stopped midway: finish it first
            await _restore_one(sql, segment, batch_size)
            report.finished.append(segment.id)
    while True:
        events = await select_for_archive(
            sql, category, hold=limit, before=before, cutoff=cutoff,
            closed_streams=closed_streams, limit=segment_events,
        )  # fmt: skip
        if not events:
            break
        try:
            recorded = {s.file for s in await archived_segments(plain)}
            path, digest, size = await asyncio.to_thread(
                _write_segment, root, category, events, level, recorded
            )
        except OSError as exc:
            raise ArchiveError(f"archive directory {root}: {exc}") from None
        segment = await _record(sql, category, path, digest, size, events)
        await _remove(sql, segment, batch_size)
        report.segments.append(
            Segment(
                segment.id,
                category,
                str(path),
                digest,
                size,
                len(events),
                events[0].position,
                events[-1].position,
                "archived",
            )
        )
    await refresh(store)
    return report


async def restore_archive(
    store: EventStore,
    *,
    category: str | None = None,
    segment_ids: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> RestoreReport:
    """Put archived events back in the store (same positions, ids, versions) and forget
    their segments: all, a category's, or the given ones. The files stay. Safe to cancel
    and rerun: an event already back is not put back twice.

    Raises:
        ArchiveCorrupted: a segment's file is missing or altered (nothing of it restored).
        InvalidArgument: an unknown segment id, a bad category.
    """
    sql = require(store, SqlStore)
    batch_size = _check_batch(batch_size)
    if category is not None:
        category = _check_category(category)
    found = await archived_segments(bare(store))
    if segment_ids is not None:
        known = {s.id for s in found}
        unknown = [i for i in segment_ids if i not in known]
        if unknown:
            raise InvalidArgument("segment", f"no archived segment {unknown[0]!r}")
        found = [s for s in found if s.id in set(segment_ids)]
    if category is not None:
        found = [s for s in found if s.category == category]
    report = RestoreReport()
    for segment in found:
        report.events += await _restore_one(sql, segment, batch_size)
        report.segments.append(segment.id)
    await refresh(store)
    return report
