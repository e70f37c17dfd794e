-- 0010 projection pause: the same two columns as PostgreSQL's 0010 (see there): paused_at in
-- microseconds since 1970-01-01 UTC (NULL: running) and paused_by.
ALTER TABLE projection_versions ADD COLUMN paused_at INTEGER;
ALTER TABLE projection_versions ADD COLUMN paused_by TEXT;
