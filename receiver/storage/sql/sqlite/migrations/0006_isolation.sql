-- Isolation: every task names its lane (the provider of its job, or a delivery's target), so the runner
-- can cap one lane's share of a pool of slots; every delivery target has a circuit breaker.
ALTER TABLE tasks ADD COLUMN lane TEXT NOT NULL DEFAULT '';
-- Live tasks from before this migration: job tasks by provider; deliveries by subscription, callbacks by
-- URL (new callback deliveries use their host; these old ones only lose some sharing).
UPDATE tasks SET lane = COALESCE((SELECT provider FROM jobs WHERE jobs.id = tasks.job_id), '')
WHERE job_id IS NOT NULL AND status IN ('pending', 'leased');
UPDATE tasks SET lane = COALESCE(
    (SELECT COALESCE(d.subscription_id, 'callback:' || d.url) FROM deliveries d
     WHERE d.id = json_extract(tasks.payload, '$.delivery_id')), '')
WHERE kind = 'deliver' AND status IN ('pending', 'leased');
CREATE INDEX tasks_lane_pending ON tasks (lane, run_at) WHERE status = 'pending';

ALTER TABLE subscriptions ADD COLUMN circuit_state TEXT NOT NULL DEFAULT 'closed'
    CHECK (circuit_state IN ('closed', 'open', 'half_open'));
ALTER TABLE subscriptions ADD COLUMN circuit_failures INTEGER NOT NULL DEFAULT 0;  -- consecutive
ALTER TABLE subscriptions ADD COLUMN circuit_trips INTEGER NOT NULL DEFAULT 0;     -- openings since a success
ALTER TABLE subscriptions ADD COLUMN circuit_until REAL;
ALTER TABLE subscriptions ADD COLUMN circuit_error TEXT;

-- The breakers of per-job callback_url targets, one per host (and port).
CREATE TABLE circuits (
    target        TEXT PRIMARY KEY,
    circuit_state TEXT NOT NULL DEFAULT 'closed' CHECK (circuit_state IN ('closed', 'open', 'half_open')),
    circuit_failures INTEGER NOT NULL DEFAULT 0,
    circuit_trips INTEGER NOT NULL DEFAULT 0,
    circuit_until REAL,
    circuit_error TEXT,
    updated_at    REAL NOT NULL
);
