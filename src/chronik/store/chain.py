"""The hash chain of each stream (migration 0017, docs/security.md "Tamper evidence").

Every stored event carries ``hash``: the SHA-256 of its stream's previous event's hash (32
zero bytes before version 0, or before the first event retention kept) followed by its stored
fields, each as UTF-8 text preceded by its length (4 bytes, big-endian): stream id, version,
event id, type, schema version, recorded time (microseconds since 1970 UTC), data and
metadata exactly as stored. PostgreSQL computes it in a row trigger (``chronik_event_hash``),
SQLite on its writer thread with :func:`event_hash` registered as the SQL function of the same
name; both inside the inserting transaction. :mod:`chronik.verify` recomputes it here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

__all__ = ["GENESIS", "event_hash", "recorded_micros"]

GENESIS = bytes(32)
"""What an event without a stored predecessor chains from."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def recorded_micros(recorded_at: datetime | int) -> int:
    """A stored recorded time as microseconds since 1970 UTC (SQLite stores them so)."""
    if isinstance(recorded_at, datetime):
        return (recorded_at - _EPOCH) // timedelta(microseconds=1)
    return int(recorded_at)


def _field(value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def event_hash(
    prev: bytes | None,
    stream_id: str,
    version: int,
    event_id: str,
    type: str,
    schema_version: int,
    recorded_at: datetime | int,
    data: str | bytes,
    metadata: str | bytes,
) -> bytes:
    """The hash of one event chained from ``prev`` (``None``: :data:`GENESIS`)."""
    digest = hashlib.sha256(GENESIS if prev is None else bytes(prev))
    for value in (
        stream_id,
        str(int(version)),
        str(event_id),
        type,
        str(int(schema_version)),
        str(recorded_micros(recorded_at)),
        data,
        metadata,
    ):
        digest.update(_field(value))
    return digest.digest()
