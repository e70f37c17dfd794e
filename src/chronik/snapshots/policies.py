"""When to take a snapshot: policies are pure functions of a :class:`StreamStatus`.

- :class:`EveryN` — every ``n`` events;
- :class:`Periodic` — at most once per interval per stream;
- :class:`OnDemand` — never automatically (``take_snapshot``, ``chronik snapshots take``);
- :class:`Adaptive` — when the replay of a load, weighted by the reads (not the writes)
  since the last snapshot, exceeds a budget;
- :class:`AnyOf` — any of several.

docs/snapshots.md explains how to choose, with measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

__all__ = [
    "Adaptive",
    "AnyOf",
    "EveryN",
    "OnDemand",
    "Periodic",
    "SnapshotPolicy",
    "StreamStatus",
]


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """What a policy sees of one stream when it decides whether a snapshot is due."""

    stream_id: str
    version: int
    """The stream's committed version now."""
    snapshot_version: int = -1
    """The version of its newest usable snapshot (``-1``: none)."""
    snapshot_age: float | None = None
    """Seconds since that snapshot was taken (``None``: none)."""
    replay_ms: float = 0.0
    """Measured cost of folding the events since the snapshot (ms per event at the last
    load in this process, times the events since the snapshot; 0 when not measured yet)."""
    reads: int = 0
    """Loads that read the stream (``load()`` of a handler or repository) in this process
    since its last snapshot; the load a command makes before it writes is not counted."""
    writes: int = 0
    """Commands that appended to the stream in this process since its last snapshot."""

    @property
    def events_since(self) -> int:
        """Events after the snapshot: what a load folds."""
        return self.version - self.snapshot_version


class SnapshotPolicy(Protocol):
    """Decides from a :class:`StreamStatus` whether a snapshot is due. Pure: no I/O."""

    def due(self, status: StreamStatus) -> bool: ...


@dataclass(frozen=True, slots=True)
class EveryN:
    """A snapshot once ``n`` events have been written since the last one."""

    n: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"EveryN needs an int n >= 1, not {self.n!r}")

    def due(self, status: StreamStatus) -> bool:
        return status.events_since >= self.n


@dataclass(frozen=True, slots=True)
class Periodic:
    """At most one snapshot per ``interval`` per stream, when events were written since.

    ``interval`` is in seconds or a :class:`~datetime.timedelta` (the seed's IoT devices:
    ``Periodic(timedelta(hours=1))``). A stream without a snapshot gets one at once.
    """

    interval: float | timedelta
    min_events: int = 1

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"Periodic needs a positive interval, not {self.interval!r}")
        if self.min_events < 1:
            raise ValueError("min_events must be >= 1")

    @property
    def seconds(self) -> float:
        value = self.interval
        return value.total_seconds() if isinstance(value, timedelta) else float(value)

    def due(self, status: StreamStatus) -> bool:
        if status.events_since < self.min_events:
            return False
        return status.snapshot_age is None or status.snapshot_age >= self.seconds


@dataclass(frozen=True, slots=True)
class OnDemand:
    """Never automatic: only ``take_snapshot`` and ``chronik snapshots take`` write them."""

    def due(self, status: StreamStatus) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Adaptive:
    """A snapshot when the replay since the last one, weighted by reads, exceeds a budget.

    The replay is what one load folds: the events since the snapshot (``budget_events``)
    or their measured fold time (``budget_ms``); either over its budget makes a snapshot
    due. It is multiplied by ``1 + read_weight * (reads - 1)``, where ``reads`` counts the
    loads that *read* the stream (``load()``) since the snapshot in this process, not the
    load each command makes before it writes. So a stream that is only written gets a
    snapshot when a single load would fold more than the budget (4 per 400 writes with
    ``budget_events=100``), and one read often, sooner: ``read_weight=0`` caps the replay of
    any single load; ``1`` caps the replay work summed over the reads.
    """

    budget_ms: float | None = None
    budget_events: int | None = None
    read_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.budget_ms is None and self.budget_events is None:
            raise ValueError("Adaptive needs budget_ms, budget_events or both")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ValueError("budget_ms must be > 0")
        if self.budget_events is not None and self.budget_events < 1:
            raise ValueError("budget_events must be >= 1")
        if self.read_weight < 0:
            raise ValueError("read_weight must be >= 0")

    def due(self, status: StreamStatus) -> bool:
        if status.events_since <= 0:
            return False
        weight = 1.0 + self.read_weight * max(status.reads - 1, 0)
        if self.budget_events is not None and status.events_since * weight >= self.budget_events:
            return True
        return self.budget_ms is not None and status.replay_ms * weight >= self.budget_ms


@dataclass(frozen=True, slots=True, init=False)
class AnyOf:
    """Due when any of its policies is (``AnyOf(EveryN(1000), Periodic(3600))``)."""

    policies: tuple[SnapshotPolicy, ...]

    def __init__(self, *policies: SnapshotPolicy) -> None:
        if not policies:
            raise ValueError("AnyOf needs at least one policy")
        object.__setattr__(self, "policies", tuple(policies))

    def due(self, status: StreamStatus) -> bool:
        return any(p.due(status) for p in self.policies)
