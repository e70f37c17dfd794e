-- 0017 tamper evidence (docs/security.md "Tamper evidence"): every event carries hash, the
-- SHA-256 of its stream's previous event's hash (32 zero bytes before version 0, or before
-- the first event retention kept) and of its stored fields: stream id, version, event id,
-- type, schema version, recorded time (microseconds since 1970 UTC), data and metadata as
-- stored (ciphertext where fields are encrypted), each as its UTF-8 text preceded by its
-- length (4 bytes, big-endian). chronik.store.chain computes the same bytes in Python;
-- `chronik verify` recomputes every link.
--
-- A BEFORE INSERT row trigger sets it, inside the inserting transaction, on every write path
-- (append, group commit, import, migrate copy, restore); a hash given by the caller is
-- overwritten. Its lookup of the previous event sees rows inserted earlier by the same
-- statement, so a multi-event append and a group commit chain in order.
-- chain_checkpoints holds the signed checkpoints of the global head (`chronik verify --sign`).
-- Upgrade note: adds a column, backfilled here for the events already stored (one pass in
-- stream order, under the migration's lock; about a minute per few million events), a
-- trigger (one index lookup per inserted event) and a table.
ALTER TABLE {schema}.events ADD COLUMN IF NOT EXISTS hash bytea;

CREATE OR REPLACE FUNCTION {schema}.chronik_event_hash(
    prev bytea, stream_id text, version integer, event_id uuid, type text,
    schema_version integer, recorded_at timestamptz, data text, metadata text
) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT sha256(
    coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
    || int4send(octet_length(convert_to(stream_id, 'UTF8'))) || convert_to(stream_id, 'UTF8')
    || int4send(octet_length(version::text)) || convert_to(version::text, 'UTF8')
    || int4send(36) || convert_to(event_id::text, 'UTF8')
    || int4send(octet_length(convert_to(type, 'UTF8'))) || convert_to(type, 'UTF8')
    || int4send(octet_length(schema_version::text)) || convert_to(schema_version::text, 'UTF8')
    || int4send(octet_length(((extract(epoch FROM recorded_at) * 1000000)::bigint)::text))
    || convert_to(((extract(epoch FROM recorded_at) * 1000000)::bigint)::text, 'UTF8')
    || int4send(octet_length(convert_to(data, 'UTF8'))) || convert_to(data, 'UTF8')
    || int4send(octet_length(convert_to(metadata, 'UTF8'))) || convert_to(metadata, 'UTF8')
)
$$;

-- The trigger computes the same bytes as chronik_event_hash() inline: a call of that SQL
-- function from PL/pgSQL is not inlined and cost about twice the whole trigger.
CREATE OR REPLACE FUNCTION {schema}.events_chain() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prev bytea;
    s bytea := convert_to(NEW.stream_id, 'UTF8');
    v bytea := convert_to(NEW.version::text, 'UTF8');
    t bytea := convert_to(NEW.type, 'UTF8');
    sv bytea := convert_to(NEW.schema_version::text, 'UTF8');
    r bytea := convert_to(((extract(epoch FROM NEW.recorded_at) * 1000000)::bigint)::text, 'UTF8');
    d bytea := convert_to(NEW.data::text, 'UTF8');
    m bytea := convert_to(NEW.metadata::text, 'UTF8');
BEGIN
    IF NEW.version > 0 THEN
        SELECT e.hash INTO prev FROM {schema}.events AS e
        WHERE e.stream_id = NEW.stream_id AND e.version = NEW.version - 1;
    END IF;
    NEW.hash := sha256(
        coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
        || int4send(length(s)) || s || int4send(length(v)) || v
        || int4send(36) || convert_to(NEW.event_id::text, 'UTF8')
        || int4send(length(t)) || t || int4send(length(sv)) || sv || int4send(length(r)) || r
        || int4send(length(d)) || d || int4send(length(m)) || m);
    RETURN NEW;
END
$$;

-- the events stored before this migration, in stream order
ALTER TABLE {schema}.events DISABLE TRIGGER events_no_update;
DO $$
DECLARE
    r record;
    prev bytea;
    last_stream text;
    last_version integer;
BEGIN
    FOR r IN SELECT position, stream_id, version, event_id, type, schema_version, recorded_at,
                    data::text AS data, metadata::text AS metadata
             FROM {schema}.events WHERE hash IS NULL ORDER BY stream_id, version
    LOOP
        IF r.stream_id IS DISTINCT FROM last_stream OR r.version <> last_version + 1 THEN
            prev := NULL;
        END IF;
        prev := {schema}.chronik_event_hash(prev, r.stream_id, r.version, r.event_id, r.type,
            r.schema_version, r.recorded_at, r.data, r.metadata);
        UPDATE {schema}.events SET hash = prev WHERE position = r.position;
        last_stream := r.stream_id;
        last_version := r.version;
    END LOOP;
END
$$;
ALTER TABLE {schema}.events ENABLE TRIGGER events_no_update;

DROP TRIGGER IF EXISTS events_chain ON {schema}.events;
CREATE TRIGGER events_chain BEFORE INSERT ON {schema}.events
FOR EACH ROW EXECUTE FUNCTION {schema}.events_chain();

CREATE TABLE IF NOT EXISTS {schema}.chain_checkpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    position    bigint      NOT NULL,
    events      bigint      NOT NULL,
    digest      bytea       NOT NULL,
    algorithm   text        NOT NULL,
    key_id      text        NOT NULL,
    signature   bytea       NOT NULL,
    created_at  timestamptz NOT NULL
);

-- the runtime role (0015) may read and add checkpoints, never change or remove them
SELECT {schema}.chronik_grant_runtime();
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chronik_runtime') THEN
        EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.chain_checkpoints FROM chronik_runtime';
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'chronik: cannot revoke on chain_checkpoints from chronik_runtime';
END
$$;
