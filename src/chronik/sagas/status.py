"""What the sagas are doing, counted: instances and commands by status, deadlines per saga
(one read for ``chronik sagas status``, ``GET /sagas`` and the console)."""

from __future__ import annotations

from dataclasses import dataclass

from chronik.store.port import SqlStore

__all__ = ["SagaCounts", "saga_counts"]

_INSTANCES = (
    "SELECT saga, status, count(*) FROM saga_instances GROUP BY saga, status ORDER BY saga, status"
)
_COMMANDS = (
    "SELECT saga, status, count(*) FROM saga_commands GROUP BY saga, status ORDER BY saga, status"
)
_DEADLINES = "SELECT saga, count(*) FROM saga_deadlines GROUP BY saga ORDER BY saga"


@dataclass(frozen=True, slots=True)
class SagaCounts:
    instances: list[tuple[str, str, int]]
    """(saga, status, count)."""
    commands: list[tuple[str, str, int]]
    """(saga, status, count)."""
    deadlines: dict[str, int]
    """Pending deadlines per saga."""


async def saga_counts(sql: SqlStore) -> SagaCounts:
    """Count the sagas' instances, commands and deadlines (read-only)."""
    instances = await sql.query(_INSTANCES)
    commands = await sql.query(_COMMANDS)
    deadlines = await sql.query(_DEADLINES)
    return SagaCounts(
        [(str(s), str(st), int(n)) for s, st, n in instances],
        [(str(s), str(st), int(n)) for s, st, n in commands],
        {str(s): int(n) for s, n in deadlines},
    )
