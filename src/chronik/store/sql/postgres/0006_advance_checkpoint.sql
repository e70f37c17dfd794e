-- 0006 chronik_advance_checkpoint(lock_key, name, expected, position): move a checkpoint
-- from the position a worker read to a new one, or fail with SQLSTATE CK001 when another
-- worker moved it meanwhile (the transaction then rolls back whole). It takes the
-- checkpoint's transaction lock first, so two workers of one subscription run one after the
-- other. A projection batch sends it with its writes and learns the outcome at COMMIT: one
-- round trip for the batch instead of two.
-- Upgrade note: adds a function; tables are untouched. Safe while readers and writers run.
CREATE OR REPLACE FUNCTION {schema}.chronik_advance_checkpoint(
    lock_key text, checkpoint_name text, expected bigint, new_position bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_position bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(lock_key, 0));
    SELECT c.position INTO current_position
    FROM {schema}.checkpoints AS c WHERE c.name = checkpoint_name;
    IF coalesce(current_position, 0) <> expected THEN
        RAISE EXCEPTION 'checkpoint % moved', checkpoint_name
            USING ERRCODE = 'CK001', DETAIL = checkpoint_name,
                  HINT = format('expected %s, found %s', expected, coalesce(current_position, 0));
    END IF;
    INSERT INTO {schema}.checkpoints AS c (name, position, updated_at)
    VALUES (checkpoint_name, new_position, now())
    ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at;
END
$$;
