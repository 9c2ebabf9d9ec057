-- A delivery's event is checked at the commit (PostgreSQL only; SQLite has no twin). The writers now insert a
-- batch's events after its bodies, just before COMMIT (`Transaction.execute_at_commit`): `insert_event`
-- takes the events' ordering lock, held until the commit is flushed, and taking it last lets the batches of
-- several writers run side by side up to their commits instead of one at a time from their first event. A
-- body inserts an event's deliveries before the event row exists, so their foreign key waits for the commit.
ALTER TABLE deliveries ALTER CONSTRAINT deliveries_event_id_fkey DEFERRABLE INITIALLY DEFERRED;
