"""The door every face goes through: credentials in, an :class:`Access` out (or an error).

:meth:`Guard.authenticate` turns an ``Authorization`` header value (``Bearer <token>``)
into an :class:`~chronik.security.policy.Access`: an API token (``chronik_...``, checked
against the store on every call so revocation holds at once), an OIDC JWT (when the policy
has ``[oidc]``), or, without credentials, the policy's anonymous role when it has one.
:meth:`Guard.admit` then applies the per-principal request rate (a token bucket).

Example (a face of its own)::

    guard = Guard(policy, token_store(store))
    access = await guard.authenticate(headers.get("authorization"))
    guard.admit(access.principal)
    access.authorize(Operation.APPEND, category_of(stream_id))
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable

from chronik.errors import AuthenticationFailed, RateLimited
from chronik.security.policy import Access, Policy, Principal
from chronik.security.tokens import TOKEN_PREFIX, TokenStore

__all__ = ["MAX_CREDENTIAL_LENGTH", "Guard", "RateLimiter", "basic_credential"]

MAX_CREDENTIAL_LENGTH = 8192
"""Longest ``Authorization`` value looked at (a bigger one is refused unread)."""


def basic_credential(encoded: str) -> str:
    """The password of a ``Basic`` credential (``base64(user:password)``), which is the
    bearer credential itself (KurrentDB clients send ``user:password`` from their
    connection string: ``kurrentdb://any-name:chronik_...@host``).

    Raises:
        AuthenticationFailed: not strict base64, not UTF-8, no ``:``, an empty password, or
            a control character (NUL included) anywhere in it.
    """
    try:
        decoded = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        raise AuthenticationFailed(
            "malformed Basic credentials (not base64 of user:password)"
        ) from None
    _user, sep, password = decoded.partition(":")
    if not sep or not password:
        raise AuthenticationFailed("Basic credentials need user:password (the password: a token)")
    if any(ord(c) < 32 or ord(c) == 127 for c in decoded):
        raise AuthenticationFailed("Basic credentials contain a control character")
    return password


class RateLimiter:
    """A token bucket per principal key: ``rate`` requests a second, bursts of ``burst``."""

    MAX_KEYS = 10_000

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when a request may go now; else the seconds until one may."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= self.MAX_KEYS:
            return
        full = self.burst / self.rate
        for key, (_, last) in list(self._buckets.items()):
            if now - last >= full:  # refilled: forgetting it changes nothing
                del self._buckets[key]


class Guard:
    """Authenticates callers for one policy, token store and (optional) OIDC issuer."""

    def __init__(self, policy: Policy, tokens: TokenStore | None = None) -> None:
        self.policy = policy
        self.tokens = tokens
        self.oidc = None
        if policy.oidc is not None:
            from chronik.security.oidc import OidcVerifier

            self.oidc = OidcVerifier(policy.oidc)
        limits = policy.limits
        self.limiter = (
            None
            if limits.requests_per_second is None
            else RateLimiter(limits.requests_per_second, limits.burst)
        )

    async def authenticate(
        self, authorization: str | None, *, client: str = "", basic: bool = False
    ) -> Access:
        """The access of whoever sent ``authorization`` (``None``: no header).

        With ``basic`` (the KurrentDB gRPC face), ``Basic base64(user:password)`` is accepted
        too: the password is the credential (an API token or an OIDC JWT), the user name is
        not used (see :func:`basic_credential`).

        Raises:
            AuthenticationFailed: no credentials and no anonymous role, or credentials that
                are malformed, unknown, expired or revoked.
        """
        if authorization is None or authorization == "":
            if self.policy.anonymous is None:
                raise AuthenticationFailed("credentials required: Authorization: Bearer <token>")
            principal = Principal("anonymous", (self.policy.anonymous,), f"anonymous:{client}")
            return Access(self.policy, principal)
        if len(authorization) > MAX_CREDENTIAL_LENGTH:
            raise AuthenticationFailed("the Authorization header is too long")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if basic and scheme.lower() == "basic":
            credential = basic_credential(credential)
        elif scheme.lower() != "bearer" or not credential:
            expected = "Bearer <token> or Basic <user:token>" if basic else "Bearer <token>"
            raise AuthenticationFailed(f"expected Authorization: {expected}")
        return Access(self.policy, await self.principal(credential))

    async def principal(self, credential: str) -> Principal:
        """The principal of a bearer credential (an API token or an OIDC JWT)."""
        if credential.startswith(TOKEN_PREFIX):
            if self.tokens is None:
                raise AuthenticationFailed("API tokens are not accepted here")
            return await self.tokens.verify(credential)
        if credential.count(".") == 2 and self.oidc is not None:
            return await self.oidc.verify(credential)
        raise AuthenticationFailed("unknown kind of bearer token")

    def admit(self, principal: Principal) -> None:
        """Count one request of ``principal``; :class:`RateLimited` over the rate."""
        if self.limiter is None:
            return
        wait = self.limiter.take(principal.key or principal.name)
        if wait > 0:
            raise RateLimited(principal.name, wait)
