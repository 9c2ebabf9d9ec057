-- Every task kind and lane is a queue of its own: claims read each through this index (kind, lane, run_at)
-- of pending tasks, so a claim costs the same whatever the backlog of other kinds (it replaces the lane
-- index). `claimed_at`: when the task was last leased (Unix seconds, like every other timestamp here).
ALTER TABLE tasks ADD COLUMN claimed_at DOUBLE PRECISION;
DROP INDEX IF EXISTS tasks_lane_pending;
CREATE INDEX tasks_queue ON tasks (kind, lane, run_at) WHERE status = 'pending';
