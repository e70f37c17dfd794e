-- 0009 store fence: a migration's cut-over fences the old store so that it takes no more
-- events. The fence is one row naming the new store (its URL, password hidden) and the
-- position where writes stopped; a statement trigger refuses every INSERT into events while
-- it exists (SQLSTATE CF001, the new store in DETAIL), inside the inserting transaction, so
-- every write path (append, group commit, import in a transaction) is covered. The fence is
-- set under LOCK TABLE events IN SHARE MODE, which waits for the inserting transactions in
-- flight: after it commits, no event can commit here. chronik translates CF001 into
-- StoreFenced. Lifting the fence (`chronik migrate unfence`) deletes the row.
-- Upgrade note: adds a table, a function and a trigger; existing rows are untouched. The
-- trigger costs one read of an empty table per INSERT statement (not per event). Safe while
-- readers and writers run.
CREATE TABLE IF NOT EXISTS {schema}.store_fence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    moved_to  text        NOT NULL,
    position  bigint      NOT NULL,
    fenced_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE FUNCTION {schema}.events_fenced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved text;
    at_position bigint;
BEGIN
    SELECT f.moved_to, f.position INTO moved, at_position FROM {schema}.store_fence AS f;
    IF FOUND THEN
        RAISE EXCEPTION 'this store is fenced: writes moved to %', moved
            USING ERRCODE = 'CF001', DETAIL = moved, HINT = at_position::text;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS events_fence ON {schema}.events;
CREATE TRIGGER events_fence BEFORE INSERT ON {schema}.events
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.events_fenced();
