//! The person's own provider tokens, for the apps that ask for them (`access_token_header`,
//! `id_token_header`): read from the sign-in's session, and the access token renewed with the
//! refresh token when it expires within [`RENEW_BEFORE`] seconds. A sign-in's grant is refreshed
//! by one task at a time ([`RefreshLocks`], also taken by revalidation): a provider that rotates
//! refresh tokens refuses one used twice, which would end the sign-in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::State;
use super::sessions::SessionRef;
use crate::config::App;
use crate::identity::oidc::refresh::Refreshed;
use crate::web::failure::Failure;

/// An access token expiring sooner than this is renewed before it is sent.
pub const RENEW_BEFORE: i64 = 60;

/// One refresh at a time per sign-in (by the digest of its root session).
#[derive(Default)]
pub struct RefreshLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl RefreshLocks {
    /// Waits for the sign-in `root`'s refresh lock.
    pub async fn lock(&self, root: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 1024 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(root).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(root.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// What an app that asks for provider tokens gets for a session.
pub enum Served {
    /// The tokens it asks for (those it does not ask for are None).
    Tokens {
        access_token: Option<String>,
        id_token: Option<String>,
    },
    /// The session has none to give (a local account, or a command line's session).
    Nothing,
    /// The session's sign-in does not hold what the app needs (the scopes, or tokens at all, or
    /// they expired without a way to renew them): a sign-in for the app gets them.
    SignIn,
}

impl State {
    /// The provider tokens `app` asks for, from `session`'s sign-in.
    pub async fn provider_tokens_for(
        &self,
        app: &App,
        session: &SessionRef,
    ) -> Result<Served, Failure> {
        let wanted = &app.provider_tokens;
        let Some(client) = self.provider(&session.identity.provider) else {
            return Ok(Served::Nothing);
        };
        let read = || async {
            self.store
                .provider_tokens(&session.digest)
                .await
                .map_err(|e| Failure::internal("reading the provider tokens", &e))
        };
        let Some(mut t) = read().await? else {
            return Ok(Served::Nothing);
        };
        let now = crate::clock::now();
        if !t.serve(wanted, now) {
            return Ok(Served::SignIn);
        }
        if wanted.access_token_header.is_some() && t.access_expires_at - now < RENEW_BEFORE {
            let _one_at_a_time = self.refresh_locks.lock(&t.root).await;
            // Another request may have renewed it while this one waited.
            let Some(fresh) = read().await? else {
                return Ok(Served::SignIn);
            };
            t = fresh;
            if t.access_expires_at - now < RENEW_BEFORE {
                match self.renew(client, &t).await {
                    Ok(Some((token, expires_at))) => {
                        t.access_token = token;
                        t.access_expires_at = expires_at;
                    }
                    Ok(None) if t.access_expires_at <= now => return Ok(Served::SignIn),
                    Ok(None) => {}
                    // Not renewed, but still good for a while: sent as it is.
                    Err(_) if t.access_expires_at > now => {}
                    Err(e) => {
                        return Err(Failure::provider_unavailable(format!(
                            "{e}; your access token for {} could not be renewed: try again in a minute",
                            app.id
                        )));
                    }
                }
            }
        }
        let access_token = match &wanted.access_token_header {
            None => None,
            Some(_) => match client.open(&t.access_token) {
                Some(token) => Some(token),
                // Sealed under a client secret that has since changed.
                None => return Ok(Served::SignIn),
            },
        };
        let id_token = wanted.id_token_header.as_ref().map(|_| t.id_token.clone());
        Ok(Served::Tokens {
            access_token,
            id_token,
        })
    }

    /// Renews `t`'s access token with its refresh token and keeps the result: the new (sealed)
    /// token and when it expires, or None when there is no way to renew it (no refresh token,
    /// the provider refused the grant or sent no access token).
    async fn renew(
        &self,
        client: &crate::identity::oidc::Client,
        t: &crate::store::ProviderTokens,
    ) -> Result<Option<(String, i64)>, crate::identity::oidc::Error> {
        let Some(refresh) = client.open(&t.refresh_token) else {
            return Ok(None);
        };
        match client.refresh(&refresh, &t.subject).await? {
            Refreshed::Valid {
                refresh_token,
                access: Some(access),
                id_token,
                ..
            } => {
                let sealed = client.seal(&access.token);
                let scopes = access.scope.unwrap_or_else(|| t.scopes.clone());
                let rotated = refresh_token.map(|r| client.seal(&r));
                if let Err(e) = self
                    .store
                    .set_provider_tokens(
                        &t.root,
                        &sealed,
                        access.expires_at,
                        &scopes,
                        id_token.as_deref(),
                        rotated.as_deref(),
                    )
                    .await
                {
                    tracing::warn!("keeping a renewed access token: {e}");
                }
                Ok(Some((sealed, access.expires_at)))
            }
            Refreshed::Valid { access: None, .. } => Ok(None),
            Refreshed::Revoked(reason) => {
                tracing::info!(
                    provider = %client.config.id,
                    "renewing an access token: the provider refused the grant ({})",
                    crate::web::ctx::log_safe(&reason)
                );
                Ok(None)
            }
        }
    }
}
