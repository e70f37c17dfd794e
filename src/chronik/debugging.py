"""Looking back: replay a stream state by state, and trace one request across streams.

- :func:`replay` folds a stream's events one at a time with its decider and keeps the state
  after each event and what changed (``chronik replay``); :func:`load_at` gives the state
  as of a version or a time.
- :func:`trace` finds every event of a correlation id (an indexed read, not a scan) and
  arranges them in the causal tree their causation ids draw (``chronik trace``). An event
  whose cause is not among them is an *orphan*: shown, never dropped.

The integrity checks (``chronik check``) are in :mod:`chronik.integrity`.

Example::

    app = chronik.load_app("shop.app:app")
    steps = await replay(store, "order-42", app.decider_for("order-42"), registry=app.registry)
    for step in steps.steps:
        print(step.event.version, step.event.type, [c.describe() for c in step.changes])

    tree = await trace(store, "checkout-7")
    print(tree.to_mermaid())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

import msgspec

from chronik.aggregate import Loaded
from chronik.codec import EventRegistry, default_registry
from chronik.decider import Decider
from chronik.events import RecordedEvent
from chronik.store.protocol import EventStore

__all__ = [
    "Change",
    "Replay",
    "ReplayStep",
    "Trace",
    "TraceNode",
    "diff",
    "format_delta",
    "load_at",
    "replay",
    "to_plain",
    "trace",
]

S = TypeVar("S")

# -- plain values and diffs ---------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of a state: dataclasses, Structs and objects become dicts.

    Tuples and sets become lists, ``Decimal``/``datetime``/``UUID`` their text (as msgspec
    encodes them), attributes starting with ``_`` of plain objects are left out, and what
    none of this covers becomes its ``repr``. A copy: a state changed in place later (an
    :class:`~chronik.Aggregate`) does not change it.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_plain(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(value, msgspec.Struct):
        return {name: to_plain(getattr(value, name)) for name in value.__struct_fields__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        pass
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        return {k: to_plain(v) for k, v in attrs.items() if not k.startswith("_")}
    return repr(value)


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two plain states, at ``path`` (``""``: the whole state)."""

    path: str
    kind: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None

    def describe(self) -> str:
        """``path: before → after`` (``+ path: value`` added, ``- path: value`` removed)."""
        where = self.path or "(state)"
        if self.kind == "added":
            return f"+ {where}: {_short(self.after)}"
        if self.kind == "removed":
            return f"- {where}: {_short(self.before)}"
        return f"{where}: {_short(self.before)} → {_short(self.after)}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "before": self.before, "after": self.after}


def _short(value: Any, width: int = 60) -> str:
    text = msgspec.json.encode(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """What changed from one plain state to the next (see :func:`to_plain`), key by key.

    Dicts are compared key by key and lists item by item (``items[2]``); anything else is
    one change when its type or value differs.
    """
    changes: list[Change] = []
    # depth first, in key order; an item is a Change to emit or a pair to compare
    stack: list[Change | tuple[str, Any, Any]] = [(path, before, after)]
    while stack:
        item = stack.pop()
        if isinstance(item, Change):
            changes.append(item)
            continue
        where, old, new = item
        todo: list[Change | tuple[str, Any, Any]] = []
        if isinstance(old, dict) and isinstance(new, dict):
            for key in [*old, *(k for k in new if k not in old)]:
                sub = f"{where}.{key}" if where else str(key)
                if key not in new:
                    todo.append(Change(sub, "removed", before=old[key]))
                elif key not in old:
                    todo.append(Change(sub, "added", after=new[key]))
                else:
                    todo.append((sub, old[key], new[key]))
        elif isinstance(old, list) and isinstance(new, list):
            for index in range(max(len(old), len(new))):
                sub = f"{where}[{index}]"
                if index >= len(new):
                    todo.append(Change(sub, "removed", before=old[index]))
                elif index >= len(old):
                    todo.append(Change(sub, "added", after=new[index]))
                else:
                    todo.append((sub, old[index], new[index]))
        elif type(old) is not type(new) or old != new:
            changes.append(Change(where, "changed", before=old, after=new))
        stack.extend(reversed(todo))
    return changes


# -- replay -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """One event of a replay and the state right after it."""

    event: RecordedEvent
    decoded: list[Any]
    """The event as its registered class (upcast: several after a split, none if dropped)."""
    state: Any
    """The state after this event, as a plain copy (see :func:`to_plain`)."""
    changes: list[Change]
    """What this event changed in the state."""

    def to_dict(self) -> dict[str, Any]:
        ev = self.event
        return {
            "version": ev.version,
            "position": ev.position,
            "type": ev.type,
            "schema_version": ev.schema_version,
            "event_id": str(ev.event_id),
            "recorded_at": ev.recorded_at.isoformat(),
            "correlation_id": ev.correlation_id,
            "causation_id": ev.causation_id,
            "data": to_plain(self.decoded[0] if len(self.decoded) == 1 else self.decoded),
            "state": self.state,
            "changes": [c.to_dict() for c in self.changes],
        }


@dataclass(frozen=True, slots=True)
class Replay:
    """A stream's states event by event, up to a version or a time."""

    stream_id: str
    initial: Any
    """The plain initial state (before any event)."""
    steps: list[ReplayStep]
    final: Any
    """The state after the last step, as the decider's evolve returned it (not a copy)."""
    stream_version: int
    """The stream's version now (the replay may stop before it)."""

    @property
    def version(self) -> int:
        """The version replayed up to (``-1``: no event)."""
        return self.steps[-1].event.version if self.steps else -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "version": self.version,
            "stream_version": self.stream_version,
            "initial_state": self.initial,
            "steps": [s.to_dict() for s in self.steps],
            "final_state": self.steps[-1].state if self.steps else self.initial,
        }


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _prefix(
    store: EventStore, stream_id: str, to_version: int | None, as_of: datetime | None
) -> tuple[list[RecordedEvent], int]:
    """The events up to ``to_version`` and to the last one recorded at or before ``as_of``,
    with the stream's current version. Raises ``StreamNotFound``."""
    if to_version is not None and to_version < 0:
        raise ValueError(f"to_version must be >= 0, not {to_version}")
    events = [e async for e in store.read_stream(stream_id)]
    current = events[-1].version if events else -1
    if to_version is not None:
        events = [e for e in events if e.version <= to_version]
    if as_of is not None:
        cutoff = _aware(as_of)
        last = -1
        for index, ev in enumerate(events):
            if ev.recorded_at <= cutoff:
                last = index
        events = events[: last + 1]
    return events, current


def _decoder(registry: EventRegistry) -> Callable[[RecordedEvent], list[Any]]:
    """``registry.decode_many`` (upcasts may split or drop events), else one ``decode``."""
    many = getattr(registry, "decode_many", None)
    if many is not None:
        return cast("Callable[[RecordedEvent], list[Any]]", many)
    return lambda recorded: [registry.decode(recorded)]


async def replay(
    store: EventStore,
    stream_id: str,
    decider: Decider[Any, Any, Any],
    *,
    registry: EventRegistry = default_registry,
    to_version: int | None = None,
    as_of: datetime | None = None,
) -> Replay:
    """Fold ``stream_id`` one event at a time, keeping each state and what changed.

    Args:
        to_version: stop after this version.
        as_of: stop after the last event recorded at or before this time (naive: UTC). When
            clocks stepped back, it is still a prefix of the stream: up to the event of
            highest version recorded at or before the time.

    Raises:
        StreamNotFound: the stream has no events.
        UnknownEventType, SerializationError: an event cannot be decoded or upcast (fail
            closed).
    """
    events, current = await _prefix(store, stream_id, to_version, as_of)
    decode = _decoder(registry)
    state = decider.initial_state()
    initial = plain = to_plain(state)
    steps: list[ReplayStep] = []
    for recorded in events:
        decoded = decode(recorded)
        for item in decoded:
            state = decider.evolve(state, item)
        after = to_plain(state)
        steps.append(ReplayStep(recorded, decoded, after, diff(plain, after)))
        plain = after
    return Replay(stream_id, initial, steps, state, current)


async def load_at(
    store: EventStore,
    stream_id: str,
    decider: Decider[Any, Any, S],
    *,
    registry: EventRegistry = default_registry,
    version: int | None = None,
    as_of: datetime | None = None,
) -> Loaded[S]:
    """The state of ``stream_id`` as of a version or a time (both: whichever is earlier).

    ``Loaded.version`` is the last event folded (``-1``: none; before the first event).
    Folds from the first event, never from a snapshot, so it shows what the events say.

    Raises:
        StreamNotFound: the stream has no events.
    """
    events, _ = await _prefix(store, stream_id, version, as_of)
    decode = _decoder(registry)
    state = decider.fold(item for e in events for item in decode(e))
    return Loaded(state, events[-1].version if events else -1)


# -- trace --------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class TraceNode:
    """One event in a causal tree."""

    event: RecordedEvent
    children: list[TraceNode] = field(default_factory=list)
    parent: TraceNode | None = field(default=None, repr=False)
    missing_parent: str | None = None
    """The causation id, when no event of the trace has it (an orphan)."""
    cycle: bool = False
    """The causation ids made a cycle; this node was cut out of it and shown as a root."""

    @property
    def orphan(self) -> bool:
        """Its causation id names no event of the trace (or a cycle was cut here)."""
        return self.missing_parent is not None or self.cycle

    @property
    def since_parent(self) -> timedelta | None:
        if self.parent is None:
            return None
        return self.event.recorded_at - self.parent.event.recorded_at


@dataclass(slots=True)
class Trace:
    """Every event of one correlation id, as the causal tree of their causation ids."""

    correlation_id: str
    events: list[RecordedEvent]
    """By position."""
    roots: list[TraceNode]
    """Events without a cause, and orphans, by position."""

    @property
    def orphans(self) -> list[TraceNode]:
        return [n for n in self.roots if n.orphan]

    def walk(self) -> Iterator[tuple[TraceNode, int]]:
        """Every node with its depth, depth first, children by position."""
        stack = [(node, 0) for node in reversed(self.roots)]
        while stack:
            node, depth = stack.pop()
            yield node, depth
            stack.extend((child, depth + 1) for child in reversed(node.children))

    def to_dict(self) -> dict[str, Any]:
        """Flat and depth first: each node names its parent and children (no deep nesting)."""
        nodes = []
        for node, depth in self.walk():
            ev = node.event
            since = node.since_parent
            nodes.append(
                {
                    "event_id": str(ev.event_id),
                    "stream_id": ev.stream_id,
                    "version": ev.version,
                    "position": ev.position,
                    "type": ev.type,
                    "recorded_at": ev.recorded_at.isoformat(),
                    "causation_id": ev.causation_id,
                    "parent_id": None if node.parent is None else str(node.parent.event.event_id),
                    "depth": depth,
                    "orphan": node.orphan,
                    "missing_parent": node.missing_parent,
                    "cycle": node.cycle,
                    "since_parent_ms": None if since is None else since / timedelta(milliseconds=1),
                    "children": [str(c.event.event_id) for c in node.children],
                }
            )
        return {
            "correlation_id": self.correlation_id,
            "events": len(self.events),
            "roots": len(self.roots) - len(self.orphans),
            "orphans": len(self.orphans),
            "nodes": nodes,
        }

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: an edge per cause, labelled with the time since it."""
        ids = self._node_ids()
        lines = ["flowchart TD"]
        missing: dict[str, str] = {}
        for node, _ in self.walk():
            ev = node.event
            label = f"{ev.stream_id} v{ev.version}<br/>{ev.type}<br/>position {ev.position}"
            lines.append(f'    {ids[id(node)]}["{_mermaid_text(label)}"]')
            if node.parent is not None:
                lines.append(
                    f"    {ids[id(node.parent)]} -->|{format_delta(node.since_parent)}| "
                    f"{ids[id(node)]}"
                )
            elif node.orphan:
                cause = node.missing_parent or "cycle"
                if cause not in missing:
                    missing[cause] = f"m{len(missing) + 1}"
                    text = f"missing {cause}" if node.missing_parent else "cut from a cycle"
                    lines.append(f'    {missing[cause]}(["{_mermaid_text(text)}"])')
                lines.append(f"    {missing[cause]} -.-> {ids[id(node)]}")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """A Graphviz digraph: an edge per cause, labelled with the time since it."""
        ids = self._node_ids()
        lines = [
            f"digraph {_dot_text('trace ' + self.correlation_id)} {{",
            "    rankdir=TB;",
            "    node [shape=box, fontname=Helvetica];",
        ]
        missing: dict[str, str] = {}
        for node, _ in self.walk():
            ev = node.event
            label = f"{ev.stream_id} v{ev.version}\\n{ev.type}\\nposition {ev.position}"
            style = ', style="dashed"' if node.orphan else ""
            lines.append(f"    {ids[id(node)]} [label={_dot_text(label, raw=True)}{style}];")
            if node.parent is not None:
                edge = _dot_text(format_delta(node.since_parent))
                lines.append(f"    {ids[id(node.parent)]} -> {ids[id(node)]} [label={edge}];")
            elif node.orphan:
                cause = node.missing_parent or "cycle"
                if cause not in missing:
                    missing[cause] = f"m{len(missing) + 1}"
                    text = f"missing {cause}" if node.missing_parent else "cut from a cycle"
                    lines.append(
                        f"    {missing[cause]} [label={_dot_text(text)}, shape=ellipse, "
                        f'style="dashed"];'
                    )
                lines.append(f'    {missing[cause]} -> {ids[id(node)]} [style="dashed"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _node_ids(self) -> dict[int, str]:
        return {id(node): f"e{n}" for n, (node, _) in enumerate(self.walk(), start=1)}


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def _dot_text(text: str, *, raw: bool = False) -> str:
    escaped = text.replace("\\", "\\\\") if not raw else text
    return '"' + escaped.replace('"', '\\"') + '"'


def format_delta(delta: timedelta | None) -> str:
    """A short human duration with a sign: ``+12 ms``, ``+1.5 s``, ``+3 min 2 s``."""
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    if seconds < 3600:
        return f"{sign}{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{sign}{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def build_trace(correlation_id: str, events: list[RecordedEvent]) -> Trace:
    """Arrange events (of one correlation id) in the tree of their causation ids."""
    events = sorted(events, key=lambda e: e.position)
    nodes = [TraceNode(e) for e in events]
    by_id = {str(n.event.event_id): n for n in nodes}
    for node in nodes:
        cause = node.event.causation_id
        if cause is None:
            continue
        parent = by_id.get(cause)
        if parent is None:
            node.missing_parent = cause
        elif parent is node:
            node.cycle = True
        else:
            node.parent = parent
            parent.children.append(node)
    roots = [n for n in nodes if n.parent is None]
    # causation ids that loop (a -> b -> a) leave nodes no root reaches: cut each loop at
    # its lowest position and show that node as an orphan
    reached = _reachable(roots)
    for node in nodes:
        if id(node) in reached:
            continue
        assert node.parent is not None
        node.parent.children.remove(node)
        node.parent = None
        node.cycle = True
        roots.append(node)
        reached |= _reachable([node])
    roots.sort(key=lambda n: n.event.position)
    return Trace(correlation_id, events, roots)


def _reachable(roots: list[TraceNode]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.children)
    return seen


async def trace(store: EventStore, correlation_id: str, *, limit: int | None = None) -> Trace:
    """Every event with this correlation id, across all streams, as a causal tree.

    One indexed read (:meth:`~chronik.EventStore.read_correlation`). An event whose
    causation id names no event of the correlation is an orphan root (its parent may be a
    command, an event of another correlation, or lost); it is shown, never dropped.
    """
    return build_trace(correlation_id, await store.read_correlation(correlation_id, limit=limit))
