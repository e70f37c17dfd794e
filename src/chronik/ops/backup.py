"""Online backup of a store's log, checked without restoring (:func:`verify_backup`).

A backup is a folder holding two files:

- ``events.ndjson.zst``: one JSON object per event (:class:`BackupEvent`), in position
  order, zstd-compressed (with zstd's own frame checksum);
- ``manifest.json``: :class:`Manifest`, with the sha256 of the uncompressed NDJSON, the
  counts per category, the last position included and the manifest's own checksum.

:func:`backup_store` reads ONE consistent snapshot while writers go on: on PostgreSQL a
``REPEATABLE READ READ ONLY`` transaction that reads only below its snapshot's read horizon
(the rule ``read_all`` uses, docs/ordering.md), so every event at or below the manifest's
``position`` is in the file and no later commit can land there; on SQLite one read
transaction (WAL: writers are not blocked). The folder is written under a temporary name
and renamed when complete, so a backup killed at any point leaves no folder under the
asked-for name, and nothing that verifies.

Only the log is included: snapshots, checkpoints, dead letters, projection read models
and versions, saga state and the outbox are left out (see docs/operations.md for why and
what to do after a restore). ``since`` makes an incremental backup: the events after that
position, chained to the backup it continues by the id of the event at ``since``.

Example::

    manifest = backup_store("sqlite:///app.db", Path("backup-1"))
    verify_backup(Path("backup-1"))          # raises BackupCorrupted when it does not check
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import msgspec

from chronik._version import __version__
from chronik.errors import BackupCorrupted, BackupError
from chronik.events import category_of
from chronik.store.consistent_read import open_snapshot as _snapshot
from chronik.store.urls import redact_url

__all__ = [
    "EVENTS_FILE",
    "EXCLUDED",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "BackupCorrupted",
    "BackupError",
    "BackupEvent",
    "BackupProgress",
    "Manifest",
    "backup_store",
    "read_manifest",
    "verify_backup",
]

FORMAT_VERSION = 1
EVENTS_FILE = "events.ndjson.zst"
MANIFEST_FILE = "manifest.json"
PAGE = 5_000
CHUNK = 1 << 20

EXCLUDED = {
    "snapshots": "a cache of folded state: loads rebuild it from the events",
    "checkpoints": "positions of the source; the restored log has new positions, and "
    "projections rebuild their read models from the events",
    "dead_letters": "they name source positions; retry or drop them before the backup",
    "projection_read_models": "tables of your projections: rebuilt from the events",
    "saga_state": "saga instances, deadlines and command claims: see docs/operations.md",
    "outbox": "rows to publish; the relay of the restored store starts from its head",
}
"""What a backup leaves out, and why (written into every manifest)."""


class BackupEvent(msgspec.Struct, frozen=True):
    """One event as a line of ``events.ndjson.zst``. ``data`` and ``metadata`` are the
    stored JSON text, kept byte for byte; ``recorded_at`` is in microseconds since 1970
    (UTC); ``position`` is the source's (order only: a restore gives new positions)."""

    position: int
    event_id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    recorded_at: int
    data: str
    metadata: str


@dataclass(frozen=True)
class BackupProgress:
    """Reported every few thousand events: ``events`` done so far, of ``total`` (when
    known), after ``seconds``."""

    events: int
    total: int | None
    seconds: float


@dataclass
class Manifest:
    """What a backup holds (``manifest.json``)."""

    backup_id: str
    created_at: str
    backend: str
    source: str
    since: int
    since_event_id: str | None
    position: int
    last_event_id: str | None
    horizon: int | None
    events: int
    streams: int
    categories: dict[str, int]
    sha256: str
    bytes: int
    compressed_bytes: int
    compressed_sha256: str = ""
    seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    chronik_version: str = __version__
    includes: list[str] = field(default_factory=lambda: ["events"])
    truncated: list[list[Any]] = field(default_factory=list)
    """what retention removed before the backup, per stream: ``[stream_id, through_version,
    events, last_position]`` (a restore records it, so the streams continue there)"""
    excludes: dict[str, str] = field(default_factory=lambda: dict(EXCLUDED))

    @property
    def incremental(self) -> bool:
        return self.since > 0

    def body(self) -> dict[str, Any]:
        return {
            "format": "chronik-backup",
            "format_version": self.format_version,
            "chronik_version": self.chronik_version,
            "backup_id": self.backup_id,
            "created_at": self.created_at,
            "backend": self.backend,
            "source": self.source,
            "since": self.since,
            "since_event_id": self.since_event_id,
            "position": self.position,
            "last_event_id": self.last_event_id,
            "horizon": self.horizon,
            "events": self.events,
            "streams": self.streams,
            "categories": self.categories,
            "content": {
                "file": EVENTS_FILE,
                "sha256": self.sha256,
                "bytes": self.bytes,
                "compressed_bytes": self.compressed_bytes,
                "compressed_sha256": self.compressed_sha256,
            },
            "seconds": self.seconds,
            "includes": self.includes,
            "excludes": self.excludes,
            **({"truncated": self.truncated} if self.truncated else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        body = self.body()
        return {**body, "manifest_sha256": _digest(body)}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


# -- writing ---------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class _Hashing:
    """A binary file read through, its bytes hashed on the way (for the zstd reader)."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size)
        self.digest.update(data)
        return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_store(
    url: str,
    out: Path | str,
    *,
    since: int = 0,
    progress: Callable[[BackupProgress], None] | None = None,
    level: int = 3,
) -> Manifest:
    """Write a backup of the store at ``url`` into the new folder ``out`` (blocking).

    Args:
        url: a ``sqlite://`` or ``postgresql://`` store URL.
        out: the backup folder to create; it must not exist.
        since: 0 for a full backup, else the ``position`` of the backup this one continues
            (the events after it are written).
        progress: called every few thousand events.
        level: the zstd compression level.

    Raises:
        BackupError: ``out`` exists, or the store is in memory.
        StoreNotFound, StoreUnavailable, UnsupportedStoreUrl.
    """
    import zstandard

    out = Path(out)
    if since < 0:
        raise BackupError(f"since must be a position >= 0, not {since}")
    if out.exists():
        raise BackupError(f"{out} exists already: a backup goes into a new folder")
    started = time.monotonic()
    partial = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        digest = hashlib.sha256()
        size = count = 0
        position, last_id = since, None
        categories: dict[str, int] = {}
        streams: set[str] = set()
        encoder = msgspec.json.Encoder()
        with (
            _snapshot(url, since) as snap,
            open(partial / EVENTS_FILE, "wb") as raw,
        ):
            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=0)
            with cctx.stream_writer(raw, closefd=False) as zout:
                for rows in snap.rows:
                    events = [BackupEvent(*r) for r in rows]
                    chunk = encoder.encode_lines(events)
                    digest.update(chunk)
                    zout.write(chunk)
                    size += len(chunk)
                    count += len(events)
                    for ev in events:
                        cat = category_of(ev.stream_id)
                        categories[cat] = categories.get(cat, 0) + 1
                        streams.add(ev.stream_id)
                    position, last_id = events[-1].position, events[-1].event_id
                    if progress is not None:
                        progress(BackupProgress(count, None, time.monotonic() - started))
                zout.flush(zstandard.FLUSH_FRAME)
            raw.flush()
            os.fsync(raw.fileno())
            backend, horizon, since_event_id = snap.backend, snap.horizon, snap.since_event_id
            truncated = [list(t) for t in snap.truncated]
        if since and since_event_id is None:
            raise BackupError(f"no event at or below position {since}: nothing to continue")
        manifest = Manifest(
            backup_id=str(uuid.uuid4()),
            created_at=datetime.now(UTC).isoformat(),
            backend=backend,
            source=redact_url(url),
            since=since,
            since_event_id=since_event_id,
            position=position,
            last_event_id=last_id if count else since_event_id,
            horizon=horizon,
            events=count,
            streams=len(streams),
            categories=dict(sorted(categories.items())),
            sha256=digest.hexdigest(),
            bytes=size,
            compressed_bytes=(partial / EVENTS_FILE).stat().st_size,
            compressed_sha256=_file_sha256(partial / EVENTS_FILE),
            seconds=round(time.monotonic() - started, 3),
            truncated=truncated,
        )
        text = msgspec.json.format(msgspec.json.encode(manifest.to_dict()), indent=2)
        with open(partial / MANIFEST_FILE, "wb") as f:
            f.write(text + b"\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(partial)
        os.rename(partial, out)  # fails if out appeared meanwhile: nothing is overwritten
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


# -- checking --------------------------------------------------------------------------


_MANIFEST_FIELDS = (
    "backup_id",
    "created_at",
    "backend",
    "source",
    "since",
    "since_event_id",
    "position",
    "last_event_id",
    "horizon",
    "events",
    "streams",
    "categories",
)


def read_manifest(path: Path | str) -> Manifest:
    """The manifest of the backup folder ``path``, checked against its own checksum.

    Raises:
        BackupCorrupted: no manifest, not JSON, a field missing or altered.
    """
    path = Path(path)
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise BackupCorrupted(path, "no such backup folder (a backup killed midway leaves none)")
    try:
        raw = msgspec.json.decode(file.read_bytes())
    except FileNotFoundError:
        raise BackupCorrupted(path, f"{MANIFEST_FILE} is missing") from None
    except msgspec.DecodeError as exc:
        raise BackupCorrupted(path, f"{MANIFEST_FILE} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BackupCorrupted(path, f"{MANIFEST_FILE} is not a JSON object")
    stated = raw.pop("manifest_sha256", None)
    if stated != _digest(raw):
        raise BackupCorrupted(path, f"{MANIFEST_FILE} does not match its own checksum")
    if raw.get("format") != "chronik-backup" or raw.get("format_version") != FORMAT_VERSION:
        raise BackupCorrupted(
            path,
            f"format {raw.get('format')!r} version {raw.get('format_version')!r} is not "
            f"chronik-backup {FORMAT_VERSION}",
        )
    try:
        content = raw["content"]
        return Manifest(
            **{k: raw[k] for k in _MANIFEST_FIELDS},
            sha256=content["sha256"],
            bytes=content["bytes"],
            compressed_bytes=content["compressed_bytes"],
            compressed_sha256=content["compressed_sha256"],
            seconds=raw.get("seconds", 0.0),
            chronik_version=raw["chronik_version"],
            includes=raw["includes"],
            excludes=raw["excludes"],
            truncated=raw.get("truncated", []),
        )
    except (KeyError, TypeError) as exc:
        raise BackupCorrupted(path, f"{MANIFEST_FILE} lacks {exc}") from None


def iter_events(path: Path, manifest: Manifest, *, skip: int = 0) -> Iterator[list[BackupEvent]]:
    """The events of a backup in batches, checked line by line and, at the end, against
    the manifest (hash, counts, positions). The last batch is handed out only after the
    whole file checked, so a consumer that commits at the end commits nothing unchecked.

    Raises:
        BackupCorrupted: anything does not match.
    """
    import zstandard

    digest = hashlib.sha256()
    decoder = msgspec.json.Decoder(BackupEvent)
    size = count = 0
    last = manifest.since
    categories: dict[str, int] = {}
    streams: set[str] = set()
    pending: list[BackupEvent] = []
    rest = b""
    try:
        with open(path / EVENTS_FILE, "rb") as raw:
            stored = os.fstat(raw.fileno()).st_size
            if stored != manifest.compressed_bytes:
                raise BackupCorrupted(
                    path,
                    f"{EVENTS_FILE} has {stored} bytes, the manifest says "
                    f"{manifest.compressed_bytes} (truncated or appended to)",
                )
            dctx = zstandard.ZstdDecompressor()
            hashed = _Hashing(raw)
            source = cast(IO[bytes], hashed)  # read() is all the reader calls
            with dctx.stream_reader(source, read_across_frames=True, closefd=False) as zin:
                while True:
                    block = zin.read(CHUNK)
                    if not block:
                        break
                    digest.update(block)
                    size += len(block)
                    block = rest + block
                    cut = block.rfind(b"\n") + 1
                    block, rest = block[:cut], block[cut:]
                    if not block:
                        continue
                    try:
                        events = decoder.decode_lines(block)
                    except msgspec.DecodeError as exc:
                        raise BackupCorrupted(
                            path, f"event line {count + 1} and on do not parse: {exc}"
                        ) from None
                    for ev in events:
                        count += 1
                        if not last < ev.position <= manifest.position:
                            raise BackupCorrupted(
                                path,
                                f"event line {count}: position {ev.position} is out of "
                                f"order or outside ({manifest.since}, {manifest.position}]",
                            )
                        last = ev.position
                        cat = category_of(ev.stream_id)
                        categories[cat] = categories.get(cat, 0) + 1
                        streams.add(ev.stream_id)
                    if count > skip:
                        fresh = events[max(0, len(events) - (count - skip)) :]
                        if pending:
                            yield pending
                        pending = list(fresh)
            while hashed.read(CHUNK):  # bytes after the zstd frame count too
                pass
    except FileNotFoundError:
        raise BackupCorrupted(path, f"{EVENTS_FILE} is missing") from None
    except zstandard.ZstdError as exc:
        raise BackupCorrupted(path, f"{EVENTS_FILE} is not a whole zstd stream: {exc}") from None
    if rest:
        raise BackupCorrupted(path, f"{EVENTS_FILE} ends inside an event line (truncated)")
    if hashed.digest.hexdigest() != manifest.compressed_sha256:
        raise BackupCorrupted(
            path, f"{EVENTS_FILE} does not match the manifest's compressed_sha256 (altered)"
        )
    if size != manifest.bytes or digest.hexdigest() != manifest.sha256:
        raise BackupCorrupted(
            path,
            f"{EVENTS_FILE} holds {size} bytes with sha256 {digest.hexdigest()[:16]}…, the "
            f"manifest says {manifest.bytes} bytes with {manifest.sha256[:16]}… (truncated?)",
        )
    if count != manifest.events or categories != manifest.categories:
        raise BackupCorrupted(
            path, f"{count} events in the file, the manifest counts {manifest.events}"
        )
    if len(streams) != manifest.streams:
        raise BackupCorrupted(path, f"{len(streams)} streams, manifest: {manifest.streams}")
    if count and last != manifest.position:
        raise BackupCorrupted(path, f"last position {last}, manifest: {manifest.position}")
    if pending:
        yield pending


def verify_backup(
    path: Path | str, *, progress: Callable[[BackupProgress], None] | None = None
) -> Manifest:
    """Check a backup folder without restoring it: the manifest's checksum, the zstd
    stream, every line, the content's sha256, the counts per category and the positions.

    Returns:
        The manifest, when everything matches.

    Raises:
        BackupCorrupted: what does not match (the first thing found).
    """
    path = Path(path)
    manifest = read_manifest(path)
    started = time.monotonic()
    done = 0
    for batch in iter_events(path, manifest):
        done += len(batch)
        if progress is not None:
            progress(BackupProgress(done, manifest.events, time.monotonic() - started))
    return manifest
