-- SCIM 2.0 provisioning (RFC 7643/7644): people and groups an identity provider (Okta, Microsoft
-- Entra ID) pushes. `resource` is the SCIM resource as last written (JSON); the other columns are
-- what castellan looks things up by. `email` is the person as castellan's sessions and policies
-- name them (their primary email, else userName), lower case.
CREATE TABLE scim_users (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL UNIQUE,
    email       TEXT NOT NULL,
    external_id TEXT,
    active      INTEGER NOT NULL,
    resource    TEXT NOT NULL,
    created     INTEGER NOT NULL,
    modified    INTEGER NOT NULL
);
CREATE INDEX scim_users_by_email ON scim_users (email);
CREATE TABLE scim_groups (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL UNIQUE,
    external_id  TEXT,
    resource     TEXT NOT NULL,
    created      INTEGER NOT NULL,
    modified     INTEGER NOT NULL
);
CREATE TABLE scim_members (
    group_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
