-- 0015 least privilege (docs/security.md "Database roles"): the group role chronik_runtime
-- may read the log and append to it, but never change or remove an event. The role that
-- runs migrations (the schema's owner) is the admin: retention, forgetting, fencing, token
-- management and migrations run as it. Applications log in as their own role, made a
-- member: CREATE ROLE app LOGIN PASSWORD '...' IN ROLE chronik_runtime.
--
-- chronik_grant_runtime() (re)applies the grants to every table of the schema; a later
-- migration that adds a table calls it again. Default privileges cover tables the owner
-- creates by hand. Without CREATEROLE the role cannot be made here: the migration then
-- only says so (NOTICE) and the store works as before; run it again as a superuser with
-- `chronik roles setup`.
-- Upgrade note: grants only; nothing existing changes for the owner.
CREATE OR REPLACE FUNCTION {schema}.chronik_grant_runtime() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s text := '{schema}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chronik_runtime') THEN
        BEGIN
            CREATE ROLE chronik_runtime NOLOGIN;
        EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chronik_runtime') THEN
                RAISE NOTICE 'chronik: no role chronik_runtime and no right to create it; '
                    'run `chronik roles setup` as a superuser for least-privilege access';
                RETURN false;
            END IF;
        END;
    END IF;
    -- projections create their read-model tables: CREATE on the schema (a table created by
    -- the runtime role is its own; it has no right on the owner's tables beyond these)
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %s TO chronik_runtime', s);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO chronik_runtime', s);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %s TO chronik_runtime', s);
    -- the log: read and append, never update or delete
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s.events FROM chronik_runtime', s);
    -- what only the admin changes: retention and its records, the fence, the position base,
    -- tokens, the migrations' record
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s.truncations, %s.retention_policies, '
                   '%s.store_fence, %s.position_base, %s.api_tokens, %s.schema_migrations '
                   'FROM chronik_runtime', s, s, s, s, s, s);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT SELECT, INSERT, UPDATE, DELETE '
                   'ON TABLES TO chronik_runtime', s);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT USAGE, SELECT ON SEQUENCES '
                   'TO chronik_runtime', s);
    RETURN true;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'chronik: cannot grant to chronik_runtime (%); run `chronik roles setup`', SQLERRM;
    RETURN false;
END;
$$;

SELECT {schema}.chronik_grant_runtime();
