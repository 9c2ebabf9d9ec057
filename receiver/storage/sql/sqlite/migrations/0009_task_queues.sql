-- Every task kind and lane is a queue of its own: claims read each through this index (kind, lane, run_at)
-- of pending tasks, so a claim costs the same whatever the backlog of other kinds (the lane index it
-- replaces served only one lane of every kind at once). `claimed_at`: when the task was last leased (its
-- wait in the queue is claimed_at - created_at on a first attempt).
ALTER TABLE tasks ADD COLUMN claimed_at REAL;
DROP INDEX tasks_lane_pending;
CREATE INDEX tasks_queue ON tasks (kind, lane, run_at) WHERE status = 'pending';
