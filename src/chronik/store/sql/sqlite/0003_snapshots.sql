-- 0003 snapshots: the state of a stream at one of its versions, kept beside the events.
-- Upgrade note: adds one table; events are untouched. Snapshots are an optimisation only:
-- dropping every row is always safe (states are rebuilt from events).
-- state_version names the shape of the state (explicit, or a hash of the state type); a
-- loader only uses rows whose state_version matches its code. created_at is microseconds
-- since 1970-01-01 UTC, as events.recorded_at.
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id     TEXT    NOT NULL,
    state_version TEXT    NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 0),
    category      TEXT    NOT NULL,
    state         BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (stream_id, state_version, version)
);

CREATE INDEX IF NOT EXISTS snapshots_category ON snapshots (category);
