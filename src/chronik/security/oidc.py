"""OIDC bearer tokens: JWTs checked against an issuer's published keys (JWKS).

A JWT is accepted when its signature verifies with a key of the configured JWKS (picked by
the token's ``kid``), it was issued by ``issuer`` for ``audience`` and has not expired
(``exp`` is required; ``nbf`` and ``iat`` are honoured, with ``leeway_seconds``). Its
roles come from the claim ``roles_claim``. Keys rotate without a restart: a ``kid`` not in
the cached key set makes the set be fetched again (at most every ``min_refresh_seconds``,
so that garbage tokens cannot make the server hammer the issuer), and so does a set older
than ``cache_seconds`` (a key the issuer withdrew stops working). Needs ``PyJWT`` with
``cryptography`` (``chronik[security]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

from chronik.errors import AuthenticationFailed, MissingDependency
from chronik.security.policy import OidcConfig, Principal

__all__ = ["OidcVerifier"]

MAX_JWKS_BYTES = 1024 * 1024

logger = logging.getLogger("chronik.security")


class OidcVerifier:
    """Checks JWTs for one :class:`~chronik.security.policy.OidcConfig`."""

    def __init__(self, config: OidcConfig) -> None:
        try:
            import jwt
        except ImportError as exc:
            raise MissingDependency("OIDC tokens", "PyJWT", "security") from exc
        self._jwt = jwt
        self.config = config
        self._keys: dict[str, Any] = {}
        self._fetched = -float("inf")
        self._lock = asyncio.Lock()

    def _download(self) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        request = urllib.request.Request(self.config.jwks_url, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise ValueError("the key set is over 1 MiB")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("the key set is not a JSON object")
        return data

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched < self.config.min_refresh_seconds:
                return
            self._fetched = time.monotonic()
            try:
                data = await asyncio.to_thread(self._download)
                keys = self._jwt.PyJWKSet.from_dict(data).keys
            except Exception as exc:  # network, JSON, no usable key: keep the old set
                raise AuthenticationFailed(f"cannot fetch the issuer's keys: {exc}") from exc
            self._keys = {k.key_id: k for k in keys if k.key_id}

    async def _key(self, kid: str) -> Any:
        stale = time.monotonic() - self._fetched >= self.config.cache_seconds
        if kid not in self._keys:
            await self._refresh()
        elif stale:
            try:
                await self._refresh()
            except AuthenticationFailed as exc:  # the issuer is down: keep the known keys
                logger.warning("OIDC: %s; using the cached key set", exc)
        if kid not in self._keys:
            raise AuthenticationFailed("the JWT's key id is not in the issuer's key set")
        return self._keys[kid]

    async def verify(self, token: str) -> Principal:
        """The principal of a valid JWT; :class:`AuthenticationFailed` otherwise."""
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"malformed JWT: {exc}") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationFailed("the JWT names no key id (kid)")
        if header.get("alg") not in self.config.algorithms:
            raise AuthenticationFailed(f"JWT algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=list(self.config.algorithms),
                audience=self.config.audience, issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("the JWT expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("the JWT is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed("the JWT is from another issuer") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"invalid JWT: {exc}") from None
        subject = str(claims["sub"])
        return Principal(f"oidc:{subject}"[:200], _roles(claims, self.config.roles_claim),
                         f"oidc:{subject}")  # fmt: skip


def _roles(claims: dict[str, Any], path: str) -> tuple[str, ...]:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
