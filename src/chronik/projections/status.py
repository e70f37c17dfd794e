"""Projection status: checkpoint, head, lag, dead letters; and its Prometheus text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chronik.projections.control import is_paused
from chronik.projections.kinds import AnyProjection
from chronik.store.horizon import events_after, read_horizon
from chronik.store.protocol import EventStore
from chronik.workers import Follower, WorkerState

__all__ = ["METRICS", "ProjectionStatus", "projection_status", "render_metrics"]


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    version: int
    kind: str
    state: WorkerState
    checkpoint: int
    head: int
    lag_events: int
    lag_seconds: float
    dead_letters: int
    applied: int
    last_error: str | None = None
    horizon: str | None = None
    """``read horizon held back since T by PID/xid ...`` when that stalls it (PostgreSQL)."""
    lag_estimated: bool = False
    """``lag_events`` is exact up to 10,000 and estimated from positions beyond."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "state": self.state,
            "checkpoint": self.checkpoint,
            "head": self.head,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "dead_letters": self.dead_letters,
            "applied": self.applied,
            "last_error": self.last_error,
            "horizon": self.horizon,
            "lag_estimated": self.lag_estimated,
        }


async def projection_status(
    store: EventStore, p: AnyProjection, follower: Follower | None
) -> ProjectionStatus:
    """The status of projection ``p``; ``follower`` is the one running it here (if any)."""
    checkpoint = (
        follower.caught_up_to
        if follower is not None
        else (await store.get_checkpoint(p.checkpoint_name) or 0)
    )
    head = await store.head_position()
    # committed events count, visible or not yet (a held read horizon is lag, not "0"),
    # exactly up to 10,000 and from positions beyond: never a count over the whole tail
    lag = await events_after(store, checkpoint, categories=p.categories, types=p.stored_types)
    horizon = await read_horizon(store)
    letters = await store.dead_letters(p.checkpoint_name)
    state: WorkerState = follower.state if follower is not None else "stopped"
    if state in ("idle", "running", "stopped") and await is_paused(store, p.name):
        state = "paused"  # by an operator, maybe in another process: its runners hold
    return ProjectionStatus(
        name=p.name,
        version=p.version,
        kind=p.applier.kind,
        state=state,
        checkpoint=checkpoint,
        head=head,
        lag_events=lag.events,
        lag_seconds=lag.seconds,
        dead_letters=len(letters),
        applied=follower.handled if follower is not None else 0,
        last_error=follower.last_error if follower is not None else None,
        horizon=(horizon.describe() or None) if horizon is not None else None,
        lag_estimated=lag.estimated,
    )


def render_metrics(statuses: Sequence[ProjectionStatus]) -> str:
    """Prometheus text format; the names are documented in docs/projections.md."""
    lines: list[str] = []
    for metric, kind, help_text, attr in METRICS:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for s in statuses:
            lines.append(
                f'{metric}{{projection="{s.name}",version="{s.version}"}} {getattr(s, attr)}'
            )
    lines.append("# HELP chronik_projection_up 1 when running, 0 otherwise")
    lines.append("# TYPE chronik_projection_up gauge")
    for s in statuses:
        up = 1 if s.state == "running" else 0
        lines.append(f'chronik_projection_up{{projection="{s.name}",state="{s.state}"}} {up}')
    return "\n".join(lines) + "\n"


METRICS = [
    ("chronik_projection_checkpoint", "gauge", "Last position applied", "checkpoint"),
    ("chronik_projection_head", "gauge", "Store head position seen", "head"),
    ("chronik_projection_lag_events", "gauge", "Matching events not applied yet", "lag_events"),
    (
        "chronik_projection_lag_seconds",
        "gauge",
        "Age of the oldest unapplied event",
        "lag_seconds",
    ),
    ("chronik_projection_dead_letters", "gauge", "Recorded dead letters", "dead_letters"),
    (
        "chronik_projection_events_applied_total",
        "counter",
        "Events applied by this process",
        "applied",
    ),
]
"""(name, type, help, ProjectionStatus attribute) of the projection metrics."""
