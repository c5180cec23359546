-- Keys rotate: each purpose ('assertion', 'csrf') keeps a small ring (the next key, the one in use,
-- the previous one) instead of one key forever.
CREATE TABLE key_ring (
    purpose    TEXT NOT NULL,
    kid        TEXT NOT NULL,
    material   BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (purpose, kid)
);
INSERT INTO key_ring (purpose, kid, material, created_at)
SELECT purpose, kid, material, created_at FROM keys;
DROP TABLE keys;
