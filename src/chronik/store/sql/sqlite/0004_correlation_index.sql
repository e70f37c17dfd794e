-- 0004 an index on each event's correlation id, for `chronik trace` (read_correlation).
-- Upgrade note: adds one expression index; events are untouched. Building it reads the whole
-- events table once, inside the migration's write transaction: on a large store, expect
-- appends from other processes to wait (busy_timeout) until it is built.
-- Events without a correlation id index as NULL and cost nothing to find.
CREATE INDEX IF NOT EXISTS events_correlation_id
    ON events (json_extract(metadata, '$.correlation_id'), position);
