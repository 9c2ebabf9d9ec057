-- Dead tasks by kind (and when they died): what `/metrics`, the dashboard's health strip and the alerts count on
-- every scrape, page and check. Without it each count walked every finished task (`tasks_finished` holds the
-- done ones too, which pile up until the retention purge) or the whole table.
CREATE INDEX tasks_dead ON tasks (kind, updated_at) WHERE status = 'dead';
