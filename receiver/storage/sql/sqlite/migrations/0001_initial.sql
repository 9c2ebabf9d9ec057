-- Jobs, the inbox of verified provider events, and the task outbox.
CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    status              TEXT NOT NULL,
    input               TEXT NOT NULL,
    metadata            TEXT,
    callback_url        TEXT,
    provider_request_id TEXT,
    provider_urls       TEXT,
    result              TEXT,
    error               TEXT,
    created_at          REAL NOT NULL,
    submitted_at        REAL,
    completed_at        REAL,
    updated_at          REAL NOT NULL,
    poll_count          INTEGER NOT NULL DEFAULT 0,
    next_poll_at        REAL
);
CREATE INDEX jobs_status_id ON jobs (status, id);
CREATE INDEX jobs_open_poll ON jobs (next_poll_at) WHERE status IN ('submitted', 'running');
CREATE INDEX jobs_open_created ON jobs (created_at) WHERE status IN ('pending', 'submitted', 'running');
CREATE UNIQUE INDEX jobs_provider_request ON jobs (provider, provider_request_id)
    WHERE provider_request_id IS NOT NULL;

CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('webhook', 'poll')),
    dedup_key   TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    outcome     TEXT NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (provider, kind, dedup_key)
);
CREATE INDEX inbox_job ON inbox (job_id);

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL,
    job_id           TEXT REFERENCES jobs (id),
    payload          TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    run_at           REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    last_error       TEXT,
    interrupted      INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE INDEX tasks_due ON tasks (run_at) WHERE status = 'pending';
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status = 'leased';
CREATE INDEX tasks_job ON tasks (job_id);
-- At most one live task of a kind per job: enqueueing a second one is a no-op.
CREATE UNIQUE INDEX tasks_one_live ON tasks (kind, job_id) WHERE status IN ('pending', 'leased');
