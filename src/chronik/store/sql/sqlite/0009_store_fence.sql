-- 0009 store fence: a migration's cut-over fences the old store so that it takes no more
-- events. The fence is one row naming the new store (its URL, password hidden) and the
-- position where writes stopped; a trigger refuses every INSERT into events while it exists,
-- inside the inserting transaction, so every write path (append, group commit, import in a
-- transaction) is covered. chronik translates the abort into StoreFenced. Lifting the fence
-- (`chronik migrate unfence`) deletes the row.
-- Upgrade note: adds a table and a trigger; existing rows are untouched. The trigger costs
-- one lookup in an empty table per inserted event. Safe while readers and writers run.
CREATE TABLE IF NOT EXISTS store_fence (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    moved_to  TEXT    NOT NULL,
    position  INTEGER NOT NULL,
    fenced_at INTEGER NOT NULL -- microseconds since 1970-01-01 UTC
);

CREATE TRIGGER IF NOT EXISTS events_fence BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM store_fence)
BEGIN
    SELECT RAISE(ABORT, 'chronik store fenced');
END;
