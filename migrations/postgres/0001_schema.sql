-- castellan's state on PostgreSQL: the schema SQLite reached through its migrations 0001–0004, in one
-- step (PostgreSQL stores have no older history). Times are unix seconds unless named otherwise;
-- secrets handed to browsers (session ids, flow states, codes) are stored only as SHA-256 digests.

CREATE TABLE users (
    email         TEXT PRIMARY KEY,          -- lower case
    password_hash TEXT NOT NULL,             -- argon2id, PHC string
    created_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    id_digest  TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    client_ip  TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    groups     TEXT NOT NULL DEFAULT '[]'    -- provider groups, a JSON array
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
    created_at     BIGINT NOT NULL
);

CREATE TABLE keys (
    purpose    TEXT PRIMARY KEY,             -- 'assertion' (ES256 PKCS#8) or 'csrf' (HMAC key)
    kid        TEXT NOT NULL,
    material   BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Bumped by every change a decision depends on. The trigger below tells every replica at commit.
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE FUNCTION castellan_notify_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('castellan_revision', NEW.value::text);
    RETURN NEW;
END;
$$;
CREATE TRIGGER revision_changed AFTER UPDATE ON revision
    FOR EACH ROW EXECUTE FUNCTION castellan_notify_revision();

CREATE TABLE policies (
    resource   TEXT PRIMARY KEY,             -- 'global' or 'app:ID'
    document   TEXT NOT NULL,                -- {"version":3,"bindings":[...]} as gcloud prints it
    etag       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE groups (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (group_name, email)
);

CREATE TABLE service_accounts (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

CREATE TABLE service_account_keys (
    id         TEXT PRIMARY KEY,              -- public key id, shown in listings
    name       TEXT NOT NULL REFERENCES service_accounts (name) ON DELETE CASCADE,
    digest     TEXT NOT NULL UNIQUE,          -- SHA-256 of the secret
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE audit (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,               -- unix milliseconds
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
    status     BIGINT,
    latency_us BIGINT,
    reference  TEXT NOT NULL DEFAULT '',
    before     TEXT,
    after      TEXT
);
CREATE INDEX audit_by_time ON audit (at);
CREATE INDEX audit_by_app ON audit (app, at);
CREATE INDEX audit_by_actor ON audit (actor, at);

-- Access requests from the access-denied page: one open request per person and app.
CREATE TABLE access_requests (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app        TEXT NOT NULL,
    email      TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL DEFAULT 'pending',   -- pending | approved | denied
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    decided_by TEXT NOT NULL DEFAULT '',
    expires_at BIGINT                             -- the expiry an approval granted, if any
);
CREATE UNIQUE INDEX access_requests_one_pending ON access_requests (app, email) WHERE status = 'pending';
CREATE INDEX access_requests_by_status ON access_requests (status, created_at);

-- One-time codes that hand a browser sign-in to the castellan command line (RFC 8252 loopback flow).
CREATE TABLE cli_codes (
    code_digest    TEXT PRIMARY KEY,
    session_digest TEXT NOT NULL,     -- the browser session the command line is signed in from
    challenge      TEXT NOT NULL,     -- PKCE S256 challenge
    created_at     BIGINT NOT NULL
);
