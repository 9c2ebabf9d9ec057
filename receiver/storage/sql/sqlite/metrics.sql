-- What `GET /metrics` reads at scrape time (see `receiver.storage.metrics`). Timestamps are Unix seconds.

-- name: metrics_task_queues
-- Pending tasks per kind and the earliest run_at among them: a scan of the `tasks_queue` index (kind, lane,
-- run_at) of pending tasks, rows untouched.
SELECT kind, COUNT(*) AS n, MIN(run_at) AS first_run_at FROM tasks WHERE status = 'pending' GROUP BY kind;

-- name: metrics_dead_tasks
-- Dead tasks per kind, from the `tasks_dead` index alone.
SELECT kind, COUNT(*) AS n FROM tasks WHERE status = 'dead' GROUP BY kind;
