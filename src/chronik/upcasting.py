"""Upcasters: how events stored in an old shape become the shapes the code knows today.

An upcaster is a pure function registered for one step, ``(type, from_version)``. It gets
the stored data as a fresh ``dict`` and returns:

- a ``dict``: the same type at ``from_version + 1``;
- an :class:`Upcast` (or a list of them): another type (a rename) or several events (a
  split), each at the version declared with ``to=``;
- ``None`` (or an empty list): the event is dropped.

Steps chain on read, v1 → v2 → … → the registered version, and the log is never rewritten.
A step of a *registered* type without an upcaster is additive: the data goes on unchanged
and fields added since have their defaults. A type that is no longer registered (renamed or
split away) needs an upcaster for every stored version.

:class:`Upcasters` holds the steps, validates the chains (no gap, no cycle, no step
registered twice; every problem names its step) and runs them over dicts.
:class:`chronik.EventRegistry` owns one and is what applications use::

    @registry.upcaster("TransactionRecorded", from_version=1)
    def add_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    @registry.upcaster("OrderPlaced", from_version=2, to="OrderSubmitted")
    def rename(data: dict[str, Any]) -> Upcast:
        return Upcast("OrderSubmitted", data)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from chronik.errors import RegistryError

__all__ = [
    "Downcaster",
    "Step",
    "Upcast",
    "Upcasters",
    "UpcasterFn",
    "split_event_id",
]

MAX_CHAIN_STEPS = 1000
"""A chain longer than this is treated as a cycle (validation rules cycles out first)."""


@dataclass(frozen=True, slots=True)
class Upcast:
    """One event an upcaster produces: ``type`` at ``schema_version`` with ``data``.

    ``schema_version=None`` takes the version declared for that type in the upcaster's
    ``to=`` (a renamed type starts at version 1 unless declared otherwise).
    """

    type: str
    data: Mapping[str, Any]
    schema_version: int | None = None


UpcasterResult: TypeAlias = Mapping[str, Any] | Upcast | Sequence[Upcast] | None
UpcasterFn: TypeAlias = Callable[[dict[str, Any]], Any]
Node: TypeAlias = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Step:
    """One registered upcaster: ``(type, from_version)`` to the declared ``targets``."""

    type: str
    from_version: int
    fn: UpcasterFn
    targets: tuple[Node, ...]

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))

    def describe(self) -> str:
        to = ", ".join(f"{t} v{v}" for t, v in self.targets)
        return f"{self.type} v{self.from_version} → {to}"


@dataclass(frozen=True, slots=True)
class Downcaster:
    """The old shape of one step: ``(type, from_version)`` data to ``from_version - 1``."""

    type: str
    from_version: int
    fn: Callable[[dict[str, Any]], Mapping[str, Any]]


class UpcastFailure(Exception):
    """Why a chain could not run: internal, the registry turns it into an ``UpcastError``.

    ``unknown`` is set when the stored type is not known at all; ``newer`` when the stored
    version is newer than the registered one (both are what tolerant readers forgive).
    """

    def __init__(self, message: str, *, unknown: bool = False, newer: bool = False) -> None:
        self.unknown = unknown
        self.newer = newer
        super().__init__(message)


def split_event_id(event_id: uuid.UUID, index: int) -> uuid.UUID:
    """The id of part ``index`` of an event an upcaster split: the first part keeps the
    original id, the others get a UUIDv5 derived from it (the same on every read and copy)."""
    if index == 0:
        return event_id
    return uuid.uuid5(event_id, f"chronik.split.{index}")


def _check_version(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RegistryError(f"{name}: schema version must be an int >= 1, not {value!r}")
    return value


def _targets(type_: str, from_version: int, to: object) -> tuple[Node, ...]:
    """Normalise ``to=`` (``None``, a type name, ``(name, version)`` or a list of these)."""
    if to is None:
        return ((type_, from_version + 1),)
    items = [to] if isinstance(to, (str, tuple)) else list(to)  # type: ignore[call-overload]
    out: list[Node] = []  # empty: the step only ever drops events
    for item in items:
        if isinstance(item, str):
            node = (item, from_version + 1 if item == type_ else 1)
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
        ):
            node = (item[0], _check_version(item[0], item[1]))
        else:
            raise RegistryError(
                f"upcaster {type_} v{from_version}: to= takes type names or (name, version) "
                f"pairs, not {item!r}"
            )
        if not node[0] or node[0] != node[0].strip():
            raise RegistryError(f"upcaster {type_} v{from_version}: bad target type {node[0]!r}")
        if node == (type_, from_version):
            raise RegistryError(f"upcaster {type_} v{from_version}: a step cannot lead to itself")
        if node not in out:
            out.append(node)
    return tuple(out)


class Upcasters:
    """The upcaster (and downcaster) steps of one registry, their validation and their runs.

    ``registered`` arguments map each registered type name to its current schema version.
    """

    def __init__(self) -> None:
        self.steps: dict[Node, Step] = {}
        self.downcasters: dict[Node, Downcaster] = {}

    def __bool__(self) -> bool:
        return bool(self.steps)

    # -- registration ---------------------------------------------------------------------

    def add(self, type_: str, from_version: int, fn: UpcasterFn, to: object = None) -> Step:
        """Register ``fn`` as the step from ``type_`` v``from_version``.

        Raises:
            RegistryError: malformed arguments, or another upcaster has this step already.
        """
        if not isinstance(type_, str) or not type_ or type_ != type_.strip():
            raise RegistryError(f"upcaster type name must be a non-empty string, not {type_!r}")
        _check_version(type_, from_version)
        if not callable(fn):
            raise RegistryError(f"upcaster {type_} v{from_version}: {fn!r} is not callable")
        step = Step(type_, from_version, fn, _targets(type_, from_version, to))
        existing = self.steps.get((type_, from_version))
        if existing is not None and existing.fn is not fn:
            raise RegistryError(
                f"two upcasters for one step, {type_} v{from_version}: "
                f"{existing.name} and {step.name}"
            )
        self.steps[(type_, from_version)] = step
        return step

    def add_downcaster(
        self, type_: str, from_version: int, fn: Callable[[dict[str, Any]], Mapping[str, Any]]
    ) -> Downcaster:
        """Register ``fn`` as the step from ``type_`` v``from_version`` one version down."""
        _check_version(type_, from_version)
        if from_version < 2:
            raise RegistryError(f"downcaster {type_} v{from_version}: there is no version below 1")
        existing = self.downcasters.get((type_, from_version))
        if existing is not None and existing.fn is not fn:
            raise RegistryError(f"two downcasters for one step, {type_} v{from_version}")
        down = Downcaster(type_, from_version, fn)
        self.downcasters[(type_, from_version)] = down
        return down

    # -- validation -----------------------------------------------------------------------

    def _edges(self, node: Node, registered: Mapping[str, int]) -> tuple[Node, ...] | None:
        """Where a node leads: a step's targets, the next version (additive), ``()`` for a
        registered current version, ``None`` when nothing can read it (a missing step)."""
        step = self.steps.get(node)
        if step is not None:
            return step.targets
        current = registered.get(node[0])
        if current is None or node[1] > current:
            return None
        if node[1] == current:
            return ()
        return ((node[0], node[1] + 1),)

    def _start_nodes(self, registered: Mapping[str, int]) -> list[Node]:
        nodes: set[Node] = set()
        for name, current in registered.items():
            nodes.update((name, v) for v in range(1, current + 1))
        by_type: dict[str, int] = {}
        for (name, version), step in self.steps.items():
            nodes.add((name, version))
            nodes.update(step.targets)
            by_type[name] = max(by_type.get(name, 0), version)
        for name, highest in by_type.items():
            if name not in registered:  # renamed away: every stored version needs a step
                nodes.update((name, v) for v in range(1, highest + 1))
        return sorted(nodes)

    def problems(self, registered: Mapping[str, int]) -> list[str]:
        """Every problem of the chains, one line each naming its step (empty: all good)."""
        found: list[str] = []
        for (name, version), step in sorted(self.steps.items()):
            current = registered.get(name)
            if current is not None and version >= current:
                found.append(
                    f"upcaster {name} v{version} ({step.name}): {name} is registered at "
                    f"v{current}, so v{version} is read directly and this step would never run"
                )
            for target, target_version in step.targets:
                target_current = registered.get(target)
                if target_current is not None and target_version > target_current:
                    found.append(
                        f"upcaster {step.describe()} ({step.name}): {target} is registered "
                        f"only up to v{target_current}"
                    )
        for name, version in sorted(self.downcasters):
            current = registered.get(name)
            if current is not None and version > current:
                found.append(
                    f"downcaster {name} v{version}: {name} is registered only up to v{current}"
                )
        reported: set[Node] = set()
        state: dict[Node, int] = {}  # 1: on the current path, 2: done
        for start in self._start_nodes(registered):
            self._walk(start, registered, state, [], found, reported)
        return found

    def _walk(
        self,
        start: Node,
        registered: Mapping[str, int],
        state: dict[Node, int],
        path: list[Node],
        found: list[str],
        reported: set[Node],
    ) -> None:
        """Depth-first over the step graph (iteratively), reporting missing steps and cycles."""
        stack: list[tuple[Node, int]] = [(start, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                if state.get(node) == 2:
                    continue
                if state.get(node) == 1:
                    cycle = [*path[path.index(node) :], node]
                    text = " → ".join(f"{t} v{v}" for t, v in cycle)
                    if node not in reported:
                        reported.add(node)
                        found.append(f"cycle: {text}")
                    continue
                edges = self._edges(node, registered)
                if edges is None:
                    if node not in reported:
                        reported.add(node)
                        found.append(self._missing(node, path, registered))
                    state[node] = 2
                    continue
                state[node] = 1
                path.append(node)
            edges = self._edges(node, registered) or ()
            if index < len(edges):
                stack.append((node, index + 1))
                stack.append((edges[index], 0))
            else:
                state[node] = 2
                path.pop()

    def _missing(self, node: Node, path: list[Node], registered: Mapping[str, int]) -> str:
        name, version = node
        before = path[-1] if path else None
        if before is None:
            leading = sorted(n for n, step in self.steps.items() if node in step.targets)
            before = leading[0] if leading else None
        via = f" (reached from {before[0]} v{before[1]})" if before is not None else ""
        current = registered.get(name)
        if current is not None:
            return (
                f"missing step {name} v{version}{via}: {name} is registered only up to v{current}"
            )
        return (
            f"missing step {name} v{version}{via}: {name} is not registered, so stored "
            f"{name} v{version} events need @registry.upcaster({name!r}, from_version={version})"
        )

    def validate(self, registered: Mapping[str, int]) -> None:
        """Raise :class:`RegistryError` listing every problem, if there is any."""
        found = self.problems(registered)
        if found:
            lines = "\n  ".join(found)
            raise RegistryError(f"upcaster chains are broken:\n  {lines}")

    def direct_from(self, registered: Mapping[str, int]) -> dict[str, int]:
        """For each registered type, the lowest stored version that decodes directly (every
        step from it to the current version is additive)."""
        out: dict[str, int] = {}
        for name, current in registered.items():
            low = current
            while low > 1 and (name, low - 1) not in self.steps:
                low -= 1
            out[name] = low
        return out

    def sources_of(self, wanted: Iterable[str], registered: Mapping[str, int]) -> set[str]:
        """Every type name whose stored events can upcast into one of ``wanted``."""
        goal = set(wanted)
        reaches: dict[Node, bool] = {}

        def reach(node: Node, depth: int = 0) -> bool:
            if node in reaches:
                return reaches[node]
            reaches[node] = False  # cycles (invalid anyway) reach nothing
            edges = self._edges(node, registered)
            if edges == ():
                result = node not in self.steps and node[0] in goal
            elif edges is None or depth > MAX_CHAIN_STEPS:
                result = False
            else:
                result = any([reach(e, depth + 1) for e in edges])
            reaches[node] = result
            return result

        out = set(goal)
        for node in self._start_nodes(registered):
            if reach(node):
                out.add(node[0])
        return out

    # -- running --------------------------------------------------------------------------

    def run(
        self, type_: str, version: int, data: dict[str, Any], registered: Mapping[str, int]
    ) -> list[tuple[str, int, dict[str, Any]]]:
        """Upcast one stored event's data to registered current versions.

        Returns ``(type, version, data)`` for each resulting event (none when dropped).

        Raises:
            UpcastFailure: the type is unknown, the version newer than the code, a step is
                missing, or an upcaster raised or returned something it did not declare.
        """
        out: list[tuple[str, int, dict[str, Any]]] = []
        work: list[tuple[str, int, dict[str, Any], int]] = [(type_, version, data, 0)]
        while work:
            name, ver, current_data, depth = work.pop()
            if depth > MAX_CHAIN_STEPS:
                raise UpcastFailure(f"the upcaster chain of {name} v{ver} does not end (a cycle)")
            current = registered.get(name)
            step = self.steps.get((name, ver))
            if step is None:
                if current is None:
                    if not any(t == name for t, _ in self.steps):
                        raise UpcastFailure(f"unknown event type {name!r}", unknown=True)
                    raise UpcastFailure(
                        f"missing step: no upcaster for {name} v{ver}, and {name} is not registered"
                    )
                if ver > current:
                    raise UpcastFailure(
                        f"stored schema version {ver} of {name} is newer than this code's "
                        f"{current}",
                        newer=True,
                    )
                if ver < 1:
                    raise UpcastFailure(f"stored schema version {ver} of {name} is not >= 1")
                if ver == current:
                    out.append((name, ver, current_data))
                else:  # additive: the data goes on unchanged
                    work.append((name, ver + 1, current_data, depth + 1))
                continue
            try:
                result = step.fn(current_data)
            except Exception as exc:
                raise UpcastFailure(
                    f"upcaster {name} v{ver} ({step.name}) raised {type(exc).__name__}: {exc}"
                ) from exc
            produced = self._results(step, result)
            # keep the order of a split: the work list is a stack
            for target, target_version, target_data in reversed(produced):
                work.append((target, target_version, target_data, depth + 1))
        return out

    def _results(self, step: Step, result: object) -> list[tuple[str, int, dict[str, Any]]]:
        if result is None:
            return []
        if isinstance(result, Mapping):
            node = (step.type, step.from_version + 1)
            if node not in step.targets:
                raise UpcastFailure(
                    f"upcaster {step.type} v{step.from_version} ({step.name}) returned a dict "
                    f"(meaning {step.type} v{step.from_version + 1}), but declares "
                    f"to={list(step.targets)}"
                )
            return [(node[0], node[1], dict(result))]
        items = [result] if isinstance(result, Upcast) else result
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, Upcast) for i in items):
            raise UpcastFailure(
                f"upcaster {step.type} v{step.from_version} ({step.name}) returned "
                f"{type(result).__name__}: expected a dict, an Upcast, a list of Upcast or None"
            )
        out: list[tuple[str, int, dict[str, Any]]] = []
        for item in items:
            version = item.schema_version
            if version is None:
                versions = [v for t, v in step.targets if t == item.type]
                if len(versions) != 1:
                    raise UpcastFailure(
                        f"upcaster {step.type} v{step.from_version} ({step.name}) returned "
                        f"type {item.type!r}, which its to={list(step.targets)} "
                        + ("does not declare" if not versions else "declares more than once")
                    )
                version = versions[0]
            elif (item.type, version) not in step.targets:
                raise UpcastFailure(
                    f"upcaster {step.type} v{step.from_version} ({step.name}) returned "
                    f"{item.type} v{version}, which its to={list(step.targets)} does not declare"
                )
            if not isinstance(item.data, Mapping):
                raise UpcastFailure(
                    f"upcaster {step.type} v{step.from_version} ({step.name}) returned data "
                    f"of type {type(item.data).__name__}, not a dict"
                )
            out.append((item.type, version, dict(item.data)))
        return out

    def run_down(
        self, type_: str, from_version: int, to_version: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply downcasters from ``from_version`` down to ``to_version``."""
        if to_version < 1 or to_version > from_version:
            raise UpcastFailure(
                f"cannot downcast {type_} v{from_version} to v{to_version}: "
                f"the target must be between 1 and {from_version}"
            )
        for version in range(from_version, to_version, -1):
            down = self.downcasters.get((type_, version))
            if down is None:
                raise UpcastFailure(
                    f"missing step: no downcaster for {type_} v{version} → v{version - 1}"
                )
            try:
                result = down.fn(data)
            except Exception as exc:
                raise UpcastFailure(
                    f"downcaster {type_} v{version} raised {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(result, Mapping):
                raise UpcastFailure(
                    f"downcaster {type_} v{version} returned {type(result).__name__}, not a dict"
                )
            data = dict(result)
        return data

    # -- description ----------------------------------------------------------------------

    def describe(self, registered: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each type's chain as JSON-ready dicts (what ``chronik schema`` prints)."""
        current_of = {name: int(v) for name, v in registered.items()}
        names = sorted(set(current_of) | {t for t, _ in self.steps})
        out: list[dict[str, Any]] = []
        for name in names:
            current = current_of.get(name)
            top = max([current or 0, *(v for t, v in self.steps if t == name)])
            steps: list[dict[str, Any]] = []
            for version in range(1, top + 1):
                step = self.steps.get((name, version))
                if step is not None:
                    steps.append(
                        {
                            "from_version": version,
                            "to": [{"type": t, "version": v} for t, v in step.targets],
                            "kind": "upcaster",
                            "function": step.name,
                        }
                    )
                elif current is not None and version < current:
                    steps.append(
                        {
                            "from_version": version,
                            "to": [{"type": name, "version": version + 1}],
                            "kind": "additive",
                            "function": None,
                        }
                    )
            downs = sorted(v for t, v in self.downcasters if t == name)
            out.append(
                {
                    "type": name,
                    "version": current,
                    "registered": current is not None,
                    "steps": steps,
                    "downcasters": downs,
                }
            )
        return out
