"""How KurrentDB's names, events and expected revisions map onto chronik's, and back.

Stream names: chronik refuses stream ids that begin with ``$`` (reserved for chronik), and
KurrentDB uses them for system streams (``$$order-1`` holds the metadata of ``order-1``). A
KurrentDB name ``$x`` is stored as the chronik stream id ``kurrent$x``; every other name is
stored as it is. The mapping is reversible: a name that itself begins with ``kurrent$`` is
refused (it would read back as another name), and a chronik stream id beginning with
``kurrent$`` reads back as ``$...``.

Events: a KurrentDB event has an id, a type, a content type, data bytes and custom metadata
bytes; a chronik event has an id, a type, JSON object data and JSON object metadata. Data
that is a JSON object is stored as the event's data (chronik's tools see it); anything else
(binary, a JSON array, empty bytes) is stored base64-encoded in the metadata key ``kurrent``
with ``{}`` as data. Custom metadata that is a JSON object (without a ``kurrent`` key) is the
event's metadata; anything else goes base64-encoded into ``kurrent`` too. A content type other
than ``application/json`` is kept in ``kurrent.content_type``. Reading reverses all of it, so
bytes come back as they were sent, and JSON comes back equal as JSON.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from chronik.events import ANY, NO_STREAM, STREAM_EXISTS, NewEvent, RecordedEvent

__all__ = [  # ProtocolError is the face's own signal (never leaves it): not exported
    "CONTENT_TYPE_JSON",
    "STREAM_PREFIX",
    "TOMBSTONE_TYPE",
    "METADATA_TYPE",
    "from_chronik_stream",
    "metadata_stream_of",
    "to_chronik_stream",
    "to_new_event",
    "event_parts",
    "created_ticks",
    "decode_name",
    "parse_uuid",
    "expected_of",
]

STREAM_PREFIX = "kurrent$"
"""The chronik stream id prefix that stands for KurrentDB's leading ``$``."""
CONTENT_TYPE_JSON = "application/json"
TOMBSTONE_TYPE = "$streamDeleted"
"""The type of the event a tombstone appends to its stream (it is the stream's last event)."""
METADATA_TYPE = "$metadata"
"""The type of a stream metadata event, in the stream ``$$<name>``."""
_KEY = "kurrent"
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ProtocolError(Exception):
    """A request that the protocol layer refuses: answered ``INVALID_ARGUMENT`` (or the
    given status name), the store untouched. Not a :class:`~chronik.errors.ChronikError`: it
    never leaves the gRPC face."""

    def __init__(self, message: str, status: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.status = status


def decode_name(raw: bytes) -> str:
    """A stream name as sent (UTF-8 bytes in ``StreamIdentifier``), or :class:`ProtocolError`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"stream name {raw[:60]!r} is not valid UTF-8") from exc


def to_chronik_stream(name: str) -> str:
    """The chronik stream id for a KurrentDB stream name (``$x`` -> ``kurrent$x``)."""
    if not name:
        raise ProtocolError("stream name must not be empty")
    if name.startswith(STREAM_PREFIX):
        raise ProtocolError(
            f"stream name {name[:60]!r} begins with {STREAM_PREFIX!r}, which chronik uses "
            "for KurrentDB's '$' streams (see docs/kurrent-protocol.md)"
        )
    if name == "$all":  # the global log, never a stream of its own (red-team finding)
        raise ProtocolError("'$all' is the global log: it cannot be written or deleted by name")
    if name.startswith("$"):
        return STREAM_PREFIX + name[1:]
    return name


def from_chronik_stream(stream_id: str) -> str:
    """The KurrentDB stream name of a chronik stream id (``kurrent$x`` -> ``$x``)."""
    if stream_id.startswith(STREAM_PREFIX):
        return "$" + stream_id[len(STREAM_PREFIX) :]
    return stream_id


def metadata_stream_of(stream_id: str) -> str:
    """The chronik stream id of the metadata stream ``$$<name>`` of a chronik stream id."""
    return STREAM_PREFIX + "$" + from_chronik_stream(stream_id)


def parse_uuid(value: Any) -> uuid.UUID:
    """An event id from the protocol's ``UUID`` message (string or structured form)."""
    which = value.WhichOneof("value")
    try:
        if which == "string":
            return uuid.UUID(value.string)
        if which == "structured":
            most = value.structured.most_significant_bits & 0xFFFF_FFFF_FFFF_FFFF
            least = value.structured.least_significant_bits & 0xFFFF_FFFF_FFFF_FFFF
            return uuid.UUID(int=(most << 64) | least)
    except ValueError as exc:
        raise ProtocolError(f"event id {value.string[:60]!r} is not a UUID") from exc
    raise ProtocolError("an event has no id")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw or raw[:1] not in (b"{", b" ", b"\t", b"\n", b"\r"):
        return None
    try:
        return _decode_object(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
        return None


_RESERVED = ("correlation_id", "causation_id", "actor", "traceparent")


def _usable_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable():
        return value
    return None


def to_new_event(
    event_id: uuid.UUID,
    properties: Mapping[str, str],
    custom_metadata: bytes,
    data: bytes,
    *,
    opaque: bool = False,
) -> NewEvent:
    """A chronik :class:`NewEvent` for one proposed KurrentDB message.

    Its metadata always has the key ``kurrent`` (events written over the protocol are told
    apart from chronik's own by it). KurrentDB's ``$correlationId`` and ``$causationId``
    in a JSON custom metadata become chronik's ``correlation_id`` and ``causation_id``.
    ``opaque`` keeps data and custom metadata base64-encoded whatever they hold (for JSON
    that chronik refuses, such as nesting deeper than its limit).
    """
    event_type = properties.get("type", "")
    content_type = properties.get("content-type", CONTENT_TYPE_JSON)
    extra: dict[str, Any] = {}
    if content_type != CONTENT_TYPE_JSON:
        extra["content_type"] = content_type
    stored_data: bytes = data
    if opaque or _json_object(data) is None:
        extra["data"] = base64.b64encode(data).decode("ascii")
        stored_data = b"{}"
    metadata: dict[str, Any] = {}
    parsed = None
    if not opaque and b"\\u0000" not in custom_metadata:
        parsed = _json_object(custom_metadata)
    if parsed is None or _KEY in parsed or any(key in parsed for key in _RESERVED):
        extra["metadata"] = base64.b64encode(custom_metadata).decode("ascii")
    else:
        # chronik gives every event a correlation_id (its own, or KurrentDB's): it is
        # taken off again on the way out, as is a causation_id taken from $causationId
        metadata = dict(parsed)
        added = ["correlation_id"]
        correlation = _usable_id(parsed.get("$correlationId"))
        if correlation:
            metadata["correlation_id"] = correlation
        causation = _usable_id(parsed.get("$causationId"))
        if causation:
            metadata["causation_id"] = causation
            added.append("causation_id")
        extra["added"] = added
    metadata[_KEY] = extra
    return NewEvent(event_type, stored_data, metadata, event_id=event_id)


def created_ticks(recorded_at: dt.datetime) -> str:
    """``recorded_at`` as the protocol's ``created`` (100 ns ticks since 1970, as text)."""
    delta = recorded_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return str(micros * 10)


def event_parts(event: RecordedEvent) -> tuple[str, bytes, bytes]:
    """``(content_type, data, custom_metadata)`` of a stored event as KurrentDB clients get
    them: the bytes sent over the protocol, or chronik's JSON for events chronik wrote."""
    raw_metadata = event.raw_metadata
    if b'"kurrent"' not in raw_metadata:
        custom = b"" if raw_metadata in (b"", b"{}") else raw_metadata
        return CONTENT_TYPE_JSON, event.raw_data, custom
    metadata = dict(event.metadata)
    extra = metadata.pop(_KEY, None)
    decoded = _face_encoding(extra)
    if decoded is None:
        # not this face's encoding (a user key named "kurrent" written through chronik):
        # the event reads as chronik wrote it. Never an error: one odd event must not stop
        # every $all read and subscription that reaches it (found by a red-team run).
        return CONTENT_TYPE_JSON, event.raw_data, raw_metadata
    content_type, data, custom_bytes, added = decoded
    if custom_bytes is not None:
        custom = custom_bytes
    else:
        for key in added:
            metadata.pop(key, None)
        custom = _encode(metadata)
    return content_type, data if data is not None else event.raw_data, custom


_FACE_KEYS = frozenset({"content_type", "data", "metadata", "added"})


def _face_encoding(
    extra: object,
) -> tuple[str, bytes | None, bytes | None, list[str]] | None:
    """What this face stored under the ``kurrent`` metadata key, strictly checked:
    ``(content_type, data, metadata, added keys)``, or ``None`` for anything else."""
    if not isinstance(extra, dict) or not extra or not set(extra) <= _FACE_KEYS:
        return None
    content_type = extra.get("content_type", CONTENT_TYPE_JSON)
    added = extra.get("added", [])
    if not isinstance(content_type, str) or not isinstance(added, list):
        return None
    if not all(isinstance(key, str) for key in added):
        return None
    parts: list[bytes | None] = []
    for name in ("data", "metadata"):
        value = extra.get(name)
        if value is None:
            parts.append(None)
            continue
        if not isinstance(value, str):
            return None
        try:
            parts.append(base64.b64decode(value, validate=True))
        except (ValueError, binascii.Error):
            return None
    return content_type, parts[0], parts[1], added


def expected_of(which: str | None, revision: int) -> int:
    """chronik's expected version for the protocol's ``expected_stream_revision`` oneof."""
    if which in ("revision", "stream_position"):
        return revision
    if which == "no_stream":
        return NO_STREAM
    if which == "any":
        return ANY
    if which == "stream_exists":
        return STREAM_EXISTS
    raise ProtocolError("the request names no expected stream revision")
