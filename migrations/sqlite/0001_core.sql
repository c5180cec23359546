-- castellan's core state: local accounts, sessions, sign-in flows, access bindings, keys.
-- Times are unix seconds. Secrets handed to browsers (session ids, flow states) are stored only as SHA-256 digests.

CREATE TABLE users (
    email         TEXT PRIMARY KEY,          -- lower case
    password_hash TEXT NOT NULL,             -- argon2id, PHC string
    created_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    id_digest  TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    client_ip  TEXT NOT NULL,
    user_agent TEXT NOT NULL
);
CREATE INDEX sessions_by_email ON sessions (email);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE login_flows (
    state_digest   TEXT PRIMARY KEY,
    browser_digest TEXT NOT NULL,            -- binds the flow to the browser that started it
    provider       TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    pkce_verifier  TEXT NOT NULL,
    return_to      TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE bindings (
    app        TEXT NOT NULL,
    role       TEXT NOT NULL,
    member     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, role, member)
);

CREATE TABLE keys (
    purpose    TEXT PRIMARY KEY,             -- 'assertion' (ES256 PKCS#8) or 'csrf' (HMAC key)
    kid        TEXT NOT NULL,
    material   BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- Bumped by every change to bindings, so running servers notice within their poll interval.
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);
