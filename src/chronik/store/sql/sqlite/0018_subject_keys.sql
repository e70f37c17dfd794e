-- 0018 subject keys: the same tables as PostgreSQL's 0018 (see there); times are INTEGER
-- microseconds since 1970-01-01 UTC (timestamptz on PostgreSQL).
CREATE TABLE IF NOT EXISTS subject_keys (
    subject TEXT PRIMARY KEY,
    wrapped_key BLOB,
    kek_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    forgotten_at INTEGER,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
);

CREATE TABLE IF NOT EXISTS subject_streams (
    subject TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    PRIMARY KEY (subject, stream_id)
);
