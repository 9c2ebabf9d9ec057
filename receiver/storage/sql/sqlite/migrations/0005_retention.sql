-- Retention: indexes that keep every purge batch a short range scan of old rows, never a table scan.
CREATE INDEX tasks_finished ON tasks (updated_at) WHERE status IN ('done', 'dead');
CREATE INDEX inbox_received ON inbox (received_at);
CREATE INDEX delivery_attempts_at ON delivery_attempts (attempted_at);
CREATE INDEX deliveries_final ON deliveries (updated_at) WHERE status IN ('delivered', 'dead');
CREATE INDEX events_created ON events (created_at);
CREATE INDEX jobs_completed ON jobs (completed_at) WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX job_images_sha256 ON job_images (sha256);
CREATE INDEX images_thumbnail ON images (thumbnail_sha256);
