"""API tokens: random secrets shown once, kept only as a hash, with roles, an optional
expiry and revocation (``chronik tokens``; table ``api_tokens``, migration 0012).

A token reads ``chronik_<id>_<secret>``: ``id`` (12 hex digits) finds the row, ``secret``
(256 random bits) is compared with the stored SHA-256 in constant time. Every request looks
the row up, so a revocation holds from the next request on, in every server process.

Example::

    tokens = token_store(store)
    info, token = await tokens.create("ci", roles=["writer"], expires_in=timedelta(days=30))
    print(token)                     # shown once: only its hash is kept
    principal = await tokens.verify(token)
    await tokens.revoke("ci")
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from chronik.errors import AuthenticationFailed, InvalidArgument
from chronik.security.policy import Principal
from chronik.store import SqlStore, require
from chronik.store.capabilities import supports
from chronik.store.protocol import EventStore

__all__ = [
    "TOKEN_PREFIX",
    "MemoryTokens",
    "SqlTokens",
    "TokenInfo",
    "TokenStore",
    "parse_duration",
    "token_store",
]

TOKEN_PREFIX = "chronik_"
_TOKEN = re.compile(r"^chronik_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")
_ROLE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's record (never its secret)."""

    id: str
    name: str
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self, now: datetime) -> dict[str, Any]:
        def iso(at: datetime | None) -> str | None:
            return None if at is None else at.isoformat()

        return {"id": self.id, "name": self.name, "roles": list(self.roles),
                "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
                "revoked_at": iso(self.revoked_at), "state": self.state(now)}  # fmt: skip


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _time(stored: datetime | int | None) -> datetime | None:
    """A stored time: a ``datetime`` (PostgreSQL) or microseconds since 1970 (SQLite)."""
    if stored is None or isinstance(stored, datetime):
        return stored
    return datetime.fromtimestamp(stored / 1_000_000, UTC)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``90s`` or ``2w`` as a duration.

    Raises:
        InvalidArgument: anything else (or zero).
    """
    match = re.fullmatch(r"\s*([0-9]{1,7})\s*([smhdw])\s*", text)
    if match is None or int(match[1]) == 0:
        raise InvalidArgument("expires", f"{text!r}: a positive number and s, m, h, d or w")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2]]
    return timedelta(seconds=int(match[1]) * unit)


def _check(name: str, roles: list[str] | tuple[str, ...]) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument("name", f"{name!r}: 1-100 letters, digits or _ . : @ -")
    if not roles:
        raise InvalidArgument("roles", "a token needs at least one role")
    for role in roles:
        if not isinstance(role, str) or not _ROLE.match(role):
            raise InvalidArgument("roles", f"{role!r}: 1-100 letters, digits or _ . : -")


def _parse(token: str) -> tuple[str, str]:
    match = _TOKEN.match(token)
    if match is None:
        raise AuthenticationFailed("malformed API token")
    return match["id"], match["secret"]


class TokenStore(Protocol):
    """Where tokens are kept: :class:`SqlTokens` (SQLite, PostgreSQL) or
    :class:`MemoryTokens` (``memory://`` stores, tests)."""

    async def create(
        self, name: str, roles: list[str] | tuple[str, ...], *, expires_in: timedelta | None = None
    ) -> tuple[TokenInfo, str]:
        """A new token: its record and the token text (shown once, never stored)."""
        ...

    async def list(self) -> list[TokenInfo]: ...

    async def revoke(self, name_or_id: str) -> TokenInfo:
        """Revoke a token (by name or id); :class:`InvalidArgument` if there is none."""
        ...

    async def verify(self, token: str) -> Principal:
        """The principal of a live token; :class:`AuthenticationFailed` otherwise."""
        ...


def _new(name: str, roles: list[str] | tuple[str, ...], expires_in: timedelta | None) -> tuple[
    TokenInfo, str, str
]:  # fmt: skip
    _check(name, roles)
    if expires_in is not None and expires_in.total_seconds() <= 0:
        raise InvalidArgument("expires_in", "must be positive")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    expires = None if expires_in is None else now + expires_in
    info = TokenInfo(token_id, name, tuple(roles), now, expires, None)
    return info, f"{TOKEN_PREFIX}{token_id}_{secret}", _hash(secret)


def _principal(info: TokenInfo, stored_hash: str, secret: str) -> Principal:
    if not hmac.compare_digest(stored_hash, _hash(secret)):
        raise AuthenticationFailed("unknown API token")
    if info.revoked_at is not None:
        raise AuthenticationFailed(f"API token {info.name!r} was revoked")
    if info.expires_at is not None and info.expires_at.timestamp() <= time.time():
        raise AuthenticationFailed(f"API token {info.name!r} expired")
    return Principal(f"token:{info.name}", info.roles, f"token:{info.id}")


class SqlTokens:
    """Tokens in the store's ``api_tokens`` table."""

    _COLUMNS = "id, name, roles, created_at, expires_at, revoked_at, secret_sha256"

    def __init__(self, store: EventStore) -> None:
        self.sql = require(store, SqlStore)

    @staticmethod
    def _info(row: tuple[Any, ...]) -> TokenInfo:
        created = _time(row[3])
        assert created is not None
        return TokenInfo(row[0], row[1], tuple(json.loads(row[2])), created, _time(row[4]),
                         _time(row[5]))  # fmt: skip

    async def create(
        self, name: str, roles: list[str] | tuple[str, ...], *, expires_in: timedelta | None = None
    ) -> tuple[TokenInfo, str]:
        info, token, digest = _new(name, roles, expires_in)
        async with self.sql.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM api_tokens WHERE name = :name", {"name": name}):
                raise InvalidArgument("name", f"a token named {name!r} exists (revoked or not)")
            await tx.execute(
                "INSERT INTO api_tokens (id, name, secret_sha256, roles, created_at, expires_at) "
                "VALUES (:id, :name, :hash, :roles, :created, :expires)",
                {"id": info.id, "name": name, "hash": digest, "roles": json.dumps(list(roles)),
                 "created": tx.timestamp(info.created_at),
                 "expires": None if info.expires_at is None else tx.timestamp(info.expires_at)},
            )  # fmt: skip
        return info, token

    async def list(self) -> list[TokenInfo]:
        rows = await self.sql.query(f"SELECT {self._COLUMNS} FROM api_tokens ORDER BY name")
        return [self._info(r) for r in rows]

    async def revoke(self, name_or_id: str) -> TokenInfo:
        now = datetime.now(UTC)
        async with self.sql.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {self._COLUMNS} FROM api_tokens WHERE name = :key OR id = :key",
                {"key": name_or_id},
            )
            if row is None:
                raise InvalidArgument("token", f"no token named {name_or_id!r}")
            await tx.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :id",
                {"now": tx.timestamp(now), "id": row[0]},
            )
        info = self._info(row)
        revoked = info.revoked_at or now
        return TokenInfo(info.id, info.name, info.roles, info.created_at, info.expires_at,
                         revoked)  # fmt: skip

    async def verify(self, token: str) -> Principal:
        token_id, secret = _parse(token)
        rows = await self.sql.query(
            f"SELECT {self._COLUMNS} FROM api_tokens WHERE id = :id", {"id": token_id}
        )
        if not rows:
            raise AuthenticationFailed("unknown API token")
        return _principal(self._info(rows[0]), rows[0][6], secret)


class MemoryTokens:
    """Tokens in memory (a ``memory://`` store, tests): the same rules as :class:`SqlTokens`."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[TokenInfo, str]] = {}

    async def create(
        self, name: str, roles: list[str] | tuple[str, ...], *, expires_in: timedelta | None = None
    ) -> tuple[TokenInfo, str]:
        info, token, digest = _new(name, roles, expires_in)
        if any(i.name == name for i, _ in self._rows.values()):
            raise InvalidArgument("name", f"a token named {name!r} exists (revoked or not)")
        self._rows[info.id] = (info, digest)
        return info, token

    async def list(self) -> list[TokenInfo]:
        return sorted((i for i, _ in self._rows.values()), key=lambda i: i.name)

    async def revoke(self, name_or_id: str) -> TokenInfo:
        for info, digest in self._rows.values():
            if name_or_id in (info.name, info.id):
                if info.revoked_at is None:
                    info = TokenInfo(info.id, info.name, info.roles, info.created_at,
                                     info.expires_at, datetime.now(UTC))  # fmt: skip
                    self._rows[info.id] = (info, digest)
                return info
        raise InvalidArgument("token", f"no token named {name_or_id!r}")

    async def verify(self, token: str) -> Principal:
        token_id, secret = _parse(token)
        found = self._rows.get(token_id)
        if found is None:
            raise AuthenticationFailed("unknown API token")
        return _principal(found[0], found[1], secret)


_MEMORY: weakref.WeakKeyDictionary[object, MemoryTokens] = weakref.WeakKeyDictionary()


def token_store(store: EventStore) -> TokenStore:
    """The tokens of ``store`` (in its database; in memory for a ``memory://`` store)."""
    if supports(store, SqlStore):
        return SqlTokens(store)
    return _MEMORY.setdefault(store, MemoryTokens())
