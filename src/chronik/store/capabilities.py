"""Asking a store for a capability: :func:`require` and :func:`supports`.

A backend declares the capabilities it has (``capabilities``, a class attribute holding
protocols of :mod:`chronik.store.port`); these functions read that declaration and nothing
else: never the store's class, never whether a method happens to exist.

Example::

    from chronik.store import SqlStore, require

    sql = require(store, SqlStore)  # MissingCapability on memory://
    rows = await sql.query("SELECT total FROM totals_v1")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar, cast

from chronik.errors import MissingCapability
from chronik.store.port import EventLog, EventStore, Fencing, Inspectable, SqlStore, WorkerState

__all__ = ["BACKENDS", "backends_with", "missing", "require", "supports"]

C = TypeVar("C")

BACKENDS = {
    "memory": "chronik.store.memory:MemoryEventStore",
    "sqlite": "chronik.store.sqlite:SqliteEventStore",
    "postgresql": "chronik.store.postgres:PostgresEventStore",
}
"""Every backend of chronik: URL scheme -> ``module:class``."""

_PARTS: dict[object, tuple[object, ...]] = {EventStore: (EventLog, Inspectable, WorkerState)}
"""Protocols made of capabilities: a store has one when it has all of its parts."""

_WHAT: dict[object, str] = {
    EventLog: "append and read the log",
    Inspectable: "list streams, stats, counts, correlations",
    WorkerState: "checkpoints, dead letters and projection versions in transactions",
    SqlStore: "SQL through store.query() and Tx.execute/fetchall/fetchone",
    Fencing: "a migration's write fence (fence, fence_state, unfence)",
}


def _name(capability: object) -> str:
    return str(getattr(capability, "__name__", capability))


def _declares(backend: type, capability: object) -> bool:
    declared: frozenset[object] = getattr(backend, "capabilities", frozenset())
    return all(part in declared for part in _PARTS.get(capability, (capability,)))


def supports(store: object, capability: object) -> bool:
    """Whether ``store``'s backend declares ``capability`` (a protocol of
    :mod:`chronik.store.port`), for code that can do without it (a check that falls back
    to scanning, say)."""
    return _declares(type(store), capability)


def backends_with(capability: object) -> list[str]:
    """The URL schemes of the backends that declare ``capability`` (those this install can
    import)."""
    found = []
    for scheme, target in BACKENDS.items():
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:  # pragma: no cover - an optional driver is not installed
            continue
        if _declares(cls, capability):
            found.append(scheme)
    return found


def missing(store: object, capability: object) -> MissingCapability:
    """The error for ``store`` lacking ``capability``: which one, and who has it."""
    return MissingCapability(
        _name(capability),
        type(store).__name__,
        backends_with(capability),
        _WHAT.get(capability, ""),
    )


def require(store: object, capability: Callable[..., C]) -> C:
    """``store`` as ``capability`` (a protocol of :mod:`chronik.store.port`), when its backend
    declares it; call it where a worker or tool is made, so that a store without it fails at
    once and not at the first event.

    ``capability`` is typed as a callable because mypy accepts no protocol where a
    ``type[...]`` is expected.

    Raises:
        MissingCapability: the backend does not declare it; the error names the backends
            that do.
    """
    if not supports(store, capability):
        raise missing(store, capability)
    return cast(C, store)
