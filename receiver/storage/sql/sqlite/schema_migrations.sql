-- The migrations applied to this database (the backend's own bookkeeping, `receiver/storage/sqlite.py`).

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (number INTEGER PRIMARY KEY, name TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);

-- name: applied_migrations
SELECT number FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (number, name) VALUES (:number, :name);
