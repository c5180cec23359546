-- One-time codes that hand a browser sign-in to the castellan command line (RFC 8252 loopback flow).
CREATE TABLE cli_codes (
    code_digest    TEXT PRIMARY KEY,
    session_digest TEXT NOT NULL,     -- the browser session the command line is signed in from
    challenge      TEXT NOT NULL,     -- PKCE S256 challenge
    created_at     INTEGER NOT NULL
);
