"""Events as they go into the store (:class:`NewEvent`) and come out (:class:`RecordedEvent`).

Also the vocabulary every backend shares: stream ids and their category, the expected-version
states, :class:`AppendResult`, and the bounds of what a store holds (the ``MAX_*`` numbers,
listed with the rest of the limits in docs/limits.md).
"""

from __future__ import annotations

import math
import os
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import msgspec

from chronik.errors import InvalidExpectedVersion, InvalidStreamId, SerializationError

__all__ = [
    "ANY",
    "MAX_POSITION",
    "MAX_STREAM_ID_BYTES",
    "MAX_TYPE_BYTES",
    "MAX_VERSION",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "NewEvent",
    "RecordedEvent",
    "StreamState",
    "category_of",
    "find_non_finite",
    "new_event_id",
    "text_problem",
    "validate_expected_version",
    "validate_stream_id",
]

MAX_STREAM_ID_BYTES = 255
"""The longest stream id, in UTF-8 bytes."""
MAX_TYPE_BYTES = 255
"""The longest event type name, in UTF-8 bytes."""
MAX_VERSION = 2**31 - 1
"""The highest stream version (and schema version): PostgreSQL stores them as ``integer``."""
MAX_POSITION = 2**63 - 1
"""The highest position: PostgreSQL ``bigint``, SQLite ``INTEGER``."""
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class StreamState(IntEnum):
    """The expected-version forms that are not an exact version.

    They are negative integers, so ``expected_version`` is always an ``int``: ``>= 0`` means
    "the stream's last event has this version".
    """

    NO_STREAM = -1
    """The stream must not exist yet."""
    ANY = -2
    """No check: append at the end, whatever the version."""
    STREAM_EXISTS = -4
    """The stream must have at least one event."""


NO_STREAM = StreamState.NO_STREAM
ANY = StreamState.ANY
STREAM_EXISTS = StreamState.STREAM_EXISTS


def validate_expected_version(expected: object) -> int:
    """Return ``expected`` as an int, or raise :class:`InvalidExpectedVersion`.

    An exact version is ``0 <= expected <= MAX_VERSION`` (the largest version a stream can
    have); the stream states are ``NO_STREAM``, ``ANY`` and ``STREAM_EXISTS``.
    """
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise InvalidExpectedVersion(
            f"expected_version must be an int >= 0, NO_STREAM, STREAM_EXISTS or ANY, "
            f"not {expected!r}"
        )
    if expected < 0 and expected not in (-1, -2, -4):
        raise InvalidExpectedVersion(
            f"expected_version {expected} is negative and not NO_STREAM (-1), ANY (-2) "
            f"or STREAM_EXISTS (-4)"
        )
    if expected > MAX_VERSION:
        raise InvalidExpectedVersion(
            f"expected_version {expected} is over the largest version a stream can have "
            f"({MAX_VERSION})"
        )
    return int(expected)


def text_problem(text: object, max_bytes: int) -> str | None:
    """What makes ``text`` unfit for a name a store keeps (a stream id, an event type, a
    correlation id), or ``None`` when it is fit.

    Fit is a non-empty ``str`` of at most ``max_bytes`` UTF-8 bytes without control
    characters (``Cc``: NUL, tab, newline, ...; line and paragraph separators) and without
    lone surrogates (which no encoding can store).
    """
    if not isinstance(text, str):
        return f"must be a str, not {type(text).__name__}"
    if not text:
        return "must not be empty"
    if text.isascii():
        if not text.isprintable():  # in ASCII, only the control characters are not
            bad = next(ch for ch in text if not ch.isprintable())
            return f"contains control character {bad!r}"
        size = len(text)
    else:
        if not text.isprintable():
            for ch in text:
                if unicodedata.category(ch) in _CONTROL_CATEGORIES:
                    return f"contains control character {ch!r}"
        size = len(text.encode("utf-8"))  # no lone surrogate left: category Cs
    if size > max_bytes:
        return f"is {size} UTF-8 bytes, over the limit of {max_bytes}"
    return None


def validate_stream_id(stream_id: object) -> str:
    """Check a stream id against the grammar and return it.

    A stream id is a non-empty string of at most 255 UTF-8 bytes, without control characters,
    not starting with ``$`` (reserved for chronik's own streams). Its category is the part
    before the first ``-``.

    Raises:
        InvalidStreamId: naming what is wrong.
    """
    if isinstance(stream_id, str) and stream_id[:1] == "$":
        raise InvalidStreamId(stream_id, "a leading '$' is reserved for chronik")
    reason = text_problem(stream_id, MAX_STREAM_ID_BYTES)
    if reason is not None:
        raise InvalidStreamId(stream_id, reason)
    return stream_id  # type: ignore[return-value]  # text_problem checked it is a str


_WALKED = (float, dict, list, tuple)


def find_non_finite(value: object) -> str | None:
    """Where ``value`` (built of dicts, lists, tuples and scalars, as
    :func:`msgspec.to_builtins` makes them) holds a NaN or an infinite float: a path such
    as ``$.prices[2]``, or ``None``. JSON has no such numbers: encoders write ``null``
    (msgspec) or invalid JSON (``json.dumps``) for them.
    """
    todo: list[tuple[object, str]] = [(value, "$")]
    while todo:
        item, path = todo.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, float) and not math.isfinite(key):
                    return f"{path} (a key)"
                if isinstance(child, _WALKED):
                    todo.append((child, f"{path}.{key}"))
        elif isinstance(item, list | tuple):
            for index, child in enumerate(item):
                if isinstance(child, _WALKED):
                    todo.append((child, f"{path}[{index}]"))
    return None


def category_of(stream_id: str) -> str:
    """The category of a stream: the part before the first ``-`` (``order-42`` → ``order``)."""
    head, _, _ = stream_id.partition("-")
    return head


def new_event_id() -> uuid.UUID:
    """A fresh UUIDv7: random, but ordered by time, which keeps database indexes compact."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append.

    ``data`` is a JSON object given as a mapping, or as the already encoded JSON bytes
    (what :meth:`EventRegistry.to_new_event` produces). ``metadata`` merges over the metadata
    taken from :func:`chronik.context`.
    """

    type: str
    data: Mapping[str, Any] | bytes = field(default_factory=dict)
    metadata: Mapping[str, Any] | None = None
    event_id: uuid.UUID = field(default_factory=new_event_id)
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed: the position and stream version of its last event."""

    position: int
    version: int


_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordedEvent:
    """An event as stored: immutable, with its place in the stream and in the global order.

    ``data`` and ``metadata`` are decoded from JSON on first access (the raw bytes stay in
    :attr:`raw_data` and :attr:`raw_metadata`), so readers that decode straight into typed
    events never pay for an intermediate dict. A backend that builds it with
    :meth:`from_stored` may also leave ``event_id`` and ``recorded_at`` in their stored form;
    they are parsed once, on first access.
    """

    __slots__ = (
        "_data",
        "_event_id",
        "_metadata",
        "_recorded_at",
        "position",
        "raw_data",
        "raw_metadata",
        "schema_version",
        "stream_id",
        "type",
        "version",
    )

    stream_id: str
    version: int
    position: int
    type: str
    schema_version: int
    raw_data: bytes
    raw_metadata: bytes

    def __init__(
        self,
        *,
        event_id: uuid.UUID,
        stream_id: str,
        version: int,
        position: int,
        type: str,
        schema_version: int,
        raw_data: bytes,
        raw_metadata: bytes,
        recorded_at: datetime,
    ) -> None:
        self._event_id: uuid.UUID | str = event_id
        self.stream_id = stream_id
        self.version = version
        self.position = position
        self.type = type
        self.schema_version = schema_version
        self.raw_data = raw_data
        self.raw_metadata = raw_metadata
        self._recorded_at: datetime | int = recorded_at
        self._data: dict[str, Any] | None = None
        self._metadata: dict[str, Any] | None = None

    @classmethod
    def from_stored(
        cls,
        position: int,
        stream_id: str,
        version: int,
        event_id: uuid.UUID | str,
        type: str,
        schema_version: int,
        raw_data: bytes,
        raw_metadata: bytes,
        recorded_at: datetime | int,
    ) -> RecordedEvent:
        """Build from a stored row, in column order, without parsing anything yet.

        For backends: ``event_id`` may be the UUID's text and ``recorded_at`` an int of
        microseconds since 1970-01-01 UTC; each is parsed on first access.
        """
        self = _new_recorded(cls)
        self.position = position
        self.stream_id = stream_id
        self.version = version
        self._event_id = event_id
        self.type = type
        self.schema_version = schema_version
        self.raw_data = raw_data
        self.raw_metadata = raw_metadata
        self._recorded_at = recorded_at
        self._data = None
        self._metadata = None
        return self

    @property
    def event_id(self) -> uuid.UUID:
        """The event's unique id."""
        value = self._event_id
        if isinstance(value, str):
            text = value
            try:
                value = self._event_id = uuid.UUID(text)
            except ValueError:  # stored by a release that did not check ids (SQLite)
                raise SerializationError(
                    f"stored event id {text[:60]!r} is not a UUID",
                    stream_id=self.stream_id,
                    version=self.version,
                ) from None
        return value

    @property
    def recorded_at(self) -> datetime:
        """When the append that wrote the event committed (UTC, aware)."""
        value = self._recorded_at
        if isinstance(value, int):
            value = self._recorded_at = _EPOCH + timedelta(microseconds=value)
        return value

    @property
    def data(self) -> dict[str, Any]:
        """The payload as a JSON object (decoded once, on first access)."""
        if self._data is None:
            self._data = _decode_object(self.raw_data)
        return self._data

    @property
    def metadata(self) -> dict[str, Any]:
        """Correlation id, causation id, actor, traceparent and user keys."""
        if self._metadata is None:
            self._metadata = _decode_object(self.raw_metadata) if self.raw_metadata else {}
        return self._metadata

    @property
    def category(self) -> str:
        return category_of(self.stream_id)

    @property
    def correlation_id(self) -> str | None:
        value = self.metadata.get("correlation_id")
        return value if isinstance(value, str) else None

    @property
    def causation_id(self) -> str | None:
        value = self.metadata.get("causation_id")
        return value if isinstance(value, str) else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return (
            self.event_id == other.event_id
            and self.stream_id == other.stream_id
            and self.version == other.version
            and self.position == other.position
            and self.type == other.type
            and self.schema_version == other.schema_version
            and self.data == other.data
            and self.metadata == other.metadata
            and self.recorded_at == other.recorded_at
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(stream_id={self.stream_id!r}, version={self.version}, "
            f"position={self.position}, type={self.type!r}, event_id={self.event_id})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``chronik events --json`` prints)."""
        return {
            "event_id": str(self.event_id),
            "stream_id": self.stream_id,
            "version": self.version,
            "position": self.position,
            "type": self.type,
            "schema_version": self.schema_version,
            "data": self.data,
            "metadata": self.metadata,
            "recorded_at": self.recorded_at.isoformat(),
        }


_new_recorded = object.__new__
