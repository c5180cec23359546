-- A second factor for local accounts: a TOTP secret (RFC 6238), the last time step used (no code
-- works twice), one-time recovery codes (SHA-256), and sign-ins waiting for their second factor
-- (bound to the browser, like sign-in flows).
ALTER TABLE users ADD COLUMN totp_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
CREATE TABLE recovery_codes (
    email  TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (email, digest)
);
CREATE TABLE second_factor_pending (
    browser_digest TEXT PRIMARY KEY,
    email          TEXT NOT NULL,
    return_to      TEXT NOT NULL,
    enrol_secret   TEXT NOT NULL DEFAULT '',   -- set while the person is setting up TOTP
    created_at     INTEGER NOT NULL
);
