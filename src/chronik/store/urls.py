"""Store URLs: what :func:`chronik.connect` accepts, checked before anything is opened.

A URL names a backend by its scheme and sets the backend's options in its query:

- ``memory://`` takes ``max_event_bytes``;
- ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` takes ``max_event_bytes``,
  ``synchronous`` (FULL, EXTRA, NORMAL or OFF) and ``busy_timeout_ms``;
- ``postgresql://`` (or ``postgres://``) takes ``max_event_bytes``, ``schema``, ``pool_min``
  and ``pool_max``; any other parameter goes to libpq, which must know it
  (``sslmode``, ``connect_timeout``, ...).

An unknown scheme, a parameter the backend does not take, a parameter given twice and a
value out of range are each an :class:`~chronik.errors.UnsupportedStoreUrl` naming what is
allowed. Passwords never appear in these messages (:func:`redact_url`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from chronik.errors import MissingDependency, UnsupportedStoreUrl
from chronik.store.postgres_statements import validate_schema_name

__all__ = ["OPTIONS", "SCHEMES", "StoreUrl", "parse_store_url", "redact_url"]

SCHEMES = ("memory", "sqlite", "postgresql", "postgres")
"""The URL schemes :func:`chronik.connect` knows (``postgres`` is ``postgresql``)."""

_HOW = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db or "
    "postgresql://user@host:port/db (postgres:// too)"
)

_Check = Callable[[str], Any]
"""Turns a parameter's text into its value, or raises ValueError saying what is allowed."""


def _integer(minimum: int) -> _Check:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be an integer >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return value

    return check


def _one_of(*allowed: str) -> _Check:
    def check(text: str) -> str:
        if text.upper() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text.upper()

    return check


def _schema(text: str) -> str:
    if not text:
        raise ValueError("is empty: name a schema, or leave the parameter out for 'chronik'")
    try:
        return validate_schema_name(text)
    except ValueError:
        raise ValueError(
            "must be a plain SQL identifier: 1-63 characters of a-z, 0-9 and _, "
            "not starting with a digit"
        ) from None


OPTIONS: dict[str, dict[str, _Check]] = {
    "memory": {"max_event_bytes": _integer(1)},
    "sqlite": {
        "max_event_bytes": _integer(1),
        "synchronous": _one_of("FULL", "EXTRA", "NORMAL", "OFF"),
        "busy_timeout_ms": _integer(0),
    },
    "postgresql": {
        "max_event_bytes": _integer(1),
        "schema": _schema,
        "pool_min": _integer(0),
        "pool_max": _integer(1),
    },
}
"""Per backend, chronik's query parameters and how each is checked."""


@dataclass(frozen=True)
class StoreUrl:
    """A checked store URL.

    ``scheme`` is ``memory``, ``sqlite`` or ``postgresql``; ``target`` the SQLite file path,
    or the ``postgresql://`` URL without chronik's parameters (what libpq is given), or
    ``""`` for memory; ``options`` chronik's parameters as typed values.
    """

    scheme: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part, or a ``password``, ``sslpassword`` or
    other secret-named parameter) as ``***``.

    A URL without a password is returned as given.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL: hide whatever could be a user:password@ part
        return re.sub(r"//[^/@]*@", "//***@", url)
    user, at, host = parts.netloc.rpartition("@")
    secret_user = bool(at) and ":" in user
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_secret(k) for k, _ in pairs)
    if not secret_user and not secret_query:
        return url
    netloc = f"{user.split(':', 1)[0]}:***@{host}" if secret_user else parts.netloc
    query = parts.query
    if secret_query:
        query = urlencode([(k, "***" if _secret(k) else v) for k, v in pairs], quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret(key: str) -> bool:
    """A query parameter that holds a secret: libpq's ``password``, ``sslpassword`` and
    anything else named like a password, key passphrase or token."""
    key = key.lower()
    return any(word in key for word in ("password", "passphrase", "secret", "token"))


def _bad(url: str, reason: str) -> UnsupportedStoreUrl:
    return UnsupportedStoreUrl(f"store URL {redact_url(url)!r}: {reason}")


def parse_store_url(url: str) -> StoreUrl:
    """Check ``url`` and split it into backend, target and options; opens nothing.

    Example::

        >>> parse_store_url("sqlite:///app.db?synchronous=normal")
        StoreUrl(scheme='sqlite', target='app.db', options={'synchronous': 'NORMAL'})

    Raises:
        UnsupportedStoreUrl: an unknown scheme, a parameter the backend does not take (or
            that libpq does not know), a parameter given twice, a value out of range.
        MissingDependency: a ``postgresql://`` URL without psycopg installed.
    """
    if not isinstance(url, str):
        raise UnsupportedStoreUrl(f"a store URL is a str, not {type(url).__name__}")
    if not url:
        raise UnsupportedStoreUrl(f"the store URL is empty; write {_HOW}")
    if "\x00" in url or any("\ud800" <= ch <= "\udfff" for ch in url):
        raise _bad(url, "contains a NUL or an unpaired surrogate character")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, str(exc)) from exc
    scheme = parts.scheme.lower()
    if not scheme:
        raise _bad(url, f"not a URL; write {_HOW}")
    if scheme not in SCHEMES:
        raise _bad(url, f"unknown scheme {scheme!r}; chronik supports {_HOW}")
    if parts.fragment or url.endswith("#"):
        raise _bad(url, "a '#' fragment means nothing to a store URL")
    backend = "postgresql" if scheme == "postgres" else scheme
    checks = OPTIONS[backend]
    options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in seen:
            raise _bad(url, f"parameter {key!r} is given twice")
        seen.add(key)
        check = checks.get(key)
        if check is None:
            if backend != "postgresql":
                raise _bad(
                    url,
                    f"{scheme}:// does not take the parameter {key!r}; it takes "
                    f"{', '.join(sorted(checks))}",
                )
            rest.append((key, value))  # libpq's, checked below
            continue
        try:
            options[key] = check(value)
        except ValueError as exc:
            raise _bad(url, f"{key}={value!r} {exc}") from None
    if backend == "memory":
        return StoreUrl("memory", "", options)
    if backend == "sqlite":
        if parts.netloc:
            raise _bad(url, "write sqlite:///relative.db or sqlite:////absolute/path.db")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise _bad(url, "names no file; write sqlite:///relative.db")
        return StoreUrl("sqlite", path, options)
    conninfo = urlunsplit(
        ("postgresql", parts.netloc, parts.path, urlencode(rest, quote_via=quote), "")
    )
    _check_libpq(url, conninfo, sorted(checks))
    return StoreUrl("postgresql", conninfo, options)


def _check_libpq(url: str, conninfo: str, ours: list[str]) -> None:
    """Let libpq parse what it will be given: an unknown parameter fails here, not later."""
    try:
        from psycopg import Error as DriverError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise MissingDependency("a postgresql:// store", "psycopg", "postgres") from exc
    try:
        conninfo_to_dict(conninfo)
    except DriverError as exc:
        reason = " ".join(str(exc).split())
        raise _bad(
            url, f"{reason} (chronik's parameters: {', '.join(ours)}; libpq takes the rest)"
        ) from exc
