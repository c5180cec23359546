-- Access requests from the access-denied page: one open request per person and app.
CREATE TABLE access_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    app        TEXT NOT NULL,
    email      TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL DEFAULT 'pending',   -- pending | approved | denied
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    decided_by TEXT NOT NULL DEFAULT '',
    expires_at INTEGER                            -- the expiry an approval granted, if any
);
CREATE UNIQUE INDEX access_requests_one_pending ON access_requests (app, email) WHERE status = 'pending';
CREATE INDEX access_requests_by_status ON access_requests (status, created_at);
