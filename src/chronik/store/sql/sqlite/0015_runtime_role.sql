-- 0015 least privilege: nothing to do on SQLite. A SQLite file has no roles: whoever can
-- write the file can change it (protect it with file permissions; `chronik verify` detects
-- edits). PostgreSQL's 0015 sets up the chronik_runtime role.
SELECT 1;
