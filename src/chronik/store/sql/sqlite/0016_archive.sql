-- 0016 archive: the same table as PostgreSQL's 0016 (see there); created_at is INTEGER
-- microseconds since 1970-01-01 UTC.
CREATE TABLE IF NOT EXISTS archive_segments (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    category       TEXT    NOT NULL,
    file           TEXT    NOT NULL UNIQUE,
    sha256         TEXT    NOT NULL,
    bytes          INTEGER NOT NULL,
    events         INTEGER NOT NULL,
    first_position INTEGER NOT NULL,
    last_position  INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('removing', 'archived', 'restoring')),
    created_at     INTEGER NOT NULL
);
