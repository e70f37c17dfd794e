"""Key-encryption keys: what wraps the per-subject keys of crypto-shredding.

A subject key (256 random bits, one per data subject) never rests in clear: the store keeps
it wrapped by a *key-encryption key* (KEK). :class:`KeyEncryptionKey` is the whole interface
a KMS has to offer (``key_id``, ``wrap``, ``unwrap``); :class:`LocalKeyEncryptionKey` is the
one chronik ships, reading 32 bytes (64 hex digits or base64) from a file or an environment
variable::

    kek = LocalKeyEncryptionKey.from_env("CHRONIK_KEK")
    kek = LocalKeyEncryptionKey.from_file("/run/secrets/chronik-kek")

To plug in a KMS, implement the three members (``unwrap`` raising
:class:`~chronik.errors.KeyEncryptionKeyError` when it cannot) — for instance by sending the
wrapped key to the KMS's decrypt call with the subject as encryption context.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from chronik.errors import KeyEncryptionKeyError, MissingDependency

__all__ = ["KeyEncryptionKey", "LocalKeyEncryptionKey", "generate_kek"]

_WRAP_AAD = b"chronik.subject-key.v1:"
_NONCE = 12


def aesgcm(key: bytes) -> Any:
    """An AES-GCM cipher from the ``cryptography`` package (``pip install chronik[security]``)."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise MissingDependency("crypto-shredding", "cryptography", "security") from exc
    return AESGCM(key)


@runtime_checkable
class KeyEncryptionKey(Protocol):
    """Wraps and unwraps subject keys; the subject is bound to its wrapped key."""

    @property
    def key_id(self) -> str:
        """A name for this key (stored beside each wrapped key; never secret)."""
        ...

    def wrap(self, subject: str, key: bytes) -> bytes:
        """The subject key ``key`` encrypted for storage."""
        ...

    def unwrap(self, subject: str, wrapped: bytes) -> bytes:
        """The subject key back.

        Raises:
            KeyEncryptionKeyError: this is not the key ``wrapped`` was made with, or it
                was altered or belongs to another subject.
        """
        ...


class LocalKeyEncryptionKey:
    """A 256-bit KEK held in this process (AES-256-GCM key wrap with the subject as
    associated data). ``source`` names where it came from, for error messages."""

    def __init__(self, key: bytes, *, source: str = "in memory") -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise KeyEncryptionKeyError(source, "must be 32 bytes (64 hex digits or base64)")
        self._key = key
        self._cipher = aesgcm(key)
        self.source = source
        self._id = "local:" + hashlib.sha256(b"chronik.kek-id:" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"LocalKeyEncryptionKey({self._id}, source={self.source!r})"

    @property
    def key_id(self) -> str:
        return self._id

    @classmethod
    def from_text(cls, text: str, *, source: str) -> LocalKeyEncryptionKey:
        """Parse 64 hex digits or base64 of 32 bytes (surrounding whitespace ignored)."""
        text = text.strip()
        raw: bytes | None = None
        if len(text) == 64:
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raw = None
        if raw is None:
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raw = None
        if raw is None or len(raw) != 32:
            raise KeyEncryptionKeyError(source, "not 32 bytes as 64 hex digits or base64")
        return cls(raw, source=source)

    @classmethod
    def from_env(cls, variable: str = "CHRONIK_KEK") -> LocalKeyEncryptionKey:
        """The KEK in environment variable ``variable``.

        Raises:
            KeyEncryptionKeyError: the variable is unset, empty or malformed.
        """
        source = f"environment variable {variable}"
        text = os.environ.get(variable)
        if not text:
            raise KeyEncryptionKeyError(source, "not set")
        return cls.from_text(text, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> LocalKeyEncryptionKey:
        """The KEK in a file (hex or base64 text).

        Raises:
            KeyEncryptionKeyError: the file is missing, unreadable or malformed.
        """
        source = f"file {path}"
        try:
            text = Path(path).read_text("ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyEncryptionKeyError(source, f"cannot read it ({type(exc).__name__})") from exc
        return cls.from_text(text, source=source)

    def wrap(self, subject: str, key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + bytes(self._cipher.encrypt(nonce, key, _WRAP_AAD + subject.encode()))

    def unwrap(self, subject: str, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            key = self._cipher.decrypt(
                wrapped[:_NONCE], wrapped[_NONCE:], _WRAP_AAD + subject.encode()
            )
        except (InvalidTag, ValueError) as exc:
            raise KeyEncryptionKeyError(
                self.source, "does not unwrap the stored subject key (wrong key, or altered)"
            ) from exc
        return bytes(key)


def generate_kek() -> str:
    """A new random KEK as 64 hex digits (for a file or an environment variable)."""
    return os.urandom(32).hex()
