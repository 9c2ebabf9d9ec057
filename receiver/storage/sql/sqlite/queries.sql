-- Every SQL statement the store runs, by name. Timestamps are Unix seconds (REAL), UTC.

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

-- name: purge_idempotency_keys
-- Retention: keys must be kept at least 24 h (a client may retry that long); :before is a Unix time.
DELETE FROM idempotency_keys WHERE created_at < :before;

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

-- Superseded provider requests (migration 0007): what a job gave up on for a fresh submit.

-- name: supersede_request
-- Before `reset_for_resubmit`: a request being given up on is remembered, so that a late event for it can
-- never bind or move the job again.
INSERT INTO superseded_requests (provider, request_id, job_id, superseded_at)
VALUES (:provider, :request_id, :job_id, :now)
ON CONFLICT DO NOTHING;

-- name: is_superseded
SELECT 1 FROM superseded_requests WHERE provider = :provider AND request_id = :request_id AND job_id = :job_id;

-- name: insert_input
INSERT INTO inputs (key, job_id, content_type, data, created_at) VALUES (:key, :job_id, :content_type, :data, :now);

-- name: select_input
SELECT content_type, data FROM inputs WHERE key = ?;

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

-- Secrets at rest: the start-up sweep that seals plaintext credentials and redacts copied Slack/Discord URLs.
-- name: select_subscription_credentials
SELECT id, kind, url, config, secret, previous_secret FROM subscriptions;

-- name: update_subscription_credentials
UPDATE subscriptions SET url = :url, config = :config, secret = :secret, previous_secret = :previous_secret
WHERE id = :id;

-- name: select_unredacted_delivery_urls
SELECT deliveries.id, deliveries.url, subscriptions.kind FROM deliveries
JOIN subscriptions ON subscriptions.id = deliveries.subscription_id
WHERE subscriptions.kind IN ('slack', 'discord') AND deliveries.url IS NOT NULL AND deliveries.url NOT LIKE '%/***';

-- name: update_delivery_url
UPDATE deliveries SET url = :url WHERE id = :id;

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

-- name: requeue_deliveries_page
-- Bulk replay, one page per statement (keyset on id): requeue the page; insert_deliver_tasks then queues
-- one deliver task per returned id.
UPDATE deliveries SET status = 'pending', next_attempt_at = :now, updated_at = :now
WHERE id IN (
    SELECT id FROM deliveries
    WHERE id > :after AND status IN ('failed', 'dead', 'delivered')
      AND (:job_id IS NULL OR event_id IN (SELECT id FROM events WHERE job_id = :job_id))
      AND (:subscription_id IS NULL OR subscription_id = :subscription_id)
      AND (:status IS NULL OR status = :status)
      AND (:since IS NULL OR created_at >= :since) AND (:until IS NULL OR created_at < :until)
    ORDER BY id LIMIT :limit
)
RETURNING id, subscription_id, url;

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

-- name: select_event
SELECT * FROM events WHERE id = ?;

-- name: list_events_after
SELECT seq, id, type, job_id, payload, created_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: last_event_seq
SELECT COALESCE(MAX(seq), 0) FROM events;

-- Retention (`receiver/retention.py`). Each `retention_*` SELECT names the keys of rows a purge removes
-- (`:limit` rows at a time, -1 = all, for counts); the matching `retention_delete_*` removes the keys in
-- the JSON array `:ids`. `:jobs` (JSON array) names jobs the job phase takes, so the row phase skips
-- their rows (a real purge has already removed them and passes '[]'; a dry run passes them all).
-- INDEXED BY: each batch must be a range scan of old rows (migration 0005), never a scan of the table.

-- name: retention_jobs
-- Final jobs finished before the job cutoff with no live work: no unfinished task, no delivery still
-- being retried, and not the owner of the newest event (its seq is the live feed's high-water mark).
-- Nor a job whose Idempotency-Key is younger than :key_cutoff (24 h): the key goes with its job, and a
-- retry under it must find the job, not pay for a second one (the settings already keep jobs a day).
SELECT j.id FROM jobs j INDEXED BY jobs_completed
WHERE j.status IN ('succeeded', 'failed', 'cancelled') AND j.completed_at < :job_cutoff
  AND NOT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.job_id = j.id AND k.created_at >= :key_cutoff)
  AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.status IN ('pending', 'leased'))
  AND NOT EXISTS (SELECT 1 FROM events e JOIN deliveries d ON d.event_id = e.id
                  WHERE e.job_id = j.id AND d.status NOT IN ('delivered', 'dead'))
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = j.id AND e.seq = (SELECT MAX(seq) FROM events))
ORDER BY j.completed_at LIMIT :limit;

-- name: retention_job_attempts
SELECT a.id FROM events e JOIN deliveries d ON d.event_id = e.id JOIN delivery_attempts a ON a.delivery_id = d.id
WHERE e.job_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_job_deliveries
SELECT d.id FROM events e JOIN deliveries d ON d.event_id = e.id
WHERE e.job_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_job_events
SELECT seq FROM events WHERE job_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_job_tasks
SELECT id FROM tasks WHERE job_id IN (SELECT value FROM json_each(:ids)) AND status IN ('done', 'dead') LIMIT :limit;

-- name: retention_job_inbox
SELECT id FROM inbox WHERE job_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_job_inputs
SELECT key FROM inputs WHERE job_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_job_images
SELECT rowid FROM job_images WHERE job_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_job_images_only
-- Stored images every reference of which belongs to the jobs in :ids (a dry run's count).
SELECT i.sha256, i.thumbnail_sha256 FROM images i
WHERE i.sha256 IN (SELECT sha256 FROM job_images WHERE job_id IN (SELECT value FROM json_each(:ids)))
  AND NOT EXISTS (SELECT 1 FROM job_images o
                  WHERE o.sha256 = i.sha256 AND o.job_id NOT IN (SELECT value FROM json_each(:ids)));

-- name: retention_jobs_emptied
SELECT j.id FROM jobs j
WHERE j.id IN (SELECT value FROM json_each(:ids))
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE job_id = j.id) AND NOT EXISTS (SELECT 1 FROM inbox WHERE job_id = j.id)
  AND NOT EXISTS (SELECT 1 FROM events WHERE job_id = j.id) AND NOT EXISTS (SELECT 1 FROM inputs WHERE job_id = j.id)
  AND NOT EXISTS (SELECT 1 FROM job_images WHERE job_id = j.id)
LIMIT :limit;

-- name: retention_deliveries
SELECT d.id FROM deliveries d INDEXED BY deliveries_final
WHERE d.status IN ('delivered', 'dead') AND d.updated_at < :cutoff
  AND d.event_id NOT IN (SELECT e.id FROM events e WHERE e.job_id IN (SELECT value FROM json_each(:jobs)))
LIMIT :limit;

-- name: retention_attempts
SELECT id FROM delivery_attempts WHERE delivery_id IN (SELECT value FROM json_each(:ids)) LIMIT :limit;

-- name: retention_events
-- Old events none of whose deliveries outlive this purge; never the newest event (see retention_jobs).
SELECT e.seq FROM events e INDEXED BY events_created
WHERE e.created_at < :cutoff AND e.seq < (SELECT MAX(seq) FROM events)
  AND (e.job_id IS NULL OR e.job_id NOT IN (SELECT value FROM json_each(:jobs)))
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                  AND NOT (d.status IN ('delivered', 'dead') AND d.updated_at < :cutoff))
LIMIT :limit;

-- name: retention_tasks
SELECT id FROM tasks
WHERE status IN ('done', 'dead') AND updated_at < :cutoff
  AND (job_id IS NULL OR job_id NOT IN (SELECT value FROM json_each(:jobs)))
LIMIT :limit;

-- name: retention_inbox
-- Only rows of final jobs: an open job may still need its events.
SELECT i.id FROM inbox i CROSS JOIN jobs j ON j.id = i.job_id
WHERE i.received_at < :cutoff AND j.status IN ('succeeded', 'failed', 'cancelled')
  AND i.job_id NOT IN (SELECT value FROM json_each(:jobs))
LIMIT :limit;

-- name: retention_delete_attempts
DELETE FROM delivery_attempts WHERE id IN (SELECT value FROM json_each(:ids));

-- name: retention_delete_deliveries
DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(:ids));

-- name: retention_delete_events
DELETE FROM events WHERE seq IN (SELECT value FROM json_each(:ids));

-- name: retention_delete_tasks
DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: retention_delete_inbox
DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(:ids));

-- name: retention_idempotency_keys
SELECT rowid FROM idempotency_keys INDEXED BY idempotency_keys_created WHERE created_at < :cutoff LIMIT :limit;

-- name: retention_delete_idempotency_keys
DELETE FROM idempotency_keys WHERE rowid IN (SELECT value FROM json_each(:ids));

-- name: retention_delete_inputs
DELETE FROM inputs WHERE key IN (SELECT value FROM json_each(:ids));

-- name: retention_delete_job_images
DELETE FROM job_images WHERE rowid IN (SELECT value FROM json_each(:ids)) RETURNING sha256;

-- name: retention_delete_images
-- The stored images among :ids that no job refers to any more; their blob files go after the commit.
DELETE FROM images
WHERE sha256 IN (SELECT value FROM json_each(:ids))
  AND NOT EXISTS (SELECT 1 FROM job_images WHERE job_images.sha256 = images.sha256)
RETURNING sha256, thumbnail_sha256;

-- name: retention_delete_jobs
DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: retention_blob_users
-- The stored images whose bytes or thumbnail are this blob.
SELECT sha256 FROM images WHERE sha256 = :sha256 OR thumbnail_sha256 = :sha256;
