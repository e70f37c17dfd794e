-- 0013 consumer groups (issue 17, docs/scale-out.md): named groups of competing external
-- consumers. consumer_groups holds each group's settings and the position up to which the
-- log was taken into its buffer; consumer_group_messages the buffered messages (pending, in
-- flight with a member and a deadline, or parked after the retry limit). Times are
-- microseconds since 1970-01-01 UTC on the database's clock.
-- Upgrade note: two new tables; nothing existing changes.
CREATE TABLE IF NOT EXISTS {schema}.consumer_groups (
    name               text    PRIMARY KEY,
    categories         text,
    strategy           text    NOT NULL,
    max_retries        integer NOT NULL,
    message_timeout_us bigint  NOT NULL,
    position           bigint  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS {schema}.consumer_group_messages (
    group_name text    NOT NULL,
    position   bigint  NOT NULL,
    stream_id  text    NOT NULL,
    version    bigint  NOT NULL,
    event_id   text    NOT NULL,
    type       text    NOT NULL,
    data       text    NOT NULL,
    state      text    NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    member     text,
    deadline   bigint,
    error      text,
    PRIMARY KEY (group_name, position)
);

CREATE INDEX IF NOT EXISTS consumer_group_messages_stream_idx
    ON {schema}.consumer_group_messages (group_name, stream_id, position);
