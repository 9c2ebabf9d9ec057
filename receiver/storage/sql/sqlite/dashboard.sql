-- The dashboard's reads (receiver/storage/dashboard.py): its jobs pages, its health strip and operator pages,
-- and the alerts' reads: what the API's stores do not ask.
-- Timestamps are Unix seconds (REAL), UTC. Parameters are named.

-- name: dashboard_task_kinds
-- Per task kind: queued (pending), running (leased), dead, and the creation time of the oldest open one. One
-- count per status, each through its own partial index (`tasks_queue`, `tasks_leased`, `tasks_dead`), so the
-- done tasks (most of the table) are never read.
SELECT kind, SUM(queued) AS queued, SUM(running) AS running, SUM(dead) AS dead, MIN(oldest_at) AS oldest_at
FROM (
    SELECT kind, COUNT(*) AS queued, 0 AS running, 0 AS dead, MIN(created_at) AS oldest_at
    FROM tasks WHERE status = 'pending' GROUP BY kind
    UNION ALL
    SELECT kind, 0, COUNT(*), 0, MIN(created_at) FROM tasks WHERE status = 'leased' GROUP BY kind
    UNION ALL
    SELECT kind, 0, 0, COUNT(*), NULL FROM tasks WHERE status = 'dead' GROUP BY kind
) AS counts
GROUP BY kind ORDER BY kind;

-- name: dashboard_problem_deliveries
-- Failing (failed, retried later) and dead deliveries across targets, newest id first, ids below :cursor.
SELECT d.id, d.event_id, d.subscription_id, d.target, d.url, d.status, d.attempts, d.last_error,
    d.next_attempt_at, d.created_at, d.updated_at, e.type AS event_type, e.job_id, s.kind AS subscription_kind
FROM deliveries AS d
JOIN events AS e ON e.id = d.event_id
LEFT JOIN subscriptions AS s ON s.id = d.subscription_id
WHERE d.status IN ('failed', 'dead')
  AND (:status IS NULL OR d.status = :status)
  AND (:subscription_id IS NULL OR d.subscription_id = :subscription_id)
  AND (:cursor IS NULL OR d.id < :cursor)
ORDER BY d.id DESC LIMIT :limit;

-- name: dashboard_problem_delivery_counts
SELECT status, COUNT(*) AS n FROM deliveries WHERE status IN ('failed', 'dead') GROUP BY status;

-- name: dashboard_subscriptions
-- Every subscription's shown columns (never its secrets or sealed config), oldest first.
SELECT id, kind, url, events, status, disabled_reason, failing_since, circuit_state, circuit_failures,
    circuit_until, circuit_error, created_at, updated_at
FROM subscriptions ORDER BY created_at, id;

-- name: dashboard_subscription_attempts
-- Per subscription, its delivery attempts since :since: how many, how many got through, and the id of the
-- newest that failed.
SELECT d.subscription_id,
    COUNT(*) AS attempts,
    SUM(CASE WHEN a.error IS NULL THEN 1 ELSE 0 END) AS successes,
    MAX(CASE WHEN a.error IS NOT NULL THEN a.id END) AS last_failed_attempt
FROM delivery_attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id
WHERE a.attempted_at >= :since AND d.subscription_id IS NOT NULL
GROUP BY d.subscription_id;

-- name: dashboard_attempt
SELECT delivery_id, attempted_at, status_code, error FROM delivery_attempts WHERE id = :id;

-- name: dashboard_subscription_deliveries
-- Per subscription, its failing and dead deliveries.
SELECT subscription_id, status, COUNT(*) AS n FROM deliveries
WHERE status IN ('failed', 'dead') AND subscription_id IS NOT NULL
GROUP BY subscription_id, status;

-- name: dashboard_provider_outcomes
-- Per provider, the jobs that finished since :since, the failed ones, and the submit calls they took.
SELECT provider,
    COUNT(*) AS finished,
    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
    SUM(provider_attempts) AS submits
FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled') AND completed_at >= :since
GROUP BY provider ORDER BY provider;

-- name: dashboard_queue_positions
-- Jobs still queued at :provider with the queue position it last told, the longest waiting first.
SELECT id, model, queue_position, queue_position_at, submitted_at FROM jobs
WHERE status = 'submitted' AND provider = :provider AND queue_position IS NOT NULL
ORDER BY submitted_at, id LIMIT :limit;

-- name: dashboard_job_queue_position
-- The queue position :id's provider last told (NULL when it told none), and when.
SELECT queue_position, queue_position_at FROM jobs WHERE id = :id;

-- name: record_queue_position
UPDATE jobs SET queue_position = :position, queue_position_at = :now WHERE id = :id;

-- Alerts (`receiver.notify.alerts`): what they watch, and when each kind was last sent.

-- name: alert_lock
-- Nothing to do: SQLite's single writer runs alert checks one at a time (PostgreSQL takes an advisory lock).
SELECT 1;

-- name: alert_last_sent
-- An alert is an event without a job, of type `alert.<kind>`.
SELECT MAX(created_at) FROM events WHERE job_id IS NULL AND type = :type;

-- name: alert_disabled_subscriptions
-- Subscriptions the deliverer disabled (not those deleted) after :since.
SELECT id, kind, disabled_reason, updated_at FROM subscriptions
WHERE status = 'disabled' AND disabled_reason <> 'deleted' AND updated_at > :since
ORDER BY updated_at, id;

-- name: alert_dead_deliveries
-- Deliveries that died after :since, alerts' own left out (a dead alert must not raise another).
SELECT COUNT(*) FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
WHERE d.status = 'dead' AND d.updated_at > :since AND e.job_id IS NOT NULL;

-- name: alert_dead_tasks
SELECT COUNT(*) FROM tasks WHERE status = 'dead' AND updated_at > :since;

-- name: alert_waiting_jobs
-- Jobs at :provider submitted before :before and still waiting for it.
SELECT COUNT(*) AS n, MIN(submitted_at) AS oldest_at FROM jobs
WHERE provider = :provider AND status IN ('submitted', 'running') AND submitted_at < :before;

-- name: alert_inbox_since
-- Completions from :provider of one kind (`webhook`, or `poll`: settled by the reconciler) since :since.
SELECT COUNT(*) FROM inbox WHERE received_at >= :since AND provider = :provider AND kind = :kind;

-- name: alert_target
SELECT id, kind, url, status, disabled_reason, failing_since, circuit_state FROM subscriptions WHERE id = :id;

-- jobs pages

-- name: list_dashboard_jobs
-- One page of the jobs list, newest first, with the prompt (its head) and the first stored input and output
-- image of each job. :search matches a job id or provider request id exactly, or a part of the metadata
-- (:pattern, `%...%` with `\` escaping).
SELECT j.id, j.provider, j.model, j.status, j.metadata, j.error, j.provider_request_id, j.images_status,
    j.created_at, j.submitted_at, j.completed_at, j.updated_at,
    substr(json_extract(j.input, '$.prompt'), 1, :prompt_chars) AS prompt,
    (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'input' AND ji.sha256 IS NOT NULL
     ORDER BY ji.position LIMIT 1) AS input_sha256,
    (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'output' AND ji.sha256 IS NOT NULL
     ORDER BY ji.position LIMIT 1) AS output_sha256
FROM jobs AS j
WHERE (:status IS NULL OR j.status = :status) AND (:provider IS NULL OR j.provider = :provider)
  AND (:model IS NULL OR j.model = :model)
  AND (:since IS NULL OR j.created_at >= :since) AND (:until IS NULL OR j.created_at < :until)
  AND (:search IS NULL OR j.id = :search OR j.provider_request_id = :search OR j.metadata LIKE :pattern ESCAPE '\')
  AND (:cursor IS NULL OR j.id < :cursor)
ORDER BY j.id DESC LIMIT :limit;

-- name: list_dashboard_job_changes
-- The jobs list's live feed: jobs changed after (:since, :after_id), in (updated_at, id) order. Open jobs
-- through their partial index; finished ones only when they finished after :recent (their image copy still
-- changes them).
SELECT * FROM (
    SELECT j.id, j.provider, j.model, j.status, j.metadata, j.error, j.provider_request_id, j.images_status,
        j.created_at, j.submitted_at, j.completed_at, j.updated_at,
        substr(json_extract(j.input, '$.prompt'), 1, :prompt_chars) AS prompt,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'input' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS input_sha256,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'output' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS output_sha256
    FROM jobs AS j
    WHERE j.status IN ('pending', 'submitted', 'running') 
      AND (j.updated_at > :since OR (j.updated_at = :since AND j.id > :after_id))
    UNION ALL
    SELECT j.id, j.provider, j.model, j.status, j.metadata, j.error, j.provider_request_id, j.images_status,
        j.created_at, j.submitted_at, j.completed_at, j.updated_at,
        substr(json_extract(j.input, '$.prompt'), 1, :prompt_chars) AS prompt,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'input' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS input_sha256,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'output' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS output_sha256
    FROM jobs AS j
    WHERE j.status IN ('succeeded', 'failed', 'cancelled') AND j.completed_at >= :recent 
      AND (j.updated_at > :since OR (j.updated_at = :since AND j.id > :after_id))
)
ORDER BY updated_at, id LIMIT :limit;

-- name: list_dashboard_job_images
-- A job's images for its page, with when each was stored: outputs by position, then the input.
SELECT ji.role, ji.position, ji.sha256, ji.source_url, ji.error, ji.created_at, i.content_type, i.width, i.height,
    i.bytes
FROM job_images AS ji LEFT JOIN images AS i ON i.sha256 = ji.sha256
WHERE ji.job_id = :job_id ORDER BY ji.role DESC, ji.position;

-- name: list_dashboard_job_events
-- A job's events (the final one, normally) for its timeline.
SELECT seq, id, type, created_at FROM events WHERE job_id = :job_id ORDER BY seq;

-- Sessions logged out before they expired (`receiver.dashboard.auth`).

-- name: dashboard_session_revoked
SELECT 1 AS revoked FROM dashboard_revoked_sessions WHERE sid = :sid AND expires_at > :now;

-- name: revoke_dashboard_session
INSERT INTO dashboard_revoked_sessions (sid, expires_at) VALUES (:sid, :expires_at) ON CONFLICT (sid) DO NOTHING;

-- name: forget_expired_revoked_sessions
DELETE FROM dashboard_revoked_sessions WHERE expires_at <= :now;
