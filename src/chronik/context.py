"""The metadata that travels by itself: correlation id, causation id, actor.

Code that handles a request or an event runs inside ``with chronik.context(...)``; every
append made inside it stamps these values into each event's metadata, so no caller passes
them by hand. Where no correlation id is set, each append gets a new one.

Example::

    with chronik.context(correlation_id="req-7", actor="alice"):
        await store.append("order-42", [NewEvent("OrderPlaced", {"total": 10})])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chronik.events import new_event_id

__all__ = ["MessageContext", "context", "current_context", "metadata_for_append"]


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What the current unit of work is part of."""

    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    traceparent: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_EMPTY = MessageContext()
_current: contextvars.ContextVar[MessageContext] = contextvars.ContextVar(
    "chronik_context", default=_EMPTY
)


def current_context() -> MessageContext:
    """The context in force here (empty fields where nothing was set)."""
    return _current.get()


@contextlib.contextmanager
def context(
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    actor: str | None = None,
    traceparent: str | None = None,
    **extra: Any,
) -> Iterator[MessageContext]:
    """Set correlation/causation/actor (and extra metadata keys) for the code inside.

    Values not given are inherited from the enclosing context; ``extra`` keys merge over
    the enclosing ones. Works across ``await``: it is a :mod:`contextvars` variable.
    """
    outer = _current.get()
    changes: dict[str, Any] = {}
    if correlation_id is not None:
        changes["correlation_id"] = str(correlation_id)
    if causation_id is not None:
        changes["causation_id"] = str(causation_id)
    if actor is not None:
        changes["actor"] = actor
    if traceparent is not None:
        changes["traceparent"] = traceparent
    if extra:
        changes["extra"] = {**outer.extra, **extra}
    inner = replace(outer, **changes) if changes else outer
    token = _current.set(inner)
    try:
        yield inner
    finally:
        _current.reset(token)


def metadata_for_append() -> dict[str, Any]:
    """The metadata every event of one append starts from (a new correlation id if none)."""
    ctx = _current.get()
    meta: dict[str, Any] = dict(ctx.extra) if ctx.extra else {}
    meta["correlation_id"] = ctx.correlation_id or str(new_event_id())
    if ctx.causation_id is not None:
        meta["causation_id"] = ctx.causation_id
    if ctx.actor is not None:
        meta["actor"] = ctx.actor
    if ctx.traceparent is not None:
        meta["traceparent"] = ctx.traceparent
    return meta
