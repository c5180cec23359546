-- Revalidation: the provider's refresh token of an OpenID Connect session (sealed with a key
-- derived from the provider's client secret; '' when it granted none) and when the grant was last
-- refreshed (or made).
ALTER TABLE sessions ADD COLUMN refresh_token TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN revalidated_at INTEGER NOT NULL DEFAULT 0;
