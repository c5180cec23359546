-- IAM-style policies (one JSON document per resource: 'global' or 'app:ID'), castellan groups,
-- provider groups on sessions, service accounts, and the audit trail.

CREATE TABLE policies (
    resource   TEXT PRIMARY KEY,             -- 'global' or 'app:ID'
    document   TEXT NOT NULL,                -- {"version":3,"bindings":[...]} as gcloud prints it
    etag       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The core release kept plain access lists: each app's list becomes one roles/accessor binding.
INSERT INTO policies (resource, document, etag, updated_at)
SELECT 'app:' || app,
       json_object('version', 3, 'bindings',
                   json_array(json_object('role', 'roles/accessor', 'members', json_group_array(member)))),
       lower(hex(randomblob(9))),
       CAST(strftime('%s', 'now') AS INTEGER)
FROM bindings
GROUP BY app;
DROP TABLE bindings;

CREATE TABLE groups (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (group_name, email)
);

ALTER TABLE sessions ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';

CREATE TABLE service_accounts (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE service_account_keys (
    id         TEXT PRIMARY KEY,              -- public key id, shown in listings
    name       TEXT NOT NULL REFERENCES service_accounts (name) ON DELETE CASCADE,
    digest     TEXT NOT NULL UNIQUE,          -- SHA-256 of the secret
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,              -- unix milliseconds
    kind       TEXT NOT NULL,                 -- 'decision' or 'change'
    actor      TEXT NOT NULL,                 -- decision: the caller; change: who made it
    ip         TEXT NOT NULL DEFAULT '',
    app        TEXT NOT NULL DEFAULT '',
    action     TEXT NOT NULL,                 -- decision: allow|deny|sign-in; change: e.g. policy.set
    method     TEXT NOT NULL DEFAULT '',
    path       TEXT NOT NULL DEFAULT '',
    target     TEXT NOT NULL DEFAULT '',      -- change: the resource, group or session changed
    reason     TEXT NOT NULL DEFAULT '',
    binding    TEXT NOT NULL DEFAULT '',
    status     INTEGER,
    latency_us INTEGER,
    reference  TEXT NOT NULL DEFAULT '',
    before     TEXT,
    after      TEXT
);
CREATE INDEX audit_by_time ON audit (at);
CREATE INDEX audit_by_app ON audit (app, at);
CREATE INDEX audit_by_actor ON audit (actor, at);
