-- 0012 API tokens (`chronik tokens`, docs/security.md): one row per token. The secret is
-- never stored: only its SHA-256 (the secret is 256 random bits, so a plain hash is enough).
-- roles is a JSON array of role names (expires_at NULL: never; revoked_at NULL: live). A
-- revoked row is kept for the record.
-- Upgrade note: a new table; an older chronik ignores it.
CREATE TABLE IF NOT EXISTS {schema}.api_tokens (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    secret_sha256 text NOT NULL,
    roles text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz
);
