-- Subscriptions, their secrets at rest and the circuit breakers of delivery targets (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named; a parameter whose type
-- PostgreSQL cannot infer is cast.

-- name: select_active_subscriptions
-- Ties of created_at in id order (time-ordered ids): SQLite keeps them in insertion order (a stable sort
-- of the table in rowid order), PostgreSQL in no particular one.
SELECT * FROM subscriptions WHERE status = 'active' ORDER BY created_at, id;

-- name: insert_subscription
INSERT INTO subscriptions (id, kind, url, config, events, filter, secret, created_at, updated_at)
VALUES (:id, :kind, :url, :config, :events, :filter, :secret, :now, :now);

-- name: select_subscription
SELECT * FROM subscriptions WHERE id = :id;

-- name: list_subscriptions
-- Ties in id order, as select_active_subscriptions.
SELECT * FROM subscriptions ORDER BY created_at, id;

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
UPDATE subscriptions SET failing_since = COALESCE(failing_since, :now::double precision), updated_at = :now
WHERE id = :id;

-- Secrets at rest: the start-up sweep that seals plaintext credentials and redacts copied Slack/Discord URLs.
-- name: select_subscription_credentials
SELECT id, kind, url, config, secret, previous_secret FROM subscriptions;

-- name: update_subscription_credentials
UPDATE subscriptions SET url = :url, config = :config, secret = :secret, previous_secret = :previous_secret
WHERE id = :id;

-- Circuit breakers of delivery targets: the breaker of a subscription in its own row, that of a callback
-- host in `circuits`.

-- name: select_subscription_circuit
SELECT circuit_state, circuit_failures, circuit_trips, circuit_until, circuit_error FROM subscriptions WHERE id = :target;

-- name: update_subscription_circuit
UPDATE subscriptions SET circuit_state = :state, circuit_failures = :failures, circuit_trips = :trips,
    circuit_until = :until, circuit_error = :error
WHERE id = :target;

-- name: select_circuit
SELECT circuit_state, circuit_failures, circuit_trips, circuit_until, circuit_error FROM circuits WHERE target = :target;

-- name: upsert_circuit
-- A concurrent first save of the same target waits for the other insert, then updates its row.
INSERT INTO circuits (target, circuit_state, circuit_failures, circuit_trips, circuit_until, circuit_error,
    updated_at)
VALUES (:target, :state, :failures, :trips, :until, :error, :now)
ON CONFLICT (target) DO UPDATE SET circuit_state = excluded.circuit_state,
    circuit_failures = excluded.circuit_failures, circuit_trips = excluded.circuit_trips,
    circuit_until = excluded.circuit_until, circuit_error = excluded.circuit_error, updated_at = excluded.updated_at;
