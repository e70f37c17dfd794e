"""The SQL of the saga workers, in one place (the tables come with migration 0005).

Written once for both SQL backends: ``:name`` parameters work on SQLite and PostgreSQL alike;
the database's clock comes from ``Tx.clock_sql``.
"""

from __future__ import annotations

__all__: list[str] = []

# -- instances: the bookkeeping of the outbox (status, outstanding commands, deadlines) ------

LOAD_INSTANCE = (
    "SELECT status, record, seq FROM saga_instances WHERE saga = :saga AND saga_key = :key"
)
SAVE_INSTANCE = (
    "INSERT INTO saga_instances (saga, saga_key, status, record, seq, updated_at) "
    "VALUES (:saga, :key, :status, :record, :seq, {now}) ON CONFLICT (saga, saga_key) "
    "DO UPDATE SET status = excluded.status, record = excluded.record, "
    "seq = excluded.seq, updated_at = excluded.updated_at"
)
COUNT_BY_STATUS = "SELECT saga, status, count(*) FROM saga_instances GROUP BY saga, status"

# -- the instance's own events: in its stream; saga_events only holds those of stores written
# -- before 0.2 (moved into the streams by SagaRunner when it starts) --------------------------

STATE_EVENTS = "SELECT type, data FROM events WHERE stream_id = :stream_id ORDER BY version"
LEGACY_EVENTS = (
    "SELECT saga_key, seq, type, data, position FROM saga_events WHERE saga = :saga "
    "ORDER BY saga_key, seq"
)
LEGACY_EVENTS_OF = (
    "SELECT type, data FROM saga_events WHERE saga = :saga AND saga_key = :key ORDER BY seq"
)
DELETE_LEGACY_EVENTS = "DELETE FROM saga_events WHERE saga = :saga AND saga_key = :key"

# -- the command outbox ------------------------------------------------------------------------

ISSUE_COMMAND = (
    "INSERT INTO saga_commands (command_id, saga, saga_key, step, stream_id, type, data, "
    "compensation, is_compensation, correlation_id, causation_id, status, attempts) VALUES "
    "(:cid, :saga, :key, :step, :stream_id, :type, :data, :comp, :is_comp, :corr, :cause, "
    "'pending', 0) ON CONFLICT (command_id) DO NOTHING"
)
COMPENSATION_OF = "SELECT compensation FROM saga_commands WHERE command_id = :cid"
_COMMAND_COLUMNS = (
    "command_id, saga, saga_key, step, stream_id, type, data, is_compensation, "
    "correlation_id, causation_id, attempts, compensation"
)
_CLAIMABLE = (
    "(status = 'pending' OR (status = 'running' AND (claimed_by = :me "
    "OR claimed_at < {now} - {claim_timeout})))"
)
PENDING_COMMANDS = (
    f"SELECT {_COMMAND_COLUMNS} FROM saga_commands WHERE {_CLAIMABLE} "
    "AND saga IN ({sagas}) ORDER BY id LIMIT {limit}"
)
CLAIM_COMMAND = (
    "UPDATE saga_commands SET status = 'running', claimed_at = {now}, claimed_by = :me, "
    f"attempts = attempts + 1 WHERE command_id = :cid AND {_CLAIMABLE} RETURNING attempts"
)
RELEASE_COMMAND = (
    "UPDATE saga_commands SET status = 'pending', error = :err WHERE command_id = :cid"
)
COMMAND = f"SELECT {_COMMAND_COLUMNS} FROM saga_commands WHERE command_id = :cid"
MARK_SENT = "UPDATE saga_commands SET status = 'sent' WHERE command_id = :cid"
FINISH_COMMAND = "UPDATE saga_commands SET status = :status, error = :err WHERE command_id = :cid"

# -- deadlines (due_at on the database's clock) ------------------------------------------------

CANCEL_DEADLINE = (
    "DELETE FROM saga_deadlines WHERE saga = :saga AND saga_key = :key AND name = :name"
)
SCHEDULE_DEADLINE = (
    "INSERT INTO saga_deadlines (deadline_id, saga, saga_key, name, due_at, data, "
    "correlation_id) VALUES (:did, :saga, :key, :name, {now} + :seconds, :data, :corr)"
)
DUE_DEADLINES = (
    "SELECT deadline_id, saga, saga_key, name, data, correlation_id FROM saga_deadlines "
    "WHERE due_at <= {now} ORDER BY due_at LIMIT {limit}"
)
DELETE_DEADLINE = "DELETE FROM saga_deadlines WHERE deadline_id = :did"
