"""The domain core: a Decider is three pure functions over commands, events and state.

``decide(command, state) -> events`` says what happened (or raises a domain error),
``evolve(state, event) -> state`` folds one event into the state, ``initial_state()`` is the
state of a stream with no events. No I/O, no clock, no logging: time and ids arrive on the
command. :class:`chronik.CommandHandler` runs it against a store.

Example::

    counter = Decider(
        decide=lambda cmd, n: [Incremented(cmd.by)] if n + cmd.by <= 10 else [],
        evolve=lambda n, ev: n + ev.by,
        initial_state=lambda: 0,
    )
    assert counter.fold([Incremented(2), Incremented(3)]) == 5
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Decider"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


class _Missing:
    __slots__ = ()


MISSING = _Missing()


@dataclass(frozen=True, slots=True)
class Decider(Generic[C, E, S]):
    """``decide``, ``evolve`` and ``initial_state`` of one kind of stream."""

    decide: Callable[[C, S], Sequence[E]]
    evolve: Callable[[S, E], S]
    initial_state: Callable[[], S]

    def fold(self, events: Iterable[E], state: S | _Missing = MISSING) -> S:
        """The state after ``events``, starting from ``state`` or the initial state."""
        current: S = self.initial_state() if isinstance(state, _Missing) else state
        evolve = self.evolve
        for ev in events:
            current = evolve(current, ev)
        return current
