"""Given/when/then for sagas: pure, no store, no event loop.

A saga's decision is ``react(state, event) -> Reaction``, its state the fold of its own events.
``given`` takes the history: the saga's own events (:class:`~chronik.sagas.SagaEvent`, folded
as they are) or events it reacted to before (:class:`~chronik.RecordedEvent`, whose reaction's
own events are folded); ``when`` the next event; ``then`` the expected reaction.

Example::

    spec = SagaSpecification(transfer_saga)
    requested = recorded("transfer-t1", "TransferRequested", {"amount": 5, ...})
    spec.given().when(requested).then_commands([SagaCommand("account-a", "Debit", ...)])
    spec.given(requested).when(debited).then(Reaction(commands=[...], schedule=[...]))
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from chronik.events import RecordedEvent
from chronik.sagas.model import Reaction, Saga, SagaCommand, SagaEvent

__all__ = ["SagaSpecification", "recorded"]

S = TypeVar("S")

_positions = iter(range(1, 1 << 62))


def recorded(
    stream_id: str,
    type: str,
    data: Mapping[str, Any] | None = None,
    *,
    version: int = 0,
    position: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RecordedEvent:
    """A stored event made up for a test (a fresh id; increasing positions by default)."""
    return RecordedEvent(
        event_id=uuid.uuid4(),
        stream_id=stream_id,
        version=version,
        position=next(_positions) if position is None else position,
        type=type,
        schema_version=1,
        raw_data=msgspec.json.encode(dict(data or {})),
        raw_metadata=msgspec.json.encode(dict(metadata or {})),
        recorded_at=datetime.now(UTC),
    )


@dataclass(frozen=True, slots=True)
class SagaWhen(Generic[S]):
    saga: Saga[S]
    history: Sequence[RecordedEvent | SagaEvent]
    event: RecordedEvent

    def state(self) -> S:
        """The saga's state before ``event``: the fold of the history."""
        state = self.saga.initial_state()
        for item in self.history:
            own = [item] if isinstance(item, SagaEvent) else self.saga.react(state, item).events
            for ev in own:
                state = self.saga.evolve(state, ev)
        return state

    def reaction(self) -> Reaction:
        return self.saga.react(self.state(), self.event)

    def _fail(self, what: str, expected: object, actual: object) -> AssertionError:
        return AssertionError(
            f"saga {self.saga.name!r}\ngiven {list(self.history)!r}\nwhen {self.event!r}\n"
            f"expected {what} {expected!r}\nbut got {actual!r}"
        )

    def then(self, expected: Reaction) -> Reaction:
        """Assert the whole reaction equals ``expected``; returns it."""
        actual = self.reaction()
        if actual != expected:
            raise self._fail("reaction", expected, actual)
        return actual

    def then_commands(self, expected: Sequence[SagaCommand]) -> Reaction:
        """Assert the reaction issues exactly ``expected`` (in order)."""
        actual = self.reaction()
        if list(actual.commands) != list(expected):
            raise self._fail("commands", list(expected), list(actual.commands))
        return actual

    def then_events(self, expected: Sequence[SagaEvent]) -> Reaction:
        """Assert the saga's own new events are exactly ``expected``."""
        actual = self.reaction()
        if list(actual.events) != list(expected):
            raise self._fail("events", list(expected), list(actual.events))
        return actual

    def then_completes(self) -> Reaction:
        actual = self.reaction()
        if not actual.complete:
            raise self._fail("complete=True", True, actual)
        return actual

    def then_compensates(self, reason: str | None = None) -> Reaction:
        """Assert the reaction starts compensation (with ``reason``, when given)."""
        actual = self.reaction()
        if actual.compensate is None or (reason is not None and actual.compensate != reason):
            raise self._fail("compensate", reason or "a reason", actual.compensate)
        return actual


@dataclass(frozen=True, slots=True)
class SagaGiven(Generic[S]):
    saga: Saga[S]
    history: Sequence[RecordedEvent | SagaEvent]

    def when(self, event: RecordedEvent) -> SagaWhen[S]:
        return SagaWhen(self.saga, self.history, event)


@dataclass(frozen=True, slots=True)
class SagaSpecification(Generic[S]):
    """Entry point: ``SagaSpecification(saga).given(...).when(event).then(reaction)``."""

    saga: Saga[S]

    def given(self, *history: RecordedEvent | SagaEvent) -> SagaGiven[S]:
        return SagaGiven(self.saga, list(history))
