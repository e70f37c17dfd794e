-- 0004 an index on each event's correlation id, for `chronik trace` (read_correlation).
-- Upgrade note: adds one expression index; events are untouched. metadata is json (not
-- jsonb), whose ->> operator is immutable and so indexable. open() builds the index inside
-- the migration transaction, which blocks appends while it is built: on a large store, build
-- it first by hand without blocking writers, and open() then finds it in place:
--   CREATE INDEX CONCURRENTLY events_correlation_id_idx
--       ON "schema".events ((metadata->>'correlation_id'), position);
CREATE INDEX IF NOT EXISTS events_correlation_id_idx
    ON {schema}.events ((metadata->>'correlation_id'), position);
