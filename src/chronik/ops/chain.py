"""``chronik verify``: recompute every stream's hash chain and check the signed checkpoints
of the global head (docs/security.md "Tamper evidence").

Each stored event carries the hash of its stream's previous event and of its own stored
bytes (migration 0017, :mod:`chronik.store.chain`). :func:`verify` reads the log once in
position order and reports the first broken link:

============  ===============================================================================
``changed``   an event's stored fields or hash do not give its hash (edited data, metadata,
              type, version, time; two payloads swapped)
``deleted``   versions missing before a stored event of a stream (not covered by retention)
``inserted``  an event without a hash (written around chronik), or stored before events of
              lower versions of its stream
``swapped``   an event stored after a higher version of its stream
``checkpoint`` the events between two signed checkpoints are not those signed (a stream's
              tail or a whole stream deleted, a forged event with a recomputed chain), or a
              checkpoint's signature does not verify
============  ===============================================================================

Per-stream chains cannot see a stream's tail or a whole stream removed, nor an attacker who
recomputes the chain; a signed checkpoint can: :func:`sign_checkpoint` records the digest
of every event hash up to the head, chained from the previous checkpoint, and signs it with
HMAC-SHA256 or Ed25519 (:class:`ChainKey`). A stream whose first stored version is above 0
is accepted when retention's records (``truncations``, migration 0014) cover the missing
versions: its first kept event anchors the chain (its predecessor is gone, so its own hash
cannot be recomputed), and a checkpoint whose range lost events to retention is re-anchored
on its signed digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chronik.errors import InvalidArgument, TamperDetected
from chronik.store.capabilities import require
from chronik.store.chain import event_hash
from chronik.store.port import EventStore, SqlStore, Tx

_Fetch = Callable[[str, Mapping[str, Any]], Awaitable[Sequence[Sequence[Any]]]]

__all__ = [
    "KEY_ENV",
    "Break",
    "ChainKey",
    "SignedCheckpoint",
    "VerifyReport",
    "sign_checkpoint",
    "verify",
    "verify_in",
]

KEY_ENV = "CHRONIK_CHAIN_KEY"
"""The environment variable :meth:`ChainKey.load` reads when no file is given: an HMAC key
(at least 32 bytes, as hex or text)."""

_PAGE = 5000
_MAX_BREAKS = 100
_CONTEXT = b"chronik-chain-checkpoint-v1\x00"
_COLUMNS = (
    "position, stream_id, version, CAST(event_id AS TEXT), type, schema_version, "
    "recorded_at, CAST(data AS TEXT), CAST(metadata AS TEXT), hash"
)


@dataclass(frozen=True, slots=True)
class ChainKey:
    """The key that signs (and checks) checkpoints: ``hmac-sha256`` (one secret) or
    ``ed25519`` (a private key signs, its public key checks)."""

    algorithm: str
    key_id: str
    secret: bytes = b""
    private: Any = None
    public: Any = None

    @classmethod
    def hmac(cls, secret: bytes) -> ChainKey:
        if len(secret) < 32:
            raise InvalidArgument("chain key", "needs at least 32 bytes (HMAC-SHA256)")
        key_id = hashlib.sha256(b"chronik-key-id" + secret).hexdigest()[:16]
        return cls("hmac-sha256", key_id, secret=secret)

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ChainKey:
        """The key in ``path`` (an Ed25519 PEM key, private or public, or an HMAC secret),
        else in ``$CHRONIK_CHAIN_KEY`` (an HMAC secret, hex or text).

        Raises:
            InvalidArgument: no key, an unreadable file, a key too short or of another kind.
        """
        if path is None:
            value = (os.environ if env is None else env).get(KEY_ENV, "")
            if not value:
                raise InvalidArgument("chain key", f"is missing: give --key-file or set ${KEY_ENV}")
            return cls.hmac(_secret(value.strip().encode("utf-8")))
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidArgument("chain key", f"{path} cannot be read: {exc}") from exc
        if raw.lstrip().startswith(b"-----BEGIN"):
            return cls._pem(raw, str(path))
        return cls.hmac(_secret(raw.strip()))

    @classmethod
    def _pem(cls, raw: bytes, where: str) -> ChainKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (
            Ed25519PrivateKey,
            Ed25519PublicKey,
        )

        try:
            if b"PRIVATE KEY" in raw:
                private = serialization.load_pem_private_key(raw, password=None)
                if not isinstance(private, Ed25519PrivateKey):
                    raise InvalidArgument("chain key", f"{where} is not an Ed25519 key")
                public = private.public_key()
            else:
                loaded = serialization.load_pem_public_key(raw)
                if not isinstance(loaded, Ed25519PublicKey):
                    raise InvalidArgument("chain key", f"{where} is not an Ed25519 key")
                private, public = None, loaded
        except ValueError as exc:
            raise InvalidArgument("chain key", f"{where} is not a PEM key ({exc})") from exc
        spki = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls("ed25519", hashlib.sha256(spki).hexdigest()[:16], private=private, public=public)

    def sign(self, message: bytes) -> bytes:
        if self.algorithm == "hmac-sha256":
            return hmac.new(self.secret, message, hashlib.sha256).digest()
        if self.private is None:
            raise InvalidArgument(
                "chain key", "is an Ed25519 public key: it checks checkpoints but cannot sign"
            )
        return bytes(self.private.sign(message))

    def check(self, message: bytes, signature: bytes) -> bool:
        if self.algorithm == "hmac-sha256":
            return hmac.compare_digest(self.sign(message), signature)
        from cryptography.exceptions import InvalidSignature

        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _secret(value: bytes) -> bytes:
    try:
        decoded = bytes.fromhex(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return value
    return decoded if len(decoded) >= 32 else value


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A signed record of the log up to ``position``: ``events`` hashes since the previous
    checkpoint, folded into ``digest`` (chained from the previous checkpoint's digest)."""

    id: int
    position: int
    events: int
    digest: bytes
    algorithm: str
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        return _message(self.position, self.events, self.digest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "events": self.events,
            "digest": self.digest.hex(),
            "algorithm": self.algorithm,
            "key_id": self.key_id,
        }


def _message(position: int, events: int, digest: bytes) -> bytes:
    return _CONTEXT + position.to_bytes(8, "big") + events.to_bytes(8, "big") + digest


@dataclass(frozen=True, slots=True)
class Break:
    """One broken link: where (``position``, ``stream_id``, ``version``) and ``what``."""

    what: str
    message: str
    position: int | None = None
    stream_id: str | None = None
    version: int | None = None
    through_position: int | None = None
    """For a ``checkpoint`` break: the range ``(position - 1, through_position]`` differs."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "message": self.message,
            "position": self.position,
            "stream_id": self.stream_id,
            "version": self.version,
            "through_position": self.through_position,
        }


@dataclass
class VerifyReport:
    """What :func:`verify` checked and the broken links it found. :attr:`first_break` is the
    lowest position of a broken chain link, else the first checkpoint that does not match
    (a range: what in it changed is not known)."""

    since: int
    events: int = 0
    streams: int = 0
    checkpoints: int = 0
    signatures_checked: bool = False
    anchored_streams: int = 0
    """Streams whose first kept event anchors the chain (retention removed the ones before)."""
    reanchored_checkpoints: int = 0
    breaks: list[Break] = field(default_factory=list)
    broken_links: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_links == 0

    @property
    def first_break(self) -> Break | None:
        precise = [b for b in self.breaks if b.what != "checkpoint"]
        found = precise or self.breaks
        if not found:
            return None
        return min(found, key=lambda b: (b.position is None, b.position or 0))

    def to_dict(self) -> dict[str, Any]:
        first = self.first_break
        return {
            "ok": self.ok,
            "since": self.since,
            "events": self.events,
            "streams": self.streams,
            "checkpoints": self.checkpoints,
            "signatures_checked": self.signatures_checked,
            "anchored_streams": self.anchored_streams,
            "reanchored_checkpoints": self.reanchored_checkpoints,
            "broken_links": self.broken_links,
            "first_break": first.to_dict() if first else None,
            "breaks": [b.to_dict() for b in self.breaks],
        }


class _Scan:
    """One pass over the log in position order: per-stream chains and checkpoint digests."""

    def __init__(
        self,
        fetch: _Fetch,
        report: VerifyReport,
        checkpoints: list[SignedCheckpoint],
        anchor: tuple[int, bytes],
        truncated: dict[str, int],
        removed: list[tuple[int, int]],
        key: ChainKey | None,
    ) -> None:
        self.fetch = fetch
        self.report = report
        self.pending = checkpoints
        self.start, self.digest_prev = anchor
        self.truncated = truncated
        self.removed = removed
        self.key = key
        self.heads: dict[str, tuple[int, bytes | None]] = {}
        self.running = hashlib.sha256(self.digest_prev)
        self.count = 0
        self.range_start = self.start

    def add(self, brk: Break) -> None:
        self.report.broken_links += 1
        if len(self.report.breaks) < _MAX_BREAKS:
            self.report.breaks.append(brk)

    async def _stored_hash(self, stream_id: str, version: int) -> tuple[bool, bytes | None]:
        rows = await self.fetch(
            "SELECT position, hash FROM events WHERE stream_id = :s AND version = :v",
            {"s": stream_id, "v": version},
        )
        if not rows or int(rows[0][0]) > self.start:
            return False, None
        return True, None if rows[0][1] is None else bytes(rows[0][1])

    async def _between(self, stream_id: str, low: int, high: int) -> int:
        rows = await self.fetch(
            "SELECT count(*) FROM events WHERE stream_id = :s AND version > :a AND version < :b",
            {"s": stream_id, "a": low, "b": high},
        )
        return int(rows[0][0])

    async def event(self, row: Sequence[Any]) -> None:
        position, stream_id, version = int(row[0]), str(row[1]), int(row[2])
        stored = None if row[9] is None else bytes(row[9])
        self.close_checkpoints(position)
        self.count += 1
        self.running.update(stored or b"")
        self.report.events += 1

        def link(what: str, text: str) -> Break:
            return Break(what, text, position, stream_id, version)

        if stored is None:
            self.add(link("inserted", "an event without a hash: written around chronik"))
        head = self.heads.get(stream_id)
        prev: bytes | None = None
        anchor = False
        if head is not None:
            last, prev = head
            if version <= last:
                self.add(link("swapped", f"stored after version {last} of its stream"))
                return
            if version > last + 1:
                missing = await self._between(stream_id, last, version)
                what = "inserted" if missing else "deleted"
                text = (
                    f"stored before versions {last + 1}..{version - 1} of its stream"
                    if missing
                    else f"versions {last + 1}..{version - 1} are missing"
                )
                self.add(link(what, text))
                prev = None
        elif version > 0:
            found, prev = await self._stored_hash(stream_id, version - 1)
            if not found:
                if self.truncated.get(stream_id, -1) >= version - 1:
                    anchor = True
                    self.report.anchored_streams += 1
                else:
                    missing = await self._between(stream_id, -1, version)
                    what = "inserted" if missing else "deleted"
                    text = (
                        f"stored before versions 0..{version - 1} of its stream"
                        if missing
                        else f"versions 0..{version - 1} are missing (no retention record)"
                    )
                    self.add(link(what, text))
        if head is None:
            self.report.streams += 1
        self.heads[stream_id] = (version, stored)
        if anchor or stored is None:
            return
        expected = event_hash(prev, stream_id, version, *row[3:9])
        if not hmac.compare_digest(expected, stored):
            self.add(link("changed", "its stored bytes do not give its hash"))

    def close_checkpoints(self, position: int | None) -> None:
        """Compare every checkpoint below ``position`` (``None``: all) with the digest."""
        while self.pending and (position is None or self.pending[0].position < position):
            cp = self.pending.pop(0)
            self.running.update(cp.position.to_bytes(8, "big") + self.count.to_bytes(8, "big"))
            digest = self.running.digest()
            self.report.checkpoints += 1

            def ranged(
                text: str, start: int = self.range_start + 1, end: int = cp.position
            ) -> Break:
                return Break("checkpoint", text, start, through_position=end)

            if self.key is not None and cp.key_id == self.key.key_id:
                if not self.key.check(cp.message(), cp.signature):
                    self.add(ranged(f"checkpoint {cp.id}: bad signature"))
            elif self.key is not None:
                self.add(ranged(f"checkpoint {cp.id}: signed by key "
                               f"{cp.key_id}, not {self.key.key_id}"))  # fmt: skip
            lost = any(a <= cp.position and b > self.range_start for a, b in self.removed)
            if lost:
                self.report.reanchored_checkpoints += 1
            elif digest != cp.digest or self.count != cp.events:
                kind = (
                    "deleted"
                    if self.count < cp.events
                    else "inserted"
                    if self.count > cp.events
                    else "changed"
                )
                self.add(ranged(f"checkpoint {cp.id}: {kind}: {self.count} events "
                               f"stored where {cp.events} were signed"))  # fmt: skip
            self.range_start = cp.position
            self.running = hashlib.sha256(cp.digest)
            self.count = 0


async def _checkpoints(fetch: _Fetch) -> list[SignedCheckpoint]:
    rows = await fetch(
        "SELECT id, position, events, digest, algorithm, key_id, signature "
        "FROM chain_checkpoints ORDER BY position, id",
        {},
    )
    return [
        SignedCheckpoint(int(i), int(p), int(n), bytes(d), str(a), str(k), bytes(s))
        for i, p, n, d, a, k, s in rows
    ]


async def _truncations(fetch: _Fetch) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """What retention removed (migration 0014): stream -> last removed version, and the
    position ranges removed."""
    rows = await fetch(
        "SELECT stream_id, through_version, first_position, last_position FROM truncations", {}
    )
    through: dict[str, int] = {}
    for stream_id, version, _, _ in rows:
        through[str(stream_id)] = max(through.get(str(stream_id), -1), int(version))
    return through, [(int(a), int(b)) for _, _, a, b in rows]


async def _scan(
    fetch: _Fetch, since: int, key: ChainKey | None, until: int | None
) -> tuple[_Scan, list[SignedCheckpoint]]:
    checkpoints = await _checkpoints(fetch)
    anchor: tuple[int, bytes] = (0, b"")
    for cp in checkpoints:
        if cp.position <= since:
            anchor = (cp.position, cp.digest)
    later = [cp for cp in checkpoints if cp.position > anchor[0]]
    truncated, removed = await _truncations(fetch)
    report = VerifyReport(since=since, signatures_checked=key is not None)
    scan = _Scan(fetch, report, later, anchor, truncated, removed, key)
    cursor = anchor[0]
    limit = "" if until is None else f" AND position <= {int(until)}"
    while True:
        rows = await fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position > :p{limit} ORDER BY position "
            f"LIMIT {_PAGE}",
            {"p": cursor},
        )
        for row in rows:
            await scan.event(row)
        if len(rows) < _PAGE:
            break
        cursor = int(rows[-1][0])
    scan.close_checkpoints(None if until is None else until + 1)
    return scan, checkpoints


async def verify(store: EventStore, *, since: int = 0, key: ChainKey | None = None) -> VerifyReport:
    """Recompute every stream's chain and every signed checkpoint after ``since``.

    Reading starts at the last checkpoint at or below ``since`` (its digest is trusted as the
    anchor; 0: the whole log). With ``key`` each checkpoint's signature is checked too.
    Nothing is written.

    Raises:
        MissingCapability: the store has no SQL (``memory://`` keeps no chain).
    """
    scan, _ = await _scan(require(store, SqlStore).query, since, key, None)
    return scan.report


async def verify_in(tx: Tx, *, since: int = 0, key: ChainKey | None = None) -> VerifyReport:
    """:func:`verify` on what the transaction ``tx`` sees (its snapshot, its own writes)."""
    scan, _ = await _scan(tx.fetchall, since, key, None)
    return scan.report


async def sign_checkpoint(store: EventStore, key: ChainKey) -> SignedCheckpoint:
    """Verify the log since the last checkpoint, then record a signed checkpoint of the head
    (on PostgreSQL the head below the visibility horizon: every position up to it is final).

    Raises:
        TamperDetected: a broken link since the last checkpoint (nothing is signed).
        InvalidArgument: ``key`` cannot sign (an Ed25519 public key).
        MissingCapability: the store has no SQL.
    """
    head = await store.head_position()
    sql = require(store, SqlStore)
    last = await _checkpoints(sql.query)
    since = last[-1].position if last else 0
    scan, _ = await _scan(sql.query, since, key, head)
    if not scan.report.ok:
        first = scan.report.first_break
        raise TamperDetected(f"not signed: {first.message if first else 'broken chain'} "
                             f"(position {first.position if first else '?'})")  # fmt: skip
    position = max(head, since)
    scan.running.update(position.to_bytes(8, "big") + scan.count.to_bytes(8, "big"))
    digest = scan.running.digest()
    signature = key.sign(_message(position, scan.count, digest))
    async with sql.transaction() as tx:
        row = await tx.fetchone(
            "INSERT INTO chain_checkpoints (position, events, digest, algorithm, key_id, "
            "signature, created_at) VALUES (:p, :n, :d, :a, :k, :s, :at) RETURNING id",
            {"p": position, "n": scan.count, "d": digest, "a": key.algorithm,
             "k": key.key_id, "s": signature, "at": tx.timestamp(datetime.now(UTC))},
        )  # fmt: skip
    assert row is not None
    return SignedCheckpoint(
        int(row[0]), position, scan.count, digest, key.algorithm, key.key_id, signature
    )
