-- 0007 saga command claims: a dispatcher claims a pending command (status 'running',
-- claimed_at on the database's clock, claimed_by naming the dispatcher) before it executes
-- it, so two dispatchers of one saga set (a rolling deploy overlapping two processes) do
-- not both run it. A claim older than the claim timeout is taken over (its owner died).
-- Upgrade note: adds two nullable columns; safe while workers run.
ALTER TABLE {schema}.saga_commands ADD COLUMN IF NOT EXISTS claimed_at double precision;
ALTER TABLE {schema}.saga_commands ADD COLUMN IF NOT EXISTS claimed_by text;
