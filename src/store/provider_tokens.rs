//! The person's own tokens from their provider, for apps that ask for them (`access_token_header`,
//! `id_token_header`): the access token (sealed, like the refresh token), when it expires, the
//! scopes granted, and the ID token. They live on the session the sign-in made (the family's
//! root); a session handed off to an app's host reads them there.

use sqlx::Row;

use super::{Result, Store};

/// A sign-in's provider tokens, as the store keeps them.
#[derive(Debug, Clone)]
pub struct ProviderTokens {
    /// The session that holds them (the family's root).
    pub root: String,
    pub provider: String,
    pub subject: String,
    /// Sealed; '' when castellan kept none.
    pub access_token: String,
    pub access_expires_at: i64,
    /// Space-separated.
    pub scopes: String,
    /// Sealed; '' without offline access.
    pub refresh_token: String,
    pub id_token: String,
}

impl ProviderTokens {
    /// Whether every one of `wanted` was granted.
    pub fn grants(&self, wanted: &[String]) -> bool {
        wanted
            .iter()
            .all(|w| self.scopes.split(' ').any(|s| s == w))
    }

    /// Whether these tokens can serve an app that wants `tokens` at `now`: each token it asks
    /// for is here, the access token with the app's scopes and not expired (or renewable with the
    /// refresh token).
    pub fn serve(&self, tokens: &crate::config::ProviderTokens, now: i64) -> bool {
        let access = tokens.access_token_header.is_none()
            || (!self.access_token.is_empty()
                && self.grants(&tokens.scopes)
                && (self.access_expires_at > now || !self.refresh_token.is_empty()));
        let id = tokens.id_token_header.is_none() || !self.id_token.is_empty();
        access && id
    }
}

impl Store {
    /// The provider tokens of the sign-in `id_digest` belongs to (following hand-offs up to the
    /// session the sign-in made).
    pub async fn provider_tokens(&self, id_digest: &str) -> Result<Option<ProviderTokens>> {
        let row = sqlx::query(
            "WITH RECURSIVE up(id, parent, depth) AS ( \
               SELECT id_digest, parent, 0 FROM sessions WHERE id_digest = $1 \
               UNION ALL SELECT s.id_digest, s.parent, up.depth + 1 FROM sessions s \
                 JOIN up ON s.id_digest = up.parent WHERE up.depth < 16 \
             ) SELECT id_digest, provider, subject, access_token, access_expires_at, scopes, refresh_token, id_token \
               FROM sessions WHERE id_digest = (SELECT id FROM up WHERE parent = '' LIMIT 1)",
        )
        .bind(id_digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| ProviderTokens {
            root: r.get(0),
            provider: r.get(1),
            subject: r.get(2),
            access_token: r.get(3),
            access_expires_at: r.get(4),
            scopes: r.get(5),
            refresh_token: r.get(6),
            id_token: r.get(7),
        }))
    }

    /// Keeps a new access token (sealed) for the session `root`, with when it expires and the
    /// scopes granted; and the ID token and refresh token (sealed) that came with it, if any.
    pub async fn set_provider_tokens(
        &self,
        root: &str,
        access_token: &str,
        expires_at: i64,
        scopes: &str,
        id_token: Option<&str>,
        refresh_token: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET access_token = $1, access_expires_at = $2, scopes = $3, \
             id_token = COALESCE($4, id_token), refresh_token = COALESCE($5, refresh_token) \
             WHERE id_digest = $6",
        )
        .bind(access_token)
        .bind(expires_at)
        .bind(scopes)
        .bind(id_token)
        .bind(refresh_token)
        .bind(root)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use crate::policy::Identity;

    store_test! {
        async fn a_handed_off_session_reads_its_sign_ins_tokens(s: Store) {
            let (root, child) = (crate::crypto::digest("root"), crate::crypto::digest("child"));
            let who = Identity::local("a@example.com");
            let day = std::time::Duration::from_secs(86_400);
            s.create_session(&root, &who, day, "ip", "ua", None).await.unwrap();
            s.set_provider_session(&root, "id-token-1", "sid").await.unwrap();
            s.set_provider_tokens(&root, "sealed-at", 1_000, "openid api:read", None, Some("sealed-rt"))
                .await
                .unwrap();
            s.put_handoff_code("code", &root, "app.example.com", "browser").await.unwrap();
            let r = crate::store::Redemption {
                code_digest: "code",
                host: "app.example.com",
                browser_digest: "browser",
                max_age: day,
            };
            assert!(s.redeem_handoff_code(&r, &child, "ip", "ua").await.unwrap().is_some());
            let t = s.provider_tokens(&child).await.unwrap().unwrap();
            assert_eq!(t.root, root);
            assert_eq!(
                (t.access_token.as_str(), t.access_expires_at, t.refresh_token.as_str(), t.id_token.as_str()),
                ("sealed-at", 1_000, "sealed-rt", "id-token-1")
            );
            assert!(t.grants(&["api:read".into()]));
            assert!(!t.grants(&["api:write".into()]));
            // A refresh keeps what it does not replace.
            s.set_provider_tokens(&root, "sealed-at-2", 2_000, "openid api:read", Some("id-token-2"), None)
                .await
                .unwrap();
            let t = s.provider_tokens(&child).await.unwrap().unwrap();
            assert_eq!((t.id_token.as_str(), t.refresh_token.as_str()), ("id-token-2", "sealed-rt"));
            assert!(s.provider_tokens(&crate::crypto::digest("nobody")).await.unwrap().is_none());
        }
    }
}
