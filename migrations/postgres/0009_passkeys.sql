-- Passkeys (WebAuthn credentials) of local accounts, and the challenges of ceremonies in progress
-- (bound to the browser, single use).
CREATE TABLE passkeys (
    id           TEXT PRIMARY KEY,          -- credential id, base64url
    email        TEXT NOT NULL,
    user_handle  TEXT NOT NULL,             -- the opaque WebAuthn user id, base64url
    public_key   BYTEA NOT NULL,             -- COSE key, as registered
    sign_count   BIGINT NOT NULL,
    name         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX passkeys_email ON passkeys (email);
CREATE TABLE passkey_challenges (
    browser_digest TEXT PRIMARY KEY,
    purpose        TEXT NOT NULL,           -- 'register' or 'sign_in'
    email          TEXT NOT NULL,           -- who is registering ('' when signing in)
    challenge      TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
