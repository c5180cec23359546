-- The Google Workspace domain (hd) a provider asserted, for Google IAP-style assertions.
ALTER TABLE sessions ADD COLUMN hd TEXT NOT NULL DEFAULT '';
