-- ACME state, shared by every process on the store: the account per directory, the certificate per
-- domain set, challenges being validated (any replica answers them), and leases (one replica
-- orders at a time).
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    credentials TEXT NOT NULL,                -- instant-acme's AccountCredentials, JSON
    created_at  BIGINT NOT NULL
);
CREATE TABLE acme_certificates (
    domains    TEXT PRIMARY KEY,              -- sorted, comma-separated
    chain_pem  TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE acme_challenges (
    token             TEXT PRIMARY KEY,
    domain            TEXT NOT NULL,
    kind              TEXT NOT NULL,          -- 'http-01' or 'tls-alpn-01'
    key_authorization TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
