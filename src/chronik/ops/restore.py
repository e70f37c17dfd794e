"""Restore a backup (:mod:`chronik.ops.backup`) into an empty store, on any backend.

:func:`restore_backup` first checks the whole backup (:func:`verify_backup`: a corrupted or
truncated backup is refused before anything is written), then imports its events with
:meth:`Tx.import_events <chronik.store.protocol.Tx.import_events>`: event ids, stream ids,
per-stream versions, types, schema versions, data, metadata and ``recorded_at`` are kept,
and the order of positions (the positions themselves are the target's own).

A full backup goes into an empty store only. An incremental backup goes on top of the
store its base was restored into: the target's last event must be the event its ``since``
position names (``since_event_id``), else :class:`BackupError`.

**Interrupted restores.** Events are written in transactions of ``transaction_events``
(default 500,000: one transaction for most stores). Each transaction also records two
checkpoints, ``chronik.restore:<backup_id>`` (the events the backup holds) and
``chronik.restore.done:<backup_id>`` (the events restored so far). A restore cancelled or
killed inside the first transaction leaves the target as it was (empty); one stopped later
leaves whole transactions and ``done < expected``: :func:`half_restore` reports it, a new
restore refuses it, ``resume=True`` continues it from the next event.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chronik.ops.backup import (
    BackupError,
    BackupProgress,
    Manifest,
    iter_events,
    verify_backup,
)
from chronik.store.capabilities import supports
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore, ImportedEvent
from chronik.store.truncations import record_truncated

__all__ = [
    "DONE_PREFIX",
    "EXPECTED_PREFIX",
    "HalfRestore",
    "RestoreReport",
    "half_restore",
    "restore_backup",
]

EXPECTED_PREFIX = "chronik.restore:"
DONE_PREFIX = "chronik.restore.done:"
IMPORT_BATCH = 20_000
"""Events per ``import_events`` call: each call looks up its streams' versions once."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class HalfRestore:
    """A restore that stopped between two of its transactions."""

    backup_id: str
    expected: int
    done: int


@dataclass(frozen=True)
class RestoreReport:
    manifest: Manifest
    restored: int
    seconds: float
    resumed_from: int = 0

    @property
    def rate(self) -> float:
        return self.restored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.manifest.backup_id,
            "incremental": self.manifest.incremental,
            "restored": self.restored,
            "resumed_from": self.resumed_from,
            "position": self.manifest.position,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
        }


async def half_restore(store: EventStore) -> HalfRestore | None:
    """The restore that stopped midway in ``store``, if any (from its checkpoints)."""
    marks = await store.checkpoints()
    for name, expected in marks.items():
        if name.startswith(EXPECTED_PREFIX):
            backup_id = name[len(EXPECTED_PREFIX) :]
            done = marks.get(DONE_PREFIX + backup_id, 0)
            if done < expected:
                return HalfRestore(backup_id, expected, done)
    return None


async def _stores_events(store: EventStore) -> bool:
    """Whether any event is stored, visible or not yet (a held read horizon hides some)."""
    if supports(store, SqlStore):
        rows = await store.query("SELECT count(*) FROM (SELECT 1 FROM events LIMIT 1) AS t")  # type: ignore[attr-defined]
        return bool(rows[0][0])
    return await store.head_position() > 0


async def _last_event_id(store: EventStore) -> str | None:
    head = await store.head_position()
    if head == 0:
        return None
    async for ev in store.read_all(after=head - 1, limit=1):
        return str(ev.event_id)
    return None


def _imported(ev: Any) -> ImportedEvent:
    return ImportedEvent(
        uuid.UUID(ev.event_id),
        ev.stream_id,
        ev.version,
        ev.type,
        ev.schema_version,
        ev.data.encode("utf-8"),
        ev.metadata.encode("utf-8"),
        _EPOCH + timedelta(microseconds=ev.recorded_at),
    )


async def restore_backup(
    path: Path | str,
    store: EventStore,
    *,
    resume: bool = False,
    transaction_events: int = 500_000,
    progress: Callable[[BackupProgress], None] | None = None,
) -> RestoreReport:
    """Restore the backup folder ``path`` into ``store``.

    Args:
        path: a backup folder (full, or incremental on top of what ``store`` holds).
        store: the target: empty for a full backup.
        resume: continue a restore of this same backup that stopped midway.
        transaction_events: events per transaction (at most 1,048,576 on PostgreSQL).
        progress: called after every import batch.

    Raises:
        BackupCorrupted: the backup does not check (nothing written).
        BackupError: the target is not empty, holds a half restore, or does not end with
            the event an incremental backup continues (nothing written).
    """
    path = Path(path)
    if transaction_events < 1:
        raise BackupError(f"transaction_events must be >= 1, not {transaction_events}")
    manifest = await asyncio.to_thread(verify_backup, path)
    half = await half_restore(store)
    skip = 0
    if half is not None:
        if not (resume and half.backup_id == manifest.backup_id):
            raise BackupError(
                f"the target holds a half restore of backup {half.backup_id} ({half.done} of "
                f"{half.expected} events); restore that backup again with --resume, or start "
                "over with an empty store"
            )
        skip = half.done
    elif resume:
        raise BackupError(f"nothing to resume: no half restore of {manifest.backup_id}")
    else:
        last = await _last_event_id(store)
        if manifest.incremental and last != manifest.since_event_id:
            raise BackupError(
                f"backup {path} continues from event {manifest.since_event_id} (position "
                f"{manifest.since} of its source); the target's last event is {last}: restore "
                "the backups before it first, in order"
            )
        if not manifest.incremental and (last is not None or await _stores_events(store)):
            raise BackupError(
                "the target holds events already (some perhaps not yet visible to readers); "
                "a full backup is restored into an empty store only"
            )
    if manifest.truncated and not supports(store, SqlStore):
        raise BackupError(
            f"the backup's source had events removed by retention ({len(manifest.truncated)} "
            "streams); restore it into a sqlite:// or postgresql:// store, which records that"
        )
    expected_name = EXPECTED_PREFIX + manifest.backup_id
    done_name = DONE_PREFIX + manifest.backup_id
    done = skip
    started = time.monotonic()
    batches = iter_events(path, manifest, skip=skip)
    finished = False
    while not finished:
        async with store.transaction() as tx:
            in_tx = 0
            await tx.set_checkpoint(expected_name, manifest.events)
            if manifest.truncated:
                await record_truncated(
                    tx, manifest.truncated, "removed by retention before the backup"
                )
            while in_tx < transaction_events:
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    finished = True
                    break
                room = transaction_events - in_tx
                head, tail = batch[:room], batch[room:]
                for start in range(0, len(head), IMPORT_BATCH):
                    part = head[start : start + IMPORT_BATCH]
                    await tx.import_events([_imported(ev) for ev in part])
                    in_tx += len(part)
                    done += len(part)
                    if progress is not None:
                        progress(BackupProgress(done, manifest.events, time.monotonic() - started))
                if tail:
                    batches = _prepend(tail, batches)
            await tx.set_checkpoint(done_name, done)
    return RestoreReport(manifest, done - skip, time.monotonic() - started, resumed_from=skip)


def _prepend(first: list[Any], rest: Any) -> Any:
    yield first
    yield from rest
