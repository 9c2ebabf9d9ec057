-- Idempotency-Key of POST /v1/jobs (Stripe's semantics): a key is written in the same transaction as the
-- job it names, so neither can exist without the other; the primary key makes a second job under the same
-- key impossible, however many requests race. Kept at least 24 h (retention: receiver.jobs.retention).
CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,  -- the operation the key belongs to, e.g. 'POST /v1/jobs'
    key         TEXT NOT NULL,  -- as the client sent it (1-255 printable ASCII characters)
    fingerprint TEXT NOT NULL,  -- sha256 (hex) of the canonical JSON of the parsed request body
    -- Deferred: the key is claimed before its job row is inserted, in the same transaction. A job deleted
    -- later (retention) takes its key along.
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at  REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);
