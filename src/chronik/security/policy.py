"""Who may do what: operations granted by roles on category patterns.

A :class:`Policy` holds roles; each role grants operations (:class:`Operation`) on category
patterns (shell globs, ``orders``, ``invoice*``, ``*``). A :class:`Principal` is whoever
called (a token, an OIDC subject, the anonymous caller) with the roles it holds. Every face
(the HTTP API, live push, the console, the KurrentDB gRPC face) asks the same two
questions:

* :meth:`Policy.authorize` ``(principal, operation, category)``: raises
  :class:`~chronik.errors.AccessDenied` unless a role grants ``operation`` on ``category``
  (``None``: the store as a whole, which needs a grant on the pattern ``*``);
* :meth:`Policy.readable` ``(principal)``: a :class:`CategoryFilter` for listings, the
  global log and live feeds, which show only what it accepts.

The answer depends on the principal and the name asked about, never on what the store
holds, so a refusal tells nothing about whether a stream exists.

Built-in roles: ``admin`` (every operation on ``*``), ``reader`` (``read`` and
``read_metadata`` on ``*``) and ``writer`` (``reader`` plus ``append``). A policy file::

    anonymous = "reader"              # optional: the role of callers without credentials

    [roles.orders_clerk]
    read = ["orders", "invoice*"]
    append = ["orders"]

    [oidc]                            # optional: accept JWTs of this issuer
    issuer = "https://login.example.com/"
    audience = "chronik"
    jwks_url = "https://login.example.com/.well-known/jwks.json"
    roles_claim = "roles"

    [limits]
    requests_per_second = 50          # per principal; 429 above it
    burst = 100
"""

from __future__ import annotations

import enum
import fnmatch
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronik.errors import AccessDenied, PolicyError

__all__ = [
    "BUILTIN_ROLES",
    "OPEN_ACCESS",
    "OPEN_POLICY",
    "Access",
    "CategoryFilter",
    "Limits",
    "OidcConfig",
    "Operation",
    "Policy",
    "Principal",
    "Role",
    "load_policy",
    "parse_policy",
]


class Operation(enum.StrEnum):
    """What a principal may do on a category."""

    READ = "read"
    """Read its streams' events (streams, the global log, live feeds, traces, state)."""
    APPEND = "append"
    DELETE = "delete"
    READ_METADATA = "read_metadata"
    WRITE_METADATA = "write_metadata"
    OPERATE = "operate"
    """Operators' actions: projections, dead letters, sagas, snapshots, checks, stats."""


@dataclass(frozen=True, slots=True)
class Role:
    """A name and the category patterns on which it grants each operation."""

    name: str
    grants: Mapping[Operation, tuple[str, ...]]

    def allows(self, operation: Operation, category: str | None) -> bool:
        patterns = self.grants.get(operation, ())
        if category is None:
            return "*" in patterns
        return any(p == "*" or fnmatch.fnmatchcase(category, p) for p in patterns)


def _role(name: str, **grants: tuple[str, ...]) -> Role:
    return Role(name, {Operation(k): v for k, v in grants.items()})


BUILTIN_ROLES: Mapping[str, Role] = {
    "admin": Role("admin", {op: ("*",) for op in Operation}),
    "reader": _role("reader", read=("*",), read_metadata=("*",)),
    "writer": _role("writer", read=("*",), read_metadata=("*",), append=("*",)),
}
"""Roles every policy has (a policy file may not redefine them)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: ``name`` for messages and logs (``token:ci``, ``oidc:alice``,
    ``anonymous``), ``key`` for rate limits (one bucket each), and the role names held."""

    name: str
    roles: tuple[str, ...]
    key: str = ""


@dataclass(frozen=True, slots=True)
class CategoryFilter:
    """The categories a principal may read: every one (``everything``) or those matching
    ``patterns``. Call it with a category; ``exact`` lists the patterns when none is a glob
    (a store can then filter by them itself)."""

    everything: bool
    patterns: tuple[str, ...] = ()

    def __call__(self, category: str) -> bool:
        return self.everything or any(fnmatch.fnmatchcase(category, p) for p in self.patterns)

    @property
    def exact(self) -> tuple[str, ...] | None:
        if self.everything or any(c in p for p in self.patterns for c in "*?["):
            return None
        return self.patterns


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Which JWTs are accepted: signed by a key of ``jwks_url``, from ``issuer``, for
    ``audience``, not expired; roles read from the claim ``roles_claim`` (a dotted path,
    ``realm_access.roles``; a list or a space-separated string)."""

    issuer: str
    audience: str
    jwks_url: str
    roles_claim: str = "roles"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_seconds: float = 30.0
    min_refresh_seconds: float = 10.0
    """An unknown key id refetches the key set at most this often (key rotation)."""
    cache_seconds: float = 300.0
    """The key set is fetched again when older than this (a withdrawn key stops working)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-principal request rate on the HTTP face (``None``: unlimited)."""

    requests_per_second: float | None = None
    burst: int = 20


@dataclass(frozen=True)
class Policy:
    """Roles, the anonymous role (``None``: credentials required), OIDC and limits."""

    roles: Mapping[str, Role] = field(default_factory=lambda: dict(BUILTIN_ROLES))
    anonymous: str | None = None
    oidc: OidcConfig | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.anonymous is not None and self.anonymous not in self.roles:
            raise PolicyError("anonymous", f"no role {self.anonymous!r} ({self._known()})")

    def _known(self) -> str:
        return "roles: " + ", ".join(sorted(self.roles))

    def _roles(self, principal: Principal) -> Iterable[Role]:
        return (self.roles[r] for r in principal.roles if r in self.roles)

    def allows(self, principal: Principal, operation: Operation, category: str | None) -> bool:
        """Whether a role of ``principal`` grants ``operation`` on ``category``."""
        return any(role.allows(operation, category) for role in self._roles(principal))

    def authorize(self, principal: Principal, operation: Operation, category: str | None) -> None:
        """Raise :class:`~chronik.errors.AccessDenied` unless ``principal`` may do
        ``operation`` on ``category`` (``None``: the store as a whole)."""
        if not self.allows(principal, operation, category):
            raise AccessDenied(principal.name, str(operation), category)

    def readable(self, principal: Principal) -> CategoryFilter:
        """The categories ``principal`` may read."""
        patterns: list[str] = []
        for role in self._roles(principal):
            found = role.grants.get(Operation.READ, ())
            if "*" in found:
                return CategoryFilter(True)
            patterns.extend(p for p in found if p not in patterns)
        return CategoryFilter(False, tuple(patterns))

    def with_anonymous(self, role: str | None) -> Policy:
        """This policy with another anonymous role (``chronik serve --anonymous``)."""
        return Policy(self.roles, role, self.oidc, self.limits)

    def with_rate(self, requests_per_second: float | None) -> Policy:
        return Policy(self.roles, self.anonymous, self.oidc,
                      Limits(requests_per_second, self.limits.burst))  # fmt: skip


OPEN_POLICY = Policy(anonymous="admin")
"""No policy: everyone is admin (``chronik serve`` on the loopback without ``--policy``)."""


@dataclass(frozen=True, slots=True)
class Access:
    """A principal under a policy: what a request handler asks."""

    policy: Policy
    principal: Principal

    def authorize(self, operation: Operation, category: str | None) -> None:
        self.policy.authorize(self.principal, operation, category)

    def allows(self, operation: Operation, category: str | None) -> bool:
        return self.policy.allows(self.principal, operation, category)

    def readable(self) -> CategoryFilter:
        return self.policy.readable(self.principal)


OPEN_ACCESS = Access(OPEN_POLICY, Principal("anonymous", ("admin",), "anonymous"))


# -- loading --------------------------------------------------------------------------------


def load_policy(path: str | Path) -> Policy:
    """The policy in the TOML file at ``path``.

    Raises:
        PolicyError: the file cannot be read, is not TOML, or an entry is wrong (the error's
            ``key`` names it).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError("(file)", f"cannot read {str(path)!r}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError("(file)", f"{str(path)!r} is not valid TOML: {exc}") from exc
    return parse_policy(data)


def _unknown(where: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    allowed = set(known)
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            known_keys = ", ".join(sorted(allowed))
            raise PolicyError(f"{prefix}{key}", f"unknown key (known: {known_keys})")


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(key, f"must be a non-empty string, got {value!r}"[:200])
    return value


def _number(key: str, value: object, *, minimum: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise PolicyError(key, f"must be a number >= {minimum}, got {value!r}"[:200])
    return float(value)


def parse_policy(data: Mapping[str, Any]) -> Policy:
    """A policy from parsed TOML (see the module docstring); :class:`PolicyError` names the
    first bad key."""
    _unknown("", data, ("anonymous", "roles", "oidc", "limits"))
    roles = dict(BUILTIN_ROLES)
    raw_roles = data.get("roles", {})
    if not isinstance(raw_roles, dict):
        raise PolicyError("roles", "must be a table of roles")
    for name, grants in raw_roles.items():
        key = f"roles.{name}"
        if name in BUILTIN_ROLES:
            raise PolicyError(key, "a built-in role cannot be redefined")
        if not isinstance(grants, dict):
            raise PolicyError(key, "must be a table: operation = [category patterns]")
        _unknown(key, grants, (op.value for op in Operation))
        parsed: dict[Operation, tuple[str, ...]] = {}
        for op_name, patterns in grants.items():
            if not isinstance(patterns, list):
                raise PolicyError(f"{key}.{op_name}", "must be a list of category patterns")
            parsed[Operation(op_name)] = tuple(
                _text(f"{key}.{op_name}[{i}]", p) for i, p in enumerate(patterns)
            )
        roles[name] = Role(name, parsed)
    anonymous = data.get("anonymous")
    if anonymous is not None:
        _text("anonymous", anonymous)
    oidc = None
    if "oidc" in data:
        raw = data["oidc"]
        if not isinstance(raw, dict):
            raise PolicyError("oidc", "must be a table")
        fields = ("issuer", "audience", "jwks_url", "roles_claim", "algorithms",
                  "leeway_seconds", "min_refresh_seconds", "cache_seconds")  # fmt: skip
        _unknown("oidc", raw, fields)
        for required in ("issuer", "audience", "jwks_url"):
            if required not in raw:
                raise PolicyError(f"oidc.{required}", "is required")
        algorithms = raw.get("algorithms", ["RS256", "ES256"])
        if not isinstance(algorithms, list) or not algorithms:
            raise PolicyError("oidc.algorithms", "must be a non-empty list")
        for i, alg in enumerate(algorithms):
            if _text(f"oidc.algorithms[{i}]", alg).upper().startswith(("HS", "NONE")):
                raise PolicyError(f"oidc.algorithms[{i}]", f"{alg!r}: only public-key algorithms")
        oidc = OidcConfig(
            _text("oidc.issuer", raw["issuer"]),
            _text("oidc.audience", raw["audience"]),
            _text("oidc.jwks_url", raw["jwks_url"]),
            _text("oidc.roles_claim", raw.get("roles_claim", "roles")),
            tuple(algorithms),
            _number("oidc.leeway_seconds", raw.get("leeway_seconds", 30), minimum=0),
            _number("oidc.min_refresh_seconds", raw.get("min_refresh_seconds", 10), minimum=0),
            _number("oidc.cache_seconds", raw.get("cache_seconds", 300), minimum=0),
        )
    limits = Limits()
    if "limits" in data:
        raw = data["limits"]
        if not isinstance(raw, dict):
            raise PolicyError("limits", "must be a table")
        _unknown("limits", raw, ("requests_per_second", "burst"))
        rate = raw.get("requests_per_second")
        burst = raw.get("burst", 20)
        limits = Limits(
            None if rate is None else _number("limits.requests_per_second", rate, minimum=0.001),
            int(_number("limits.burst", burst, minimum=1)),
        )
    return Policy(roles, anonymous, oidc, limits)
