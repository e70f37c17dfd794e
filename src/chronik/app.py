"""An application's parts in one object, for the CLI and workers to find them.

``chronik ... --app MODULE:OBJECT`` loads an :class:`App` (or a projection, a list of
projections, or a function returning any of these)::

    app = chronik.App(
        registry=registry,
        deciders={"account": account_decider},     # by stream category
        projections=[LoyaltyPoints()],
    )
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chronik.codec import EventRegistry, default_registry
from chronik.decider import Decider
from chronik.errors import ChronikError
from chronik.events import category_of

__all__ = ["App", "load_app"]


@dataclass
class App:
    """The event registry, deciders by stream category, and projections of an application."""

    registry: EventRegistry = field(default_factory=lambda: default_registry)
    deciders: dict[str, Decider[Any, Any, Any]] = field(default_factory=dict)
    projections: Sequence[Any] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    """Room for later parts (snapshot policies, sagas, ...), keyed by name."""

    def decider_for(self, stream_id: str) -> Decider[Any, Any, Any]:
        """The decider of a stream's category.

        Raises:
            ChronikError: no decider is registered for that category.
        """
        category = category_of(stream_id)
        decider = self.deciders.get(category)
        if decider is None:
            known = ", ".join(sorted(self.deciders)) or "none"
            raise ChronikError(
                f"no decider for category {category!r} of stream {stream_id!r} (known: {known})"
            )
        return decider


def load_app(spec: str) -> App:
    """Import ``MODULE:OBJECT`` and make an :class:`App` of it (the current folder is importable).

    OBJECT may be an App, a projection, a list of projections, or a callable returning one
    of these.
    """
    from chronik.projections import ExternalProjection, Projection

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ChronikError(f"--app must be MODULE:OBJECT, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ChronikError(f"cannot load {spec!r}: {exc}") from exc
    if callable(obj) and not isinstance(obj, (App, Projection, ExternalProjection, type)):
        obj = obj()
    if isinstance(obj, App):
        return obj
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, (Projection, ExternalProjection)):
            raise ChronikError(f"{spec!r} gave {item!r}: not an App or a projection")
    return App(projections=items)
