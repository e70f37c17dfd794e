-- 0001 initial schema.
-- Upgrade note: first version; nothing to upgrade from. Applied by PostgresEventStore.open()
-- under pg_advisory_xact_lock, inside one transaction, and recorded in
-- {schema}.schema_migrations; {schema} is replaced by the validated, double-quoted schema name.
--
-- position is the global order and encodes it: ((xid + xid_offset) << 20) + ordinal - 1, where
-- xid is the appending transaction's pg_current_xact_id() and ordinal the event's place in its
-- append. Readers only read below the snapshot's xmin (see docs/ordering.md), so position
-- order is delivery order and no reader can skip a transaction that commits late.
CREATE TABLE IF NOT EXISTS {schema}.events (
    position       bigint      NOT NULL CHECK (position > 0),
    stream_id      text        COLLATE "C" NOT NULL,
    category       text        COLLATE "C" NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    version        integer     NOT NULL CHECK (version >= 0),
    event_id       uuid        NOT NULL,
    type           text        NOT NULL,
    schema_version integer     NOT NULL DEFAULT 1,
    -- json, not jsonb: stored verbatim, cheap to write and to hand back as bytes
    data           json        NOT NULL,
    metadata       json        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

CREATE INDEX IF NOT EXISTS events_category_position_idx ON {schema}.events (category, position);

-- One row: what is added to transaction ids to make positions. It starts at 0 and only ever
-- grows: open() raises it when the cluster's xid counter is behind the stored positions
-- (after pg_dump/pg_restore into a new cluster).
CREATE TABLE IF NOT EXISTS {schema}.position_base (
    singleton  boolean NOT NULL DEFAULT true CHECK (singleton),
    xid_offset bigint  NOT NULL DEFAULT 0,
    CONSTRAINT position_base_pkey PRIMARY KEY (singleton)
);

INSERT INTO {schema}.position_base (singleton, xid_offset) VALUES (true, 0)
ON CONFLICT (singleton) DO NOTHING;

-- The log is append-only: chronik never updates an event row.
CREATE OR REPLACE FUNCTION {schema}.events_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'chronik events are immutable' USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON {schema}.events
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.events_immutable();
