-- 0012 API tokens: the same table as PostgreSQL's 0012 (see there); times are INTEGER
-- microseconds since 1970-01-01 UTC (timestamptz on PostgreSQL).
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);
