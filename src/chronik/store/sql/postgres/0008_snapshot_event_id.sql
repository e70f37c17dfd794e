-- 0008 snapshot event id: each snapshot records the id of the event it was taken after, so a
-- loader can tell that its stream still has that event at that version (a restored backup, a
-- truncated or re-copied stream would otherwise hand it a state of other events).
-- Upgrade note: adds one nullable column and fills it for the existing rows from the event now
-- at their version; rows ahead of their stream stay NULL (loaders skip a snapshot without an
-- event id; `chronik snapshots prune --invalid` deletes them). Safe while workers run: an
-- older chronik writes rows without it, which the newer one skips (snapshots are an
-- optimisation only).
ALTER TABLE {schema}.snapshots ADD COLUMN IF NOT EXISTS event_id uuid;
UPDATE {schema}.snapshots AS s SET event_id = e.event_id
FROM {schema}.events AS e
WHERE e.stream_id = s.stream_id AND e.version = s.version AND s.event_id IS NULL;
