r"""What a saga is: pure definitions (no I/O, no clock).

A :class:`Saga` correlates events to instances (``correlate``), ``react``\s to each with a
:class:`Reaction` (its own events, commands with compensations, deadlines, an ending), and
folds its own events into its state (``evolve``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from chronik.events import RecordedEvent

__all__ = [
    "COMPENSATED",
    "COMPENSATING",
    "COMPLETED",
    "DEADLINE_TYPE",
    "FAILED",
    "OUTCOME_TYPES",
    "REJECTED_TYPE",
    "RUNNING",
    "SUCCEEDED_TYPE",
    "TERMINAL",
    "Deadline",
    "IssuedCommand",
    "Reaction",
    "Saga",
    "SagaCommand",
    "SagaEvent",
    "SagaInstance",
    "command_id_for",
]

S = TypeVar("S")

RUNNING = "running"
COMPENSATING = "compensating"
COMPLETED = "completed"
COMPENSATED = "compensated"
FAILED = "failed"
TERMINAL = frozenset({COMPLETED, COMPENSATED, FAILED})

SUCCEEDED_TYPE = "SagaCommandSucceeded"
REJECTED_TYPE = "SagaCommandRejected"
DEADLINE_TYPE = "SagaDeadlineExpired"
OUTCOME_TYPES = frozenset({SUCCEEDED_TYPE, REJECTED_TYPE, DEADLINE_TYPE})
"""Events other workers append to an instance's stream; every other type there is the
saga's own (its state is their fold)."""

NAMESPACE = uuid.UUID("6f1c5d0e-8a43-4c59-9a57-3f0d6c1e2b11")
enc = msgspec.json.encode
dec = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class SagaCommand:
    """A command a saga issues to one stream; ``compensation`` undoes it."""

    stream_id: str
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    step: str = ""
    """Names the step; with the trigger's event id it makes the command id."""
    compensation: SagaCommand | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "type": self.type,
            "data": dict(self.data),
            "step": self.step,
            "compensation": None if self.compensation is None else self.compensation.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SagaCommand:
        comp = d.get("compensation")
        return cls(
            d["stream_id"],
            d["type"],
            d.get("data") or {},
            d.get("step", ""),
            None if comp is None else cls.from_dict(comp),
        )


@dataclass(frozen=True, slots=True)
class Deadline:
    """Fire ``SagaDeadlineExpired`` for ``name`` after ``seconds`` unless cancelled first."""

    name: str
    seconds: float
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """One of a saga's own events (its state is the fold of these)."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a saga does about one event."""

    events: Sequence[SagaEvent] = ()
    commands: Sequence[SagaCommand] = ()
    schedule: Sequence[Deadline] = ()
    cancel: Sequence[str] = ()
    complete: bool = False
    compensate: str | None = None
    """A reason: run the compensations of the completed steps."""
    fail: str | None = None
    """A reason: end in ``failed`` (needs attention) without compensating."""


@dataclass(frozen=True)
class Saga(Generic[S]):
    """A process manager: correlate, react, evolve (pure functions, no I/O)."""

    name: str
    categories: Sequence[str]
    correlate: Callable[[RecordedEvent], str | None]
    react: Callable[[S, RecordedEvent], Reaction]
    initial_state: Callable[[], S]
    evolve: Callable[[S, SagaEvent], S] = lambda state, _event: state
    types: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not self.name or "-" in self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"saga name {self.name!r} must be letters, digits and '_'")

    @property
    def stream_category(self) -> str:
        return f"saga_{self.name}"

    def stream_id(self, key: str) -> str:
        """The stream of one instance: its own events, its commands' outcomes, its expired
        deadlines (``saga_<name>-<key>``)."""
        return f"{self.stream_category}-{key}"


@dataclass(frozen=True, slots=True)
class IssuedCommand:
    """A command in the outbox, as a command executor receives it."""

    command_id: uuid.UUID
    saga: str
    saga_key: str
    step: str
    stream_id: str
    type: str
    data: dict[str, Any]
    is_compensation: bool
    correlation_id: str | None
    causation_id: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class SagaInstance:
    """One saga instance as stored: status, state, its own events."""

    saga: str
    key: str
    status: str
    state: Any
    events: list[SagaEvent]
    record: dict[str, Any]


def command_id_for(saga: str, trigger: uuid.UUID | str, step: str) -> uuid.UUID:
    """The command id of ``step`` issued because of event ``trigger`` (deterministic)."""
    return uuid.uuid5(NAMESPACE, f"{saga}/{trigger}/{step}")
