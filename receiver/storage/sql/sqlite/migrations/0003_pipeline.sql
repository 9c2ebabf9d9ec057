-- The downstream pipeline: stored images, the outbound event log (also the live feed), subscriptions,
-- deliveries with their attempt log.
ALTER TABLE jobs ADD COLUMN images_status TEXT;  -- NULL (nothing to fetch yet), pending, stored, failed
ALTER TABLE jobs ADD COLUMN images_error TEXT;

CREATE TABLE images (
    sha256           TEXT PRIMARY KEY,
    content_type     TEXT NOT NULL,
    width            INTEGER NOT NULL,
    height           INTEGER NOT NULL,
    bytes            INTEGER NOT NULL,
    thumbnail_sha256 TEXT,
    created_at       REAL NOT NULL
);

CREATE TABLE job_images (
    job_id     TEXT NOT NULL REFERENCES jobs (id),
    role       TEXT NOT NULL CHECK (role IN ('input', 'output')),
    position   INTEGER NOT NULL,
    sha256     TEXT REFERENCES images (sha256),
    source_url TEXT,
    error      TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, role, position)
);

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,  -- the live feed's event id (Last-Event-ID)
    id         TEXT NOT NULL UNIQUE, -- evt_...
    type       TEXT NOT NULL,
    job_id     TEXT REFERENCES jobs (id),
    payload    TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX events_job ON events (job_id);

CREATE TABLE subscriptions (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'discord', 'telegram')),
    url                 TEXT,
    config              TEXT NOT NULL DEFAULT '{}',
    events              TEXT NOT NULL,
    filter              TEXT NOT NULL DEFAULT '{}',
    secret              TEXT,
    previous_secret     TEXT,
    previous_expires_at REAL,
    status              TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason     TEXT,
    failing_since       REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events (id),
    subscription_id TEXT REFERENCES subscriptions (id),
    target          TEXT NOT NULL,        -- 'subscription' or 'callback'
    url             TEXT,
    webhook_id      TEXT NOT NULL,        -- stable across retries and replays
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at REAL,
    delivered_at    REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (event_id, subscription_id, target)
);
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, created_at);
CREATE INDEX deliveries_status ON deliveries (status, created_at);

CREATE TABLE delivery_attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  TEXT NOT NULL REFERENCES deliveries (id),
    attempted_at REAL NOT NULL,
    status_code  INTEGER,
    latency_ms   REAL,
    error        TEXT
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
