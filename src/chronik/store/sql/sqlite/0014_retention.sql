-- 0014 retention: the same tables as PostgreSQL's 0014 (see there); times are INTEGER
-- microseconds since 1970-01-01 UTC (timestamptz on PostgreSQL).
CREATE TABLE IF NOT EXISTS retention_policies (
    category          TEXT PRIMARY KEY,
    max_age_seconds   INTEGER CHECK (max_age_seconds > 0),
    max_count         INTEGER CHECK (max_count > 0),
    truncate_before   INTEGER CHECK (truncate_before > 0),
    updated_at        INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS truncations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       TEXT NOT NULL,
    category        TEXT NOT NULL,
    from_version    INTEGER NOT NULL,
    through_version INTEGER NOT NULL,
    first_position  INTEGER NOT NULL,
    last_position   INTEGER NOT NULL,
    events          INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    removed_at      INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS truncations_stream ON truncations (stream_id, through_version);
