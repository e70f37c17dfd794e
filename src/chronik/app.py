"""An application's parts in one object, for the CLI and workers to find them.

``chronik ... --app MODULE:OBJECT`` loads an :class:`App` (or a projection, a list of
projections, or a function returning any of these)::

    app = chronik.App(
        registry=registry,
        deciders={"account": account_decider},     # by stream category
        projections=[LoyaltyPoints()],
    )

:func:`load_object` is the one ``MODULE:OBJECT`` loader; every CLI option naming code
(``--app``, ``--transform``, ``chronik sagas run MODULE:OBJECT``) goes through it.
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
from chronik.errors import ChronikError, LoadError
from chronik.events import category_of

__all__ = ["App", "load_app", "load_object"]


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


def load_object(spec: str, what: str = "MODULE:OBJECT") -> object:
    """Import ``MODULE:OBJECT`` (``OBJECT`` may be dotted: ``module:factory.attr``).

    The current folder is importable, as it is for ``python -m``. ``what`` names the option
    in messages (``"--app"``, say). An exception raised by the module's own code while it is
    imported (other than an ``ImportError``) is not caught: it is a bug to see whole.

    Raises:
        LoadError: ``spec`` is not ``MODULE:OBJECT``, the module is not found, importing it
            failed on a missing import, or it has no such attribute.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LoadError(spec, what, "write MODULE:OBJECT, a module path, a colon, a name in it")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise LoadError(
                spec,
                what,
                f"no module named {exc.name!r} (searched the current folder and sys.path)",
            ) from exc
        raise LoadError(spec, what, f"importing module {module_name!r} failed: {exc}") from exc
    except ImportError as exc:
        raise LoadError(spec, what, f"importing module {module_name!r} failed: {exc}") from exc
    found: list[str] = []
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError as exc:
            owner = f"{module_name}:{'.'.join(found)}" if found else f"module {module_name}"
            raise LoadError(spec, what, f"{owner} has no attribute {name!r}") from exc
        found.append(name)
    return obj


def load_app(spec: str) -> App:
    """Import ``MODULE:OBJECT`` and make an :class:`App` of it (the current folder is importable).

    OBJECT may be an App, a projection, a list of projections, or a callable returning one
    of these.

    Raises:
        LoadError: see :func:`load_object`; or the object is none of these.
    """
    from chronik.projections.kinds import ExternalProjection, Projection

    obj = load_object(spec, "--app")
    if callable(obj) and not isinstance(obj, (App, Projection, ExternalProjection, type)):
        obj = obj()
    if isinstance(obj, App):
        return obj
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, (Projection, ExternalProjection)):
            raise LoadError(spec, "--app", f"gave {item!r}: not an App or a projection")
    return App(projections=items)
