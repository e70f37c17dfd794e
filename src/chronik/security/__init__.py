"""Authentication and authorisation for every face of chronik (docs/security.md).

One policy (:class:`Policy`: roles granting :class:`Operation` s on category patterns)
answers every face through :meth:`Policy.authorize` and :meth:`Policy.readable`; a
:class:`Guard` turns credentials (API tokens, OIDC JWTs, or the configured anonymous role)
into an :class:`Access`.
"""

from chronik.security.guard import Guard, RateLimiter
from chronik.security.policy import (
    BUILTIN_ROLES,
    OPEN_ACCESS,
    OPEN_POLICY,
    Access,
    CategoryFilter,
    Limits,
    OidcConfig,
    Operation,
    Policy,
    Principal,
    Role,
    load_policy,
    parse_policy,
)
from chronik.security.tokens import (
    MemoryTokens,
    SqlTokens,
    TokenInfo,
    TokenStore,
    parse_duration,
    token_store,
)

__all__ = [
    "BUILTIN_ROLES",
    "OPEN_ACCESS",
    "OPEN_POLICY",
    "Access",
    "CategoryFilter",
    "Guard",
    "Limits",
    "MemoryTokens",
    "OidcConfig",
    "Operation",
    "Policy",
    "Principal",
    "RateLimiter",
    "Role",
    "SqlTokens",
    "TokenInfo",
    "TokenStore",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "token_store",
]
