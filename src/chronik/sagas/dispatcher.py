"""The command dispatcher: executes the saga outbox's pending commands, each at most once.

It runs each command through a function you give (usually a :class:`~chronik.CommandHandler`),
inside ``chronik.context`` with the saga's correlation id, the trigger as causation and
``command_id`` in every event's metadata; then appends the outcome
(``SagaCommandSucceeded``/``SagaCommandRejected``) to the instance's stream with an event id
derived from the command id, and marks the command done. After a crash, a command with
attempts is first looked up in its target stream by ``command_id``: found means executed.

A command whose executor raises something else than ``rejected_by`` (a lost connection to
another service, a bug) is retried, up to ``max_attempts`` runs in all (default 5), after a
backoff that doubles from ``retry_backoff`` (0.5 s) to at most ``max_backoff`` (30 s): 0.5,
1, 2, 4 s between the five runs. Meanwhile the other pending commands go on. After the last
attempt the command counts as rejected (``SagaCommandRejected``, reason ``"failed 5 times:
..."``) and the saga compensates. A :class:`~chronik.errors.StoreUnavailable` is no attempt:
the whole round is retried when the store is back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import chronik.sagas.sql as sql
from chronik.context import context
from chronik.errors import CommandRejected, StoreUnavailable, StreamNotFound
from chronik.events import NewEvent
from chronik.sagas.model import (
    REJECTED_TYPE,
    SUCCEEDED_TYPE,
    IssuedCommand,
    Saga,
    dec,
)
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore
from chronik.workers import Poller

__all__ = ["CommandDispatcher", "CommandExecutor", "record_outcome"]

logger = logging.getLogger("chronik.sagas")


CommandExecutor = Callable[[IssuedCommand], Awaitable[None]]


class CommandDispatcher(Poller):
    """Executes the saga outbox's pending commands, in order, each at most once.

    Args:
        store: the store of the sagas' outbox (SQLite or PostgreSQL).
        sagas: the sagas whose commands this dispatcher runs.
        execute: runs one command (usually through a :class:`~chronik.CommandHandler`).
        rejected_by: errors of ``execute`` that mean "refused": recorded at once as
            ``SagaCommandRejected``, never retried.
        max_attempts: runs of a command that fails otherwise, before it counts as rejected.
        retry_backoff, max_backoff: the wait before a failed command runs again, in
            seconds: ``retry_backoff`` after the first failure, doubling up to
            ``max_backoff``. Other commands are dispatched meanwhile.
        lookback, poll_interval, remote, claim_timeout: see the attributes.
        clock: a monotonic clock in seconds, for the backoff (tests move it).
    """

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
        claim_timeout: float = 10.0,
        retry_backoff: float = 0.5,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sql = require(store, SqlStore)  # MissingCapability without SQL (memory://)
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
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if retry_backoff < 0 or max_backoff < retry_backoff:
            raise ValueError("need 0 <= retry_backoff <= max_backoff")
        self.rejected_by = rejected_by
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._retry_at: dict[str, float] = {}
        """Command id → when (on ``clock``) a failed command may run again."""
        self.lookback = lookback
        self.claim_timeout = claim_timeout
        """A command claimed by another dispatcher longer ago than this (seconds, on the
        database's clock) is taken over: its owner is taken for dead. A command running
        longer than this may run twice; a dead owner's commands wait this long."""
        self.id = uuid.uuid4().hex
        """Names this dispatcher in its claims."""

    async def run_once(self, limit: int = 100) -> int:
        """Dispatch the pending commands there are now; returns how many were finished."""
        names = ", ".join(f":s{i}" for i in range(len(self.sagas)))
        params: dict[str, Any] = {f"s{i}": name for i, name in enumerate(self.sagas)}
        async with self.store.transaction() as tx:
            rows = await tx.fetchall(
                sql.PENDING_COMMANDS.format(
                    sagas=names, limit=int(limit), now=tx.clock_sql,
                    claim_timeout=float(self.claim_timeout),
                ),
                {**params, "me": self.id},
            )  # fmt: skip
        if len(rows) < limit:  # every pending command is here: forget the others' backoff
            pending = {str(row[0]) for row in rows}
            self._retry_at = {c: at for c, at in self._retry_at.items() if c in pending}
        now = self._clock()
        finished = 0
        for row in rows:
            if self._retry_at.get(str(row[0]), now) > now:
                continue  # failed recently: waits out its backoff, the others go on
            command = await self._claim(_issued(row))
            if command is not None and await self._dispatch(
                command, has_compensation=row[11] is not None
            ):
                finished += 1
        return finished

    async def _claim(self, command: IssuedCommand) -> IssuedCommand | None:
        """Claim ``command`` for this dispatcher (and count the attempt); ``None`` when
        another dispatcher holds it. Its attempts are then those made before this one."""
        async with self.store.transaction() as tx:
            row = await tx.fetchone(
                sql.CLAIM_COMMAND.format(now=tx.clock_sql, claim_timeout=float(self.claim_timeout)),
                {"cid": str(command.command_id), "me": self.id},
            )
        if row is None:
            return None
        return dataclasses.replace(command, attempts=int(row[0]) - 1)

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
        reason: str | None = None
        if self.remote:
            with context(
                correlation_id=command.correlation_id,
                causation_id=command.causation_id,
                command_id=cid,
            ):
                await self.execute(command)  # sends it (idempotently); the reply comes later
            async with self.store.transaction() as tx:
                await tx.execute(sql.MARK_SENT, {"cid": cid})
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
                failures = command.attempts + 1
                if failures < self.max_attempts:
                    delay = self.retry_delay(failures)
                    logger.warning(
                        "command %s failed (attempt %d of %d; retrying in %.1fs): %r",
                        cid, failures, self.max_attempts, delay, exc,
                    )  # fmt: skip
                    self._retry_at[cid] = self._clock() + delay
                    async with self.store.transaction() as tx:
                        await tx.execute(sql.RELEASE_COMMAND, {"cid": cid, "err": repr(exc)})
                    return False
                reason = f"failed {failures} times: {exc!r}"
        await _record(self.store, self.sagas[command.saga], command, has_compensation, reason)
        self._retry_at.pop(cid, None)
        return True

    def retry_delay(self, failures: int) -> float:
        """The wait after a command's ``failures``-th failed run: ``retry_backoff`` doubled
        per earlier failure, at most ``max_backoff`` (the doubling of
        :class:`~chronik.subscriptions.Backoff`, counted from the attempts stored with the
        command: a restarted dispatcher runs a waiting command at once, then goes on
        doubling)."""
        return float(min(self.retry_backoff * 2 ** max(failures - 1, 0), self.max_backoff))


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
            sql.FINISH_COMMAND,
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
    rows = await require(store, SqlStore).query(sql.COMMAND, {"cid": str(command_id)})
    if not rows:
        return False
    row = rows[0]
    by_name = {s.name: s for s in sagas}
    command = _issued(row)
    await _record(store, by_name[command.saga], command, row[11] is not None, reason)
    return True


def _issued(row: Sequence[Any]) -> IssuedCommand:
    return IssuedCommand(
        uuid.UUID(str(row[0])), row[1], row[2], row[3], row[4], row[5], dec(row[6]),
        bool(row[7]), row[8], row[9], int(row[10]),
    )  # fmt: skip
