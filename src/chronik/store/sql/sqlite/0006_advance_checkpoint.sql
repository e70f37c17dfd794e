-- 0006 the SQLite counterpart of PostgreSQL's 0006_advance_checkpoint, plus the same index
-- names and one time representation.
-- PostgreSQL's 0006 adds chronik_advance_checkpoint(), which compares and moves a checkpoint
-- in the server under the checkpoint's lock. SQLite needs no function: a write transaction
-- holds SQLite's only write lock from BEGIN IMMEDIATE on, so SqliteTx.advance_checkpoint
-- reads, compares and writes inside the transaction and nobody can move it in between.
-- The number is kept so that both dialects have the same migrations; SQLite uses it for:
--  * index names as on PostgreSQL: events_category_position_idx, events_correlation_id_idx,
--    snapshots_category_idx (SQLite cannot rename an index: each is built again);
--  * times as INTEGER microseconds since 1970-01-01 UTC in every table, like
--    events.recorded_at and snapshots.created_at already were: checkpoints.updated_at,
--    dead_letters.created_at and schema_migrations.applied_at held datetime('now') text
--    (seconds). The three small tables are rebuilt (SQLite cannot change a column's type);
--    dead letter ids and their AUTOINCREMENT sequence are kept.
-- Upgrade note: building the two events indexes again reads the events table twice inside
-- the migration's write transaction (the correlation index took 1.7 s per million events,
-- docs/debugging.md): on a large store, expect appends of other processes to wait
-- (busy_timeout) until it is done. Nothing else changes for readers or writers.

DROP INDEX IF EXISTS events_category_position;
CREATE INDEX IF NOT EXISTS events_category_position_idx ON events (category, position);

DROP INDEX IF EXISTS events_correlation_id;
CREATE INDEX IF NOT EXISTS events_correlation_id_idx
    ON events (json_extract(metadata, '$.correlation_id'), position);

DROP INDEX IF EXISTS snapshots_category;
CREATE INDEX IF NOT EXISTS snapshots_category_idx ON snapshots (category);

-- datetime('now') text becomes microseconds; anything else is taken as a number already
CREATE TABLE checkpoints_0006 (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL -- microseconds since 1970-01-01 UTC
);
INSERT INTO checkpoints_0006 (name, position, updated_at)
SELECT name, position,
       CASE WHEN updated_at LIKE '____-__-__%'
            THEN coalesce(CAST(strftime('%s', updated_at) AS INTEGER), 0) * 1000000
            ELSE CAST(updated_at AS INTEGER) END
FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_0006 RENAME TO checkpoints;

CREATE TABLE dead_letters_0006 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    event_id     TEXT    NOT NULL,
    stream_id    TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    UNIQUE (subscription, event_id)
);
-- the sequence first, so that ids of deleted dead letters are never handed out again
INSERT INTO sqlite_sequence (name, seq)
SELECT 'dead_letters_0006', seq FROM sqlite_sequence WHERE name = 'dead_letters';
INSERT INTO dead_letters_0006 (id, subscription, position, event_id, stream_id, version, type,
                               error, attempts, created_at)
SELECT id, subscription, position, event_id, stream_id, version, type, error, attempts,
       CASE WHEN created_at LIKE '____-__-__%'
            THEN coalesce(CAST(strftime('%s', created_at) AS INTEGER), 0) * 1000000
            ELSE CAST(created_at AS INTEGER) END
FROM dead_letters;
DROP TABLE dead_letters;
ALTER TABLE dead_letters_0006 RENAME TO dead_letters;

CREATE TABLE schema_migrations_0006 (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL, -- microseconds since 1970-01-01 UTC
    name       TEXT
);
INSERT INTO schema_migrations_0006 (version, applied_at, name)
SELECT version,
       CASE WHEN applied_at LIKE '____-__-__%'
            THEN coalesce(CAST(strftime('%s', applied_at) AS INTEGER), 0) * 1000000
            ELSE CAST(applied_at AS INTEGER) END,
       name
FROM schema_migrations;
DROP TABLE schema_migrations;
ALTER TABLE schema_migrations_0006 RENAME TO schema_migrations;
