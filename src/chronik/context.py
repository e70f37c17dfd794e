"""The metadata that travels by itself: correlation id, causation id, actor.

Code that handles a request or an event runs inside ``with chronik.context(...)``; every
append made inside it stamps these values into each event's metadata, so no caller passes
them by hand. Where no correlation id is set, each append gets a new one.

Example::

    with chronik.context(correlation_id="req-7", actor="alice"):
        await store.append("order-42", [NewEvent("OrderPlaced", {"total": 10})])
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
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


class context:  # lower case: used like a function, ``with chronik.context(...)``
    """Set correlation/causation/actor (and extra metadata keys) for the code inside.

    ``with context(correlation_id=..., causation_id=..., actor=..., **extra) as ctx:``.
    Values not given are inherited from the enclosing context; ``extra`` keys merge over
    the enclosing ones. Works across ``await``: it is a :mod:`contextvars` variable.
    (A small class rather than a generator: projections enter one per event.)
    """

    __slots__ = ("_changes", "_token")

    def __init__(
        self,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        actor: str | None = None,
        traceparent: str | None = None,
        **extra: Any,
    ) -> None:
        self._changes = (
            None if correlation_id is None else str(correlation_id),
            None if causation_id is None else str(causation_id),
            actor,
            traceparent,
            extra,
        )

    def __enter__(self) -> MessageContext:
        outer = _current.get()
        correlation_id, causation_id, actor, traceparent, extra = self._changes
        inner = MessageContext(
            outer.correlation_id if correlation_id is None else correlation_id,
            outer.causation_id if causation_id is None else causation_id,
            outer.actor if actor is None else actor,
            outer.traceparent if traceparent is None else traceparent,
            {**outer.extra, **extra} if extra else outer.extra,
        )
        self._token = _current.set(inner)
        return inner

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)


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
