-- Provider requests a job gave up on for a fresh submit (a WaveSpeed 5xxx failure): a late webhook or poll
-- answer for one of them is recorded in the inbox but never binds the job again nor moves it, so the fresh
-- request (paid for) stays the one the job follows.
CREATE TABLE superseded_requests (
    provider      TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    superseded_at REAL NOT NULL,
    PRIMARY KEY (provider, request_id)
);
CREATE INDEX superseded_requests_job ON superseded_requests (job_id);
