-- 0005 sagas (instances, their own events, the command outbox, durable deadlines) and the
-- NATS inbox (processed message ids, dead-lettered messages).
-- Upgrade note: adds six tables; events are untouched. Safe to apply while others run.
CREATE TABLE IF NOT EXISTS saga_instances (
    saga        TEXT    NOT NULL,
    saga_key    TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (saga, saga_key)
);

CREATE TABLE IF NOT EXISTS saga_events (
    saga        TEXT    NOT NULL,
    saga_key    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    PRIMARY KEY (saga, saga_key, seq)
);

CREATE TABLE IF NOT EXISTS saga_commands (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id      TEXT    NOT NULL UNIQUE,
    saga            TEXT    NOT NULL,
    saga_key        TEXT    NOT NULL,
    step            TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    data            TEXT    NOT NULL,
    compensation    TEXT,
    is_compensation INTEGER NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    error           TEXT
);
CREATE INDEX IF NOT EXISTS saga_commands_pending_idx ON saga_commands (status, id);

CREATE TABLE IF NOT EXISTS saga_deadlines (
    deadline_id     TEXT    PRIMARY KEY,
    saga            TEXT    NOT NULL,
    saga_key        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    due_at          REAL    NOT NULL,
    data            TEXT    NOT NULL,
    correlation_id  TEXT
);
CREATE INDEX IF NOT EXISTS saga_deadlines_due_idx ON saga_deadlines (due_at);

CREATE TABLE IF NOT EXISTS processed_messages (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE IF NOT EXISTS inbox_dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer    TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    deliveries  INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    UNIQUE (consumer, message_id)
);
