"""Sagas (process managers): deciders over events that issue commands, with compensation
and durable deadlines.

A :class:`Saga` follows events of some categories, correlates each to a saga instance by a
key taken from the event (``correlate``), and ``react``\\s with a :class:`Reaction`: its own
events (folded by ``evolve`` into its state), commands for aggregates (each with an optional
compensation), deadlines to schedule or cancel, and whether it is complete.

Three workers run it, each safe to kill -9 and restart:

* :class:`SagaRunner` follows the store. For one event it writes, in **one transaction**,
  the saga's own events, the instance record, the commands to send (in the ``saga_commands``
  outbox, keyed by a command id derived from the triggering event id and the step, so a
  redelivered event issues nothing new), the deadlines, and the checkpoint.
* :class:`CommandDispatcher` executes pending commands in order through a function you give
  (usually a :class:`~chronik.CommandHandler`), inside ``chronik.context`` with the saga's
  correlation id, the trigger as causation and ``command_id`` in every event's metadata. It
  then appends the outcome (``SagaCommandSucceeded``/``SagaCommandRejected``) to the
  instance's stream ``saga_<name>-<key>`` with an event id derived from the command id, and
  marks the command done. After a crash, a command with attempts is first looked up in its
  target stream by ``command_id``: found means executed, so it runs at most once; the
  outcome append is idempotent (same event id, same data).
* :class:`DeadlineWorker` appends ``SagaDeadlineExpired`` for each due deadline (event id
  derived from the deadline id) and deletes it. A deadline cancelled (or superseded) by the
  runner before its expiry is read is ignored.

A rejected forward command, or ``Reaction(compensate=...)``, starts compensation: the
compensations of the completed steps are issued newest first; a step still outstanding is
compensated when it succeeds. An instance ends in exactly one terminal state:
``completed``, ``compensated`` or ``failed`` (a compensation was rejected: needs attention).

Needs a SQL store (SQLite or PostgreSQL): the tables come with migration 0005.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from chronik.context import context
from chronik.errors import CommandRejected, StoreUnavailable, StreamNotFound
from chronik.events import NewEvent, RecordedEvent, category_of
from chronik.store.protocol import EventStore, Tx
from chronik.subscriptions import Page
from chronik.workers import Follower, Poller

__all__ = [
    "COMPENSATED",
    "COMPLETED",
    "FAILED",
    "RUNNING",
    "CommandDispatcher",
    "CommandRejected",
    "Deadline",
    "DeadlineWorker",
    "IssuedCommand",
    "Reaction",
    "Saga",
    "SagaCommand",
    "SagaEvent",
    "SagaInstance",
    "SagaRunner",
    "command_id_for",
    "record_outcome",
    "saga_instance",
]

logger = logging.getLogger("chronik.sagas")

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

_NS = uuid.UUID("6f1c5d0e-8a43-4c59-9a57-3f0d6c1e2b11")
_enc = msgspec.json.encode
_dec = msgspec.json.decode


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
        """The stream of one instance's outcomes and deadlines: ``saga_<name>-<key>``."""
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
    return uuid.uuid5(_NS, f"{saga}/{trigger}/{step}")


def _new_record() -> dict[str, Any]:
    return {"outstanding": [], "completed": [], "deadlines": {}, "reason": None}


async def _load(tx: Tx, saga: Saga[Any], key: str) -> tuple[str, dict[str, Any], int, Any]:
    row = await tx.fetchone(
        "SELECT status, record, seq FROM saga_instances WHERE saga = :saga AND saga_key = :key",
        {"saga": saga.name, "key": key},
    )
    state = saga.initial_state()
    if row is None:
        return RUNNING, _new_record(), 0, state
    rows = await tx.fetchall(
        "SELECT type, data FROM saga_events WHERE saga = :saga AND saga_key = :key ORDER BY seq",
        {"saga": saga.name, "key": key},
    )
    for type_, data in rows:
        state = saga.evolve(state, SagaEvent(type_, _dec(data)))
    return str(row[0]), _dec(row[1]), int(row[2]), state


async def saga_instance(store: EventStore, saga: Saga[S], key: str) -> SagaInstance | None:
    """The stored instance of ``saga`` for ``key`` (``None``: none yet)."""
    rows = await store.query(
        "SELECT status, record FROM saga_instances WHERE saga = :saga AND saga_key = :key",
        {"saga": saga.name, "key": key},
    )
    if not rows:
        return None
    evs = [
        SagaEvent(t, _dec(d))
        for t, d in await store.query(
            "SELECT type, data FROM saga_events WHERE saga = :saga AND saga_key = :key "
            "ORDER BY seq",
            {"saga": saga.name, "key": key},
        )
    ]
    state = saga.initial_state()
    for ev in evs:
        state = saga.evolve(state, ev)
    return SagaInstance(saga.name, key, str(rows[0][0]), state, evs, _dec(rows[0][1]))


class _Step:
    """One event's worth of changes to one instance, written by :meth:`SagaRunner._apply`."""

    def __init__(
        self, saga: Saga[Any], key: str, event: RecordedEvent, record: dict[str, Any], seq: int
    ) -> None:
        self.saga = saga
        self.key = key
        self.event = event
        self.record = record
        self.seq = seq
        self.events: list[SagaEvent] = []
        self.commands: list[tuple[uuid.UUID, SagaCommand, bool]] = []
        self.schedule: list[Deadline] = []
        self.cancel: list[str] = []

    def issue(self, command: SagaCommand, *, compensation_of: str | None = None) -> None:
        if compensation_of is not None:
            cid = uuid.uuid5(_NS, f"{compensation_of}/compensate")
        else:
            step = command.step or f"{len(self.commands)}"
            cid = command_id_for(self.saga.name, self.event.event_id, step)
        self.commands.append((cid, command, compensation_of is not None))
        self.record["outstanding"].append(str(cid))


class SagaRunner(Follower):
    """Follows the store and runs one saga's steps, one transaction per event.

    ``clock`` is for tests only: by default deadlines are computed on the database's
    clock (one clock for every worker, whatever its own says).
    """

    kind = "saga"

    def __init__(
        self,
        store: EventStore,
        saga: Saga[Any],
        *,
        batch_size: int = 100,
        poll_interval: float = 0.2,
        clock: Callable[[], float] | None = None,
    ) -> None:
        types = None
        if saga.types is not None:
            types = [*saga.types, SUCCEEDED_TYPE, REJECTED_TYPE, DEADLINE_TYPE]
        super().__init__(
            store,
            checkpoint_name=f"saga:{saga.name}",
            categories=[*saga.categories, saga.stream_category],
            types=types,
            batch_size=batch_size,
            poll_interval=poll_interval,
        )
        self.saga = saga
        self.clock = clock

    async def handle_page(self, page: Page) -> int:
        for event in page.events:
            await self.handle(event)
            await self.advance(event.position)
        return len(page.events)

    def _key(self, event: RecordedEvent) -> str | None:
        if category_of(event.stream_id) == self.saga.stream_category:
            return event.stream_id.partition("-")[2]
        return self.saga.correlate(event)

    async def handle(self, event: RecordedEvent) -> None:
        """Apply one event and save the checkpoint, in one transaction."""
        key = self._key(event)
        async with self.store.transaction() as tx:
            if key is not None:
                await self._apply(tx, key, event)
            await tx.set_checkpoint(self.checkpoint_name, event.position)

    async def _apply(self, tx: Tx, key: str, event: RecordedEvent) -> None:
        saga = self.saga
        status, record, seq, state = await _load(tx, saga, key)
        if status in TERMINAL:
            return
        step = _Step(saga, key, event, record, seq)
        own = category_of(event.stream_id) == saga.stream_category
        data = event.data if own else {}
        outcome: str | None = None
        if own and event.type == DEADLINE_TYPE:
            if record["deadlines"].get(data.get("name")) != data.get("deadline_id"):
                return  # cancelled or replaced before it was read
            del record["deadlines"][data["name"]]
        elif own and event.type in (SUCCEEDED_TYPE, REJECTED_TYPE):
            cid = str(data.get("command_id"))
            if cid not in record["outstanding"]:
                return  # a duplicate outcome
            record["outstanding"].remove(cid)
            outcome = event.type
        if status == COMPENSATING:
            if outcome == REJECTED_TYPE and data.get("compensation"):
                status = self._end(step, FAILED, f"compensation rejected: {data.get('reason')}")
            elif outcome == SUCCEEDED_TYPE and not data.get("compensation"):
                await self._compensate_one(tx, step, str(data["command_id"]))
            if status == COMPENSATING and not record["outstanding"]:
                status = self._end(step, COMPENSATED, record.get("reason"))
        else:
            if outcome == SUCCEEDED_TYPE and data.get("has_compensation"):
                record["completed"].append(str(data["command_id"]))
            reaction = saga.react(state, event)
            step.events.extend(reaction.events)
            for command in reaction.commands:
                step.issue(command)
            step.schedule.extend(reaction.schedule)
            step.cancel.extend(reaction.cancel)
            reason = reaction.compensate
            if outcome == REJECTED_TYPE and reason is None and reaction.fail is None:
                reason = f"step {data.get('step')!r} rejected: {data.get('reason')}"
            if reaction.fail is not None:
                status = self._end(step, FAILED, reaction.fail)
            elif reason is not None:
                status = COMPENSATING
                record["reason"] = reason
                step.events.append(SagaEvent("SagaCompensating", {"reason": reason}))
                step.cancel.extend(record["deadlines"])
                for cid in reversed(record["completed"]):
                    await self._compensate_one(tx, step, cid)
                if not record["outstanding"]:
                    status = self._end(step, COMPENSATED, reason)
            elif reaction.complete:
                status = self._end(step, COMPLETED, None)
        await self._write(tx, step, status)

    def _end(self, step: _Step, status: str, reason: str | None) -> str:
        name = {COMPLETED: "SagaCompleted", COMPENSATED: "SagaCompensated", FAILED: "SagaFailed"}
        step.events.append(SagaEvent(name[status], {"reason": reason}))
        step.cancel.extend(step.record["deadlines"])
        return status

    async def _compensate_one(self, tx: Tx, step: _Step, cid: str) -> None:
        row = await tx.fetchone(
            "SELECT compensation FROM saga_commands WHERE command_id = :cid", {"cid": cid}
        )
        if row is not None and row[0] is not None:
            step.issue(SagaCommand.from_dict(_dec(row[0])), compensation_of=cid)

    async def _write(self, tx: Tx, step: _Step, status: str) -> None:
        saga, key, event, record = step.saga, step.key, step.event, step.record
        base = {"saga": saga.name, "key": key}
        seq = step.seq
        for ev in step.events:
            seq += 1
            await tx.execute(
                "INSERT INTO saga_events (saga, saga_key, seq, type, data, position) "
                "VALUES (:saga, :key, :seq, :type, :data, :position)",
                {**base, "seq": seq, "type": ev.type, "data": _enc(ev.data).decode(),
                 "position": event.position},
            )  # fmt: skip
        correlation = event.correlation_id
        for cid, command, is_comp in step.commands:
            comp = command.compensation
            await tx.execute(
                "INSERT INTO saga_commands (command_id, saga, saga_key, step, stream_id, type, "
                "data, compensation, is_compensation, correlation_id, causation_id, status, "
                "attempts) VALUES (:cid, :saga, :key, :step, :stream_id, :type, :data, :comp, "
                ":is_comp, :corr, :cause, 'pending', 0) ON CONFLICT (command_id) DO NOTHING",
                {**base, "cid": str(cid), "step": command.step, "stream_id": command.stream_id,
                 "type": command.type, "data": _enc(dict(command.data)).decode(),
                 "comp": None if comp is None else _enc(comp.to_dict()).decode(),
                 "is_comp": int(is_comp), "corr": correlation, "cause": str(event.event_id)},
            )  # fmt: skip
        for name in set(step.cancel):
            record["deadlines"].pop(name, None)
            await tx.execute(
                "DELETE FROM saga_deadlines WHERE saga = :saga AND saga_key = :key "
                "AND name = :name",
                {**base, "name": name},
            )
        now = f"{float(self.clock())!r}" if self.clock is not None else tx.clock_sql
        if status not in TERMINAL:
            for deadline in step.schedule:
                did = str(uuid.uuid5(_NS, f"{saga.name}/{key}/{event.event_id}/{deadline.name}"))
                record["deadlines"][deadline.name] = did
                await tx.execute(
                    "DELETE FROM saga_deadlines WHERE saga = :saga AND saga_key = :key "
                    "AND name = :name",
                    {**base, "name": deadline.name},
                )
                await tx.execute(
                    "INSERT INTO saga_deadlines (deadline_id, saga, saga_key, name, due_at, "
                    f"data, correlation_id) VALUES (:did, :saga, :key, :name, {now} + :seconds, "
                    ":data, :corr)",
                    {**base, "did": did, "name": deadline.name, "seconds": float(deadline.seconds),
                     "data": _enc(dict(deadline.data)).decode(), "corr": correlation},
                )  # fmt: skip
        await tx.execute(
            "INSERT INTO saga_instances (saga, saga_key, status, record, seq, updated_at) "
            f"VALUES (:saga, :key, :status, :record, :seq, {now}) ON CONFLICT (saga, saga_key) "
            "DO UPDATE SET status = excluded.status, record = excluded.record, "
            "seq = excluded.seq, updated_at = excluded.updated_at",
            {**base, "status": status, "record": _enc(record).decode(), "seq": seq},
        )  # fmt: skip


CommandExecutor = Callable[[IssuedCommand], Awaitable[None]]


class CommandDispatcher(Poller):
    """Executes the saga outbox's pending commands, in order, each at most once."""

    def __init__(
        self,
        store: EventStore,
        sagas: Sequence[Saga[Any]],
        execute: CommandExecutor,
        *,
        rejected_by: tuple[type[BaseException], ...] = (CommandRejected,),
        max_attempts: int = 5,
        lookback: int = 1000,
        poll_interval: float = 0.2,
        remote: bool = False,
    ) -> None:
        if not sagas:
            raise ValueError("a CommandDispatcher needs at least one saga")
        super().__init__(name="dispatcher:" + ",".join(s.name for s in sagas),
                         poll_interval=poll_interval)  # fmt: skip
        self.store = store
        self.sagas = {s.name: s for s in sagas}
        self.execute = execute
        self.remote = remote
        """``execute`` only sends each command to another service (idempotently: e.g. an
        append with an event id derived from the command id, relayed through JetStream);
        the outcome is recorded later by :func:`record_outcome`."""
        self.rejected_by = rejected_by
        self.max_attempts = max_attempts
        self.lookback = lookback

    async def run_once(self, limit: int = 100) -> int:
        """Dispatch the pending commands there are now; returns how many were finished."""
        rows = await self.store.query(
            "SELECT command_id, saga, saga_key, step, stream_id, type, data, is_compensation, "
            "correlation_id, causation_id, attempts, compensation FROM saga_commands "
            "WHERE status = 'pending' AND saga IN ("
            + ", ".join(f":s{i}" for i in range(len(self.sagas)))
            + f") ORDER BY id LIMIT {int(limit)}",
            {f"s{i}": name for i, name in enumerate(self.sagas)},
        )
        finished = 0
        for row in rows:
            command = _issued(row)
            if await self._dispatch(command, has_compensation=row[11] is not None):
                finished += 1
        return finished

    async def _executed_already(self, command: IssuedCommand) -> bool:
        wanted = str(command.command_id)
        try:
            async for ev in self.store.read_stream(
                command.stream_id, backwards=True, limit=self.lookback
            ):
                if ev.metadata.get("command_id") == wanted:
                    return True
        except StreamNotFound:
            return False
        return False

    async def _dispatch(self, command: IssuedCommand, *, has_compensation: bool) -> bool:
        cid = str(command.command_id)
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE saga_commands SET attempts = attempts + 1 WHERE command_id = :cid",
                {"cid": cid},
            )
        reason: str | None = None
        if self.remote:
            with context(
                correlation_id=command.correlation_id,
                causation_id=command.causation_id,
                command_id=cid,
            ):
                await self.execute(command)  # sends it (idempotently); the reply comes later
            async with self.store.transaction() as tx:
                await tx.execute(
                    "UPDATE saga_commands SET status = 'sent' WHERE command_id = :cid",
                    {"cid": cid},
                )
            return True
        if command.attempts > 0 and await self._executed_already(command):
            pass  # executed before a crash: do not run it again
        else:
            try:
                with context(
                    correlation_id=command.correlation_id,
                    causation_id=command.causation_id,
                    command_id=cid,
                ):
                    await self.execute(command)
            except self.rejected_by as exc:
                reason = str(exc) or type(exc).__name__
            except StoreUnavailable:
                raise  # an outage is no failed attempt: the poller retries the round
            except Exception as exc:
                if command.attempts + 1 < self.max_attempts:
                    logger.warning("command %s failed (retrying): %r", cid, exc)
                    async with self.store.transaction() as tx:
                        await tx.execute(
                            "UPDATE saga_commands SET error = :err WHERE command_id = :cid",
                            {"cid": cid, "err": repr(exc)},
                        )
                    return False
                reason = f"failed {command.attempts + 1} times: {exc!r}"
        await _record(self.store, self.sagas[command.saga], command, has_compensation, reason)
        return True


async def _record(
    store: EventStore,
    saga: Saga[Any],
    command: IssuedCommand,
    has_compensation: bool,
    reason: str | None,
) -> None:
    cid = str(command.command_id)
    outcome: dict[str, Any] = {
        "command_id": cid,
        "step": command.step,
        "type": command.type,
        "stream_id": command.stream_id,
        "compensation": command.is_compensation,
        "has_compensation": has_compensation,
    }
    if reason is not None:
        outcome["reason"] = reason
    event = NewEvent(
        type=SUCCEEDED_TYPE if reason is None else REJECTED_TYPE,
        data=outcome,
        event_id=uuid.uuid5(command.command_id, "outcome"),
    )
    with context(correlation_id=command.correlation_id, causation_id=cid):
        await store.append(saga.stream_id(command.saga_key), [event])
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE saga_commands SET status = :status, error = :err WHERE command_id = :cid",
            {"cid": cid, "status": "done" if reason is None else "rejected", "err": reason},
        )


async def record_outcome(
    store: EventStore, sagas: Sequence[Saga[Any]], command_id: uuid.UUID | str, reason: str | None
) -> bool:
    """Record the outcome of a command another service executed (``reason``: rejected).

    For commands sent by a ``CommandDispatcher(remote=True)``: call it from the inbox
    handler that receives the other service's reply. Idempotent (the outcome event id comes
    from the command id). Returns ``False`` for a command id this store never issued.
    """
    rows = await store.query(
        "SELECT command_id, saga, saga_key, step, stream_id, type, data, is_compensation, "
        "correlation_id, causation_id, attempts, compensation FROM saga_commands "
        "WHERE command_id = :cid",
        {"cid": str(command_id)},
    )
    if not rows:
        return False
    row = rows[0]
    by_name = {s.name: s for s in sagas}
    command = _issued(row)
    await _record(store, by_name[command.saga], command, row[11] is not None, reason)
    return True


def _issued(row: Sequence[Any]) -> IssuedCommand:
    return IssuedCommand(
        uuid.UUID(str(row[0])), row[1], row[2], row[3], row[4], row[5], _dec(row[6]),
        bool(row[7]), row[8], row[9], int(row[10]),
    )  # fmt: skip


class DeadlineWorker(Poller):
    """Fires due deadlines as ``SagaDeadlineExpired`` events in the instance's stream.

    "Due" is decided on the database's clock, the clock the runner scheduled them on, so a
    worker whose own clock is off fires them neither early nor late. ``clock`` is for
    tests only.
    """

    def __init__(
        self,
        store: EventStore,
        sagas: Sequence[Saga[Any]],
        *,
        poll_interval: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name="deadlines:" + ",".join(s.name for s in sagas),
                         poll_interval=poll_interval)  # fmt: skip
        self.store = store
        self.sagas = {s.name: s for s in sagas}
        self.clock = clock

    async def run_once(self, limit: int = 100) -> int:
        """Fire the deadlines due now; returns how many fired."""
        async with self.store.transaction() as tx:
            now = f"{float(self.clock())!r}" if self.clock is not None else tx.clock_sql
            rows = await tx.fetchall(
                "SELECT deadline_id, saga, saga_key, name, data, correlation_id "
                f"FROM saga_deadlines WHERE due_at <= {now} ORDER BY due_at LIMIT {int(limit)}"
            )
        fired = 0
        for did, saga_name, key, name, data, correlation in rows:
            saga = self.sagas.get(saga_name)
            if saga is None:
                continue
            event = NewEvent(
                type=DEADLINE_TYPE,
                data={"name": name, "deadline_id": did, "data": _dec(data)},
                event_id=uuid.uuid5(uuid.UUID(str(did)), "expired"),
            )
            with context(correlation_id=correlation, causation_id=str(did)):
                await self.store.append(saga.stream_id(key), [event])
            async with self.store.transaction() as tx:
                await tx.execute(
                    "DELETE FROM saga_deadlines WHERE deadline_id = :did", {"did": str(did)}
                )
            fired += 1
        return fired
