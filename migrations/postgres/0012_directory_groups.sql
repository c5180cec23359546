-- Groups a directory (Google Cloud Identity, …) says a person is in, transitively, as last asked:
-- `groups` is a JSON list of group names; `fetched_at` when the directory last answered for them.
-- Rows older than the directory's grace are removed, and their memberships with them.
CREATE TABLE directory_groups (
    directory  TEXT NOT NULL,
    email      TEXT NOT NULL,
    groups     TEXT NOT NULL,
    fetched_at BIGINT NOT NULL,
    PRIMARY KEY (directory, email)
);
