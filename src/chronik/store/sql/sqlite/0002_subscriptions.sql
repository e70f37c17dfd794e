-- 0002 checkpoints, dead letters and active projection versions.
-- Upgrade note: adds three tables; events are untouched. Safe to apply while readers run.
CREATE TABLE IF NOT EXISTS checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    event_id     TEXT    NOT NULL,
    stream_id    TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    UNIQUE (subscription, event_id)
);

CREATE TABLE IF NOT EXISTS projection_versions (
    name   TEXT    PRIMARY KEY,
    active INTEGER NOT NULL
);
