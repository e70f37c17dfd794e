"""Given/when/then for deciders: pure, no store, no event loop.

Example::

    spec = DeciderSpecification(account)
    spec.given([Opened("alice")]).when(Deposit(10)).then([Deposited(10)])
    spec.given([Opened("alice")]).when(Withdraw(99)).then_raises(InsufficientFunds)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from chronik.decider import Decider

__all__ = ["DeciderSpecification", "Given", "When"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class When(Generic[C, E, S]):
    decider: Decider[C, E, S]
    history: Sequence[E]
    command: C

    def _run(self) -> list[E]:
        state = self.decider.fold(self.history)
        return list(self.decider.decide(self.command, state))

    def then(self, expected: Sequence[E]) -> list[E]:
        """Assert the command decides exactly ``expected``; returns the events."""
        actual = self._run()
        if actual != list(expected):
            raise AssertionError(
                f"given {list(self.history)!r}\nwhen {self.command!r}\n"
                f"expected events {list(expected)!r}\nbut got {actual!r}"
            )
        return actual

    def then_state(self, expected: S) -> S:
        """Assert the state after the decided events equals ``expected``."""
        state = self.decider.fold(self.history)
        after = self.decider.fold(self.decider.decide(self.command, state), state)
        if after != expected:
            raise AssertionError(f"expected state {expected!r}\nbut got {after!r}")
        return after

    def then_raises(self, error: type[BaseException]) -> BaseException:
        """Assert the command is rejected with ``error`` (or a subclass); returns it."""
        try:
            actual = self._run()
        except error as exc:
            return exc
        raise AssertionError(
            f"given {list(self.history)!r}\nwhen {self.command!r}\n"
            f"expected {error.__name__} but the command decided {actual!r}"
        )


@dataclass(frozen=True, slots=True)
class Given(Generic[C, E, S]):
    decider: Decider[C, E, S]
    history: Sequence[E]

    def when(self, command: C) -> When[C, E, S]:
        return When(self.decider, self.history, command)


@dataclass(frozen=True, slots=True)
class DeciderSpecification(Generic[C, E, S]):
    """Entry point: ``DeciderSpecification(decider).given([...]).when(cmd).then([...])``."""

    decider: Decider[C, E, S]

    def given(self, events: Sequence[E] = ()) -> Given[C, E, S]:
        return Given(self.decider, list(events))
