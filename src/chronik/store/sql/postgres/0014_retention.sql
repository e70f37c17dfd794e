-- 0014 retention (`chronik retention`, `chronik scavenge`, docs/operations.md): the policies
-- kept per category, and what the scavenger removed. A policy row says what may go: events
-- older than max_age_seconds, all but the newest max_count of each stream, everything before
-- truncate_before (a position); NULL: that rule is off. The scavenger never removes a stream's
-- last event (it carries the stream's version) nor anything a checkpoint, dead letter or
-- consumer group has not processed. Each removal is recorded in truncations, in the same
-- transaction as the DELETE: `chronik check` reads a stream that starts above version 0 as
-- truncated by policy when its records cover the missing versions, and rebuilds say so.
-- Upgrade note: new tables; an older chronik ignores them (and reports removed events as gaps).
CREATE TABLE IF NOT EXISTS {schema}.retention_policies (
    category          text COLLATE "C" PRIMARY KEY,
    max_age_seconds   bigint CHECK (max_age_seconds > 0),
    max_count         integer CHECK (max_count > 0),
    truncate_before   bigint CHECK (truncate_before > 0),
    updated_at        timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS {schema}.truncations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      text COLLATE "C" NOT NULL,
    category       text COLLATE "C" NOT NULL,
    from_version   integer NOT NULL,
    through_version integer NOT NULL,
    first_position bigint NOT NULL,
    last_position  bigint NOT NULL,
    events         integer NOT NULL,
    reason         text NOT NULL,
    removed_at     timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS truncations_stream ON {schema}.truncations (stream_id, through_version);
