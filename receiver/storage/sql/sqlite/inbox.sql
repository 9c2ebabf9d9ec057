-- The inbox: every provider event received, deduplicated.
-- Timestamps are Unix seconds (REAL), UTC. Parameters are named.

-- name: insert_inbox
INSERT INTO inbox (provider, kind, dedup_key, job_id, headers, body, outcome, received_at)
VALUES (:provider, :kind, :dedup_key, :job_id, :headers, :body, :outcome, :now)
ON CONFLICT (provider, kind, dedup_key) DO NOTHING;

-- name: list_inbox_for_job
SELECT id, provider, kind, dedup_key, headers, body, outcome, received_at FROM inbox
WHERE job_id = :job_id ORDER BY id;
