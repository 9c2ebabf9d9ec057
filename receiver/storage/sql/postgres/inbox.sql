-- The inbox: every provider event received, deduplicated (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named.
-- Dedup under concurrency: a duplicate inserted while the first is uncommitted waits for it, then inserts
-- nothing (no row changed), exactly as a duplicate arriving later.

-- name: insert_inbox
INSERT INTO inbox (provider, kind, dedup_key, job_id, headers, body, outcome, received_at)
VALUES (:provider, :kind, :dedup_key, :job_id, :headers, :body, :outcome, :now)
ON CONFLICT (provider, kind, dedup_key) DO NOTHING;

-- name: list_inbox_for_job
SELECT id, provider, kind, dedup_key, headers, body, outcome, received_at FROM inbox
WHERE job_id = :job_id ORDER BY id;
