-- Leases of several worker processes (PostgreSQL): one heartbeat per runner, and takeover from a runner
-- known dead. The SQLite versions are in sql/sqlite/tasks.sql. Timestamps are Unix seconds.

-- name: extend_owner_leases
-- The heartbeat: the leases :owner holds on the tasks it is running (`:ids`, a JSON array) run until
-- :lease_expires_at.
UPDATE tasks SET lease_expires_at = :lease_expires_at, updated_at = :now
WHERE status = 'leased' AND lease_owner = :owner
  AND id IN (SELECT CAST(ids.value AS bigint) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)) AS ids(value));

-- name: leased_owners
SELECT DISTINCT lease_owner FROM tasks WHERE status = 'leased' AND lease_owner IS NOT NULL;

-- name: release_owner_leases
-- The leases of runners known dead (`:owners`, a JSON array) go back in the queue at once, marked
-- interrupted as release_expired_leases does.
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, interrupted = 1,
    last_error = 'lease owner died: its runner ended mid-task', updated_at = :now
WHERE status = 'leased' AND lease_owner IN (SELECT jsonb_array_elements_text(CAST(:owners AS jsonb)));
