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

-- Claims (see `receiver.storage.tasks.claim`): every kind and lane is a queue of its own, read through the
-- `tasks_queue` index (kind, lane, run_at) of pending tasks, so a claim costs the same whatever the backlog.

-- name: task_queues
-- Each (kind, lane) holding pending tasks, with its earliest run_at: a skip scan of the index, one step per
-- queue.
WITH RECURSIVE queues(kind, lane) AS (
    SELECT * FROM (SELECT kind, lane FROM tasks WHERE status = 'pending' ORDER BY kind, lane LIMIT 1)
    UNION ALL
    SELECT
        (SELECT t.kind FROM tasks AS t WHERE t.status = 'pending' AND (t.kind, t.lane) > (q.kind, q.lane)
         ORDER BY t.kind, t.lane LIMIT 1),
        (SELECT t.lane FROM tasks AS t WHERE t.status = 'pending' AND (t.kind, t.lane) > (q.kind, q.lane)
         ORDER BY t.kind, t.lane LIMIT 1)
    FROM queues AS q WHERE q.kind IS NOT NULL
)
SELECT q.kind, q.lane,
    (SELECT MIN(t.run_at) FROM tasks AS t WHERE t.status = 'pending' AND t.kind = q.kind AND t.lane = q.lane)
        AS run_at
FROM queues AS q WHERE q.kind IS NOT NULL;

-- name: lock_lane_counts
-- Nothing to do: SQLite's single writer runs claims one at a time (PostgreSQL takes an advisory lock here).
SELECT 1;

-- name: leased_task_lanes
-- Leased tasks per kind and lane, every runner's (the lane caps count them).
SELECT kind, lane, COUNT(*) AS n FROM tasks WHERE status = 'leased' GROUP BY kind, lane;

-- name: due_tasks
-- The first :limit due tasks of one queue, the longest due first.
SELECT id, run_at FROM tasks
WHERE status = 'pending' AND kind = :kind AND lane = :lane AND run_at <= :now
ORDER BY run_at, id LIMIT :limit;

-- name: lease_tasks
-- Lease the chosen tasks (`:ids`, a JSON array) to :owner; one still pending when chosen is leased.
UPDATE tasks SET status = 'leased', lease_owner = :owner, lease_expires_at = :lease_expires_at,
    attempts = attempts + 1, claimed_at = :now, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending'
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
WHERE id = :id AND status = 'leased' AND lease_owner = :owner AND attempts = :attempts;

-- name: complete_task
UPDATE tasks SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner AND attempts = :attempts;

-- name: retry_task
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, run_at = :run_at,
    last_error = :error, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner AND attempts = :attempts;

-- name: kill_task
UPDATE tasks SET status = 'dead', lease_owner = NULL, lease_expires_at = NULL, last_error = :error,
    updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner AND attempts = :attempts;

-- name: defer_task
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, run_at = :run_at,
    attempts = attempts - 1, updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner AND attempts = :attempts;

-- name: release_task
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - 1,
    updated_at = :now
WHERE id = :id AND status = 'leased' AND lease_owner = :owner AND attempts = :attempts;

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
