"""What ``decide`` may return: a list of events (any iterable of them); anything else is an
:class:`~chronik.errors.InvalidDecision` naming the decider, the command and the stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import chronik
from chronik.errors import InvalidDecision

registry = chronik.EventRegistry()


@registry.event("Bumped")
@dataclass(frozen=True)
class Bumped:
    by: int


@dataclass(frozen=True)
class Bump:
    by: int


def forgetful(command: Bump, state: int) -> list[Bumped]:
    if command.by > 0:
        return [Bumped(command.by)]
    return None  # type: ignore[return-value]  # the bug: a branch without `return []`


def generating(command: Bump, state: int) -> Iterator[Bumped]:
    yield Bumped(command.by)
    yield Bumped(command.by)


def single(command: Bump, state: int) -> Bumped:
    return Bumped(command.by)


def counter(decide: object) -> chronik.Decider[Bump, Bumped, int]:
    return chronik.Decider(
        decide=decide,  # type: ignore[arg-type]
        evolve=lambda n, e: n + e.by,
        initial_state=lambda: 0,
    )


async def test_decide_returning_none_is_a_clear_error_and_appends_nothing() -> None:
    async with await chronik.connect("memory://") as store:
        handler = chronik.CommandHandler(store, counter(forgetful), registry=registry)
        assert (await handler.handle("counter-1", Bump(2))).version == 0
        with pytest.raises(InvalidDecision) as caught:
            await handler.handle("counter-1", Bump(0))
        message = str(caught.value)
        assert "tests.unit.test_decider_step.forgetful" in message
        assert "returned None for command Bump on stream 'counter-1'" in message
        assert "[] when nothing happens" in message
        assert isinstance(caught.value, TypeError)
        assert isinstance(caught.value, chronik.ChronikError)
        assert (caught.value.command, caught.value.returned) == (Bump(0), None)
        assert await store.stream_version("counter-1") == 0


async def test_a_single_event_instead_of_a_list_is_refused() -> None:
    async with await chronik.connect("memory://") as store:
        handler = chronik.CommandHandler(store, counter(single), registry=registry)
        with pytest.raises(InvalidDecision, match="returned a Bumped for command Bump"):
            await handler.handle("counter-2", Bump(1))
        assert await store.stream_version("counter-2") is None


async def test_a_generator_of_events_is_appended_whole() -> None:
    """It used to be read twice: once by the fold, then found empty, so nothing was
    appended and the command looked done."""
    async with await chronik.connect("memory://") as store:
        handler = chronik.CommandHandler(store, counter(generating), registry=registry)
        result = await handler.handle("counter-3", Bump(5))
        assert (result.version, result.state, len(result.events)) == (1, 10, 2)
        assert (await handler.load("counter-3")).state == 10


def test_step_is_decide_then_fold() -> None:
    decider = counter(forgetful)
    assert decider.step(Bump(3), 4) == ([Bumped(3)], 7)
    with pytest.raises(InvalidDecision, match=r"^decide of .*forgetful returned None"):
        decider.step(Bump(0), 4)
