-- Apps on other hosts get sessions of their own, made from the public host's session through a
-- one-time code; ending the parent ends them too.
ALTER TABLE sessions ADD COLUMN parent TEXT NOT NULL DEFAULT '';
CREATE INDEX sessions_by_parent ON sessions (parent);
CREATE TABLE handoff_codes (
    code_digest    TEXT PRIMARY KEY,
    session_digest TEXT NOT NULL,     -- the public host's session
    host           TEXT NOT NULL,     -- the only host that may redeem it
    created_at     BIGINT NOT NULL
);
