-- 0001 initial schema.
-- Upgrade note: first version; nothing to upgrade from.
-- position is the global order: assigned inside the single write transaction SQLite allows,
-- so it is also commit order, and AUTOINCREMENT never hands out a position twice.
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id      TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 0),
    event_id       TEXT    NOT NULL UNIQUE,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL DEFAULT 1,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    UNIQUE (stream_id, version)
);

CREATE INDEX IF NOT EXISTS events_category_position ON events (category, position);

-- The log is append-only: chronik never updates or deletes an event row.
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'chronik events are immutable');
END;
