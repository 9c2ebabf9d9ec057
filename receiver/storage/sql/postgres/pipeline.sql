-- The pipeline's blocks (issue 10), PostgreSQL: task claims by queue (kind and lane) and thumbnails made when
-- first asked for. Twins of the blocks of the same names in sql/sqlite/tasks.sql and sql/sqlite/pipeline.sql.

-- name: task_queues
-- Each (kind, lane) holding pending tasks, with its earliest run_at: a skip scan of the tasks_queue index,
-- one step per queue.
WITH RECURSIVE queues(kind, lane) AS (
    (SELECT kind, lane FROM tasks WHERE status = 'pending' ORDER BY kind, lane LIMIT 1)
    UNION ALL
    SELECT next.kind, next.lane
    FROM queues AS q
    CROSS JOIN LATERAL (
        SELECT t.kind, t.lane FROM tasks AS t
        WHERE t.status = 'pending' AND (t.kind, t.lane) > (q.kind, q.lane)
        ORDER BY t.kind, t.lane LIMIT 1
    ) AS next
)
SELECT q.kind, q.lane,
    (SELECT MIN(t.run_at) FROM tasks AS t WHERE t.status = 'pending' AND t.kind = q.kind AND t.lane = q.lane)
        AS run_at
FROM queues AS q;

-- name: lock_lane_counts
-- Claims that apply lane caps run one at a time across every worker: the advisory lock is held until this
-- claim commits, and the statements after this one (leased_task_lanes, due_tasks) take their snapshots once
-- it is granted, so they count the leases the previous claim committed (a lock taken inside the counting
-- statement would count from a snapshot taken before the wait).
SELECT pg_advisory_xact_lock(hashtext('receiver:lane-claims'));

-- name: leased_task_lanes
-- Leased tasks per kind and lane, every worker's (the lane caps count them).
SELECT kind, lane, COUNT(*) AS n FROM tasks WHERE status = 'leased' GROUP BY kind, lane;

-- name: due_tasks
-- The first :limit due tasks of one queue, the longest due first; rows another worker is claiming are
-- skipped, and these stay locked until this claim commits.
SELECT id, run_at FROM tasks
WHERE status = 'pending' AND kind = :kind AND lane = :lane AND run_at <= :now
ORDER BY run_at, id LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: lease_tasks
-- Lease the chosen tasks (`:ids`, a JSON array) to :owner.
UPDATE tasks SET status = 'leased', lease_owner = :owner, lease_expires_at = :lease_expires_at,
    attempts = attempts + 1, claimed_at = :now, updated_at = :now
WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text(CAST(:ids AS jsonb))) AND status = 'pending'
RETURNING *;

-- name: set_image_thumbnail
-- A stored image gets its thumbnail when first asked for it; the first one made stays.
UPDATE images SET thumbnail_sha256 = :thumbnail_sha256
WHERE sha256 = :sha256 AND thumbnail_sha256 IS NULL;
