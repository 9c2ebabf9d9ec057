-- Jobs, their input images, idempotency keys and superseded provider requests (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named; a parameter whose type
-- PostgreSQL cannot infer (tested for NULL, compared with a literal, an argument) is cast.
--
-- Concurrency (several processes, READ COMMITTED): a transaction that reads a job to decide its next
-- state (`select_job_state`, `select_open_jobs_created_before`) locks the row, so transitions of one job
-- run one at a time as under SQLite's single writer; `update_job_status` never moves a final job (a
-- backstop for a transaction that read the job without the lock). `claim_dispatch` counts the provider's
-- slots under the provider's advisory lock (migration 0001, `receiver_dispatch_slot_free`), so the limits
-- hold across every worker. `select_due_polls` skips jobs another reconciler holds.

-- name: insert_job
INSERT INTO jobs (id, provider, model, status, input, metadata, callback_url, created_at, updated_at)
VALUES (:id, :provider, :model, 'pending', :input, :metadata, :callback_url, :now, :now);

-- Idempotency keys of POST /v1/jobs (migration 0004).

-- name: claim_idempotency_key
-- Claims the key for a job about to be inserted in the same transaction; no row changed = already claimed
-- (a concurrent claim of the same key waits for the first to commit, then changes nothing).
INSERT INTO idempotency_keys (scope, key, fingerprint, job_id, created_at)
VALUES (:scope, :key, :fingerprint, :job_id, :now)
ON CONFLICT (scope, key) DO NOTHING;

-- name: select_idempotency_key
SELECT scope, key, fingerprint, job_id, created_at FROM idempotency_keys WHERE scope = :scope AND key = :key;

-- name: select_job
SELECT * FROM jobs WHERE id = :id;

-- name: select_job_for_update
-- Read in write transactions to decide a transition (a cancel): the row stays locked until the commit, so a
-- concurrent transition of the job (a webhook, a submit's answer) waits for it, or it for them, and never
-- decides on a state that has changed since.
SELECT * FROM jobs WHERE id = :id FOR UPDATE;

-- name: select_job_state
-- Read in write transactions only, to decide a transition: the row stays locked until the commit.
SELECT id, provider, status, provider_request_id, provider_attempts FROM jobs WHERE id = :id FOR UPDATE;

-- name: list_jobs
SELECT * FROM jobs
WHERE (:status::text IS NULL OR status = :status) AND (:provider::text IS NULL OR provider = :provider)
  AND (:cursor::text IS NULL OR id < :cursor)
ORDER BY id DESC LIMIT :limit;

-- name: update_job_status
UPDATE jobs SET status = :status::text, result = COALESCE(:result::text, result), error = :error,
    provider_result = COALESCE(:provider_result::text, provider_result),
    images_status = CASE WHEN :status::text = 'succeeded' THEN 'pending' ELSE images_status END,
    completed_at = COALESCE(:completed_at::double precision, completed_at), updated_at = :now
WHERE id = :id AND status NOT IN ('succeeded', 'failed', 'cancelled');

-- name: claim_dispatch
-- Takes one of the slots of the provider (concurrency, submits per minute) for this job, or nothing.
-- A synchronous call counts as submitted (and running) from the moment it starts. The slot count is the
-- last condition (the costliest), so only a job that could take a slot waits for the lock of the provider.
UPDATE jobs SET dispatched_at = :now::double precision, provider_attempts = provider_attempts + 1,
    updated_at = :now::double precision,
    submitted_at = CASE WHEN :synchronous::boolean THEN COALESCE(submitted_at, :now::double precision)
                   ELSE submitted_at END,
    status = CASE WHEN :synchronous::boolean AND status = 'pending' THEN 'running' ELSE status END
WHERE id = :id AND dispatched_at IS NULL AND provider_request_id IS NULL
  AND status IN ('pending', 'submitted', 'running')
  AND receiver_dispatch_slot_free(:provider::text, :concurrency::integer, :rate_per_min::integer,
                                  :now::double precision);

-- name: release_dispatch
UPDATE jobs SET dispatched_at = NULL, provider_attempts = provider_attempts - 1, updated_at = :now
WHERE id = :id AND provider_request_id IS NULL;

-- name: reset_for_resubmit
UPDATE jobs SET provider_request_id = NULL, provider_urls = NULL, dispatched_at = NULL, next_poll_at = NULL,
    error = :error, updated_at = :now
WHERE id = :id;

-- Superseded provider requests (migration 0007): what a job gave up on for a fresh submit.

-- name: supersede_request
-- Before `reset_for_resubmit`: a request being given up on is remembered, so that a late event for it can
-- never bind or move the job again.
INSERT INTO superseded_requests (provider, request_id, job_id, superseded_at)
VALUES (:provider, :request_id, :job_id, :now)
ON CONFLICT DO NOTHING;

-- name: select_job_for_event
-- The state columns of the job a provider event names, and whether the event's request is one the job gave
-- up on (`superseded`; false for a NULL :request_id): one statement per webhook. The job row stays locked
-- until the commit, as with select_job_state, so the transitions of one job run one at a time.
SELECT id, provider, status, provider_request_id, provider_attempts,
    EXISTS (SELECT 1 FROM superseded_requests AS s
            WHERE s.provider = jobs.provider AND s.request_id = :request_id::text AND s.job_id = jobs.id) AS superseded
FROM jobs WHERE id = :id FOR UPDATE OF jobs;

-- name: insert_input
INSERT INTO inputs (key, job_id, content_type, data, created_at) VALUES (:key, :job_id, :content_type, :data, :now);

-- name: select_input
SELECT content_type, data FROM inputs WHERE key = :key;

-- name: bind_request_id
UPDATE jobs SET provider_request_id = :request_id, updated_at = :now
WHERE id = :id AND provider_request_id IS NULL;

-- name: record_submission
-- A webhook (or a cancel) may have moved the job before the submit answered: its error stays then. The
-- request id of the submit wins over one bound meanwhile (a webhook only binds the request in flight).
UPDATE jobs SET provider_request_id = COALESCE(:request_id::text, provider_request_id), provider_urls = :urls,
    submitted_at = COALESCE(submitted_at, :now::double precision), next_poll_at = :next_poll_at,
    poll_base_s = :poll_base_s, updated_at = :now::double precision,
    error = CASE WHEN status IN ('pending', 'submitted', 'running') THEN :error::text ELSE error END,
    status = CASE WHEN status = 'pending' THEN 'submitted' ELSE status END
WHERE id = :id;

-- name: select_due_polls
-- Locks the rows it returns, skipping those another reconciler holds: two reconcilers never queue the
-- same poll twice (the second, once the first commits, finds the next poll no longer due).
SELECT id, poll_count, poll_base_s FROM jobs
WHERE status IN ('submitted', 'running') AND next_poll_at IS NOT NULL AND next_poll_at <= :now
ORDER BY next_poll_at LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: schedule_next_poll
UPDATE jobs SET poll_count = poll_count + 1, next_poll_at = :next_poll_at WHERE id = :id;

-- name: select_open_jobs_created_before
-- The jobs past their timeout (the reconciler fails each through the one state transition). Locked, as
-- `select_job_state`; a job another transaction holds is skipped (the next round takes it if still open).
SELECT id, provider, status, provider_request_id, provider_attempts FROM jobs
WHERE status IN ('pending', 'submitted', 'running') AND created_at <= :deadline
ORDER BY created_at, id
FOR UPDATE SKIP LOCKED;
