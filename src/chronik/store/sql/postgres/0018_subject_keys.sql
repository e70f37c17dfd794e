-- 0018 subject keys (crypto-shredding, docs/security.md "Forgetting a person"): one row per
-- data subject. wrapped_key is the subject's AES-256 key wrapped by the key-encryption key
-- (kek_id names which); `chronik forget` sets it NULL and forgotten_at, and the row stays as
-- the record that the subject is forgotten (a later write for the subject stores no key).
-- subject_streams lists the streams holding a subject's encrypted fields, so forget can
-- invalidate their snapshots. Upgrade note: new tables; an older chronik ignores them.
CREATE TABLE IF NOT EXISTS {schema}.subject_keys (
    subject text PRIMARY KEY,
    wrapped_key bytea,
    kek_id text NOT NULL,
    created_at timestamptz NOT NULL,
    forgotten_at timestamptz,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
);

CREATE TABLE IF NOT EXISTS {schema}.subject_streams (
    subject text NOT NULL,
    stream_id text NOT NULL,
    PRIMARY KEY (subject, stream_id)
);
