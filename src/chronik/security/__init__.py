"""Authentication and authorisation for every face of chronik (docs/security.md).

One policy (:class:`Policy`: roles granting :class:`Operation` s on category patterns)
answers every face through :meth:`Policy.authorize` and :meth:`Policy.readable`; a
:class:`Guard` turns credentials (API tokens, OIDC JWTs, or the configured anonymous role)
into an :class:`Access`.

Crypto-shredding of personal data: :class:`ShreddingStore`, :class:`Shredder`,
:func:`forget` and the key-encryption keys of :mod:`chronik.security.keys`.
"""

from chronik.security.guard import Guard, RateLimiter
from chronik.security.keys import KeyEncryptionKey, LocalKeyEncryptionKey, generate_kek
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
from chronik.security.shredding import (
    ERASURE_CATEGORY,
    ERASURE_TYPE,
    ForgetResult,
    Shredder,
    ShreddingStore,
    erased_subject,
    erasure_stream,
    forget,
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
    "ERASURE_CATEGORY",
    "ERASURE_TYPE",
    "ForgetResult",
    "KeyEncryptionKey",
    "LocalKeyEncryptionKey",
    "Shredder",
    "ShreddingStore",
    "erased_subject",
    "erasure_stream",
    "forget",
    "generate_kek",
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
