-- Stored images and which job holds which (PostgreSQL).
-- Timestamps are Unix seconds (double precision), UTC. Parameters are named.
-- Upserts name their conflict target, as in SQLite; a concurrent insert of the same key waits for the
-- first to commit, then does nothing (or updates the committed row).

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
WHERE ji.job_id = :job_id ORDER BY ji.role DESC, ji.position;

-- name: select_image
SELECT content_type, thumbnail_sha256 FROM images WHERE sha256 = :sha256;
