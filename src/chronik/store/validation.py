"""What a store accepts, checked once for every backend, before anything is written or read.

:func:`encode_batch` (every append), :func:`plan_import` (``Tx.import_events``, so
``chronik migrate copy``) and the ``check_read_*`` helpers (every read) run here, so memory,
SQLite and PostgreSQL accept and refuse the same inputs with the same errors: a backend
calls them and never repeats a rule. docs/limits.md lists every limit, its default and the
error it raises.

An append is checked without walking the data where bytes can tell: the encoded JSON holds
no NaN unless it holds ``null``, and is no deeper than its count of ``{`` and ``[``; only
an event that fails such a cheap test is looked at closely.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from chronik.context import current_context, metadata_for_append
from chronik.errors import (
    BatchTooLarge,
    ConcurrencyError,
    DuplicateEventId,
    InvalidArgument,
    InvalidEvent,
    PayloadTooLarge,
)
from chronik.events import (
    MAX_POSITION,
    MAX_TYPE_BYTES,
    MAX_VERSION,
    NewEvent,
    find_non_finite,
    text_problem,
    validate_expected_version,
    validate_stream_id,
)
from chronik.store.port import ImportedEvent

__all__ = [
    "DEFAULT_MAX_JSON_DEPTH",
    "MAX_EVENTS_PER_APPEND",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_TEXT_BYTES",
    "MAX_PAGE",
    "RESERVED_METADATA",
    "EncodedEvent",
    "check_read_all",
    "check_read_correlation",
    "check_read_page",
    "check_read_stream",
    "check_streams",
    "encode_batch",
    "plan_import",
]

DEFAULT_MAX_JSON_DEPTH = 64
"""How deep the data or the metadata of an event may nest (``{}`` is 1, ``{"a": []}`` 2)."""
MAX_JSON_DEPTH = 512
"""The highest ``max_json_depth`` a store may be given: SQLite's JSON functions stop at 1000
and the decoders recurse."""
MAX_EVENTS_PER_APPEND = 1 << 20
"""Events in one append: PostgreSQL numbers an append's events in 20 bits of the position
(``chronik.store.pg_support.MAX_EVENTS_PER_APPEND``); every backend keeps the same bound."""
MAX_METADATA_TEXT_BYTES = 255
"""The longest value of a reserved metadata key, in UTF-8 bytes (PostgreSQL indexes
``correlation_id``, and an index entry has a size limit)."""
MAX_PAGE = 2**31 - 1
"""The most events one ``read_page`` returns (PostgreSQL sizes its scan from the page)."""
RESERVED_METADATA = ("correlation_id", "causation_id", "actor", "traceparent")
"""The metadata keys chronik reads itself (see :mod:`chronik.context`): each is a non-empty
str without control characters (the two ids may be given as a UUID), or ``None``."""


class EncodedEvent(NamedTuple):
    """A :class:`NewEvent` validated and encoded, ready for a backend to write."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    data: bytes
    metadata: bytes


class _Invalid(Exception):
    """One field of one event is wrong: raised by the checks below, turned into an
    :class:`InvalidEvent` that names the stream and the event by their caller."""

    def __init__(self, field: str, reason: str, limit: int | None = None) -> None:
        self.field = field
        self.reason = reason
        self.limit = limit


_encode = msgspec.json.encode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_decode_any = msgspec.json.decode
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")
_ENCODE_ERRORS = (TypeError, ValueError, RecursionError)
_DECODE_ERRORS = (ValueError, RecursionError)  # msgspec.DecodeError is a ValueError
_RESERVED = frozenset(RESERVED_METADATA)
_NOT_EVENTS = (NewEvent, str, bytes)
_context_checked: list[object] = [None, None]
"""The context whose metadata was checked last, and the depth limit it was checked against:
most appends run in the context of the one before."""


# -- the parts of one event ---------------------------------------------------------------


def _event_id(value: object) -> uuid.UUID:
    """A UUID as it is; a str that parses as one, normalised (one id, one spelling)."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise _Invalid("event_id", f"{value[:60]!r} is not a UUID") from None
    raise _Invalid("event_id", f"must be a uuid.UUID, not {type(value).__name__}")


def _type_size(value: object) -> int:
    """The event type's size in UTF-8 bytes, once it is checked."""
    if (
        type(value) is str
        and 0 < len(value) <= MAX_TYPE_BYTES
        and value.isascii()
        and value.isprintable()
    ):
        return len(value)  # the usual name: ASCII letters
    reason = text_problem(value, MAX_TYPE_BYTES)
    if reason is not None:
        limit = MAX_TYPE_BYTES if reason.startswith("is ") else None
        raise _Invalid("type", reason, limit)
    return len(value.encode("utf-8"))  # type: ignore[attr-defined]  # a str: checked


def _schema_version(value: object) -> int:
    if type(value) is int and 1 <= value <= MAX_VERSION:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("schema_version", f"must be an int, not {type(value).__name__}")
    if value < 1 or value > MAX_VERSION:
        raise _Invalid("schema_version", f"{value} is not between 1 and {MAX_VERSION}")
    return int(value)


def _json_depth(raw: bytes) -> int:
    """How deep valid JSON nests: its brackets outside strings, counted."""
    depth = top = 0
    for byte in _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS):
        if byte in _OPEN:
            depth += 1
            top = max(top, depth)
        else:
            depth -= 1
    return top


def _check_depth(field: str, raw: bytes, max_depth: int) -> None:
    if len(raw) <= 2 * max_depth or raw.count(b"{") + raw.count(b"[") <= max_depth:
        return  # JSON nests no deeper than half its length, nor than its count of brackets
    depth = _json_depth(raw)
    if depth > max_depth:
        raise _Invalid(field, f"nests {depth} deep, over the limit of {max_depth}", max_depth)


def _has_nul(value: object) -> bool:
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


def _encode_object(field: str, value: object, max_depth: int, *, metadata: bool = False) -> bytes:
    """``value`` (a dict) as JSON, or :class:`_Invalid` naming what JSON cannot hold."""
    try:
        raw = _encode(value)
    except RecursionError:
        raise _Invalid(field, f"nests too deep, over the limit of {max_depth}", max_depth) from None
    except (TypeError, ValueError) as exc:  # an unsupported type, a lone surrogate, ...
        raise _Invalid(field, f"cannot be encoded as JSON: {exc}") from None
    _check_encoded(field, raw, value, max_depth)
    if metadata:
        _check_nul(field, raw)
    return raw


def _check_encoded(field: str, raw: bytes, value: object, max_depth: int) -> None:
    """What msgspec encodes without a word: depth, and NaN or Infinity written as null."""
    _check_depth(field, raw, max_depth)
    # where null is written and the JSON does not decode back to the value, find out why
    # (a tuple, a UUID or a datetime decodes otherwise too, and is fine)
    if b"null" in raw and not _decodes_to(raw, value):
        path = find_non_finite(msgspec.to_builtins(value))
        if path is not None:
            raise _Invalid(field, f"holds NaN or Infinity at {path}, which JSON cannot hold")


def _decodes_to(raw: bytes, value: object) -> bool:
    try:
        return bool(_decode_any(raw) == value)
    except Exception:  # an __eq__ of the caller's that raises: look closely instead
        return False


def _check_nul(field: str, raw: bytes) -> None:
    if b"\\u0000" in raw and _has_nul(_decode_object(raw)):
        # PostgreSQL reads metadata (->>) for its correlation index: it cannot hold U+0000
        raise _Invalid(field, "holds a NUL character (U+0000), which PostgreSQL cannot read")


def _decode_given(field: str, raw: object) -> dict[str, Any]:
    """Pre-encoded JSON, which must be one object: UTF-8, no NaN, numbers in range."""
    if not isinstance(raw, bytes):
        raise _Invalid(field, f"must be JSON bytes, not {type(raw).__name__}")
    try:
        return _decode_object(raw)
    except RecursionError:
        raise _Invalid(field, "nests too deep to decode") from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise _Invalid(field, f"is not a JSON object: {exc}") from None


def _reserved_problem(key: str, value: object) -> str | None:
    if isinstance(value, uuid.UUID) and key in ("correlation_id", "causation_id"):
        return None
    if not isinstance(value, str):
        kinds = "a str or a UUID" if key in ("correlation_id", "causation_id") else "a str"
        return f"must be {kinds}, not {type(value).__name__}"
    return text_problem(value, MAX_METADATA_TEXT_BYTES)


def _check_reserved(metadata: Mapping[Any, Any], where: str = "") -> None:
    for key in RESERVED_METADATA:
        value = metadata.get(key)
        if value is None or (
            type(value) is str
            and 0 < len(value) <= MAX_METADATA_TEXT_BYTES
            and value.isascii()
            and value.isprintable()
        ):
            continue  # absent, or the usual: an id in ASCII
        reason = _reserved_problem(key, value)
        if reason is not None:
            limit = MAX_METADATA_TEXT_BYTES if reason.startswith("is ") else None
            raise _Invalid(f"metadata.{key}", reason + where, limit)


# -- appends -------------------------------------------------------------------------------


def encode_batch(
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: object,
    max_event_bytes: int,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> tuple[str, int, list[EncodedEvent]]:
    """Validate one append's arguments and encode its events (shared by every backend).

    Metadata starts from :func:`chronik.context.metadata_for_append`; an event's own
    metadata merges over it. Each rule of docs/limits.md is checked here, before anything is
    written; the usual event passes each check on a fast path.

    Raises:
        InvalidStreamId, InvalidExpectedVersion: the stream id or the expected version.
        InvalidArgument: ``events`` is not a sequence of :class:`NewEvent`.
        BatchTooLarge: more than :data:`MAX_EVENTS_PER_APPEND` events.
        InvalidEvent: an event's id, type, schema version, data or metadata (a
            :class:`~chronik.errors.SerializationError`); names the field and the event.
        PayloadTooLarge: an event's type, data and metadata over ``max_event_bytes``.
        DuplicateEventId: one event id twice in the batch.
    """
    validate_stream_id(stream_id)
    expected = validate_expected_version(expected_version)
    if type(events) is not list and (
        isinstance(events, _NOT_EVENTS) or not isinstance(events, Sequence)
    ):
        raise InvalidArgument("events", f"must be a sequence of NewEvent, not {_kind(events)}")
    if len(events) > MAX_EVENTS_PER_APPEND:
        raise BatchTooLarge(
            f"stream {stream_id!r}: {len(events)} events in one append, over the limit of "
            f"{MAX_EVENTS_PER_APPEND}"
        )
    out: list[EncodedEvent] = []
    if not events:
        return stream_id, expected, out
    context = current_context()
    base = metadata_for_append()
    twice_depth = 2 * max_json_depth
    base_bytes = b""
    if _context_checked[0] is context and _context_checked[1] == max_json_depth:
        # checked before: its reserved values are immutable str; other values (extra keys)
        # may have changed since, and are looked at again when their JSON asks for it
        try:
            base_bytes = _encode(base)
        except _ENCODE_ERRORS:
            base_bytes = b""
        if context.extra and (
            len(base_bytes) > twice_depth or b"null" in base_bytes or b"\\u0000" in base_bytes
        ):
            base_bytes = b""
    if not base_bytes:
        try:
            _check_reserved(base, " (set through chronik.context)")
            base_bytes = _encode_object("metadata", base, max_json_depth, metadata=True)
        except _Invalid as bad:
            raise InvalidEvent(stream_id, 0, bad.field, bad.reason, limit=bad.limit) from None
        _context_checked[:] = (context, max_json_depth)
    seen: set[uuid.UUID] = set()
    for index, ev in enumerate(events):
        if type(ev) is not NewEvent and not isinstance(ev, NewEvent):
            raise InvalidArgument(f"events[{index}]", f"is {_kind(ev)}, not NewEvent")
        try:  # each check's usual case inline, its other cases in a function
            event_id = ev.event_id
            if type(event_id) is not uuid.UUID:
                event_id = _event_id(event_id)
            kind = ev.type
            if (
                type(kind) is str
                and 0 < len(kind) <= MAX_TYPE_BYTES
                and kind.isascii()
                and kind.isprintable()
            ):
                size = len(kind)
            else:
                size = _type_size(kind)
            schema_version = ev.schema_version
            if type(schema_version) is not int or not 0 < schema_version <= MAX_VERSION:
                schema_version = _schema_version(schema_version)
            data = ev.data
            given_bytes = False
            if type(data) is dict:
                try:
                    raw = _encode(data)
                except _ENCODE_ERRORS:
                    raw = _encode_object("data", data, max_json_depth)  # raises, naming why
                if b"null" in raw or (
                    len(raw) > twice_depth and raw.count(b"{") + raw.count(b"[") > max_json_depth
                ):
                    _check_encoded("data", raw, data, max_json_depth)
            elif isinstance(data, bytes):
                raw = data if type(data) is bytes else bytes(data)
                given_bytes = True  # decoded once its size is known to be in bounds
            elif isinstance(data, Mapping):
                raw = _encode_object("data", dict(data), max_json_depth)
            else:
                raise _Invalid("data", f"must be a mapping or JSON bytes, not {_kind(data)}")
            given = ev.metadata
            if not given and (given is None or isinstance(given, Mapping)):
                meta = base_bytes
            elif isinstance(given, Mapping):
                if not _RESERVED.isdisjoint(given):
                    _check_reserved(given)
                merged = {**base, **given}
                try:
                    meta = _encode(merged)
                except _ENCODE_ERRORS:
                    meta = _encode_object("metadata", merged, max_json_depth)  # raises
                if (
                    b"null" in meta
                    or b"\\u0000" in meta
                    or (
                        len(meta) > twice_depth
                        and meta.count(b"{") + meta.count(b"[") > max_json_depth
                    )
                ):
                    _check_encoded("metadata", meta, merged, max_json_depth)
                    _check_nul("metadata", meta)
            else:
                raise _Invalid("metadata", f"must be a mapping or None, not {_kind(given)}")
            size += len(raw) + len(meta)
            if size > max_event_bytes:
                raise PayloadTooLarge(stream_id, index, kind, size, max_event_bytes)
            if given_bytes:
                try:
                    _decode_object(raw)  # UTF-8, one object, no NaN, numbers in range
                except _DECODE_ERRORS:
                    _decode_given("data", raw)  # raises, naming why
                if len(raw) > twice_depth:
                    _check_depth("data", raw, max_json_depth)
        except _Invalid as bad:
            raise InvalidEvent(
                stream_id, index, bad.field, bad.reason, event_type=ev.type, limit=bad.limit
            ) from None
        if event_id in seen:
            raise DuplicateEventId(stream_id, event_id, "appears twice in one append")
        seen.add(event_id)
        out.append(EncodedEvent(event_id, kind, schema_version, raw, meta))
    return stream_id, expected, out


def _kind(value: object) -> str:
    return type(value).__name__


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


# -- imports -------------------------------------------------------------------------------


def plan_import(
    events: Sequence[ImportedEvent],
    current: Mapping[str, int],
    max_event_bytes: int,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> list[tuple[ImportedEvent, int]]:
    """Check one import batch and give each event its version (shared by every backend).

    ``current`` maps the batch's stream ids to their version in the target (absent: no
    events yet). Every event passes the checks of an append (docs/limits.md); its data and
    metadata must be JSON objects as bytes, ``recorded_at`` an aware datetime. An event id
    given as a str comes back as a UUID.

    Raises:
        InvalidArgument, InvalidStreamId, InvalidEvent, PayloadTooLarge: as
            :func:`encode_batch`.
        ConcurrencyError: a version is not the next of its stream.
        DuplicateEventId: one event id twice in the batch.
    """
    if isinstance(events, str | bytes) or not isinstance(events, Sequence):
        raise InvalidArgument("events", f"must be a sequence of ImportedEvent, not {_kind(events)}")
    following: dict[str, int] = {}
    seen: set[uuid.UUID] = set()
    out: list[tuple[ImportedEvent, int]] = []
    for index, ev in enumerate(events):
        if not isinstance(ev, ImportedEvent):
            raise InvalidArgument(f"events[{index}]", f"is {_kind(ev)}, not ImportedEvent")
        stream_id = ev.stream_id
        nxt = following.get(stream_id)
        if nxt is None:  # first of its stream in this batch
            validate_stream_id(stream_id)
            nxt = current.get(stream_id, -1) + 1
        try:
            event_id, version = _check_imported(ev, nxt, max_event_bytes, max_json_depth)
        except _Invalid as bad:
            raise InvalidEvent(
                stream_id, index, bad.field, bad.reason, event_type=ev.type, limit=bad.limit
            ) from None
        except _TooLarge as big:
            raise PayloadTooLarge(stream_id, index, ev.type, big.size, max_event_bytes) from None
        if event_id in seen:
            raise DuplicateEventId(stream_id, event_id, "appears twice in one import")
        seen.add(event_id)
        if version != nxt:
            raise ConcurrencyError(stream_id, version - 1, nxt - 1)
        following[stream_id] = version + 1
        if event_id is not ev.event_id:
            ev = ev._replace(event_id=event_id)
        out.append((ev, version))
    return out


def _check_imported(
    ev: ImportedEvent, nxt: int, max_event_bytes: int, max_depth: int
) -> tuple[uuid.UUID, int]:
    event_id = _event_id(ev.event_id)
    type_size = _type_size(ev.type)
    _schema_version(ev.schema_version)
    version = ev.version
    if version is None:
        version = nxt
    elif isinstance(version, bool) or not isinstance(version, int):
        raise _Invalid("version", f"must be an int or None, not {_kind(version)}")
    elif not 0 <= version <= MAX_VERSION:
        raise _Invalid("version", f"{version} is not between 0 and {MAX_VERSION}", MAX_VERSION)
    if not isinstance(ev.data, bytes) or not isinstance(ev.metadata, bytes):
        field = "data" if not isinstance(ev.data, bytes) else "metadata"
        raise _Invalid(field, f"must be JSON bytes, not {_kind(getattr(ev, field))}")
    size = type_size + len(ev.data) + len(ev.metadata)
    if size > max_event_bytes:
        raise _TooLarge(size)
    _decode_given("data", ev.data)
    _check_depth("data", ev.data, max_depth)
    metadata = _decode_given("metadata", ev.metadata)
    _check_reserved(metadata)
    _check_depth("metadata", ev.metadata, max_depth)
    _check_nul("metadata", ev.metadata)
    at = ev.recorded_at
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise _Invalid("recorded_at", f"must be an aware datetime, not {at!r}")
    return event_id, version


# -- reads ---------------------------------------------------------------------------------
#
# A read's numbers may be any int: one beyond what a store can hold reads what it means
# (nothing above the highest position, everything from a negative one). Only a wrong type,
# or a text no store can be asked for (NUL, a lone surrogate), is an InvalidArgument.


def _int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(name, "must be an int, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(name, f"must be an int, not {_kind(value)}") from None


def _limit(value: object) -> int | None:
    if value is None:
        return None
    return min(max(_int("limit", value), 0), MAX_POSITION)


def _after(value: object) -> int:
    return min(max(_int("after", value), 0), MAX_POSITION)


def _text_arg(name: str, value: object) -> str:
    """A text to look for: a str a database can be sent (no NUL, no lone surrogate)."""
    if not isinstance(value, str):
        raise InvalidArgument(name, f"must be a str, not {_kind(value)}")
    if "\x00" in value:
        raise InvalidArgument(name, "holds a NUL character, which no event holds")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(name, "holds a lone surrogate, which no event holds") from None
    return value


def _names(name: str, value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise InvalidArgument(name, f"must be a list of str or None, not {_kind(value)}")
    return [_text_arg(f"{name}[{i}]", item) for i, item in enumerate(value)]


def check_read_all(
    after: object, categories: object, types: object, limit: object
) -> tuple[int, list[str] | None, list[str] | None, int | None]:
    """``read_all``'s (and ``count_events``'s) arguments, checked and normalised.

    ``after`` below 0 reads from the start, above :data:`MAX_POSITION` reads nothing; a
    negative ``limit`` reads nothing. Filters become lists.

    Raises:
        InvalidArgument: a wrong type, or a filter text no event can hold.
    """
    return _after(after), _names("categories", categories), _names("types", types), _limit(limit)


def check_read_page(
    after: object, limit: object, categories: object, types: object
) -> tuple[int, int, list[str] | None, list[str] | None]:
    """``read_page``'s arguments, as :func:`check_read_all`; ``limit`` is required, and a
    page holds at most :data:`MAX_PAGE` events (a larger limit means the same)."""
    if limit is None:
        raise InvalidArgument("limit", "must be an int, not None")
    page = min(max(_int("limit", limit), 0), MAX_PAGE)
    return _after(after), page, _names("categories", categories), _names("types", types)


def check_read_stream(
    from_version: object, limit: object, backwards: object
) -> tuple[int | None, int | None]:
    """``read_stream``'s ``from_version`` and ``limit``, checked and normalised.

    Forwards, ``None`` and negative versions start at 0 and one above :data:`MAX_VERSION`
    reads nothing; backwards, ``None`` and versions above it start at the end and a negative
    one reads nothing. (The stream id is checked by :func:`validate_stream_id`.)
    """
    version = None if from_version is None else _int("from_version", from_version)
    if backwards:
        if version is not None:
            version = min(max(version, -1), MAX_VERSION)
    else:
        version = 0 if version is None else min(max(version, 0), MAX_VERSION + 1)
    return version, _limit(limit)


def check_read_correlation(correlation_id: object, limit: object) -> tuple[str, int | None]:
    """``read_correlation``'s arguments: the id a str (a UUID is taken as its text)."""
    if isinstance(correlation_id, uuid.UUID):
        correlation_id = str(correlation_id)
    return _text_arg("correlation_id", correlation_id), _limit(limit)


def check_streams(category: object, limit: object) -> tuple[str | None, int | None]:
    """``streams``'s arguments: the category ``None`` or a str, ``limit`` as for reads."""
    name = None if category is None else _text_arg("category", category)
    return name, _limit(limit)
