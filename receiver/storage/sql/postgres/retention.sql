-- Retention: what a purge removes, in batches (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named.

-- Retention (`receiver/jobs/retention.py`, through `receiver/storage/retention.py`). Each `retention_*`
-- SELECT names the keys of rows a purge removes (the limit parameter caps them, -1 = all, for counts:
-- `LIMIT NULL` is no limit here); the matching `retention_delete_*` removes the keys in the JSON array
-- parameter ids. The jobs parameter (a JSON array) names jobs the job phase takes, so the row phase skips
-- their rows (a real purge has already removed them and passes '[]'; a dry run passes them all).
--
-- Keys: an id or a seq, as in SQLite; where SQLite uses the rowid of a table with a composite primary key
-- (job_images, idempotency_keys), the key is the JSON text of that primary key, e.g. ["job_1","output",0].
-- SQLite forces each batch onto its index with INDEXED BY; PostgreSQL has no such clause, and its planner
-- takes the same partial indexes (migration 0001) for these range scans.
--
-- Concurrency: a batch selects keys and deletes them in one transaction, but under READ COMMITTED another
-- transaction may change a row in between. Only deliveries can leave their final state (a replay), so
-- their delete checks the status again on the row it deletes: a delivery replayed meanwhile stays (and the
-- delete of its event then fails on the foreign key, rolling the batch back; the next run skips the job).
-- The selects take no row locks: the counts of a dry run run in a read-only transaction.

-- name: retention_jobs
-- Final jobs finished before the job cutoff with no live work: no unfinished task, no delivery still
-- being retried, and not the owner of the newest event (its seq is the high-water mark of the live feed).
-- Nor a job whose Idempotency-Key is younger than the key cutoff (24 h): the key goes with its job, and a
-- retry under it must find the job, not pay for a second one (the settings already keep jobs a day).
SELECT j.id FROM jobs j
WHERE j.status IN ('succeeded', 'failed', 'cancelled') AND j.completed_at < :job_cutoff
  AND NOT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.job_id = j.id AND k.created_at >= :key_cutoff)
  AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.status IN ('pending', 'leased'))
  AND NOT EXISTS (SELECT 1 FROM events e JOIN deliveries d ON d.event_id = e.id
                  WHERE e.job_id = j.id AND d.status NOT IN ('delivered', 'dead'))
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = j.id AND e.seq = (SELECT MAX(seq) FROM events))
ORDER BY j.completed_at LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_attempts
SELECT a.id FROM events e JOIN deliveries d ON d.event_id = e.id JOIN delivery_attempts a ON a.delivery_id = d.id
WHERE e.job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_deliveries
SELECT d.id FROM events e JOIN deliveries d ON d.event_id = e.id
WHERE e.job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_events
SELECT seq FROM events WHERE job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_tasks
SELECT id FROM tasks WHERE job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) AND status IN ('done', 'dead')
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_inbox
SELECT id FROM inbox WHERE job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_inputs
SELECT key FROM inputs WHERE job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_images
-- The key is the primary key as JSON text (SQLite returns the rowid).
SELECT json_build_array(job_id, role, position)::text AS key FROM job_images
WHERE job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_job_images_only
-- Stored images every reference of which belongs to the jobs in the ids parameter (the count of a dry run).
SELECT i.sha256, i.thumbnail_sha256 FROM images i
WHERE i.sha256 IN (SELECT sha256 FROM job_images WHERE job_id IN (SELECT jsonb_array_elements_text(:ids::jsonb)))
  AND NOT EXISTS (SELECT 1 FROM job_images o
                  WHERE o.sha256 = i.sha256 AND o.job_id NOT IN (SELECT jsonb_array_elements_text(:ids::jsonb)));

-- name: retention_jobs_emptied
SELECT j.id FROM jobs j
WHERE j.id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE job_id = j.id) AND NOT EXISTS (SELECT 1 FROM inbox WHERE job_id = j.id)
  AND NOT EXISTS (SELECT 1 FROM events WHERE job_id = j.id) AND NOT EXISTS (SELECT 1 FROM inputs WHERE job_id = j.id)
  AND NOT EXISTS (SELECT 1 FROM job_images WHERE job_id = j.id)
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_deliveries
SELECT d.id FROM deliveries d
WHERE d.status IN ('delivered', 'dead') AND d.updated_at < :cutoff
  AND d.event_id NOT IN (SELECT e.id FROM events e WHERE e.job_id IN (SELECT jsonb_array_elements_text(:jobs::jsonb)))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_attempts
SELECT id FROM delivery_attempts WHERE delivery_id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_events
-- Old events none of whose deliveries outlive this purge; never the newest event (see retention_jobs).
SELECT e.seq FROM events e
WHERE e.created_at < :cutoff AND e.seq < (SELECT MAX(seq) FROM events)
  AND (e.job_id IS NULL OR e.job_id NOT IN (SELECT jsonb_array_elements_text(:jobs::jsonb)))
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                  AND NOT (d.status IN ('delivered', 'dead') AND d.updated_at < :cutoff))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_tasks
SELECT id FROM tasks
WHERE status IN ('done', 'dead') AND updated_at < :cutoff
  AND (job_id IS NULL OR job_id NOT IN (SELECT jsonb_array_elements_text(:jobs::jsonb)))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_inbox
-- Only rows of final jobs: an open job may still need its events.
SELECT i.id FROM inbox i JOIN jobs j ON j.id = i.job_id
WHERE i.received_at < :cutoff AND j.status IN ('succeeded', 'failed', 'cancelled')
  AND i.job_id NOT IN (SELECT jsonb_array_elements_text(:jobs::jsonb))
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_delete_attempts
DELETE FROM delivery_attempts WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text(:ids::jsonb) AS ids (value));

-- name: retention_delete_deliveries
-- Final deliveries only, checked again on the row deleted (see the header): a replay meanwhile keeps it.
DELETE FROM deliveries
WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) AND status IN ('delivered', 'dead');

-- name: retention_delete_events
DELETE FROM events WHERE seq IN (SELECT value::bigint FROM jsonb_array_elements_text(:ids::jsonb) AS ids (value));

-- name: retention_delete_tasks
DELETE FROM tasks WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text(:ids::jsonb) AS ids (value));

-- name: retention_delete_inbox
DELETE FROM inbox WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text(:ids::jsonb) AS ids (value));

-- name: retention_idempotency_keys
-- The key is the primary key as JSON text (SQLite returns the rowid).
SELECT json_build_array(scope, key)::text AS key FROM idempotency_keys WHERE created_at < :cutoff
LIMIT NULLIF(:limit::bigint, -1);

-- name: retention_delete_idempotency_keys
DELETE FROM idempotency_keys
WHERE (scope, key) IN (SELECT k::jsonb ->> 0, k::jsonb ->> 1 FROM jsonb_array_elements_text(:ids::jsonb) AS ids (k));

-- name: retention_delete_inputs
DELETE FROM inputs WHERE key IN (SELECT jsonb_array_elements_text(:ids::jsonb));

-- name: retention_delete_job_images
DELETE FROM job_images
WHERE (job_id, role, position) IN (SELECT k::jsonb ->> 0, k::jsonb ->> 1, (k::jsonb ->> 2)::integer
                                   FROM jsonb_array_elements_text(:ids::jsonb) AS ids (k))
RETURNING sha256;

-- name: retention_delete_images
-- The stored images among the ids that no job refers to any more; their blob files go after the commit.
DELETE FROM images
WHERE sha256 IN (SELECT jsonb_array_elements_text(:ids::jsonb))
  AND NOT EXISTS (SELECT 1 FROM job_images WHERE job_images.sha256 = images.sha256)
RETURNING sha256, thumbnail_sha256;

-- name: retention_delete_jobs
DELETE FROM jobs WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb));

-- name: retention_blob_users
-- The stored images whose bytes or thumbnail are this blob.
SELECT sha256 FROM images WHERE sha256 = :sha256 OR thumbnail_sha256 = :sha256;
