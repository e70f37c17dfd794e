-- 0003 snapshots: the state of a stream at one of its versions, kept beside the events.
-- Upgrade note: adds one table; events are untouched. Safe to apply while readers and
-- writers run. Snapshots are an optimisation only: dropping every row is always safe (states
-- are rebuilt from events). state_version names the shape of the state (explicit, or a hash
-- of the state type); a loader only uses rows whose state_version matches its code.
CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    stream_id     text        COLLATE "C" NOT NULL,
    state_version text        COLLATE "C" NOT NULL,
    version       integer     NOT NULL CHECK (version >= 0),
    category      text        COLLATE "C" NOT NULL,
    state         bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_id, state_version, version)
);

CREATE INDEX IF NOT EXISTS snapshots_category_idx ON {schema}.snapshots (category);
