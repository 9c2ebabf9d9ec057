-- Every SQL statement the store runs, by name. Timestamps are Unix seconds (REAL), UTC.

-- name: insert_job
INSERT INTO jobs (id, provider, model, status, input, metadata, callback_url, created_at, updated_at)
VALUES (:id, :provider, :model, 'pending', :input, :metadata, :callback_url, :now, :now);

-- name: select_job
SELECT * FROM jobs WHERE id = ?;

-- name: select_job_state
SELECT id, provider, status, provider_request_id, provider_attempts FROM jobs WHERE id = ?;

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

-- name: insert_input
INSERT INTO inputs (key, job_id, content_type, data, created_at) VALUES (:key, :job_id, :content_type, :data, :now);

-- name: select_input
SELECT content_type, data FROM inputs WHERE key = ?;

-- name: bind_request_id
UPDATE jobs SET provider_request_id = :request_id, updated_at = :now
WHERE id = :id AND provider_request_id IS NULL;

-- name: record_submission
-- A webhook (or a cancel) may have moved the job before the submit answered: its error stays then.
UPDATE jobs SET provider_request_id = COALESCE(provider_request_id, :request_id), provider_urls = :urls,
    submitted_at = COALESCE(submitted_at, :now), next_poll_at = :next_poll_at, poll_base_s = :poll_base_s,
    updated_at = :now,
    error = CASE WHEN status IN ('pending', 'submitted', 'running') THEN :error ELSE error END,
    status = CASE WHEN status = 'pending' THEN 'submitted' ELSE status END
WHERE id = :id;

-- name: insert_inbox
INSERT INTO inbox (provider, kind, dedup_key, job_id, headers, body, outcome, received_at)
VALUES (:provider, :kind, :dedup_key, :job_id, :headers, :body, :outcome, :now)
ON CONFLICT (provider, kind, dedup_key) DO NOTHING;

-- name: list_inbox_for_job
SELECT id, provider, kind, dedup_key, headers, body, outcome, received_at FROM inbox
WHERE job_id = ? ORDER BY id;

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
SELECT MIN(run_at) FROM tasks WHERE status = 'pending';

-- name: count_tasks
SELECT kind, status, COUNT(*) AS n FROM tasks GROUP BY kind, status;

-- name: select_due_polls
SELECT id, poll_count, poll_base_s FROM jobs
WHERE status IN ('submitted', 'running') AND next_poll_at IS NOT NULL AND next_poll_at <= :now
ORDER BY next_poll_at LIMIT :limit;

-- name: schedule_next_poll
UPDATE jobs SET poll_count = poll_count + 1, next_poll_at = :next_poll_at WHERE id = :id;

-- name: expire_jobs
UPDATE jobs SET status = 'failed', error = :error, completed_at = :now, updated_at = :now
WHERE status IN ('pending', 'submitted', 'running') AND created_at <= :deadline
RETURNING id, provider_request_id;

-- name: count_jobs
SELECT status, COUNT(*) AS n FROM jobs GROUP BY status;

-- name: select_active_subscriptions
SELECT * FROM subscriptions WHERE status = 'active' ORDER BY created_at;

-- name: insert_event
INSERT INTO events (id, type, job_id, payload, created_at) VALUES (:id, :type, :job_id, :payload, :now);

-- name: insert_delivery
INSERT INTO deliveries (id, event_id, subscription_id, target, url, webhook_id, created_at, updated_at)
VALUES (:id, :event_id, :subscription_id, :target, :url, :webhook_id, :now, :now)
ON CONFLICT DO NOTHING;

-- name: set_images_done
UPDATE jobs SET images_status = :images_status, images_error = :images_error, updated_at = :now WHERE id = :id;

-- name: upsert_image
INSERT INTO images (sha256, content_type, width, height, bytes, thumbnail_sha256, created_at)
VALUES (:sha256, :content_type, :width, :height, :bytes, :thumbnail_sha256, :now)
ON CONFLICT (sha256) DO NOTHING;

-- name: upsert_job_image
INSERT INTO job_images (job_id, role, position, sha256, source_url, error, created_at)
VALUES (:job_id, :role, :position, :sha256, :source_url, :error, :now)
ON CONFLICT (job_id, role, position) DO UPDATE SET sha256 = excluded.sha256, source_url = excluded.source_url,
    error = excluded.error;

-- name: list_job_images
SELECT ji.role, ji.position, ji.sha256, ji.source_url, ji.error, i.content_type, i.width, i.height, i.bytes,
    i.thumbnail_sha256
FROM job_images ji LEFT JOIN images i ON i.sha256 = ji.sha256
WHERE ji.job_id = ? ORDER BY ji.role DESC, ji.position;

-- name: select_image
SELECT * FROM images WHERE sha256 = ?;

-- name: select_image_by_thumbnail
SELECT * FROM images WHERE thumbnail_sha256 = ? LIMIT 1;

-- name: select_input_by_key
SELECT content_type, data FROM inputs WHERE key = ?;

-- name: insert_subscription
INSERT INTO subscriptions (id, kind, url, config, events, filter, secret, created_at, updated_at)
VALUES (:id, :kind, :url, :config, :events, :filter, :secret, :now, :now);

-- name: select_subscription
SELECT * FROM subscriptions WHERE id = ?;

-- name: list_subscriptions
SELECT * FROM subscriptions ORDER BY created_at;

-- name: delete_subscription
UPDATE subscriptions SET status = 'disabled', disabled_reason = 'deleted', updated_at = :now WHERE id = :id;

-- name: rotate_subscription_secret
UPDATE subscriptions SET previous_secret = secret, previous_expires_at = :grace_until, secret = :secret,
    updated_at = :now
WHERE id = :id;

-- name: disable_subscription
UPDATE subscriptions SET status = 'disabled', disabled_reason = :reason, updated_at = :now
WHERE id = :id AND status = 'active';

-- name: subscription_succeeded
UPDATE subscriptions SET failing_since = NULL, updated_at = :now WHERE id = :id AND failing_since IS NOT NULL;

-- name: subscription_failed
UPDATE subscriptions SET failing_since = COALESCE(failing_since, :now), updated_at = :now WHERE id = :id;

-- Circuit breakers of delivery targets: a subscription's in its own row, a callback host's in `circuits`.

-- name: select_subscription_circuit
SELECT circuit_state, circuit_failures, circuit_trips, circuit_until, circuit_error FROM subscriptions WHERE id = ?;

-- name: update_subscription_circuit
UPDATE subscriptions SET circuit_state = :state, circuit_failures = :failures, circuit_trips = :trips,
    circuit_until = :until, circuit_error = :error
WHERE id = :target;

-- name: select_circuit
SELECT circuit_state, circuit_failures, circuit_trips, circuit_until, circuit_error FROM circuits WHERE target = ?;

-- name: upsert_circuit
INSERT INTO circuits (target, circuit_state, circuit_failures, circuit_trips, circuit_until, circuit_error,
    updated_at)
VALUES (:target, :state, :failures, :trips, :until, :error, :now)
ON CONFLICT (target) DO UPDATE SET circuit_state = excluded.circuit_state,
    circuit_failures = excluded.circuit_failures, circuit_trips = excluded.circuit_trips,
    circuit_until = excluded.circuit_until, circuit_error = excluded.circuit_error, updated_at = excluded.updated_at;

-- name: select_delivery
SELECT * FROM deliveries WHERE id = ?;

-- name: list_deliveries
SELECT * FROM deliveries
WHERE (:job_id IS NULL OR event_id IN (SELECT id FROM events WHERE job_id = :job_id))
  AND (:subscription_id IS NULL OR subscription_id = :subscription_id)
  AND (:status IS NULL OR status = :status)
  AND (:since IS NULL OR created_at >= :since) AND (:until IS NULL OR created_at < :until)
  AND (:cursor IS NULL OR id < :cursor)
ORDER BY id DESC LIMIT :limit;

-- name: list_delivery_attempts
SELECT delivery_id, attempted_at, status_code, latency_ms, error FROM delivery_attempts
WHERE delivery_id = ? ORDER BY id;

-- name: insert_delivery_attempt
INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms, error)
VALUES (:delivery_id, :now, :status_code, :latency_ms, :error);

-- name: update_delivery
UPDATE deliveries SET status = :status, attempts = attempts + :attempted, last_error = :last_error,
    next_attempt_at = :next_attempt_at, delivered_at = COALESCE(:delivered_at, delivered_at), updated_at = :now
WHERE id = :id;

-- name: requeue_delivery
UPDATE deliveries SET status = 'pending', next_attempt_at = :now, updated_at = :now
WHERE id = :id AND status IN ('failed', 'dead', 'delivered');

-- name: select_event
SELECT * FROM events WHERE id = ?;

-- name: list_events_after
SELECT seq, id, type, job_id, payload, created_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: last_event_seq
SELECT COALESCE(MAX(seq), 0) FROM events;
