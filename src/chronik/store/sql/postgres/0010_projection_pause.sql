-- 0010 projection pause: an operator can pause a projection in every process that runs it
-- (console, HTTP API, `chronik projections pause`), and resume it. A paused projection's
-- runners finish the batch in flight and then apply nothing until it is resumed; readers keep
-- the read model as it was. paused_at is microseconds since 1970-01-01 UTC (NULL: running),
-- paused_by says who or why.
-- Upgrade note: two nullable columns on a small table; an older chronik ignores them (its
-- runners do not pause).
ALTER TABLE {schema}.projection_versions ADD COLUMN IF NOT EXISTS paused_at bigint;
ALTER TABLE {schema}.projection_versions ADD COLUMN IF NOT EXISTS paused_by text;

-- A runner's batch calls this right before chronik_advance_checkpoint, in the same pipelined
-- transaction (no extra round trip): paused, it fails with SQLSTATE CK002 and the batch's
-- writes roll back at COMMIT (ProjectionPaused); the runner then holds until resumed.
CREATE OR REPLACE FUNCTION {schema}.chronik_check_unpaused(projection text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {schema}.projection_versions AS v
               WHERE v.name = projection AND v.paused_at IS NOT NULL) THEN
        RAISE EXCEPTION 'projection % is paused', projection
            USING ERRCODE = 'CK002', DETAIL = projection;
    END IF;
END
$$;
