"""The saga runner: a :class:`~chronik.workers.Follower` that runs one saga's steps.

For one event it writes, in **one transaction**: the saga's own events (appended to the
instance's stream ``saga_<name>-<key>``, so ``chronik trace``, ``replay`` and ``check`` see
them like any other events), the instance's bookkeeping (``saga_instances``: status,
outstanding commands, scheduled deadlines), the commands to send (the ``saga_commands``
outbox, keyed by a command id derived from the triggering event id and the step, so a
redelivered event issues nothing new), the deadlines and the checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import chronik.sagas.sql as sql
from chronik.errors import (
    CheckpointMoved,
    ConcurrencyError,
    DuplicateEventId,
    FollowerFailed,
    LeaseLost,
    StoreUnavailable,
)
from chronik.events import RecordedEvent, category_of, validate_stream_id
from chronik.sagas.model import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    DEADLINE_TYPE,
    FAILED,
    NAMESPACE,
    OUTCOME_TYPES,
    REJECTED_TYPE,
    RUNNING,
    SUCCEEDED_TYPE,
    TERMINAL,
    Deadline,
    S,
    Saga,
    SagaCommand,
    SagaEvent,
    SagaInstance,
    command_id_for,
    dec,
    enc,
)
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, ImportedEvent, Tx
from chronik.subscriptions import Page, describe
from chronik.workers import Follower

__all__ = ["SagaRunner", "saga_instance"]

logger = logging.getLogger("chronik.sagas")

_CONFLICT_RETRIES = 20


def _new_record() -> dict[str, Any]:
    return {"outstanding": [], "completed": [], "deadlines": {}, "reason": None}


def _json(value: Any) -> dict[str, Any]:
    """A JSON column's value as a dict (PostgreSQL's driver decodes ``json`` itself)."""
    if isinstance(value, dict):
        return value
    decoded: dict[str, Any] = dec(value)
    return decoded


async def _state_events(tx: Tx, saga: Saga[Any], key: str) -> list[SagaEvent]:
    """The instance's own events: those of a store written before 0.2 still in saga_events,
    then those in its stream (outcomes and expired deadlines are not its own)."""
    params = {"saga": saga.name, "key": key}
    legacy = [SagaEvent(t, _json(d)) for t, d in await tx.fetchall(sql.LEGACY_EVENTS_OF, params)]
    rows = await tx.fetchall(sql.STATE_EVENTS, {"stream_id": saga.stream_id(key)})
    return legacy + [SagaEvent(t, _json(d)) for t, d in rows if t not in OUTCOME_TYPES]


def _fold(saga: Saga[S], events: list[SagaEvent]) -> S:
    state = saga.initial_state()
    for event in events:
        state = saga.evolve(state, event)
    return state


async def saga_instance(store: EventStore, saga: Saga[S], key: str) -> SagaInstance | None:
    """The stored instance of ``saga`` for ``key`` (``None``: none yet)."""
    async with store.transaction() as tx:  # one snapshot of bookkeeping and events
        row = await tx.fetchone(sql.LOAD_INSTANCE, {"saga": saga.name, "key": key})
        if row is None:
            return None
        events = await _state_events(tx, saga, key)
    return SagaInstance(saga.name, key, str(row[0]), _fold(saga, events), events, _json(row[1]))


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
            cid = uuid.uuid5(NAMESPACE, f"{compensation_of}/compensate")
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
    on_poison: Literal["skip", "stop"] = "skip"
    """After ``max_attempts`` failures of one event: record a dead letter and go on, or stop."""
    max_attempts = 3
    retry_backoff = 0.05

    def __init__(
        self,
        store: EventStore,
        saga: Saga[Any],
        *,
        batch_size: int = 100,
        poll_interval: float = 0.2,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.sql = require(store, SqlStore)  # MissingCapability without SQL (memory://)
        types = None
        if saga.types is not None:
            types = [*saga.types, *sorted(OUTCOME_TYPES)]
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

    async def prepare(self) -> None:
        """Move the own events of a store written before 0.2 (``saga_events`` rows) into
        the instances' streams, one instance per transaction: running sagas keep running."""
        rows = await self.sql.query(sql.LEGACY_EVENTS, {"saga": self.saga.name})
        by_key: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_key.setdefault(str(row[0]), []).append(row)
        for key, events in by_key.items():
            async with self.store.transaction() as tx:
                await tx.import_events(
                    [
                        self._own_event(key, uuid.uuid5(NAMESPACE, f"legacy/{key}/{seq}"),
                                        SagaEvent(type_, _json(data)), None)
                        for _, seq, type_, data, _ in events
                    ]
                )  # fmt: skip
                await tx.execute(sql.DELETE_LEGACY_EVENTS, {"saga": self.saga.name, "key": key})
            logger.info("saga %s-%s: %d own events moved to its stream", self.saga.name, key,
                        len(events))  # fmt: skip

    async def fence(self, tx: Tx, position: int) -> None:
        """Run first in every transaction that moves the checkpoint; a partitioned
        runner checks its lease here (chronik.scaleout.sagas). Nothing by default."""

    async def handle_page(self, page: Page) -> int:
        for event in page.events:
            await self.handle(event)
            await self.advance(event.position)
        return len(page.events)

    def _key(self, event: RecordedEvent) -> str | None:
        if category_of(event.stream_id) == self.saga.stream_category:
            if event.type not in OUTCOME_TYPES:
                return None  # one of the saga's own events: already applied
            return event.stream_id.partition("-")[2]
        key = self.saga.correlate(event)
        if key is not None:
            if not isinstance(key, str) or not key:
                raise ValueError(f"correlate returned {key!r}: a key is a non-empty str")
            validate_stream_id(self.saga.stream_id(key))
        return key

    async def handle(self, event: RecordedEvent) -> None:
        """Apply one event and save the checkpoint, in one transaction.

        An event the saga cannot handle (``correlate`` or ``react`` raises, a key that
        cannot name a stream) is retried ``max_attempts`` times, then recorded as a dead
        letter under ``saga:NAME`` and passed over (``on_poison = "skip"``, the default:
        the other instances go on), or stops the runner (``"stop"``).
        """
        error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._handle_once(event)
                return
            except (StoreUnavailable, CheckpointMoved, LeaseLost):
                raise  # nothing to do with the event: not retried, never a dead letter
            except Exception as exc:
                error = exc
                self.last_error = describe(exc)
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
        assert error is not None
        reason = (
            f"{event.stream_id}@{event.version} (position {event.position}, {event.type}): "
            f"{describe(error)}"
        )
        if self.on_poison == "stop":
            raise FollowerFailed(reason)
        logger.warning("saga %s: dead letter after %d attempts: %s", self.saga.name,
                       self.max_attempts, reason)  # fmt: skip
        async with self.store.transaction() as tx:
            await self.fence(tx, event.position)
            await tx.add_dead_letter(
                self.checkpoint_name, event, describe(error), self.max_attempts
            )
            await tx.set_checkpoint(self.checkpoint_name, event.position)
        self.dead_lettered += 1

    async def _handle_once(self, event: RecordedEvent) -> None:
        # The instance's stream also takes outcomes appended by the dispatcher, and another
        # runner may apply the same event: when either lands between this step's read and
        # its write, the step is done again from the start (then it finds the event applied).
        key = self._key(event)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self.store.transaction() as tx:
                    await self.fence(tx, event.position)
                    if key is not None:
                        await self._apply(tx, key, event)
                    await tx.set_checkpoint(self.checkpoint_name, event.position)
                return
            except (ConcurrencyError, DuplicateEventId):
                if attempt == _CONFLICT_RETRIES - 1:
                    raise

    async def _apply(self, tx: Tx, key: str, event: RecordedEvent) -> None:
        saga = self.saga
        row = await tx.fetchone(sql.LOAD_INSTANCE, {"saga": saga.name, "key": key})
        if row is None:
            status, record, seq = RUNNING, _new_record(), 0
        else:
            status, record, seq = str(row[0]), _json(row[1]), int(row[2])
        if status in TERMINAL or event.position <= record.get("position", 0):
            return  # ended, or this event was applied already (a redelivery)
        record["position"] = event.position
        state = _fold(saga, await _state_events(tx, saga, key)) if row is not None else None
        if state is None:
            state = saga.initial_state()
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
        row = await tx.fetchone(sql.COMPENSATION_OF, {"cid": cid})
        if row is not None and row[0] is not None:
            step.issue(SagaCommand.from_dict(_json(row[0])), compensation_of=cid)

    def _own_event(
        self, key: str, event_id: uuid.UUID, event: SagaEvent, trigger: RecordedEvent | None
    ) -> ImportedEvent:
        metadata: dict[str, Any] = {"saga": self.saga.name}
        if trigger is not None:
            metadata["causation_id"] = str(trigger.event_id)
            if trigger.correlation_id:
                metadata["correlation_id"] = trigger.correlation_id
        return ImportedEvent(
            event_id, self.saga.stream_id(key), None, event.type, 1,
            enc(event.data), enc(metadata), datetime.now(UTC),
        )  # fmt: skip

    async def _write(self, tx: Tx, step: _Step, status: str) -> None:
        saga, key, event, record = step.saga, step.key, step.event, step.record
        base = {"saga": saga.name, "key": key}
        if step.events:
            trigger = f"{saga.name}/{key}/{event.event_id}"
            await tx.import_events(
                [
                    self._own_event(key, uuid.uuid5(NAMESPACE, f"{trigger}/{n}"), ev, event)
                    for n, ev in enumerate(step.events)
                ]
            )
        seq = step.seq + len(step.events)
        correlation = event.correlation_id
        for cid, command, is_comp in step.commands:
            comp = command.compensation
            await tx.execute(
                sql.ISSUE_COMMAND,
                {**base, "cid": str(cid), "step": command.step, "stream_id": command.stream_id,
                 "type": command.type, "data": enc(dict(command.data)).decode(),
                 "comp": None if comp is None else enc(comp.to_dict()).decode(),
                 "is_comp": int(is_comp), "corr": correlation, "cause": str(event.event_id)},
            )  # fmt: skip
        for name in set(step.cancel):
            record["deadlines"].pop(name, None)
            await tx.execute(sql.CANCEL_DEADLINE, {**base, "name": name})
        now = f"{float(self.clock())!r}" if self.clock is not None else tx.clock_sql
        if status not in TERMINAL:
            for deadline in step.schedule:
                did = str(uuid.uuid5(NAMESPACE, f"{saga.name}/{key}/{event.event_id}/"
                                                f"{deadline.name}"))  # fmt: skip
                record["deadlines"][deadline.name] = did
                await tx.execute(sql.CANCEL_DEADLINE, {**base, "name": deadline.name})
                await tx.execute(
                    sql.SCHEDULE_DEADLINE.format(now=now),
                    {**base, "did": did, "name": deadline.name,
                     "seconds": float(deadline.seconds),
                     "data": enc(dict(deadline.data)).decode(), "corr": correlation},
                )  # fmt: skip
        await tx.execute(
            sql.SAVE_INSTANCE.format(now=now),
            {**base, "status": status, "record": enc(record).decode(), "seq": seq},
        )
