-- 0019 consumer group settings (issue 17 item 4, docs/scale-out.md): the stream a group
-- covers (NULL: its categories, or the whole log), the face's extra settings as JSON
-- (KurrentDB persistent subscription settings that chronik stores and reports), and each
-- buffered message's metadata, schema version and recording time, so that a member gets
-- the event as stored.
-- Upgrade note: new nullable columns; existing groups and messages keep working (messages
-- buffered before the upgrade read with empty metadata).
ALTER TABLE {schema}.consumer_groups ADD COLUMN IF NOT EXISTS stream_id text;
ALTER TABLE {schema}.consumer_groups ADD COLUMN IF NOT EXISTS settings text;
ALTER TABLE {schema}.consumer_group_messages ADD COLUMN IF NOT EXISTS metadata text;
ALTER TABLE {schema}.consumer_group_messages ADD COLUMN IF NOT EXISTS schema_version integer;
ALTER TABLE {schema}.consumer_group_messages ADD COLUMN IF NOT EXISTS recorded_at bigint;
