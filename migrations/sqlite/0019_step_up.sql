-- The app whose step-up an OpenID Connect sign-in was started for ('' for none), and whether the
-- provider was already asked for a fresh authentication (prompt=login) for it.
ALTER TABLE login_flows ADD COLUMN step_up_app TEXT NOT NULL DEFAULT '';
ALTER TABLE login_flows ADD COLUMN step_up_forced INTEGER NOT NULL DEFAULT 0;
