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
what it holds: per-stream counts and last versions, and a checksum of event ids in order.

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
from typing import Any

import msgspec

from chronik.codec import EventRegistry
from chronik.errors import ChronikError, MigrationError
from chronik.events import RecordedEvent, find_non_finite
from chronik.store.protocol import EventStore, ImportedEvent
from chronik.upcasting import Upcast, split_event_id

__all__ = [
    "CHECKPOINT_PREFIX",
    "CopyProgress",
    "CopyReport",
    "Transform",
    "Verification",
    "copy_store",
    "verify_copy",
]

CHECKPOINT_PREFIX = "chronik.migrate.copy:"
"""The copy's checkpoint in the target is named this plus a fingerprint of its options."""

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
    """Reported after each batch."""

    done: int
    """source events copied in this run"""
    total: int
    """source events to copy when this run started (more may arrive)"""
    rate: float
    """source events per second so far"""

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

    Raises:
        MigrationError: the target holds events of something else, a copy with other
            options, or another copy is running into it; a transform or upcaster failed on
            an event (named; everything before it is copied and the checkpoint is there);
            or the final check found differences (in ``report.verification`` too).
    """
    if source is target:
        raise MigrationError("the source and the target are the same store")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pipeline = _Pipeline(registry, upcast, transform, tolerant)
    name = CHECKPOINT_PREFIX + _fingerprint(categories, upcast, transform)
    checkpoints = await target.checkpoints()
    others = [n for n in checkpoints if n.startswith(CHECKPOINT_PREFIX) and n != name]
    if others:
        raise MigrationError(
            f"the target holds a copy made with other options ({others[0]}); copy into a "
            f"fresh store, or run the copy with the same --categories/--upcast/--transform"
        )
    after = checkpoints.get(name)
    if after is None:
        stats = await target.stats()
        if stats.events:
            raise MigrationError(
                f"the target holds {stats.events} events and no copy checkpoint: copy into an "
                f"empty store"
            )
        after = 0
    resumed_after = after
    cats = list(categories) if categories is not None else None
    total = await source.count_events(after=after, categories=cats)
    started = time.monotonic()
    read = written = 0

    async def fetch(position: int) -> list[RecordedEvent]:
        return [e async for e in source.read_all(after=position, categories=cats, limit=batch_size)]

    # the next batch is read while the current one is transformed and written
    pending: asyncio.Future[list[RecordedEvent]] = asyncio.ensure_future(fetch(after))
    try:
        while True:
            batch = await pending
            if not batch:
                break
            pending = asyncio.ensure_future(fetch(batch[-1].position))
            out: list[ImportedEvent] = []
            last = after
            failure: tuple[RecordedEvent, Exception] | None = None
            for event in batch:
                try:
                    out.extend(pipeline(event))
                except Exception as exc:
                    failure = (event, exc)
                    break
                last = event.position
            if last > after:
                async with target.transaction() as tx:
                    stored = await tx.get_checkpoint(name)
                    if (stored or 0) != after:
                        raise MigrationError(
                            f"the copy checkpoint moved from {after} to {stored}: another copy "
                            f"is running into this target"
                        )
                    if out:
                        await tx.import_events(out)
                    await tx.set_checkpoint(name, last)
                    _failpoint("copy_before_commit")
                read += sum(1 for e in batch if e.position <= last)
                written += len(out)
                after = last
            if progress is not None:
                elapsed = max(time.monotonic() - started, 1e-9)
                progress(CopyProgress(read, max(total, read), read / elapsed))
            if failure is not None:
                bad, error = failure
                what = "transform" if transform is not None else "upcast"
                raise MigrationError(
                    f"{what} failed on event {bad.event_id} (stream {bad.stream_id!r} version "
                    f"{bad.version}, position {bad.position}, type {bad.type!r} "
                    f"v{bad.schema_version}): {type(error).__name__}: {error}. Everything "
                    f"before it is copied (checkpoint {after}); fix it and run the copy again "
                    f"to resume"
                ) from error
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
    seconds = time.monotonic() - started
    verification = None
    if verify:
        verification = await verify_copy(
            source,
            target,
            registry=registry,
            upcast=upcast,
            transform=transform,
            categories=categories,
            tolerant=tolerant,
            upto=after,
        )
    report = CopyReport(resumed_after, after, read, written, seconds, verification)
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
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.streams: dict[str, list[int]] = {}  # stream -> [count, last version]
        self.events = 0

    def add(self, event_id: object, stream_id: str, version: int) -> None:
        self.digest.update(f"{event_id}|{stream_id}|{version}\n".encode())
        entry = self.streams.get(stream_id)
        if entry is None:
            self.streams[stream_id] = [1, version]
        else:
            entry[0] += 1
            entry[1] = version
        self.events += 1


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
    max_differences: int = 10,
) -> Verification:
    """Compare the target with what copying the source (up to position ``upto``) must give.

    The source side runs the same upcast/transform again (so ids of split parts and
    renumbered versions are what the copy wrote); both sides give per-stream counts and last
    versions, and a SHA-256 of ``event_id|stream_id|version`` in order. Changes nothing.
    """
    pipeline = _Pipeline(registry, upcast, transform, tolerant)
    cats = list(categories) if categories is not None else None
    if upto is None:
        name = CHECKPOINT_PREFIX + _fingerprint(categories, upcast, transform)
        upto = (await target.checkpoints()).get(name, 0)
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
        actual.add(event.event_id, event.stream_id, event.version)
    differences: list[str] = []
    for stream_id in sorted(set(expected.streams) | set(actual.streams)):
        want = expected.streams.get(stream_id)
        got = actual.streams.get(stream_id)
        if want != got:
            differences.append(
                f"{stream_id}: expected "
                + ("nothing" if want is None else f"{want[0]} events to version {want[1]}")
                + ", found "
                + ("nothing" if got is None else f"{got[0]} events to version {got[1]}")
            )
            if len(differences) >= max_differences:
                break
    want_sum, got_sum = expected.digest.hexdigest(), actual.digest.hexdigest()
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
