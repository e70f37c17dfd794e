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

from chronik.errors import InvalidDecision

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

    def step(self, command: C, state: S, *, stream_id: str | None = None) -> tuple[list[E], S]:
        """One command on one state: the events ``decide`` returns, as a list, and the state
        after them. What :class:`~chronik.CommandHandler` runs (``stream_id`` only names the
        stream in the error).

        Raises:
            InvalidDecision: ``decide`` returned ``None`` (a branch without ``return []``),
                a single event, or anything else that is not a list of events (a tuple
                or another iterable of events is taken as a list).
            Exception: whatever ``decide`` raises (a domain error) propagates as it is.
        """
        returned = self.decide(command, state)
        if isinstance(returned, (str, bytes, dict)) or not isinstance(returned, Iterable):
            raise InvalidDecision(_name(self.decide), command, returned, stream_id)
        events = list(returned)  # a generator is read once, here
        return events, self.fold(events, state)


def _name(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}" if module else name
