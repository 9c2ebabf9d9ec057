-- Events (the live feed), deliveries and their attempts (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named; a parameter whose type
-- PostgreSQL cannot infer is cast.
--
-- Concurrency: the live feed tails `events` by `seq > after`. A sequence hands out values in call order,
-- not commit order: a transaction holding seq 11 may commit before the one holding seq 10, and a tail that
-- saw 11 would skip 10 forever. So `insert_event` first takes a transaction-scoped advisory lock on one
-- fixed key, and only then draws its seq: event-inserting transactions hold it from their first event to
-- their commit, so they take seqs in commit order, and a seq is visible only once every smaller one that
-- will ever commit is. (The lock is released after the commit is visible, so the next holder draws a
-- larger seq.) The cost: transactions that insert events commit one at a time from that statement on
-- (measured: one-event transactions from 8 connections, fsync on, about 170-230 commits/s on a loaded
-- 2-core machine; group commit puts many bodies in one). So the writers run it last, after every body of
-- the batch and just before COMMIT, in the same round trip (`execute_at_commit`, migration 0012): the lock
-- is held for the commit's flush only. A batch that inserted events notifies `receiver_events` once
-- committed (the writer, migration 0010).

-- name: insert_event
-- `ordered` is the source of the inserted row, so the lock is taken before the row (and its seq) exists.
WITH ordered AS (SELECT pg_advisory_xact_lock(hashtext('receiver.events'), 0))
INSERT INTO events (id, type, job_id, payload, created_at)
SELECT :id::text, :type::text, :job_id::text, :payload::text, :now::double precision FROM ordered;

-- name: insert_delivery
INSERT INTO deliveries (id, event_id, subscription_id, target, url, webhook_id, created_at, updated_at)
VALUES (:id, :event_id, :subscription_id, :target, :url, :webhook_id, :now, :now)
ON CONFLICT DO NOTHING;

-- name: select_unredacted_delivery_urls
-- A redacted URL ends in the four characters /*** (the SQLite block tests the same with NOT LIKE).
SELECT deliveries.id, deliveries.url, subscriptions.kind FROM deliveries
JOIN subscriptions ON subscriptions.id = deliveries.subscription_id
WHERE subscriptions.kind IN ('slack', 'discord') AND deliveries.url IS NOT NULL
  AND right(deliveries.url, 4) <> '/***';

-- name: update_delivery_url
UPDATE deliveries SET url = :url WHERE id = :id;

-- name: select_delivery
SELECT * FROM deliveries WHERE id = :id;

-- name: delivery_exists
SELECT 1 AS "1" FROM deliveries WHERE id = :id;

-- name: select_delivery_subscription
SELECT subscription_id FROM deliveries WHERE id = :id;

-- name: list_deliveries
-- The columns of the Delivery answer of the API (a closed model), named: a column added later stays out.
SELECT id, event_id, subscription_id, target, url, webhook_id, status, attempts, last_error, next_attempt_at,
    delivered_at, created_at, updated_at
FROM deliveries
WHERE (:job_id::text IS NULL OR event_id IN (SELECT id FROM events WHERE job_id = :job_id))
  AND (:subscription_id::text IS NULL OR subscription_id = :subscription_id)
  AND (:status::text IS NULL OR status = :status)
  AND (:since::double precision IS NULL OR created_at >= :since)
  AND (:until::double precision IS NULL OR created_at < :until)
  AND (:cursor::text IS NULL OR id < :cursor)
ORDER BY id DESC LIMIT :limit;

-- name: list_delivery_attempts
SELECT delivery_id, attempted_at, status_code, latency_ms, error FROM delivery_attempts
WHERE delivery_id = :delivery_id ORDER BY id;

-- name: insert_delivery_attempt
INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms, error)
VALUES (:delivery_id, :now, :status_code, :latency_ms, :error);

-- name: update_delivery
UPDATE deliveries SET status = :status, attempts = attempts + :attempted::integer, last_error = :last_error,
    next_attempt_at = :next_attempt_at, delivered_at = COALESCE(:delivered_at::double precision, delivered_at),
    updated_at = :now
WHERE id = :id;

-- name: requeue_delivery
UPDATE deliveries SET status = 'pending', next_attempt_at = :now, updated_at = :now
WHERE id = :id AND status IN ('failed', 'dead', 'delivered');

-- name: requeue_deliveries_page
-- Bulk replay, one page per statement (keyset on id): requeue the page; insert_deliver_tasks then queues
-- one deliver task per returned id. The rows come back in id order (the next page of the caller starts
-- after the last); a delivery that turned pending meanwhile is left out (the status is checked again on the row
-- as it is updated).
WITH requeued AS (
    UPDATE deliveries SET status = 'pending', next_attempt_at = :now::double precision,
        updated_at = :now::double precision
    WHERE id IN (
        SELECT id FROM deliveries
        WHERE id > :after::text AND status IN ('failed', 'dead', 'delivered')
          AND (:job_id::text IS NULL OR event_id IN (SELECT id FROM events WHERE job_id = :job_id))
          AND (:subscription_id::text IS NULL OR subscription_id = :subscription_id)
          AND (:status::text IS NULL OR status = :status)
          AND (:since::double precision IS NULL OR created_at >= :since)
          AND (:until::double precision IS NULL OR created_at < :until)
        ORDER BY id LIMIT :limit
    ) AND status IN ('failed', 'dead', 'delivered')
    RETURNING id, subscription_id, url
)
SELECT id, subscription_id, url FROM requeued ORDER BY id;

-- name: select_event
SELECT * FROM events WHERE id = :id;

-- name: list_events_after
SELECT seq, id, type, job_id, payload, created_at FROM events WHERE seq > :after ORDER BY seq LIMIT :limit;

-- name: last_event_seq
SELECT COALESCE(MAX(seq), 0) FROM events;
