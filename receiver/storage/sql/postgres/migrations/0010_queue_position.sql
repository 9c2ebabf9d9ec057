-- A fal job's latest `queue_position` (from its submit answer or a status poll while IN_QUEUE) and when it
-- was read: the health strip tells congestion at fal apart from a hung job.
ALTER TABLE jobs ADD COLUMN queue_position integer;
ALTER TABLE jobs ADD COLUMN queue_position_at double precision;
