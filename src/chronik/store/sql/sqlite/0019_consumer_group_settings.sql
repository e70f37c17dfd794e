-- 0019 consumer group settings: the same columns as PostgreSQL's 0019 (issue 17 item 4,
-- docs/scale-out.md): the stream a group covers (NULL: its categories, or the whole log),
-- the face's extra settings as JSON, and each buffered message's metadata, schema version
-- and recording time, so that a member gets the event as stored.
-- Upgrade note: new nullable columns; existing groups and messages keep working (messages
-- buffered before the upgrade read with empty metadata).
ALTER TABLE consumer_groups ADD COLUMN stream_id text;
ALTER TABLE consumer_groups ADD COLUMN settings text;
ALTER TABLE consumer_group_messages ADD COLUMN metadata text;
ALTER TABLE consumer_group_messages ADD COLUMN schema_version integer;
ALTER TABLE consumer_group_messages ADD COLUMN recorded_at INTEGER; -- microseconds (BIGINT on PostgreSQL)
