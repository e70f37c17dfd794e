-- 0011 worker leases: the same three tables as PostgreSQL's 0011 (see there). SQLite needs no
-- function: a write transaction holds SQLite's only write lock from BEGIN IMMEDIATE on, so
-- the lease check reads the row inside the batch's transaction and nobody can take it over
-- in between. SQLite runs one worker process per group: a second one gets WorkOwned.
CREATE TABLE IF NOT EXISTS worker_leases (
    name        TEXT    NOT NULL,
    partitions  INTEGER NOT NULL,
    partition   INTEGER NOT NULL,
    owner       TEXT,
    epoch       INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL DEFAULT 0,
    acquired_at INTEGER,
    PRIMARY KEY (name, partitions, partition)
);

CREATE TABLE IF NOT EXISTS worker_groups (
    name       TEXT    PRIMARY KEY,
    partitions INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    resize_to  INTEGER,
    barrier    INTEGER
);

CREATE TABLE IF NOT EXISTS worker_members (
    name       TEXT    NOT NULL,
    member     TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (name, member)
);
