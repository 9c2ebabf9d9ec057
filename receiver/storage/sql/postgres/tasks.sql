-- The task queue: leased work, lanes and pools (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named; a parameter whose type
-- PostgreSQL cannot infer is cast.
--
-- Concurrency (several worker processes, READ COMMITTED):
--   * claims (sql/postgres/pipeline.sql: task_queues, due_tasks, lease_tasks) pick their rows with FOR UPDATE
--     SKIP LOCKED: concurrent claimers never take the same task and never wait for each other's rows (a row
--     another claimer took meanwhile fails lease_tasks' re-check of its status and is left out);
--   * claims that apply lane caps first take one advisory lock (`lock_lane_counts`, held to the end of the
--     transaction) and count the leased tasks per lane in the NEXT statement, whose snapshot is taken once
--     the lock is granted: lane caps hold across every worker (`receiver_lane_load` in migration 0001 is what
--     the first claim query used and is no longer called);
--   * `release_expired_leases` skips rows another transaction holds (another runner releasing them, or their
--     owner finishing them);
--   * a batch that inserted into tasks notifies `receiver_tasks` once committed (the writer, migration 0010).
--
-- Task pools and lanes (isolation): a pool is a set of kinds (the kinds parameter, a JSON array; with the
-- member parameter false a pool takes every kind NOT in it); a lane is one provider's or one delivery
-- target's share of its pool.

-- name: insert_task
-- The lane is the one given (the target of a delivery) or else the provider of the job. A second live
-- task of the kind for the job conflicts with `tasks_one_live` (a deliver task of the delivery with
-- `tasks_one_live_delivery`) and inserts nothing; a concurrent insert of the same task waits for the
-- first to commit.
INSERT INTO tasks (kind, job_id, payload, run_at, lane, created_at, updated_at)
VALUES (:kind, :job_id, :payload, :run_at,
    COALESCE(:lane::text, (SELECT provider FROM jobs WHERE id = :job_id), ''), :now, :now)
ON CONFLICT DO NOTHING;

-- name: release_expired_leases
WITH expired AS (
    SELECT id FROM tasks WHERE status = 'leased' AND lease_expires_at <= :now::double precision
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, interrupted = 1,
    last_error = 'lease expired: the runner stopped or stalled mid-task', updated_at = :now::double precision
FROM expired WHERE tasks.id = expired.id;

-- name: defer_lane
-- Hold the waiting tasks of one kind in a lane until `until` (the circuit of its target opened); those held for a
-- probe that failed (until `held_until`, maybe later than `until`) move to `until` as well.
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
-- The tasks parameter is a JSON array of [delivery id, lane] pairs. A delivery whose deliver task is still
-- live conflicts with `tasks_one_live_delivery` and keeps that one. The payload is the text form of
-- jsonb (a space after the colon): every reader parses it.
INSERT INTO tasks (kind, job_id, payload, run_at, lane, created_at, updated_at)
SELECT 'deliver', NULL, jsonb_build_object('delivery_id', pair ->> 0)::text, :now::double precision,
    pair ->> 1, :now::double precision, :now::double precision
FROM jsonb_array_elements(:tasks::jsonb) AS pairs (pair)
ON CONFLICT DO NOTHING;

-- name: hurry_deliver_tasks
-- A retried or replayed delivery whose task was already waiting (the retry of a failed one): run it now.
-- The ids parameter is a JSON array of delivery ids.
UPDATE tasks SET run_at = :now, updated_at = :now
WHERE kind = 'deliver' AND status = 'pending' AND run_at > :now
  AND (payload::jsonb) ->> 'delivery_id' IN (SELECT jsonb_array_elements_text(:ids::jsonb));
