//! Revalidation rounds: every provider's sign-ins whose grant is older than its `revalidate`
//! interval are refreshed at the provider (one replica at a time, by a lease). A refusal
//! (`invalid_grant`: the person was disabled or deleted there, or withdrew consent) ends the
//! sign-in everywhere and closes its connections; a new ID token's email, groups and `hd`
//! replace the old; a provider that cannot be reached changes nothing until it answers.

use std::time::Duration;

use super::State;
use super::metrics::EndedBy;
use crate::identity::oidc::refresh::Refreshed;

impl State {
    /// One round over every provider that grants refresh tokens.
    pub async fn revalidate_sessions(&self) {
        let mut changed = false;
        for client in self.providers.iter().filter(|c| c.offline_access()) {
            let before = crate::clock::now() - client.config.revalidate.as_secs() as i64;
            let due = match self
                .store
                .due_revalidations(&client.config.id, before)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("cannot list sessions to revalidate: {e}");
                    return;
                }
            };
            for mut session in due {
                // One refresh of a grant at a time (an app's access token may be renewed now),
                // with the refresh token as it is after the wait.
                let _one_at_a_time = self.refresh_locks.lock(&session.id_digest).await;
                let scopes = match self.store.provider_tokens(&session.id_digest).await {
                    Ok(Some(t)) => {
                        session.refresh_token = t.refresh_token;
                        t.scopes
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("cannot read a session to revalidate: {e}");
                        return;
                    }
                };
                let Some(token) = client.open(&session.refresh_token) else {
                    // Sealed under a client secret that has since changed: it can never be
                    // used; the session lives out its lifetime as one without offline access.
                    tracing::warn!(
                        provider = %client.config.id,
                        "a stored refresh token no longer opens (was the client secret changed?); that session is no longer revalidated"
                    );
                    let _ = self.store.revalidated(&session.id_digest, "", None).await;
                    continue;
                };
                match client.refresh(&token, &session.subject).await {
                    Ok(Refreshed::Valid {
                        refresh_token,
                        identity,
                        access,
                        id_token,
                    }) => {
                        let sealed = refresh_token
                            .map(|t| client.seal(&t))
                            .unwrap_or(session.refresh_token.clone());
                        // The new access token serves the apps that ask for it.
                        if let Some(a) = access.filter(|_| self.keeps_provider_tokens()) {
                            let scopes = a.scope.clone().unwrap_or_else(|| scopes.clone());
                            if let Err(e) = self
                                .store
                                .set_provider_tokens(
                                    &session.id_digest,
                                    &client.seal(&a.token),
                                    a.expires_at,
                                    &scopes,
                                    id_token.as_deref(),
                                    None,
                                )
                                .await
                            {
                                tracing::warn!("keeping a renewed access token: {e}");
                            }
                        }
                        match self
                            .store
                            .revalidated(&session.id_digest, &sealed, identity.as_deref())
                            .await
                        {
                            Ok(c) => changed |= c,
                            Err(e) => tracing::warn!("recording a revalidation: {e}"),
                        }
                    }
                    Ok(Refreshed::Revoked(reason)) => {
                        match self
                            .store
                            .end_revoked_grant(&session.id_digest, &reason)
                            .await
                        {
                            Ok(n) => {
                                tracing::info!(
                                    provider = %client.config.id,
                                    user = %crate::web::ctx::log_safe(&session.email),
                                    "the provider refused the grant ({}); {n} sign-in(s) ended",
                                    crate::web::ctx::log_safe(&reason)
                                );
                                self.metrics.sign_ins_ended(EndedBy::Revalidation, n);
                                changed = true;
                            }
                            Err(e) => tracing::warn!("ending a revoked sign-in: {e}"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("revalidating a session: {e}; trying again next round")
                    }
                }
            }
        }
        if changed {
            self.apply_own_change().await;
        }
    }

    /// How often revalidation rounds run: the shortest `revalidate` of the providers that
    /// grant refresh tokens (None: none do).
    pub fn revalidation_interval(&self) -> Option<Duration> {
        self.providers
            .iter()
            .filter(|c| c.offline_access())
            .map(|c| c.config.revalidate)
            .min()
    }
}
