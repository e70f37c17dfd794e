"""Event store backends and :func:`connect`, which picks one from a URL.

- ``memory://`` — in this process only (tests, examples).
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` — the embedded default.
- ``postgresql://user@host:port/db?schema=chronik`` — production
  (``pip install chronik[postgres]``).

Query parameters are checked before anything opens (see :mod:`chronik.store.urls`): every
backend takes ``max_event_bytes``; SQLite also ``synchronous`` (FULL by default) and
``busy_timeout_ms``; PostgreSQL ``schema``, ``pool_min`` and ``pool_max``, and passes the
rest to libpq. An unknown parameter or a bad value is an
:class:`~chronik.errors.UnsupportedStoreUrl` that lists what is allowed.

What a store can do is named by the capabilities of :mod:`chronik.store.port`
(:class:`EventLog`, :class:`Inspectable`, :class:`WorkerState`, :class:`SqlStore`);
:func:`require` gives a store as one of them or raises
:class:`~chronik.errors.MissingCapability`, :func:`supports` says whether it has it.
"""

from __future__ import annotations

import os
from typing import Any

from chronik.errors import MissingDependency
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
from chronik.store.urls import parse_store_url, redact_url

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
    "redact_url",
    "require",
    "store_url",
    "supports",
]

DEFAULT_STORE_URL = "sqlite:///chronik.db"


def store_url(url: str | None = None) -> str:
    """``url``, else ``$CHRONIK_STORE``, else ``sqlite:///chronik.db``."""
    if url is not None:
        return url  # an empty or odd URL is refused by parse_store_url, not defaulted
    return os.environ.get("CHRONIK_STORE") or DEFAULT_STORE_URL


async def connect(url: str | None = None, *, create: bool = True, **options: Any) -> EventStore:
    """Open the event store a URL names, applying schema migrations.

    Args:
        url: the store URL (default :func:`store_url`: ``$CHRONIK_STORE``, else
            ``sqlite:///chronik.db``); its parameters are checked first
            (:func:`chronik.store.urls.parse_store_url`).
        create: create the store when it does not exist. With ``False`` a SQLite path that
            is no file, or a file without chronik's tables, raises :class:`StoreNotFound`
            and nothing is written; on PostgreSQL, a schema without chronik's tables
            (``memory://`` always starts empty).
        options: keyword arguments for the backend, over the URL's parameters.

    Example::

        store = await chronik.connect("sqlite:///app.db")

    Raises:
        UnsupportedStoreUrl: an unknown scheme, parameter or parameter value.
        StoreNotFound: ``create=False`` and no store is there.
        MissingDependency: the backend's extra is not installed (``chronik[postgres]``).
        StoreUnavailable: the database cannot be reached.
    """
    parsed = parse_store_url(store_url(url))
    opts = {**parsed.options, **options}
    if parsed.scheme == "memory":
        return MemoryEventStore(**opts)
    if parsed.scheme == "sqlite":
        from chronik.store.sqlite import SqliteEventStore

        return await _read_through(
            await SqliteEventStore.open(parsed.target, create=create, **opts)
        )
    try:
        from chronik.store.postgres import PostgresEventStore
    except ImportError as exc:
        raise MissingDependency("a postgresql:// store", "psycopg", "postgres") from exc
    return await _read_through(await PostgresEventStore.open(parsed.target, create=create, **opts))


async def _read_through(store: EventStore) -> EventStore:
    """``store``, wrapped to read through its archive when it has archived segments."""
    from chronik.store.archived import archived_segments, with_archive

    try:
        segments = await archived_segments(store)
    except BaseException:
        await store.close()
        raise
    return with_archive(store, segments)
