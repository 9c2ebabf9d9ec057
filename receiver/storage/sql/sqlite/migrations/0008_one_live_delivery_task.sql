-- One live deliver task per delivery: a retry or replay of a delivery whose retry task is still waiting
-- (status `failed`) must not queue a second one, or the event would be sent twice. Older duplicates go
-- first (the lowest id is kept).
DELETE FROM tasks
WHERE kind = 'deliver' AND status IN ('pending', 'leased') AND EXISTS (
    SELECT 1 FROM tasks AS older
    WHERE older.kind = 'deliver' AND older.status IN ('pending', 'leased') AND older.id < tasks.id
      AND json_extract(older.payload, '$.delivery_id') = json_extract(tasks.payload, '$.delivery_id')
);
CREATE UNIQUE INDEX tasks_one_live_delivery ON tasks (json_extract(payload, '$.delivery_id'))
WHERE kind = 'deliver' AND status IN ('pending', 'leased');
