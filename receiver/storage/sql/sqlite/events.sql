-- Events (the live feed), deliveries and their attempts.
-- Timestamps are Unix seconds (REAL), UTC. Parameters are named.

-- name: insert_event
INSERT INTO events (id, type, job_id, payload, created_at) VALUES (:id, :type, :job_id, :payload, :now);

-- name: insert_delivery
INSERT INTO deliveries (id, event_id, subscription_id, target, url, webhook_id, created_at, updated_at)
VALUES (:id, :event_id, :subscription_id, :target, :url, :webhook_id, :now, :now)
ON CONFLICT DO NOTHING;

-- name: select_unredacted_delivery_urls
SELECT deliveries.id, deliveries.url, subscriptions.kind FROM deliveries
JOIN subscriptions ON subscriptions.id = deliveries.subscription_id
WHERE subscriptions.kind IN ('slack', 'discord') AND deliveries.url IS NOT NULL AND deliveries.url NOT LIKE '%/***';

-- name: update_delivery_url
UPDATE deliveries SET url = :url WHERE id = :id;

-- name: select_delivery
SELECT * FROM deliveries WHERE id = :id;

-- name: delivery_exists
SELECT 1 FROM deliveries WHERE id = :id;

-- name: select_delivery_subscription
SELECT subscription_id FROM deliveries WHERE id = :id;

-- name: list_deliveries
-- The columns of the API's Delivery answer (a closed model), named: a column added later stays out of it.
SELECT id, event_id, subscription_id, target, url, webhook_id, status, attempts, last_error, next_attempt_at,
    delivered_at, created_at, updated_at
FROM deliveries
WHERE (:job_id IS NULL OR event_id IN (SELECT id FROM events WHERE job_id = :job_id))
  AND (:subscription_id IS NULL OR subscription_id = :subscription_id)
  AND (:status IS NULL OR status = :status)
  AND (:since IS NULL OR created_at >= :since) AND (:until IS NULL OR created_at < :until)
  AND (:cursor IS NULL OR id < :cursor)
ORDER BY id DESC LIMIT :limit;

-- name: list_delivery_attempts
SELECT delivery_id, attempted_at, status_code, latency_ms, error FROM delivery_attempts
WHERE delivery_id = :delivery_id ORDER BY id;

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

-- name: select_event
SELECT * FROM events WHERE id = :id;

-- name: list_events_after
SELECT seq, id, type, job_id, payload, created_at FROM events WHERE seq > :after ORDER BY seq LIMIT :limit;

-- name: last_event_seq
SELECT COALESCE(MAX(seq), 0) FROM events;
