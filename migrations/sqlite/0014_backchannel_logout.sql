-- OpenID Connect Back-Channel Logout: the provider's session id (`sid` of the ID token) of each
-- session, so a logout token naming it ends exactly that sign-in; sessions found by the provider's
-- subject for a logout token naming only `sub`; and the ids (`jti`, as SHA-256 digests) of
-- logout tokens already used, kept until they could no longer be accepted anyway.
ALTER TABLE sessions ADD COLUMN provider_sid TEXT NOT NULL DEFAULT '';
CREATE INDEX sessions_by_subject ON sessions (provider, subject);
CREATE TABLE used_tokens (
    digest     TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
