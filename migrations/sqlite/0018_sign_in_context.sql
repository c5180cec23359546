-- How the person of a session signed in and the provider claims castellan keeps for conditions
-- and apps: {"amr": [...], "acr": "...", "claims": {...}} (JSON; '{}' for sessions made before).
ALTER TABLE sessions ADD COLUMN auth TEXT NOT NULL DEFAULT '{}';
