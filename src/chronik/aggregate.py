"""The one write path: load (fold), decide, append with ``expected_version``, retry.

:class:`CommandHandler` runs a :class:`~chronik.Decider`. :class:`Aggregate` and
:class:`Repository` are sugar for people who prefer methods on an object; they go through
the very same :func:`execute` function, never a second route.

Example::

    handler = CommandHandler(store, account_decider)
    result = await handler.handle("account-1", Deposit(amount=Decimal("10")))
    result.state.balance   # the state after the new events
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from chronik.codec import EventRegistry, default_registry
from chronik.decider import Decider
from chronik.errors import ConcurrencyError, StreamNotFound
from chronik.events import NO_STREAM, AppendResult
from chronik.snapshots.config import SnapshotConfig
from chronik.snapshots.load import (
    load_from_snapshot,
    snapshot_after_append,
    snapshot_loaded,
    take_snapshot,
)
from chronik.snapshots.store import Snapshot
from chronik.store.protocol import EventStore
from chronik.telemetry import set_command_type, traced_command, traced_load

__all__ = [
    "Aggregate",
    "CommandHandler",
    "HandleResult",
    "Loaded",
    "Repository",
    "execute",
    "load_state",
]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
A = TypeVar("A", bound="Aggregate")
R = TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    """A stream's state and the version it was folded up to (``-1``: no events)."""

    state: S
    version: int
    snapshot_version: int | None = None
    """The version of the snapshot the load started from (``None``: folded from the start)."""


@dataclass(frozen=True, slots=True)
class HandleResult(Generic[E, S]):
    """What handling one command did."""

    state: S
    """The state after the new events."""
    events: list[E]
    """The events decided (and appended); empty when the command changed nothing."""
    version: int
    """The stream version after the append (unchanged when there were no events)."""
    position: int | None
    """The global position of the last new event, ``None`` when nothing was appended."""
    attempts: int = 1
    """How many times the command ran (more than one after concurrency conflicts)."""


@traced_load
async def load_state(
    store: EventStore,
    stream_id: str,
    evolve: Callable[[S, Any], S],
    initial_state: Callable[[], S],
    *,
    registry: EventRegistry = default_registry,
    snapshots: SnapshotConfig | None = None,
    reading: bool = True,
) -> Loaded[S]:
    """Fold every event of ``stream_id`` into a state (initial state when there are none).

    With ``snapshots``, start from the stream's newest usable snapshot of that
    configuration's state version and fold only the later events (see
    :mod:`chronik.snapshots`); ``reading=False`` does not count the load as a read of the
    stream for the snapshot policy (a command's load before it writes).
    """
    if snapshots is not None:
        state_, version_, used = await load_from_snapshot(
            store,
            stream_id,
            evolve,
            initial_state,
            snapshots,
            registry=registry,
            reading=reading,
        )
        return Loaded(state_, version_, None if used is None else used.version)
    state = initial_state()
    version = -1
    decode = registry.decode
    many = registry.decode_many if registry.has_upcasters else None  # may split or drop
    try:
        async for recorded in store.read_stream(stream_id):
            if many is None:
                state = evolve(state, decode(recorded))
            else:
                for event in many(recorded):
                    state = evolve(state, event)
            version = recorded.version
    except StreamNotFound:
        pass
    return Loaded(state, version)


@traced_command
async def execute(
    store: EventStore,
    stream_id: str,
    *,
    evolve: Callable[[S, Any], S],
    initial_state: Callable[[], S],
    decide: Callable[[S], tuple[Sequence[Any], S]],
    registry: EventRegistry = default_registry,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_seconds: float = 0.005,
    snapshots: SnapshotConfig | None = None,
) -> HandleResult[Any, S]:
    """Load, decide, append with the loaded version; on a conflict do it all again.

    ``decide`` gets the loaded state and returns the new events and the state after them.
    Retries are bounded by ``max_attempts`` with exponential backoff and full jitter; the
    last :class:`~chronik.ConcurrencyError` is raised when they run out. A domain error
    raised by ``decide`` propagates at once and nothing is appended. With ``snapshots``, the
    load starts from a snapshot and, after the append, the policy may take a new one (from
    the store, never from the in-memory result; a failure there is logged, never raised).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    attempt = 0
    while True:
        attempt += 1
        loaded = await load_state(
            store,
            stream_id,
            evolve,
            initial_state,
            registry=registry,
            snapshots=snapshots,
            reading=False,
        )
        events, new_state = decide(loaded.state)
        events = list(events)
        if not events:
            return HandleResult(new_state, [], loaded.version, None, attempt)
        expected = loaded.version if loaded.version >= 0 else NO_STREAM
        try:
            result: AppendResult = await store.append(
                stream_id, registry.to_new_events(events), expected_version=expected
            )
        except ConcurrencyError:
            if attempt >= max_attempts:
                raise
            await asyncio.sleep(random.uniform(0, backoff_seconds * 2 ** (attempt - 1)))
            continue
        if snapshots is not None:
            await snapshot_after_append(
                store,
                snapshots,
                stream_id,
                result.version,
                evolve=evolve,
                initial_state=initial_state,
                registry=registry,
            )
        return HandleResult(new_state, events, result.version, result.position, attempt)


class CommandHandler(Generic[C, E, S]):
    """Runs commands of one :class:`~chronik.Decider` against a store."""

    def __init__(
        self,
        store: EventStore,
        decider: Decider[C, E, S],
        *,
        registry: EventRegistry = default_registry,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        snapshots: SnapshotConfig | None = None,
    ) -> None:
        self.store = store
        self.decider = decider
        self.registry = registry
        self.max_attempts = max_attempts
        self.snapshots = snapshots
        """How this decider's streams are snapshotted (``None``: never; see chronik.snapshots)."""

    async def load(self, stream_id: str) -> Loaded[S]:
        """The current state of ``stream_id`` and its version (a snapshot may be taken)."""
        d = self.decider
        loaded = await load_state(
            self.store,
            stream_id,
            d.evolve,
            d.initial_state,
            registry=self.registry,
            snapshots=self.snapshots,
        )
        if self.snapshots is not None:
            await snapshot_loaded(
                self.store, self.snapshots, stream_id, loaded.version, loaded.state
            )
        return loaded

    async def take_snapshot(self, stream_id: str) -> Snapshot | None:
        """Snapshot ``stream_id`` now, whatever the policy (on demand).

        Raises:
            ValueError: the handler has no snapshot configuration.
            StreamNotFound: the stream has no events.
        """
        if self.snapshots is None:
            raise ValueError("this CommandHandler has no snapshots=SnapshotConfig(...)")
        d = self.decider
        return await take_snapshot(
            self.store,
            stream_id,
            evolve=d.evolve,
            initial_state=d.initial_state,
            config=self.snapshots,
            registry=self.registry,
        )

    async def handle(self, stream_id: str, command: C) -> HandleResult[E, S]:
        """Decide ``command`` against the stream's current state and append the events."""
        d = self.decider

        def decide(state: S) -> tuple[Sequence[E], S]:
            set_command_type(command)
            return d.step(command, state, stream_id=stream_id)

        return await execute(
            self.store,
            stream_id,
            evolve=d.evolve,
            initial_state=d.initial_state,
            decide=decide,
            registry=self.registry,
            max_attempts=self.max_attempts,
            snapshots=self.snapshots,
        )


class Aggregate:
    """Base class for an object-style aggregate (no metaclass, no magic).

    Subclasses set their initial state in ``__init__`` (no arguments), implement
    :meth:`apply` (evolve, in place) and call :meth:`record` from their command methods::

        class Account(Aggregate):
            def __init__(self) -> None:
                super().__init__()
                self.balance = Decimal(0)

            def apply(self, event: object) -> None:
                if isinstance(event, Deposited):
                    self.balance += event.amount

            def deposit(self, amount: Decimal) -> None:
                self.record(Deposited(amount))
    """

    def __init__(self) -> None:
        self._pending: list[Any] = []

    def apply(self, event: Any) -> None:
        """Change this object's state by one event (stored or just recorded)."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply(event)")

    def record(self, event: Any) -> None:
        """Apply a new event now and keep it to be appended."""
        self.apply(event)
        self._pending.append(event)

    def collect_pending(self) -> list[Any]:
        """The events recorded since the last collection (and forget them)."""
        pending, self._pending = self._pending, []
        return pending


def _evolve_aggregate(state: A, event: Any) -> A:
    state.apply(event)
    return state


@dataclass
class Repository(Generic[A]):
    """Loads and changes :class:`Aggregate` objects through :func:`execute`."""

    store: EventStore
    factory: Callable[[], A]
    registry: EventRegistry = field(default=default_registry)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    snapshots: SnapshotConfig | None = None
    """Its ``state_type`` is a dataclass or Struct naming the attributes to snapshot."""

    async def load(self, stream_id: str) -> Loaded[A]:
        """The aggregate as of its latest event, and that event's version."""
        loaded = await load_state(
            self.store,
            stream_id,
            _evolve_aggregate,
            self.factory,
            registry=self.registry,
            snapshots=self.snapshots,
        )
        if self.snapshots is not None:
            await snapshot_loaded(
                self.store, self.snapshots, stream_id, loaded.version, loaded.state
            )
        return loaded

    async def take_snapshot(self, stream_id: str) -> Snapshot | None:
        """Snapshot the aggregate now, whatever the policy (on demand)."""
        if self.snapshots is None:
            raise ValueError("this Repository has no snapshots=SnapshotConfig(...)")
        return await take_snapshot(
            self.store,
            stream_id,
            evolve=_evolve_aggregate,
            initial_state=self.factory,
            config=self.snapshots,
            registry=self.registry,
        )

    async def execute(self, stream_id: str, action: Callable[[A], object]) -> HandleResult[Any, A]:
        """Load the aggregate, run ``action`` on it, append what it recorded; retry on conflict.

        ``action`` may run more than once (after a conflict, on freshly loaded state), so it
        must only call the aggregate's methods.
        """

        def decide(agg: A) -> tuple[Sequence[Any], A]:
            agg.collect_pending()
            action(agg)
            return agg.collect_pending(), agg

        return await execute(
            self.store,
            stream_id,
            evolve=_evolve_aggregate,
            initial_state=self.factory,
            decide=decide,
            registry=self.registry,
            max_attempts=self.max_attempts,
            snapshots=self.snapshots,
        )
