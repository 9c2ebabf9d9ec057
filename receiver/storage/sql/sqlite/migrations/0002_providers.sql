-- Every provider: raw provider output beside the normalized result, dispatch slots for concurrency
-- and rate limits, fresh submits after transient provider failures, per-provider poll pacing,
-- synchronous responses in the inbox, and input images we serve to providers that fetch URLs.
ALTER TABLE jobs ADD COLUMN provider_result TEXT;
ALTER TABLE jobs ADD COLUMN dispatched_at REAL;
ALTER TABLE jobs ADD COLUMN provider_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN poll_base_s REAL NOT NULL DEFAULT 10;
CREATE INDEX jobs_dispatched ON jobs (provider, dispatched_at)
    WHERE dispatched_at IS NOT NULL AND status IN ('pending', 'submitted', 'running');

CREATE TABLE inbox_new (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('webhook', 'poll', 'response')),
    dedup_key   TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    outcome     TEXT NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (provider, kind, dedup_key)
);
INSERT INTO inbox_new SELECT * FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;
CREATE INDEX inbox_job ON inbox (job_id);

CREATE TABLE inputs (
    key          TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data         BLOB NOT NULL,
    created_at   REAL NOT NULL
);
CREATE INDEX inputs_job ON inputs (job_id);
