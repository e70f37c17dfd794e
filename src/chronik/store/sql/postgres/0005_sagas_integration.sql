-- 0005 sagas (instances, their own events, the command outbox, durable deadlines) and the
-- NATS inbox (processed message ids, dead-lettered messages).
-- Upgrade note: adds six tables; events are untouched. Safe to apply while others run.
CREATE TABLE IF NOT EXISTS {schema}.saga_instances (
    saga        TEXT    NOT NULL,
    saga_key    TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    seq         bigint NOT NULL,
    updated_at  double precision    NOT NULL,
    PRIMARY KEY (saga, saga_key)
);

CREATE TABLE IF NOT EXISTS {schema}.saga_events (
    saga        TEXT    NOT NULL,
    saga_key    TEXT    NOT NULL,
    seq         bigint NOT NULL,
    type        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    position    bigint NOT NULL,
    PRIMARY KEY (saga, saga_key, seq)
);

CREATE TABLE IF NOT EXISTS {schema}.saga_commands (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id      TEXT    NOT NULL UNIQUE,
    saga            TEXT    NOT NULL,
    saga_key        TEXT    NOT NULL,
    step            TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    data            TEXT    NOT NULL,
    compensation    TEXT,
    is_compensation bigint NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    status          TEXT    NOT NULL,
    attempts        bigint NOT NULL,
    error           TEXT
);
CREATE INDEX IF NOT EXISTS saga_commands_pending_idx ON {schema}.saga_commands (status, id);

CREATE TABLE IF NOT EXISTS {schema}.saga_deadlines (
    deadline_id     TEXT    PRIMARY KEY,
    saga            TEXT    NOT NULL,
    saga_key        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    due_at          double precision    NOT NULL,
    data            TEXT    NOT NULL,
    correlation_id  TEXT
);
CREATE INDEX IF NOT EXISTS saga_deadlines_due_idx ON {schema}.saga_deadlines (due_at);

CREATE TABLE IF NOT EXISTS {schema}.processed_messages (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at double precision NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE IF NOT EXISTS {schema}.inbox_dead_letters (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    deliveries  bigint NOT NULL,
    created_at  double precision    NOT NULL,
    UNIQUE (consumer, message_id)
);
