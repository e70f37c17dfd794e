"""Offline migration: copy every event of one store into another, upcast or transformed.

:func:`copy_store` reads the source in global order and writes each batch into the target
with :meth:`Tx.import_events <chronik.store.protocol.Tx.import_events>`, in ONE transaction
with the copy's checkpoint (the last source position copied), kept in the target. A copy
killed at any point has written whole batches and their checkpoint, or nothing of a batch:
running it again continues where it stopped, and running it after the source grew copies
only the new events (catch up before switching over).

Event ids, stream ids, versions, ``recorded_at``, metadata, schema versions and the order
are kept; positions are the target's own. With ``upcast`` (through a registry) or a
``transform``, the data, type and schema version change, and a split or a dropped event
renumbers the versions after it in its stream (gapless); the parts of a split get ids
derived from the original (:func:`chronik.upcasting.split_event_id`), the same on every run.

At the end :func:`verify_copy` compares what the source says the target should hold with
what it holds: per-stream counts and last versions, and a checksum of event ids by version.

Example::

    async with await chronik.connect("sqlite:///old.db") as old, \\
               await chronik.connect("postgresql://db/app") as new:
        report = await copy_store(old, new, registry=app.registry, upcast=True)
        assert report.verification is not None and report.verification.ok
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from chronik.codec import EventRegistry
from chronik.errors import (
    ChronikError,
    ConcurrencyError,
    DuplicateEventId,
    MigrationComplete,
    MigrationError,
    StreamNotFound,
)
from chronik.events import RecordedEvent, find_non_finite
from chronik.store.capabilities import supports
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore, ImportedEvent, Tx
from chronik.store.truncations import record_truncated, truncated_streams
from chronik.upcasting import Upcast, split_event_id

__all__ = [
    "CHECKPOINT_PREFIX",
    "COMPLETE_PREFIX",
    "CUTOVER_HEAD_PREFIX",
    "CopyProgress",
    "CopyReport",
    "Transform",
    "Verification",
    "copy_store",
    "verify_copy",
]

CHECKPOINT_PREFIX = "chronik.migrate.copy:"
"""The copy's checkpoint in the target is named this plus a fingerprint of its options."""
COMPLETE_PREFIX = "chronik.migrate.complete:"
"""Set by :func:`cutover` in both stores (plus the fingerprint): the source position where
writes stopped. A copy finding it in the target raises :class:`MigrationComplete`."""
CUTOVER_HEAD_PREFIX = "chronik.migrate.cutover-head:"
"""Set by :func:`cutover` in the target: its head when the copy ended, before writers moved
in (what :func:`verify_copy` compares afterwards)."""

Transform = Callable[[RecordedEvent], Any]
"""Gets a (possibly upcast) stored event; returns it (as it is), a dict (new data, same type
and schema version), an :class:`~chronik.upcasting.Upcast` (new type/version/data), a list
of these (a split), or ``None`` (drop). Must be deterministic: a resumed copy and the final
check run it again."""

_encode = msgspec.json.encode

# Crash tests only: CHRONIK_FAILPOINT="copy_before_commit:PROBABILITY" (or "...#N": at the
# Nth time) kills this process with SIGKILL inside a batch's transaction, after its events
# are written and before COMMIT.
_FAILPOINT = os.environ.get("CHRONIK_FAILPOINT")
_failpoint_hits = 0


def _failpoint(name: str) -> None:
    global _failpoint_hits
    if _FAILPOINT is None:
        return
    if "#" in _FAILPOINT:
        point, _, nth = _FAILPOINT.partition("#")
        if point == name:
            _failpoint_hits += 1
            if _failpoint_hits == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
        return
    point, _, probability = _FAILPOINT.partition(":")
    if point == name and random.random() < float(probability or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """Reported after each batch (and, when following, after each wait)."""

    done: int
    """source events copied in this run"""
    total: int
    """source events to copy when this run started (more may arrive)"""
    rate: float
    """source events per second so far"""
    checkpoint: int = 0
    """the last source position copied"""
    lag_seconds: float | None = None
    """how long the oldest event of the batch waited, from its append to the source to
    the commit of its copy (``None``: nothing was copied)"""
    lag_events: int | None = None
    """source events not copied yet (following: counted at most once a second)"""

    def to_dict(self) -> dict[str, Any]:
        return {
            "copied": self.done,
            "checkpoint": self.checkpoint,
            "events_per_second": round(self.rate, 1),
            "lag_events": self.lag_events,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 4),
        }

    @property
    def eta_seconds(self) -> float | None:
        if self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


@dataclass(frozen=True, slots=True)
class Verification:
    """What :func:`verify_copy` found."""

    ok: bool
    upto: int
    """the last source position compared (the copy's checkpoint)"""
    expected_events: int
    target_events: int
    expected_streams: int
    target_streams: int
    expected_checksum: str
    target_checksum: str
    differences: list[str] = field(default_factory=list)
    """The first few streams that differ, with how."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "upto": self.upto,
            "expected_events": self.expected_events,
            "target_events": self.target_events,
            "expected_streams": self.expected_streams,
            "target_streams": self.target_streams,
            "expected_checksum": self.expected_checksum,
            "target_checksum": self.target_checksum,
            "differences": self.differences,
        }


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What one run of :func:`copy_store` did."""

    resumed_after: int
    """the source position this run started after (0: from the start)"""
    checkpoint: int
    """the last source position copied"""
    read: int
    """source events read in this run"""
    written: int
    """target events written in this run (differs from ``read`` after splits and drops)"""
    seconds: float
    """the copy, without the final check"""
    verification: Verification | None = None

    @property
    def rate(self) -> float:
        """Source events copied per second."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "resumed_after": self.resumed_after,
            "checkpoint": self.checkpoint,
            "read": self.read,
            "written": self.written,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            "verification": None if self.verification is None else self.verification.to_dict(),
        }


class _Pipeline:
    """What becomes of one source event: upcast, then transform, then ready to import."""

    def __init__(
        self,
        registry: EventRegistry | None,
        upcast: bool,
        transform: Transform | None,
        tolerant: bool,
    ) -> None:
        if upcast and registry is None:
            raise ChronikError("upcast=True needs the registry holding the upcasters")
        self.registry = registry if upcast else None
        self.transform = transform
        self.tolerant = tolerant
        self.exact = self.registry is None and transform is None
        """A plain copy: versions are kept and checked, never renumbered."""

    def __call__(self, event: RecordedEvent) -> list[ImportedEvent]:
        if self.exact:
            return [ImportedEvent.of(event)]
        parts = (
            [event]
            if self.registry is None
            else self.registry.upcast(event, tolerant=self.tolerant)
        )
        out: list[ImportedEvent] = []
        for part in parts:
            if self.transform is None:
                out.append(ImportedEvent.of(part, keep_version=False))
            else:
                out.extend(self._transformed(part))
        return out

    def _transformed(self, event: RecordedEvent) -> list[ImportedEvent]:
        assert self.transform is not None
        result = self.transform(event)
        if result is None:
            return []
        items = result if isinstance(result, (list, tuple)) else [result]
        out: list[ImportedEvent] = []
        for index, item in enumerate(items):
            event_id = split_event_id(event.event_id, index)
            if isinstance(item, RecordedEvent):
                out.append(ImportedEvent.of(item, keep_version=False)._replace(event_id=event_id))
                continue
            if isinstance(item, Upcast):
                kind, version, data = (
                    item.type,
                    item.schema_version or event.schema_version,
                    item.data,
                )
            elif isinstance(item, Mapping):
                kind, version, data = event.type, event.schema_version, item
            else:
                raise TypeError(
                    f"the transform returned {type(item).__name__}: expected the event, a "
                    f"dict, an Upcast, a list of these, or None"
                )
            where = find_non_finite(msgspec.to_builtins(data))
            if where is not None:  # JSON has no NaN/Infinity: msgspec would write null
                raise MigrationError(
                    f"the transform of {event.stream_id}@{event.version} returned a NaN or "
                    f"infinite number at {where} (JSON cannot hold it)"
                )
            out.append(
                ImportedEvent(
                    event_id,
                    event.stream_id,
                    None,
                    kind,
                    version,
                    _encode(data),
                    event.raw_metadata,
                    event.recorded_at,
                )
            )
        return out


def _fingerprint(
    categories: Sequence[str] | None,
    upcast: bool,
    transform: Transform | None,
) -> str:
    name = None
    if transform is not None:
        name = f"{getattr(transform, '__module__', '?')}:{getattr(transform, '__qualname__', '?')}"
    spec = {
        "categories": sorted(categories) if categories is not None else None,
        "upcast": upcast,
        "transform": name,
    }
    return hashlib.sha256(_encode(spec)).hexdigest()[:12]


class _Moved(Exception):
    """Another copy moved the checkpoint: this batch's transaction rolls back."""

    def __init__(self, position: int) -> None:
        self.position = position


class _Copier:
    """One copy from ``source`` into ``target``: its checkpoint, its pipeline, its batches.

    Each batch is written with the checkpoint in ONE target transaction. The checkpoint is
    checked first in that transaction: if another copy of the same migration (a cut-over,
    a follower) moved it meanwhile, this batch rolls back and the copy goes on from there,
    so two copies running at once interleave whole batches and never write one twice.
    """

    def __init__(
        self,
        source: EventStore,
        target: EventStore,
        *,
        registry: EventRegistry | None,
        upcast: bool,
        transform: Transform | None,
        categories: Sequence[str] | None,
        tolerant: bool,
        batch_size: int,
    ) -> None:
        if source is target:
            raise MigrationError("the source and the target are the same store")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.source = source
        self.target = target
        self.pipeline = _Pipeline(registry, upcast, transform, tolerant)
        self.options: dict[str, Any] = {
            "registry": registry,
            "upcast": upcast,
            "transform": transform,
            "categories": categories,
            "tolerant": tolerant,
        }
        self.fingerprint = _fingerprint(categories, upcast, transform)
        self.name = CHECKPOINT_PREFIX + self.fingerprint
        self.cats = list(categories) if categories is not None else None
        self.batch_size = batch_size
        self.after = 0
        self.resumed_after = 0
        self.read = 0
        self.written = 0
        self.started = time.monotonic()

    async def prepare(self) -> None:
        """Find where to start; refuse a target that holds something else, or a migration
        that is complete."""
        checkpoints = await self.target.checkpoints()
        done = checkpoints.get(COMPLETE_PREFIX + self.fingerprint)
        if done is not None:
            raise MigrationComplete(done)
        others = [n for n in checkpoints if n.startswith(CHECKPOINT_PREFIX) and n != self.name]
        if others:
            raise MigrationError(
                f"the target holds a copy made with other options ({others[0]}); copy into a "
                f"fresh store, or run the copy with the same --categories/--upcast/--transform"
            )
        after = checkpoints.get(self.name)
        if after is None:
            stats = await self.target.stats()
            if stats.events:
                raise MigrationError(
                    f"the target holds {stats.events} events and no copy checkpoint: copy "
                    f"into an empty store"
                )
            after = 0
        removed = await truncated_streams(self.source)
        if removed:  # retention removed the oldest events of these streams at the source
            if not supports(self.target, SqlStore):
                raise MigrationError(
                    f"the source had events removed by retention ({len(removed)} streams): "
                    "copy into a sqlite:// or postgresql:// store, which records that"
                )
            async with self.target.transaction() as tx:
                await record_truncated(tx, removed, "removed by retention at the copy's source")
        self.after = self.resumed_after = after

    async def complete(self) -> int | None:
        """The source position the migration was cut over at (``None``: not yet)."""
        return (await self.target.checkpoints()).get(COMPLETE_PREFIX + self.fingerprint)

    async def fetch(self, position: int) -> list[RecordedEvent]:
        return [
            e
            async for e in self.source.read_all(
                after=position, categories=self.cats, limit=self.batch_size
            )
        ]

    async def catch_up(
        self,
        progress: Callable[[CopyProgress], None] | None = None,
        total: int = 0,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Copy batches until a read comes back short (or ``stop`` is set); returns the
        source events copied. The next batch is read while the current one is written."""
        copied = 0
        pending: asyncio.Future[list[RecordedEvent]] = asyncio.ensure_future(self.fetch(self.after))
        try:
            while True:
                batch = await pending
                if not batch:
                    break
                short = len(batch) < self.batch_size
                if not short and (stop is None or not stop.is_set()):
                    pending = asyncio.ensure_future(self.fetch(batch[-1].position))
                done, lag, moved = await self._write(batch)
                copied += done
                if progress is not None:
                    elapsed = max(time.monotonic() - self.started, 1e-9)
                    progress(
                        CopyProgress(
                            self.read,
                            max(total, self.read),
                            self.read / elapsed,
                            checkpoint=self.after,
                            lag_seconds=lag,
                        )
                    )
                if moved:  # another copy moved the checkpoint: go on from there
                    pending.cancel()
                    pending = asyncio.ensure_future(self.fetch(self.after))
                    continue
                if short or (stop is not None and stop.is_set()):
                    break
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        return copied

    async def _write(self, batch: list[RecordedEvent]) -> tuple[int, float | None, bool]:
        """Transform and write one batch with the checkpoint; returns the source events
        copied, how long the oldest of them waited (seconds since it was recorded), and
        whether another copy had moved the checkpoint (then nothing was written)."""
        after = self.after
        batch = [e for e in batch if e.position > after]
        out: list[ImportedEvent] = []
        last = after
        failure: tuple[RecordedEvent, Exception] | None = None
        for event in batch:
            try:
                out.extend(self.pipeline(event))
            except Exception as exc:
                failure = (event, exc)
                break
            last = event.position
        copied = sum(1 for e in batch if e.position <= last)
        lag = None
        if last > after:
            try:
                async with self.target.transaction() as tx:
                    stored = await tx.get_checkpoint(self.name) or 0
                    if stored != after:
                        raise _Moved(stored)
                    if out:
                        await _import_skipping_dual_writes(self.target, tx, out, batch)
                    await tx.set_checkpoint(self.name, last)
                    _failpoint("copy_before_commit")
            except _Moved as moved:
                if moved.position < after:
                    raise MigrationError(
                        f"the copy checkpoint went back from {after} to {moved.position}: "
                        f"something else writes into this target"
                    ) from None
                self.after = moved.position
                return 0, None, True
            now = datetime.now(UTC)
            lag = (now - min(e.recorded_at for e in batch[:copied])).total_seconds()
            self.read += copied
            self.written += len(out)
            self.after = last
        if failure is not None:
            bad, error = failure
            what = "transform" if self.options["transform"] is not None else "upcast"
            raise MigrationError(
                f"{what} failed on event {bad.event_id} (stream {bad.stream_id!r} version "
                f"{bad.version}, position {bad.position}, type {bad.type!r} "
                f"v{bad.schema_version}): {type(error).__name__}: {error}. Everything "
                f"before it is copied (checkpoint {self.after}); fix it and run the copy "
                f"again to resume"
            ) from error
        return copied, lag, False

    async def verify(self) -> Verification:
        return await verify_copy(self.source, self.target, upto=self.after, **self.options)

    def report(self, verification: Verification | None) -> CopyReport:
        seconds = time.monotonic() - self.started
        return CopyReport(
            self.resumed_after, self.after, self.read, self.written, seconds, verification
        )


async def _import_skipping_dual_writes(
    target: EventStore, tx: Tx, out: list[ImportedEvent], batch: list[RecordedEvent]
) -> None:
    """Import ``out``; when some of its event ids are in the target already (a dual-writer
    appended them, with the same ids, at the same versions), import the others only. What
    is still refused once no more of them turn up (another writer's events) raises.

    Only the failing path looks: for each stream of the batch, the target's events from the
    batch's first version of that stream on (a dual-writer appends only right after what
    is copied, so nothing of the batch's streams before that can be its). A dual-writer
    still writing adds more meanwhile: then it looks again."""
    first: dict[str, int] = {}
    for event in batch:
        first.setdefault(event.stream_id, event.version)
    present: set[object] = set()
    rest = out
    while True:
        try:  # on failure Tx.import_events undoes its own rows: the transaction stays usable
            if rest:
                await tx.import_events(rest)
            return
        except (DuplicateEventId, ConcurrencyError):  # ids or versions taken: by them?
            known = len(present)
            for stream_id, version in first.items():
                with contextlib.suppress(StreamNotFound):  # not in the target at all
                    async for stored in target.read_stream(stream_id, from_version=version):
                        present.add(stored.event_id)
            if len(present) == known:
                raise
            rest = [item for item in out if item.event_id not in present]


async def copy_store(
    source: EventStore,
    target: EventStore,
    *,
    registry: EventRegistry | None = None,
    upcast: bool = False,
    transform: Transform | None = None,
    categories: Sequence[str] | None = None,
    tolerant: bool = False,
    batch_size: int = 5000,
    verify: bool = True,
    progress: Callable[[CopyProgress], None] | None = None,
) -> CopyReport:
    """Copy the events of ``source`` into ``target``, resuming from the target's checkpoint.

    Args:
        registry: the event registry whose upcasters ``upcast`` applies.
        upcast: bring every event to its registered current version.
        transform: a custom function applied to each (upcast) event, see :data:`Transform`.
        categories: only streams of these categories.
        tolerant: with ``upcast``, copy events of unknown types or newer versions raw.
        batch_size: source events per target transaction.
        verify: check the target against the source at the end (:func:`verify_copy`).
        progress: called after each batch.

    To keep copying as the source grows, see :class:`CopyFollower`; to switch writers over,
    :func:`cutover`.

    Raises:
        MigrationComplete: this migration was cut over already (nothing to copy: writers
            write into the target now).
        MigrationError: the target holds events of something else, or a copy with other
            options; a transform or upcaster failed on an event (named; everything before
            it is copied and the checkpoint is there); or the final check found
            differences (in ``report.verification`` too).
    """
    copier = _Copier(
        source,
        target,
        registry=registry,
        upcast=upcast,
        transform=transform,
        categories=categories,
        tolerant=tolerant,
        batch_size=batch_size,
    )
    await copier.prepare()
    total = await source.count_events(after=copier.after, categories=copier.cats)
    while await copier.catch_up(progress, total):
        pass  # another copy moved the checkpoint, or the read ended early: go on
    verification = await copier.verify() if verify else None
    report = copier.report(verification)
    if verification is not None and not verification.ok:
        raise _VerificationFailed(report)
    return report


class _VerificationFailed(MigrationError):
    def __init__(self, report: CopyReport) -> None:
        self.report = report
        v = report.verification
        assert v is not None
        detail = "; ".join(v.differences[:3]) or "checksums differ"
        super().__init__(
            f"the copy does not match the source: expected {v.expected_events} events in "
            f"{v.expected_streams} streams, found {v.target_events} in {v.target_streams} "
            f"({detail})"
        )


class _Tally:
    """Per stream: the count, the last version and a SHA-256 of ``event_id|version`` in
    version order; the checksum combines them by stream id."""

    def __init__(self) -> None:
        self.streams: dict[str, list[Any]] = {}  # stream -> [count, last version, digest]
        self.events = 0

    def add(self, event_id: object, stream_id: str, version: int) -> None:
        entry = self.streams.get(stream_id)
        if entry is None:
            entry = self.streams[stream_id] = [0, -1, hashlib.sha256()]
        entry[0] += 1
        entry[1] = version
        entry[2].update(f"{event_id}|{version}\n".encode())
        self.events += 1

    def forget(self, stream_id: str) -> None:
        entry = self.streams.pop(stream_id, None)
        if entry is not None:
            self.events -= entry[0]

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for stream_id in sorted(self.streams):
            count, last, inner = self.streams[stream_id]
            digest.update(f"{stream_id}|{count}|{last}|{inner.hexdigest()}\n".encode())
        return digest.hexdigest()

    def shape(self, stream_id: str) -> list[int] | None:
        entry = self.streams.get(stream_id)
        return None if entry is None else [entry[0], entry[1]]


async def verify_copy(
    source: EventStore,
    target: EventStore,
    *,
    registry: EventRegistry | None = None,
    upcast: bool = False,
    transform: Transform | None = None,
    categories: Sequence[str] | None = None,
    tolerant: bool = False,
    upto: int | None = None,
    target_upto: int | None = None,
    max_differences: int = 10,
) -> Verification:
    """Compare the target with what copying the source (up to position ``upto``) must give.

    The source side runs the same upcast/transform again (so ids of split parts and
    renumbered versions are what the copy wrote); both sides give per-stream counts, last
    versions and a SHA-256 of ``event_id|version`` in version order, combined by stream id
    into one checksum. Changes nothing.

    ``upto`` defaults to the copy's checkpoint; ``target_upto`` (the last target position
    compared) to the target's head at the cut-over when there was one (events written
    into the target after it are the application's, not the copy's), else all of it.
    """
    pipeline = _Pipeline(registry, upcast, transform, tolerant)
    cats = list(categories) if categories is not None else None
    fingerprint = _fingerprint(categories, upcast, transform)
    if upto is None or target_upto is None:
        marks = await target.checkpoints()
        if upto is None:
            upto = marks.get(CHECKPOINT_PREFIX + fingerprint, 0)
        if target_upto is None:
            target_upto = marks.get(CUTOVER_HEAD_PREFIX + fingerprint)
    expected, actual = _Tally(), _Tally()
    following: dict[str, int] = {}
    async for event in source.read_all(after=0, categories=cats):
        if event.position > upto:
            break
        for item in pipeline(event):
            version = item.version
            if version is None:
                version = following.get(item.stream_id, 0)
            following[item.stream_id] = version + 1
            expected.add(item.event_id, item.stream_id, version)
    async for event in target.read_all(after=0):
        if target_upto is not None and event.position > target_upto:
            break
        actual.add(event.event_id, event.stream_id, event.version)
    # read_all stops at the visibility horizon (PostgreSQL: a transaction open anywhere in
    # the cluster holds it back); the stream listing does not: a stream that has more than
    # read_all showed is read again by version (so are streams written after a cut-over)
    async for info in target.streams():
        if actual.shape(info.stream_id) != [info.version + 1, info.version]:
            actual.forget(info.stream_id)
            async for event in target.read_stream(info.stream_id):
                if target_upto is None or event.position <= target_upto:
                    actual.add(event.event_id, event.stream_id, event.version)
    differences: list[str] = []
    for stream_id in sorted(set(expected.streams) | set(actual.streams)):
        want = expected.shape(stream_id)
        got = actual.shape(stream_id)
        if want != got:
            differences.append(
                f"{stream_id}: expected "
                + ("nothing" if want is None else f"{want[0]} events to version {want[1]}")
                + ", found "
                + ("nothing" if got is None else f"{got[0]} events to version {got[1]}")
            )
            if len(differences) >= max_differences:
                break
    want_sum, got_sum = expected.checksum(), actual.checksum()
    ok = not differences and want_sum == got_sum
    if not differences and want_sum != got_sum:
        differences.append("same counts and versions per stream, but other event ids or order")
    return Verification(
        ok=ok,
        upto=upto,
        expected_events=expected.events,
        target_events=actual.events,
        expected_streams=len(expected.streams),
        target_streams=len(actual.streams),
        expected_checksum=want_sum,
        target_checksum=got_sum,
        differences=differences,
    )
