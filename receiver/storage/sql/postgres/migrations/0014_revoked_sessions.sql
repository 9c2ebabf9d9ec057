-- Dashboard sessions logged out before they expired: every web process refuses their cookies (a copy taken
-- before the logout included). Rows go once their session would have expired anyway.
CREATE TABLE dashboard_revoked_sessions (
    sid        TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
