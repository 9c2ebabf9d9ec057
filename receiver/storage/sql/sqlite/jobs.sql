-- Jobs, their input images, idempotency keys and superseded provider requests.
-- Timestamps are Unix seconds (REAL), UTC. Parameters are named.

-- name: insert_job
INSERT INTO jobs (id, provider, model, status, input, metadata, callback_url, created_at, updated_at)
VALUES (:id, :provider, :model, 'pending', :input, :metadata, :callback_url, :now, :now);

-- Idempotency keys of POST /v1/jobs (migration 0004).

-- name: claim_idempotency_key
-- Claims the key for a job about to be inserted in the same transaction; no row changed = already claimed.
INSERT INTO idempotency_keys (scope, key, fingerprint, job_id, created_at)
VALUES (:scope, :key, :fingerprint, :job_id, :now)
ON CONFLICT (scope, key) DO NOTHING;

-- name: select_idempotency_key
SELECT scope, key, fingerprint, job_id, created_at FROM idempotency_keys WHERE scope = :scope AND key = :key;

-- name: select_job
SELECT * FROM jobs WHERE id = :id;

-- name: select_job_for_update
-- Read in write transactions to decide a transition; SQLite's writer is exclusive, so a plain read (the
-- PostgreSQL twin locks the row).
SELECT * FROM jobs WHERE id = :id;

-- name: select_job_state
SELECT id, provider, status, provider_request_id, provider_attempts FROM jobs WHERE id = :id;

-- name: list_jobs
SELECT * FROM jobs
WHERE (:status IS NULL OR status = :status) AND (:provider IS NULL OR provider = :provider)
  AND (:cursor IS NULL OR id < :cursor)
ORDER BY id DESC LIMIT :limit;

-- name: update_job_status
UPDATE jobs SET status = :status, result = COALESCE(:result, result), error = :error,
    provider_result = COALESCE(:provider_result, provider_result),
    images_status = CASE WHEN :status = 'succeeded' THEN 'pending' ELSE images_status END,
    completed_at = COALESCE(:completed_at, completed_at), updated_at = :now
WHERE id = :id;

-- name: claim_dispatch
-- Takes one of the provider's slots (concurrency, submits per minute) for this job, or nothing.
-- A synchronous call counts as submitted (and running) from the moment it starts.
UPDATE jobs SET dispatched_at = :now, provider_attempts = provider_attempts + 1, updated_at = :now,
    submitted_at = CASE WHEN :synchronous THEN COALESCE(submitted_at, :now) ELSE submitted_at END,
    status = CASE WHEN :synchronous AND status = 'pending' THEN 'running' ELSE status END
WHERE id = :id AND dispatched_at IS NULL AND provider_request_id IS NULL
  AND status IN ('pending', 'submitted', 'running')
  AND (:concurrency = 0 OR (SELECT COUNT(*) FROM jobs
       WHERE provider = :provider AND dispatched_at IS NOT NULL
         AND status IN ('pending', 'submitted', 'running')) < :concurrency)
  AND (:rate_per_min = 0 OR (SELECT COUNT(*) FROM jobs
       WHERE provider = :provider AND dispatched_at > :now - 60) < :rate_per_min);

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
-- up on (`superseded`, 0 or 1; 0 for a NULL :request_id): one statement per webhook instead of two.
SELECT id, provider, status, provider_request_id, provider_attempts,
    EXISTS (SELECT 1 FROM superseded_requests AS s
            WHERE s.provider = jobs.provider AND s.request_id = :request_id AND s.job_id = jobs.id) AS superseded
FROM jobs WHERE id = :id;

-- name: insert_input
INSERT INTO inputs (key, job_id, content_type, data, created_at) VALUES (:key, :job_id, :content_type, :data, :now);

-- name: select_input
SELECT content_type, data FROM inputs WHERE key = :key;

-- name: bind_request_id
UPDATE jobs SET provider_request_id = :request_id, updated_at = :now
WHERE id = :id AND provider_request_id IS NULL;

-- name: record_submission
-- A webhook (or a cancel) may have moved the job before the submit answered: its error stays then. The
-- submit's own request id wins over one bound meanwhile (a webhook only binds the request in flight).
UPDATE jobs SET provider_request_id = COALESCE(:request_id, provider_request_id), provider_urls = :urls,
    submitted_at = COALESCE(submitted_at, :now), next_poll_at = :next_poll_at, poll_base_s = :poll_base_s,
    updated_at = :now,
    error = CASE WHEN status IN ('pending', 'submitted', 'running') THEN :error ELSE error END,
    status = CASE WHEN status = 'pending' THEN 'submitted' ELSE status END
WHERE id = :id;

-- name: select_due_polls
SELECT id, poll_count, poll_base_s FROM jobs
WHERE status IN ('submitted', 'running') AND next_poll_at IS NOT NULL AND next_poll_at <= :now
ORDER BY next_poll_at LIMIT :limit;

-- name: schedule_next_poll
UPDATE jobs SET poll_count = poll_count + 1, next_poll_at = :next_poll_at WHERE id = :id;

-- name: select_open_jobs_created_before
-- The jobs past their timeout (the reconciler fails each through the one state transition).
SELECT id, provider, status, provider_request_id, provider_attempts FROM jobs
WHERE status IN ('pending', 'submitted', 'running') AND created_at <= :deadline
ORDER BY created_at, id;
