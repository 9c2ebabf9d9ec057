-- The NOTIFY wake-ups move from the triggers of migration 0001 to the writers (PostgreSQL only; SQLite has
-- no twin). A transaction that notifies takes PostgreSQL's global notify lock at commit and holds it until
-- its commit record is flushed, so every notifying commit of every process ran one at a time, each with a
-- disk flush of its own: with a task inserted by every webhook, that lock was the ingest's bound. Now a
-- write batch that ran a statement inserting into `tasks` or `events` is followed, once committed, by a
-- short transaction of the writer's that only notifies (`synchronous_commit` off, so it flushes nothing
-- while it holds the lock). Same channels, empty payload; the listeners' poll still backstops a lost one.
DROP TRIGGER tasks_notify ON tasks;
DROP TRIGGER events_notify ON events;
DROP FUNCTION receiver_notify_tasks();
DROP FUNCTION receiver_notify_events();
