-- Sign-ins that must prove a fresh authentication (an app's reauth_max_age): the OIDC max_age sent.
ALTER TABLE login_flows ADD COLUMN max_age INTEGER NOT NULL DEFAULT 0;
