"""Projection status: checkpoint, head, lag, dead letters; and its Prometheus text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chronik.projections.kinds import AnyProjection
from chronik.store.protocol import EventStore
from chronik.workers import Follower, WorkerState

__all__ = ["ProjectionStatus", "projection_status", "render_metrics"]


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
    lag_events = await store.count_events(
        after=checkpoint, categories=p.categories, types=p.stored_types
    )
    lag_seconds = 0.0
    if lag_events:
        async for oldest in store.read_all(
            after=checkpoint, categories=p.categories, types=p.stored_types, limit=1
        ):
            lag_seconds = max((datetime.now(UTC) - oldest.recorded_at).total_seconds(), 0.0)
    letters = await store.dead_letters(p.checkpoint_name)
    state: WorkerState = follower.state if follower is not None else "stopped"
    return ProjectionStatus(
        name=p.name,
        version=p.version,
        kind=p.applier.kind,
        state=state,
        checkpoint=checkpoint,
        head=head,
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        dead_letters=len(letters),
        applied=follower.handled if follower is not None else 0,
        last_error=follower.last_error if follower is not None else None,
    )


def render_metrics(statuses: Sequence[ProjectionStatus]) -> str:
    """Prometheus text format; the names are documented in docs/projections.md."""
    lines: list[str] = []
    metrics = [
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
    for metric, kind, help_text, attr in metrics:
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
