"""The saga tables as the console shows them: counts, instances, pending deadlines, an
instance's commands and history.

The sagas keep their bookkeeping in SQL tables (migration 0005) and chronik has no read API
for it yet, so the queries are here, read-only, in one place (as ``chronik sagas status``
has its own); they belong in :mod:`chronik.sagas` once it offers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from chronik.app import App
from chronik.errors import MissingCapability, StreamNotFound
from chronik.events import RecordedEvent
from chronik.sagas.model import Saga
from chronik.sagas.runner import saga_instance
from chronik.sagas.sql import COUNT_BY_STATUS
from chronik.store.protocol import EventStore

__all__ = [
    "SagaCommandRow",
    "SagaCounts",
    "SagaDeadlineRow",
    "SagaDetail",
    "SagaInstanceRow",
    "saga_counts",
    "saga_deadlines",
    "saga_detail",
    "saga_instances",
]

_DEADLINES = (
    "SELECT saga, saga_key, name, due_at - ({now}), correlation_id FROM saga_deadlines "
    "ORDER BY due_at LIMIT :limit"
)
_PENDING_COMMANDS = (
    "SELECT saga, count(*) FROM saga_commands WHERE status IN ('pending', 'running') GROUP BY saga"
)
_INSTANCES = (
    "SELECT saga, saga_key, status, ({now}) - updated_at FROM saga_instances "
    "WHERE (:saga = '' OR saga = :saga) AND (:status = '' OR status = :status) "
    "ORDER BY updated_at DESC LIMIT :limit"
)
_INSTANCE = (
    "SELECT status, record, ({now}) - updated_at FROM saga_instances "
    "WHERE saga = :saga AND saga_key = :key"
)
_COMMANDS = (
    "SELECT command_id, step, stream_id, type, is_compensation, status, attempts, error "
    "FROM saga_commands WHERE saga = :saga AND saga_key = :key ORDER BY id"
)
_INSTANCE_DEADLINES = (
    "SELECT name, due_at - ({now}) FROM saga_deadlines WHERE saga = :saga AND saga_key = :key "
    "ORDER BY due_at"
)


@dataclass(frozen=True)
class SagaCounts:
    by_status: dict[str, dict[str, int]]
    """saga → status → instances."""
    pending_commands: dict[str, int]
    deadlines: int

    def total(self, status: str) -> int:
        return sum(counts.get(status, 0) for counts in self.by_status.values())


@dataclass(frozen=True)
class SagaInstanceRow:
    saga: str
    key: str
    status: str
    seconds_since_update: float


@dataclass(frozen=True)
class SagaDeadlineRow:
    saga: str
    key: str
    name: str
    due_in: float
    """Seconds from now on the database's clock (negative: overdue)."""
    correlation_id: str | None


@dataclass(frozen=True)
class SagaCommandRow:
    command_id: str
    step: str
    stream_id: str
    type: str
    is_compensation: bool
    status: str
    attempts: int
    error: str | None


@dataclass
class SagaDetail:
    saga: str
    key: str
    status: str
    seconds_since_update: float
    record: dict[str, Any]
    commands: list[SagaCommandRow]
    deadlines: list[tuple[str, float]]
    history: list[RecordedEvent]
    """The instance's stream: its own events, command outcomes, expired deadlines."""
    state: Any = None
    state_known: bool = False
    """The state was folded with the saga's definition (``app.extras["sagas"]``)."""
    compensations: list[SagaCommandRow] = field(default_factory=list)


async def saga_counts(store: EventStore) -> SagaCounts | None:
    """Instances by saga and status, pending commands, scheduled deadlines (``None``: the
    store has no SQL, so no sagas: its ``Tx`` raises ``MissingCapability``)."""
    try:
        async with store.transaction() as tx:
            rows = await tx.fetchall(COUNT_BY_STATUS)
            pending = await tx.fetchall(_PENDING_COMMANDS)
            deadline_row = await tx.fetchone("SELECT count(*) FROM saga_deadlines")
    except MissingCapability:
        return None
    by_status: dict[str, dict[str, int]] = {}
    for saga, status, count in rows:
        by_status.setdefault(str(saga), {})[str(status)] = int(count)
    return SagaCounts(
        by_status,
        {str(saga): int(count) for saga, count in pending},
        int(deadline_row[0]) if deadline_row else 0,
    )


async def saga_instances(
    store: EventStore, *, saga: str = "", status: str = "", limit: int = 100
) -> list[SagaInstanceRow]:
    """The instances updated last first, optionally of one saga and one status."""
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            _INSTANCES.format(now=tx.clock_sql),
            {"saga": saga, "status": status, "limit": limit},
        )
    return [SagaInstanceRow(str(s), str(k), str(st), float(age)) for s, k, st, age in rows]


async def saga_deadlines(store: EventStore, *, limit: int = 100) -> list[SagaDeadlineRow]:
    """Scheduled deadlines, the next due first."""
    async with store.transaction() as tx:
        rows = await tx.fetchall(_DEADLINES.format(now=tx.clock_sql), {"limit": limit})
    return [
        SagaDeadlineRow(str(s), str(k), str(n), float(due), None if c is None else str(c))
        for s, k, n, due, c in rows
    ]


def _definition(app: App | None, name: str) -> Saga[Any] | None:
    sagas = app.extras.get("sagas", ()) if app is not None else ()
    return next((s for s in sagas if isinstance(s, Saga) and s.name == name), None)


async def saga_detail(store: EventStore, app: App | None, saga: str, key: str) -> SagaDetail | None:
    """One instance: bookkeeping, commands (compensations among them), deadlines, its
    stream, and its state when the app gives the saga's definition (``None``: no such
    instance)."""
    params = {"saga": saga, "key": key}
    async with store.transaction() as tx:
        row = await tx.fetchone(_INSTANCE.format(now=tx.clock_sql), params)
        if row is None:
            return None
        command_rows = await tx.fetchall(_COMMANDS, params)
        deadline_rows = await tx.fetchall(_INSTANCE_DEADLINES.format(now=tx.clock_sql), params)
    commands = [
        SagaCommandRow(str(c), str(step), str(sid), str(t), bool(comp), str(st), int(att),
                       None if err is None else str(err))
        for c, step, sid, t, comp, st, att, err in command_rows
    ]  # fmt: skip
    try:
        history = [e async for e in store.read_stream(f"saga_{saga}-{key}")]
    except StreamNotFound:
        history = []
    record = row[1]
    detail = SagaDetail(
        saga=saga,
        key=key,
        status=str(row[0]),
        seconds_since_update=float(row[2]),
        record=msgspec.json.decode(record) if isinstance(record, (str, bytes)) else dict(record),
        commands=commands,
        deadlines=[(str(n), float(due)) for n, due in deadline_rows],
        history=history,
        compensations=[c for c in commands if c.is_compensation],
    )
    definition = _definition(app, saga)
    if definition is not None:
        instance = await saga_instance(store, definition, key)
        if instance is not None:
            from chronik.debugging import to_plain

            detail.state, detail.state_known = to_plain(instance.state), True
    return detail
