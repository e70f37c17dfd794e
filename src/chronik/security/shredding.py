"""Crypto-shredding: personal fields encrypted per data subject, forgotten by destroying a key.

Declare which fields of an event hold personal data and which field names their subject::

    @chronik.event("CustomerRegistered", personal=("email", "name"), subject="customer_id")
    @dataclass(frozen=True)
    class CustomerRegistered:
        customer_id: str
        email: str
        name: str

and write and read through a :class:`ShreddingStore`::

    shredder = Shredder(registry, LocalKeyEncryptionKey.from_env("CHRONIK_KEK"))
    store = ShreddingStore(sql_store, shredder)

Each personal field is stored as ``{"chronik.pii": <base64 nonce+ciphertext>, "s": subject}``:
AES-256-GCM under the subject's own key, with the event id, the field name and the subject
as associated data, so ciphertext moved to another event or field fails to decrypt
(:class:`~chronik.errors.CiphertextError`). Subject keys rest in the ``subject_keys`` table,
wrapped by the key-encryption key (:mod:`chronik.security.keys`).

:func:`forget` destroys a subject's key (the wrapped key is set NULL; the row stays as the
record), deletes the snapshots of the subject's streams and runs the given scrubbers in that
same transaction, then appends a :data:`ERASURE_TYPE` event (subject only, no personal data)
to ``erasure-<sha256(subject)>``, which projections handle like any event to scrub their
rows (exactly once, with their checkpoint). Reads of a forgotten subject's fields return the
declared replacement (``erased=`` on the event type), so folds keep working. Stored event
rows are never rewritten (a hash chain over them stays valid).

Another process that read the key keeps it for at most ``cache_ttl`` seconds
(:class:`Shredder`, default 5): that is the bound after which a forgotten subject reads as
erased everywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from chronik.codec import EventRegistry
from chronik.errors import (
    CiphertextError,
    ConcurrencyError,
    InvalidArgument,
    SerializationError,
)
from chronik.events import ANY, NO_STREAM, AppendResult, NewEvent, RecordedEvent
from chronik.security.keys import KeyEncryptionKey, aesgcm
from chronik.store.capabilities import require
from chronik.store.port import EventLog, Inspectable, PageRead, SqlStore, WorkerState
from chronik.store.protocol import EventStore, Tx

__all__ = [
    "ERASURE_CATEGORY",
    "ERASURE_TYPE",
    "ForgetResult",
    "Scrubber",
    "Shredder",
    "ShreddingStore",
    "erasure_stream",
    "erased_subject",
    "forget",
]

ERASURE_TYPE = "chronik.SubjectForgotten"
"""The type of the event :func:`forget` appends; its data is ``{"subject": ...}``."""
ERASURE_CATEGORY = "erasure"
"""The category of the erasure streams (add it to a scrubbing projection's categories)."""

Scrubber = Callable[[str, Tx], Awaitable[None]]
"""``async def scrub(subject, tx)``: removes a subject's personal data from a table, in the
transaction that destroys the key (must be idempotent)."""

try:
    from cryptography.exceptions import InvalidTag as _InvalidTag
except ImportError:  # pragma: no cover - aesgcm() names the missing extra first
    _InvalidTag = ValueError  # type: ignore[misc, assignment]

_MISSING = object()
_UNKNOWN = object()
_MARK = "chronik.pii"
_MARK_BYTES = b'"chronik.pii"'
_AAD = b"chronik.pii.v1\x00"
_NONCE = 12
_NAMESPACE = uuid.UUID("6f1d3c52-29a4-4e0e-9a57-3c1d2f3b7a10")
_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_envelope = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder().encode
_any = msgspec.json.Decoder().decode

_GET_KEY = "SELECT wrapped_key, forgotten_at IS NOT NULL FROM subject_keys WHERE subject = :s"
_NEW_KEY = (
    "INSERT INTO subject_keys (subject, wrapped_key, kek_id, created_at) "
    "VALUES (:s, :k, :kek, :now) ON CONFLICT (subject) DO NOTHING"
)
_NEW_STREAM = (
    "INSERT INTO subject_streams (subject, stream_id) VALUES (:s, :stream) "
    "ON CONFLICT (subject, stream_id) DO NOTHING"
)
_DESTROY = (
    "UPDATE subject_keys SET wrapped_key = NULL, forgotten_at = :now "
    "WHERE subject = :s AND forgotten_at IS NULL"
)
_FORGOTTEN_ROW = (
    "INSERT INTO subject_keys (subject, wrapped_key, kek_id, created_at, forgotten_at) "
    "VALUES (:s, NULL, 'none', :now, :now) ON CONFLICT (subject) DO NOTHING"
)
_STREAMS_OF = "SELECT stream_id FROM subject_streams WHERE subject = :s ORDER BY stream_id"


def erasure_stream(subject: str) -> str:
    """The stream of a subject's erasure event (named by a hash: no personal data)."""
    return "erasure-" + hashlib.sha256(subject.encode()).hexdigest()[:40]


def erased_subject(event: RecordedEvent) -> str | None:
    """The subject an erasure event forgets, ``None`` for any other event (for projections)."""
    if event.type != ERASURE_TYPE:
        return None
    subject = _envelope.decode(event.raw_data).get("subject")
    return subject if isinstance(subject, str) else None


def _aad(event_id: uuid.UUID, field: str, subject: str) -> bytes:
    return _AAD + event_id.bytes + field.encode() + b"\x00" + subject.encode()


class Shredder:
    """Encrypts and decrypts the personal fields of a registry's event types.

    Args:
        registry: where the event types declare ``personal`` and ``subject``.
        kek: the key-encryption key (:class:`~chronik.security.keys.KeyEncryptionKey`).
        cache_ttl: seconds an unwrapped subject key (or its absence) is reused without
            asking the store: the bound on how long another process can still decrypt a
            forgotten subject's fields.
    """

    def __init__(
        self, registry: EventRegistry, kek: KeyEncryptionKey, *, cache_ttl: float = 5.0
    ) -> None:
        if cache_ttl < 0:
            raise InvalidArgument("cache_ttl", f"must be >= 0, not {cache_ttl!r}")
        self.registry = registry
        self.kek = kek
        self.cache_ttl = cache_ttl
        self._keys: dict[str, tuple[Any, float]] = {}  # subject -> (AESGCM | None, at)
        self._streams: set[tuple[str, str]] = set()

    def forget_cached(self, subject: str | None = None) -> None:
        """Drop cached keys (one subject's, or all)."""
        if subject is None:
            self._keys.clear()
        else:
            self._keys.pop(subject, None)

    # -- keys ------------------------------------------------------------------------------

    def _cached(self, subject: str) -> Any:
        """The cached cipher of a subject (``None``: forgotten), ``_UNKNOWN`` when stale."""
        cached = self._keys.get(subject)
        if cached is not None and time.monotonic() - cached[1] < self.cache_ttl:
            return cached[0]
        return _UNKNOWN

    def _remember(self, subject: str, wrapped: Any, present: bool) -> Any:
        cipher: Any = _MISSING if not present else None
        if wrapped is not None:
            cipher = aesgcm(self.kek.unwrap(subject, bytes(wrapped)))
        self._keys[subject] = (cipher, time.monotonic())
        return cipher

    async def _writer_key(self, sql: SqlStore, subject: str, stream_id: str) -> Any:
        """A writer's cipher of a subject (``None``: forgotten), creating the key and
        noting the stream in one transaction when either is new."""
        cipher = self._cached(subject)
        noted = (subject, stream_id) in self._streams
        if cipher is _UNKNOWN and noted:
            rows = await sql.query(_GET_KEY, {"s": subject})
            cipher = self._remember(subject, rows[0][0] if rows else None, bool(rows))
        if cipher is _UNKNOWN or cipher is _MISSING or not noted:
            wrapped = None
            if cipher is _UNKNOWN or cipher is _MISSING:
                wrapped = self.kek.wrap(subject, os.urandom(32))
            async with sql.transaction() as tx:
                if wrapped is not None:
                    await tx.execute(
                        _NEW_KEY,
                        {"s": subject, "k": wrapped, "kek": self.kek.key_id,
                         "now": tx.timestamp(datetime.now(UTC))},
                    )  # fmt: skip
                await tx.execute(_NEW_STREAM, {"s": subject, "stream": stream_id})
                row = await tx.fetchone(_GET_KEY, {"s": subject}) if wrapped is not None else None
            if wrapped is not None:
                cipher = self._remember(subject, row[0] if row else None, row is not None)
            if len(self._streams) >= 100_000:  # a bound on memory; a miss costs one write
                self._streams.clear()
            self._streams.add((subject, stream_id))
        return cipher

    # -- events ----------------------------------------------------------------------------

    async def encrypt(self, sql: SqlStore, stream_id: str, event: NewEvent) -> NewEvent:
        """``event`` with its personal fields encrypted (unchanged if its type has none)."""
        entry = self.registry.lookup(event.type) if event.type in self.registry else None
        if entry is None or not entry.personal:
            return event
        data = event.data if isinstance(event.data, bytes) else _encode(event.data)
        try:
            fields = dict(_fields.decode(data))
        except msgspec.DecodeError as exc:
            raise SerializationError(f"cannot encrypt: {exc}", event_type=event.type) from exc
        raw_subject = fields.get(entry.subject or "")
        subject = None if raw_subject is None else _any(raw_subject)
        if not isinstance(subject, str) or not subject or "\x00" in subject:
            raise SerializationError(
                f"subject field {entry.subject!r} must be a non-empty string without NUL",
                event_type=event.type,
            )
        cipher = await self._writer_key(sql, subject, stream_id)
        for name in entry.personal:
            raw = fields.get(name)
            if raw is None:
                continue
            if cipher is None:  # forgotten already: store nothing of the value
                box: dict[str, Any] = {_MARK: None, "s": subject}
            else:
                nonce = os.urandom(_NONCE)
                sealed = cipher.encrypt(nonce, bytes(raw), _aad(event.event_id, name, subject))
                box = {_MARK: base64.b64encode(nonce + sealed).decode("ascii"), "s": subject}
            fields[name] = msgspec.Raw(_encode(box))
        return NewEvent(
            type=event.type,
            data=_encode(fields),
            metadata=event.metadata,
            event_id=event.event_id,
            schema_version=event.schema_version,
        )

    async def decrypt(self, sql: SqlStore, event: RecordedEvent) -> RecordedEvent:
        """``event`` with its personal fields in clear, or their replacement once forgotten.

        Raises:
            CiphertextError: a field was altered or moved from another event or field, or
                the store has no key row for its subject.
            KeyEncryptionKeyError: the KEK does not unwrap the subject's key.
        """
        return (await self.decrypt_many(sql, [event]))[0]

    async def decrypt_many(
        self, sql: SqlStore, events: Sequence[RecordedEvent]
    ) -> list[RecordedEvent]:
        """:meth:`decrypt` for a batch: the keys not cached are read in one query."""
        work = [(event, self._boxes(event)) for event in events]
        subjects = {box[1] for _, found in work if found for box in found[1] if box[2] is not None}
        ciphers = {subject: self._cached(subject) for subject in subjects}
        stale = [k for k, v in ciphers.items() if v is _UNKNOWN or v is _MISSING]
        for start in range(0, len(stale), 500):
            chunk = {f"k{i}": k for i, k in enumerate(stale[start : start + 500])}
            rows = await sql.query(
                "SELECT subject, wrapped_key FROM subject_keys WHERE subject IN ("
                + ", ".join(f":{k}" for k in chunk) + ")",
                chunk,
            )  # fmt: skip
            got = {str(row[0]): row[1] for row in rows}
            for subject in chunk.values():
                ciphers[subject] = self._remember(subject, got.get(subject), subject in got)
        return [e if found is None else self._apply(e, *found, ciphers) for e, found in work]

    def _boxes(
        self, event: RecordedEvent
    ) -> tuple[dict[str, msgspec.Raw], list[tuple[str, str, str | None]]] | None:
        """The event's fields and its envelopes (field, subject, sealed), ``None`` if none."""
        raw_data = event.raw_data
        if _MARK_BYTES not in raw_data:
            return None
        fields = dict(_fields.decode(raw_data))
        boxes: list[tuple[str, str, str | None]] = []
        for name, raw in fields.items():
            data = bytes(raw)
            if data[:1] != b"{" or _MARK_BYTES not in data:
                continue
            box = _any(data)
            if not isinstance(box, dict) or set(box) != {_MARK, "s"}:
                continue
            subject, sealed = box["s"], box[_MARK]
            if not isinstance(subject, str) or not (sealed is None or isinstance(sealed, str)):
                raise CiphertextError(event.event_id, name, "malformed envelope")
            boxes.append((name, subject, sealed))
        return (fields, boxes) if boxes else None

    def _apply(
        self,
        event: RecordedEvent,
        fields: dict[str, msgspec.Raw],
        boxes: list[tuple[str, str, str | None]],
        ciphers: dict[str, Any],
    ) -> RecordedEvent:
        entry = self.registry.lookup(event.type) if event.type in self.registry else None
        for name, subject, sealed in boxes:
            cipher = None if sealed is None else ciphers[subject]
            if cipher is _MISSING:
                raise CiphertextError(
                    event.event_id, name, "this store has no key row for its subject "
                    "(subject_keys not restored with the events?)"
                )  # fmt: skip
            if cipher is None or sealed is None:
                value = entry.erased.get(name) if entry is not None else None
                fields[name] = msgspec.Raw(_encode(value))
            else:
                fields[name] = msgspec.Raw(self._open(cipher, event, name, subject, sealed))
        return RecordedEvent.from_stored(
            event.position,
            event.stream_id,
            event.version,
            event.event_id,
            event.type,
            event.schema_version,
            _encode(fields),
            event.raw_metadata,
            event.recorded_at,
        )

    @staticmethod
    def _open(cipher: Any, event: RecordedEvent, name: str, subject: str, sealed: str) -> bytes:
        try:
            blob = binascii.a2b_base64(sealed, strict_mode=True)
            plain = cipher.decrypt(
                blob[:_NONCE], blob[_NONCE:], _aad(event.event_id, name, subject)
            )
        except (_InvalidTag, ValueError) as exc:
            raise CiphertextError(
                event.event_id, name, "does not decrypt: altered, or moved from another event"
            ) from exc
        return bytes(plain)


class ShreddingStore:
    """An event store whose personal fields are encrypted on append and decrypted on read.

    Wraps a store with SQL (SQLite or PostgreSQL); every other member is the wrapped
    store's. Give this store to aggregates, projections and snapshotters that need the
    data in clear; tools reading the wrapped store (``chronik events``, backups, the outbox
    relay's default mapper) see ciphertext.

    Raises:
        MissingCapability: the store has no SQL (``memory://``).
    """

    capabilities = frozenset({EventLog, Inspectable, WorkerState, SqlStore})

    def __init__(self, store: EventStore, shredder: Shredder) -> None:
        self._sql = require(store, SqlStore)
        self.inner = store
        self.shredder = shredder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __aenter__(self) -> ShreddingStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.close()

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, expected_version: int = ANY
    ) -> AppendResult:
        try:
            batch = list(events)
        except TypeError as exc:
            raise InvalidArgument("events", "must be a list of NewEvent") from exc
        sealed = [
            await self.shredder.encrypt(self._sql, stream_id, e) if isinstance(e, NewEvent) else e
            for e in batch
        ]
        return await self.inner.append(stream_id, sealed, expected_version=expected_version)

    async def forget(self, subject: str, *, scrubbers: Sequence[Scrubber] = ()) -> ForgetResult:
        """:func:`forget` the subject, and drop its key from this process's cache at once
        (other processes drop it within their ``cache_ttl``)."""
        try:
            return await forget(self, subject, scrubbers=scrubbers)
        finally:
            self.shredder.forget_cached(subject)

    async def _open(self, events: AsyncIterator[RecordedEvent]) -> AsyncIterator[RecordedEvent]:
        batch: list[RecordedEvent] = []
        async for event in events:
            batch.append(event)
            if len(batch) >= 256:
                for clear in await self.shredder.decrypt_many(self._sql, batch):
                    yield clear
                batch = []
        for clear in await self.shredder.decrypt_many(self._sql, batch):
            yield clear

    def read_stream(self, stream_id: str, **options: Any) -> AsyncIterator[RecordedEvent]:
        return self._open(self.inner.read_stream(stream_id, **options))

    def read_all(self, **options: Any) -> AsyncIterator[RecordedEvent]:
        return self._open(self.inner.read_all(**options))

    async def read_page(self, **options: Any) -> PageRead:
        events, caught_up_to, more = await self.inner.read_page(**options)
        return await self.shredder.decrypt_many(self._sql, events), caught_up_to, more

    async def read_correlation(self, *args: Any, **options: Any) -> list[RecordedEvent]:
        events = await self.inner.read_correlation(*args, **options)
        return await self.shredder.decrypt_many(self._sql, events)


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What :func:`forget` did (JSON-ready with :meth:`to_dict`)."""

    subject: str
    key_destroyed: bool
    """This call destroyed the key (``False``: it was destroyed before, or never existed)."""
    streams: tuple[str, ...]
    snapshots_deleted: int
    erasure_stream: str
    erasure_recorded: bool
    """This call appended the erasure event (``False``: it was recorded before)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "key_destroyed": self.key_destroyed,
            "streams": list(self.streams),
            "snapshots_deleted": self.snapshots_deleted,
            "erasure_stream": self.erasure_stream,
            "erasure_recorded": self.erasure_recorded,
        }


async def forget(
    store: EventStore, subject: str, *, scrubbers: Sequence[Scrubber] = ()
) -> ForgetResult:
    """Forget a data subject: destroy its key, invalidate snapshots, record the erasure.

    Steps, each idempotent, so a rerun after a crash or a cancellation completes the job:
    one transaction destroys the key (or records the subject as forgotten if it had none),
    deletes the snapshots of the subject's streams and runs ``scrubbers``; then the
    erasure event is appended once (fixed event id, ``expected_version=NO_STREAM``); then
    the store's free space is cleaned (:func:`chronik.store.erasure.clean_free_space`).
    Needs no key-encryption key. Other processes (and this one, unless called as
    :meth:`ShreddingStore.forget`) stop decrypting within their ``cache_ttl``.

    Raises:
        InvalidArgument: ``subject`` is not a non-empty string.
        MissingCapability: the store has no SQL.
    """
    if not isinstance(subject, str) or not subject or "\x00" in subject:
        raise InvalidArgument("subject", "must be a non-empty string without NUL")
    from chronik.snapshots.store import invalidate_streams
    from chronik.store.erasure import clean_free_space, prepare_erasure

    sql = require(store, SqlStore)
    async with sql.transaction() as tx:
        await prepare_erasure(tx)
        now = tx.timestamp(datetime.now(UTC))
        before = await tx.fetchone(_GET_KEY, {"s": subject})
        await tx.execute(_FORGOTTEN_ROW, {"s": subject, "now": now})
        await tx.execute(_DESTROY, {"s": subject, "now": now})
        destroyed = before is not None and before[0] is not None
        streams = tuple(str(r[0]) for r in await tx.fetchall(_STREAMS_OF, {"s": subject}))
        deleted = await invalidate_streams(tx, streams)
        for scrub in scrubbers:
            await scrub(subject, tx)
    stream = erasure_stream(subject)
    recorded = False
    if await store.stream_version(stream) is None:
        event = NewEvent(
            type=ERASURE_TYPE,
            data=_encode({"subject": subject}),
            event_id=uuid.uuid5(_NAMESPACE, "forget:" + subject),
        )
        try:
            await store.append(stream, [event], expected_version=NO_STREAM)
            recorded = True
        except ConcurrencyError:
            recorded = False  # another forget recorded it
    await clean_free_space(sql)
    return ForgetResult(subject, destroyed, streams, deleted, stream, recorded)
