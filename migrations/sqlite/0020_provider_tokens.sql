-- The person's access token from their provider (sealed like the refresh token; '' when no app
-- asks for provider tokens), when it expires, and the scopes the provider granted (space-separated).
-- Kept on the session the sign-in made; the sessions handed off from it read it there.
ALTER TABLE sessions ADD COLUMN access_token TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN access_expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
