-- Retention: what a purge removes, in batches.
-- Timestamps are Unix seconds (REAL), UTC. Parameters are named.

-- Retention (`receiver/jobs/retention.py`, through `receiver/storage/retention.py`). Each `retention_*`
-- SELECT names the keys of rows a purge removes (`:limit` rows at a time, -1 = all, for counts); the
-- matching `retention_delete_*` removes the keys in the JSON array `:ids`. `:jobs` (JSON array) names jobs
-- the job phase takes, so the row phase skips their rows (a real purge has already removed them and passes
-- '[]'; a dry run passes them all).
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
