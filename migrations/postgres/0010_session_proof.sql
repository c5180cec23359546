-- What `domain:` members match for this session's person (NULL: stored before castellan kept it;
-- the email's domain then), when and in which browser (its cookie's digest) the person last proved
-- who they are again (a fresh password, code or passkey, for changes to their account), and the
-- browser a hand-off code was made for.
ALTER TABLE sessions ADD COLUMN domain TEXT;
ALTER TABLE sessions ADD COLUMN proved_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN proved_by TEXT NOT NULL DEFAULT '';
ALTER TABLE handoff_codes ADD COLUMN browser_digest TEXT NOT NULL DEFAULT '';
