-- The ID token of an OpenID Connect session, sent back as id_token_hint when the person signs out
-- (RP-initiated logout), so the provider's session ends too.
ALTER TABLE sessions ADD COLUMN id_token TEXT NOT NULL DEFAULT '';
