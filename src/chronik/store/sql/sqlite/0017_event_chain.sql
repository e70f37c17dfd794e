-- 0017 tamper evidence (docs/security.md "Tamper evidence"): every event carries hash, the
-- SHA-256 of its stream's previous event's hash and of its stored fields (the bytes are
-- defined in chronik.store.chain and are the same as PostgreSQL's). The writer connection
-- registers chronik_event_hash(); the append and import INSERT compute the hash with it on
-- the single writer thread, inside the write transaction. An INSERT without a hash (a path
-- that bypasses chronik) is refused by events_chained.
-- chain_checkpoints holds the signed checkpoints of the global head (`chronik verify --sign`).
-- Upgrade note: adds a column, backfilled here for the events already stored (each stream
-- chained in version order through a temporary table), a trigger and a table.
ALTER TABLE events ADD COLUMN hash BLOB;

CREATE TEMP TABLE chronik_chain_backfill AS
WITH RECURSIVE link(position, stream_id, version, h) AS (
    SELECT e.position, e.stream_id, e.version,
           chronik_event_hash(NULL, e.stream_id, e.version, e.event_id, e.type, e.schema_version,
                              e.recorded_at, CAST(e.data AS TEXT), CAST(e.metadata AS TEXT))
    FROM events AS e
    WHERE NOT EXISTS (SELECT 1 FROM events AS p
                      WHERE p.stream_id = e.stream_id AND p.version = e.version - 1)
    UNION ALL
    SELECT e.position, e.stream_id, e.version,
           chronik_event_hash(link.h, e.stream_id, e.version, e.event_id, e.type,
                              e.schema_version, e.recorded_at, CAST(e.data AS TEXT),
                              CAST(e.metadata AS TEXT))
    FROM link JOIN events AS e ON e.stream_id = link.stream_id AND e.version = link.version + 1
)
SELECT position, h FROM link;

CREATE UNIQUE INDEX temp.chronik_chain_backfill_position ON chronik_chain_backfill (position);

DROP TRIGGER IF EXISTS events_no_update;

UPDATE events SET hash = (SELECT b.h FROM temp.chronik_chain_backfill AS b
                          WHERE b.position = events.position);

DROP TABLE temp.chronik_chain_backfill;

CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'chronik events are immutable');
END;

CREATE TRIGGER IF NOT EXISTS events_chained BEFORE INSERT ON events WHEN NEW.hash IS NULL
BEGIN
    SELECT RAISE(ABORT, 'chronik events are chained: an event without a hash');
END;

CREATE TABLE IF NOT EXISTS chain_checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    position    INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    digest      BLOB    NOT NULL,
    algorithm   TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    signature   BLOB    NOT NULL,
    created_at  INTEGER NOT NULL -- microseconds since 1970-01-01 UTC
);
