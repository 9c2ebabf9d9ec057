-- The migrations applied to this database (the backend's own bookkeeping, `receiver/storage/postgres.py`).
-- PostgreSQL: the backend runs these under its migration advisory lock, so processes starting together
-- neither race `CREATE TABLE IF NOT EXISTS` nor apply a migration twice. `applied_at` has SQLite's
-- CURRENT_TIMESTAMP text form (UTC, to the second).

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (number integer PRIMARY KEY, name text NOT NULL,
    applied_at text NOT NULL DEFAULT ((now() AT TIME ZONE 'UTC')::timestamp(0)::text));

-- name: applied_migrations
SELECT number FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (number, name) VALUES (:number, :name);
