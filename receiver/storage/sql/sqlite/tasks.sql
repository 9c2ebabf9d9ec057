-- The task queue: leased work, lanes and pools.
-- Timestamps are Unix seconds (REAL), UTC. Parameters are named.

-- name: insert_task
-- The lane is the caller's (a delivery's target) or else the job's provider.
INSERT INTO tasks (kind, job_id, payload, run_at, lane, created_at, updated_at)
VALUES (:kind, :job_id, :payload, :run_at,
    COALESCE(:lane, (SELECT provider FROM jobs WHERE id = :job_id), ''), :now, :now)
ON CONFLICT DO NOTHING;

-- name: release_expired_leases
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, interrupted = 1,
    last_error = 'lease expired: the runner stopped or stalled mid-task', updated_at = :now
WHERE status = 'leased' AND lease_expires_at <= :now;

-- Task pools and lanes (isolation): a pool is a set of kinds (`:kinds`, a JSON array; `:member` 0 takes
-- every kind NOT in it); a lane is one provider's or one delivery target's share of its pool.

-- name: claim_tasks
UPDATE tasks SET status = 'leased', lease_owner = :owner, lease_expires_at = :lease_expires_at,
    attempts = attempts + 1, updated_at = :now
WHERE id IN (SELECT id FROM tasks WHERE status = 'pending' AND run_at <= :now
             AND (kind IN (SELECT value FROM json_each(:kinds))) = :member
             ORDER BY run_at, id LIMIT :limit)
RETURNING *;

-- name: claim_lane_tasks
-- As claim_tasks, but no lane ends up with more than :per_lane leased tasks (counting every runner's).
WITH busy AS (
    SELECT lane, COUNT(*) AS n FROM tasks
    WHERE status = 'leased' AND (kind IN (SELECT value FROM json_each(:kinds))) = :member
    GROUP BY lane
), due AS (
    SELECT id, run_at, lane, ROW_NUMBER() OVER (PARTITION BY lane ORDER BY run_at, id) AS position
    FROM tasks
    WHERE status = 'pending' AND run_at <= :now AND (kind IN (SELECT value FROM json_each(:kinds))) = :member
)
UPDATE tasks SET status = 'leased', lease_owner = :owner, lease_expires_at = :lease_expires_at,
    attempts = attempts + 1, updated_at = :now
WHERE id IN (SELECT due.id FROM due LEFT JOIN busy ON busy.lane = due.lane
             WHERE due.position + COALESCE(busy.n, 0) <= :per_lane
             ORDER BY due.run_at, due.id LIMIT :limit)
RETURNING *;

-- name: defer_lane
-- Hold a lane's waiting tasks of one kind until :until (its target's circuit opened); those held for a
-- probe that failed (until :held_until, maybe later than :until) move to :until as well.
UPDATE tasks SET run_at = :until, updated_at = :now
WHERE lane = :lane AND kind = :kind AND status = 'pending' AND (run_at < :until OR run_at <= :held_until);

-- name: resume_lane
-- Release what defer_lane held (its target answered again).
UPDATE tasks SET run_at = :now, updated_at = :now
WHERE lane = :lane AND kind = :kind AND status = 'pending' AND run_at > :now AND run_at <= :until;

-- name: extend_lease
UPDATE tasks SET lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner;

-- name: complete_task
UPDATE tasks SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner;

-- name: retry_task
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, run_at = :run_at,
    last_error = :error, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner;

-- name: kill_task
UPDATE tasks SET status = 'dead', lease_owner = NULL, lease_expires_at = NULL, last_error = :error,
    updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner;

-- name: defer_task
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, run_at = :run_at,
    attempts = attempts - 1, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner;

-- name: release_task
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - 1,
    updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner;

-- name: next_task_run_at
SELECT MIN(run_at) AS run_at FROM tasks WHERE status = 'pending';

-- name: insert_deliver_tasks
-- `:tasks` is a JSON array of [delivery id, lane] pairs (`WHERE true` lets SQLite parse the upsert after a
-- SELECT).
INSERT INTO tasks (kind, job_id, payload, run_at, lane, created_at, updated_at)
SELECT 'deliver', NULL, json_object('delivery_id', value ->> 0), :now, value ->> 1, :now, :now
FROM json_each(:tasks) WHERE true
ON CONFLICT DO NOTHING;

-- name: hurry_deliver_tasks
-- A retried or replayed delivery whose task was already waiting (a `failed` one's retry): run it now.
-- `:ids` is a JSON array of delivery ids.
UPDATE tasks SET run_at = :now, updated_at = :now
WHERE kind = 'deliver' AND status = 'pending' AND run_at > :now
  AND json_extract(payload, '$.delivery_id') IN (SELECT value FROM json_each(:ids));

-- Leases of several worker processes: one heartbeat per runner, and takeover from a runner known dead.

-- name: extend_owner_leases
-- The heartbeat: the leases :owner holds on the tasks it is running (`:ids`, a JSON array) run until
-- :lease_expires_at.
UPDATE tasks SET lease_expires_at = :lease_expires_at, updated_at = :now
WHERE status = 'leased' AND lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids));

-- name: leased_owners
SELECT DISTINCT lease_owner FROM tasks WHERE status = 'leased' AND lease_owner IS NOT NULL;

-- name: release_owner_leases
-- The leases of runners known dead (`:owners`, a JSON array) go back in the queue at once, marked
-- interrupted as release_expired_leases does.
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, interrupted = 1,
    last_error = 'lease owner died: its runner ended mid-task', updated_at = :now
WHERE status = 'leased' AND lease_owner IN (SELECT value FROM json_each(:owners));
