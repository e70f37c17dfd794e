"""Event store backends and :func:`connect`, which picks one from a URL.

- ``memory://`` — in this process only (tests, examples).
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` — the embedded default.
- ``postgresql://user@host:port/db?schema=chronik`` — production
  (``pip install chronik[postgres]``).

Query options understood by every backend: ``max_event_bytes``. SQLite also takes
``synchronous`` (FULL by default) and ``busy_timeout_ms``; PostgreSQL takes ``schema``,
``pool_min`` and ``pool_max``. Everything else in a PostgreSQL URL goes to libpq.

What a store can do is named by the capabilities of :mod:`chronik.store.port`
(:class:`EventLog`, :class:`Inspectable`, :class:`WorkerState`, :class:`SqlStore`);
:func:`require` gives a store as one of them or raises
:class:`~chronik.errors.MissingCapability`, :func:`supports` says whether it has it.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from chronik.errors import UnsupportedStoreUrl
from chronik.store.capabilities import require, supports
from chronik.store.memory import MemoryEventStore
from chronik.store.port import (
    EventLog,
    EventStore,
    Inspectable,
    SqlStore,
    StoreStats,
    StreamInfo,
    WorkerState,
)

__all__ = [
    "DEFAULT_STORE_URL",
    "EventLog",
    "EventStore",
    "Inspectable",
    "SqlStore",
    "StoreStats",
    "StreamInfo",
    "WorkerState",
    "connect",
    "require",
    "store_url",
    "supports",
]

DEFAULT_STORE_URL = "sqlite:///chronik.db"

_INT_OPTIONS = {"max_event_bytes", "busy_timeout_ms", "pool_min", "pool_max"}


def store_url(url: str | None = None) -> str:
    """``url``, else ``$CHRONIK_STORE``, else ``sqlite:///chronik.db``."""
    return url or os.environ.get("CHRONIK_STORE") or DEFAULT_STORE_URL


def _options(query: str, allowed: set[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    ours: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in allowed:
            if key in _INT_OPTIONS:
                try:
                    ours[key] = int(value)
                except ValueError as exc:
                    raise UnsupportedStoreUrl(f"option {key}={value!r} is not an integer") from exc
            else:
                ours[key] = value
        else:
            rest.append((key, value))
    return ours, rest


async def connect(url: str | None = None, **options: Any) -> EventStore:
    """Open the event store a URL names, applying schema migrations.

    Example::

        store = await chronik.connect("sqlite:///app.db")

    Raises:
        UnsupportedStoreUrl: unknown scheme or malformed option.
        StoreUnavailable: the database cannot be reached.
    """
    url = store_url(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        opts, rest = _options(parts.query, {"max_event_bytes"})
        if rest:
            raise UnsupportedStoreUrl(f"memory:// does not take options {[k for k, _ in rest]}")
        return MemoryEventStore(**{**opts, **options})
    if scheme == "sqlite":
        from chronik.store.sqlite import SqliteEventStore

        opts, rest = _options(parts.query, {"max_event_bytes", "synchronous", "busy_timeout_ms"})
        if rest:
            raise UnsupportedStoreUrl(f"sqlite:// does not take options {[k for k, _ in rest]}")
        if parts.netloc:
            raise UnsupportedStoreUrl(
                f"{url!r}: write sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise UnsupportedStoreUrl(f"{url!r} names no file")
        return await SqliteEventStore.open(path, **{**opts, **options})
    if scheme in ("postgresql", "postgres"):
        try:
            from chronik.store.postgres import PostgresEventStore
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UnsupportedStoreUrl(
                "PostgreSQL needs psycopg: pip install 'chronik[postgres]'"
            ) from exc
        opts, rest = _options(parts.query, {"max_event_bytes", "schema", "pool_min", "pool_max"})
        conninfo = urlunsplit(
            ("postgresql", parts.netloc, parts.path, urlencode(rest, quote_via=quote), "")
        )
        return await PostgresEventStore.open(conninfo, **{**opts, **options})
    raise UnsupportedStoreUrl(
        f"unknown store URL {url!r}: use memory://, sqlite:///path.db or postgresql://..."
    )
