-- 0011 worker leases (issue 17, docs/scale-out.md): a worker kind split into partitions
-- (a stable hash of the stream id) runs in many processes; each partition is owned through a
-- lease with an epoch (a fencing token). worker_members lists the live processes of a group
-- (what a rebalance divides the partitions among); worker_groups the partition count. Times are microseconds since 1970-01-01
-- UTC on the database's clock, as in 0006 and 0010.
-- Upgrade note: three new tables and four functions; nothing existing changes. Older chronik
-- versions ignore them (their runners do not partition).
CREATE TABLE IF NOT EXISTS {schema}.worker_leases (
    name        text    NOT NULL,
    partitions  integer NOT NULL,
    partition   integer NOT NULL,
    owner       text,
    epoch       bigint  NOT NULL DEFAULT 0,
    expires_at  bigint  NOT NULL DEFAULT 0,
    acquired_at bigint,
    PRIMARY KEY (name, partitions, partition)
);

-- One row per worker group: its partition count now, and a resize in progress (drain-and-
-- switch, docs/scale-out.md): the old partitions run up to position `barrier`, then one
-- member switches the group to `resize_to` partitions, each starting at the barrier.
CREATE TABLE IF NOT EXISTS {schema}.worker_groups (
    name       text    PRIMARY KEY,
    partitions integer NOT NULL,
    generation integer NOT NULL DEFAULT 1,
    resize_to  integer,
    barrier    bigint
);

CREATE TABLE IF NOT EXISTS {schema}.worker_members (
    name       text   NOT NULL,
    member     text   NOT NULL,
    started_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (name, member)
);

-- The lock a partition's batches hold shared and a takeover holds exclusively (a
-- transaction-level advisory lock: visible in pg_locks with its pid, so a takeover can end
-- the session of an owner stopped in the middle of a batch).
CREATE OR REPLACE FUNCTION {schema}.chronik_lease_key(
    lease_name text, lease_partitions integer, lease_partition integer
) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended(format('lease:%s/p%sof%s', lease_name, lease_partition,
                                   lease_partitions), 0)
$$;

-- A partitioned worker's batch sends this first, in its own transaction (pipelined: no round
-- trip): it takes the partition's lock shared (a takeover waits until the batch commits or
-- rolls back) and fails with SQLSTATE CK003 when the lease has another owner or a newer
-- epoch, so a stale owner's writes and checkpoint roll back whole (LeaseLost); also when
-- the group has another partition count now or a resize's barrier is below new_position
-- (the checkpoint the batch moves to).
CREATE OR REPLACE FUNCTION {schema}.chronik_check_lease(
    lease_name text, lease_partitions integer, lease_partition integer, member text,
    lease_epoch bigint, new_position bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    found_owner text;
    found_epoch bigint;
    group_partitions integer;
    group_barrier bigint;
BEGIN
    -- the group row shared: a resize (which updates it) waits for batches in flight and
    -- every later batch sees its barrier
    SELECT g.partitions, CASE WHEN g.resize_to IS NULL THEN NULL ELSE g.barrier END
    INTO group_partitions, group_barrier
    FROM {schema}.worker_groups AS g WHERE g.name = lease_name FOR SHARE;
    IF group_partitions IS DISTINCT FROM lease_partitions
       OR new_position > group_barrier THEN
        RAISE EXCEPTION 'lease % partition % of % lost', lease_name, lease_partition,
                        lease_partitions
            USING ERRCODE = 'CK003',
                  DETAIL = format('%s/p%sof%s', lease_name, lease_partition, lease_partitions),
                  HINT = format('the group is resizing from %s partitions up to position %s',
                                group_partitions, group_barrier);
    END IF;
    PERFORM pg_advisory_xact_lock_shared(
        {schema}.chronik_lease_key(lease_name, lease_partitions, lease_partition));
    SELECT l.owner, l.epoch INTO found_owner, found_epoch
    FROM {schema}.worker_leases AS l
    WHERE l.name = lease_name AND l.partitions = lease_partitions
      AND l.partition = lease_partition;
    IF found_owner IS DISTINCT FROM member OR found_epoch IS DISTINCT FROM lease_epoch THEN
        RAISE EXCEPTION 'lease % partition % of % lost', lease_name, lease_partition,
                        lease_partitions
            USING ERRCODE = 'CK003',
                  DETAIL = format('%s/p%sof%s', lease_name, lease_partition, lease_partitions),
                  HINT = format('held epoch %s; now owned by %s at epoch %s', lease_epoch,
                                coalesce(found_owner, 'nobody'), coalesce(found_epoch, 0));
    END IF;
END
$$;

-- Take a partition that is free, expired or held under this member id: a new epoch, or NULL
-- when someone else owns it. When a batch of the previous owner still holds the partition's
-- lock although its lease expired (a process stopped mid-batch: SIGSTOP, a long GC pause, a
-- VM frozen), that session is ended (pg_terminate_backend: the same database role, or one
-- with pg_signal_backend) and NULL returned; the next heartbeat takes the partition.
CREATE OR REPLACE FUNCTION {schema}.chronik_acquire_lease(
    lease_name text, lease_partitions integer, lease_partition integer, member text,
    ttl_us bigint
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    key bigint := {schema}.chronik_lease_key(lease_name, lease_partitions, lease_partition);
    now_us bigint := (extract(epoch from clock_timestamp()) * 1000000)::bigint;
    new_epoch bigint;
BEGIN
    PERFORM 1 FROM {schema}.worker_leases AS l
    WHERE l.name = lease_name AND l.partitions = lease_partitions
      AND l.partition = lease_partition
      AND (l.owner IS NULL OR l.owner = member OR l.expires_at < now_us)
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR NOT EXISTS (
        SELECT 1 FROM {schema}.worker_groups AS g
        WHERE g.name = lease_name AND g.partitions = lease_partitions
    ) THEN
        RETURN NULL;  -- owned, or a partition of another count than the group's now
    END IF;
    IF NOT pg_try_advisory_xact_lock(key) THEN
        PERFORM pg_terminate_backend(k.pid) FROM pg_locks AS k
        WHERE k.locktype = 'advisory' AND k.objsubid = 1 AND k.pid <> pg_backend_pid()
          AND k.database = (SELECT d.oid FROM pg_database AS d
                            WHERE d.datname = current_database())
          AND k.classid::bigint = ((key >> 32) & 4294967295)
          AND k.objid::bigint = (key & 4294967295);
        RETURN NULL;
    END IF;
    UPDATE {schema}.worker_leases AS l
    SET owner = member, epoch = l.epoch + 1, expires_at = now_us + ttl_us, acquired_at = now_us
    WHERE l.name = lease_name AND l.partitions = lease_partitions
      AND l.partition = lease_partition
    RETURNING l.epoch INTO new_epoch;
    RETURN new_epoch;
END
$$;
