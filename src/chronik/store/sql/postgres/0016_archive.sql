-- 0016 archive (`chronik archive`, docs/operations.md): the segments of events moved out of
-- the events table into zstd NDJSON files. A segment is recorded (state 'removing') after its
-- file is written and synced and before any of its rows is deleted; each batch of deletions
-- is recorded in truncations (0014) in its own transaction; the segment becomes 'archived'
-- when every row of it is gone ('restoring' while `chronik archive restore` puts them back).
-- Reads go through the file (chronik.store.archived), so `file` is where the archive lives.
-- Upgrade note: a new table; an older chronik ignores it (and reads archived events as
-- removed by retention).
CREATE TABLE IF NOT EXISTS {schema}.archive_segments (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    category       text   COLLATE "C" NOT NULL,
    file           text   NOT NULL UNIQUE,
    sha256         text   NOT NULL,
    bytes          bigint NOT NULL,
    events         bigint NOT NULL,
    first_position bigint NOT NULL,
    last_position  bigint NOT NULL,
    state          text   NOT NULL CHECK (state IN ('removing', 'archived', 'restoring')),
    created_at     timestamptz NOT NULL
);
