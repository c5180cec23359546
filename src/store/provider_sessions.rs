//! What castellan keeps of an OpenID Connect provider's side of a sign-in: its ID token (for
//! RP-initiated logout) and its session id (`sid`), and what the provider's back-channel logout
//! ends with them. Also the single-use record of logout tokens.

use sqlx::Row;

use super::{Actor, Result, Store, now};

/// The sessions a provider's back-channel logout token names (at least one of `subject`, `sid`).
#[derive(Debug, Clone, Copy)]
pub struct ProviderLogout<'a> {
    pub provider: &'a str,
    pub subject: Option<&'a str>,
    pub sid: Option<&'a str>,
}

/// A session whose grant is due to be refreshed.
#[derive(Debug, Clone)]
pub struct DueRevalidation {
    pub id_digest: String,
    pub email: String,
    pub subject: String,
    /// Sealed (see `identity::oidc::refresh`).
    pub refresh_token: String,
}

impl Store {
    /// Keeps the provider's refresh token (sealed) with a session, due for its first refresh
    /// one interval from now.
    pub async fn set_refresh_token(&self, id_digest: &str, sealed: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET refresh_token = $1, revalidated_at = $2 WHERE id_digest = $3",
        )
        .bind(sealed)
        .bind(now())
        .bind(id_digest)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sign-ins with `provider` whose grant was last refreshed before `before` (at most 500).
    pub async fn due_revalidations(
        &self,
        provider: &str,
        before: i64,
    ) -> Result<Vec<DueRevalidation>> {
        let rows = sqlx::query(
            "SELECT id_digest, email, subject, refresh_token FROM sessions \
             WHERE provider = $1 AND parent = '' AND refresh_token <> '' AND revalidated_at < $2 AND expires_at > $3 \
             ORDER BY revalidated_at LIMIT 500",
        )
        .bind(provider)
        .bind(before)
        .bind(now())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DueRevalidation {
                id_digest: r.get(0),
                email: r.get(1),
                subject: r.get(2),
                refresh_token: r.get(3),
            })
            .collect())
    }

    /// Records a refreshed grant: its (possibly rotated) sealed refresh token and, when the
    /// provider sent a new ID token, the person as it now says (email, groups, `hd`), for the
    /// session and every session handed off from it. Returns whether the person changed (the
    /// revision is bumped then).
    pub async fn revalidated(
        &self,
        id_digest: &str,
        sealed: &str,
        who: Option<&crate::policy::Identity>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE sessions SET refresh_token = $1, revalidated_at = $2 WHERE id_digest = $3",
        )
        .bind(sealed)
        .bind(now())
        .bind(id_digest)
        .execute(&mut *tx)
        .await?;
        let Some(who) = who else {
            tx.commit().await?;
            return Ok(false);
        };
        let groups = serde_json::to_string(&who.groups).expect("a list of strings serialises");
        let hd = who.hd.as_deref().unwrap_or("");
        // The claims as the refreshed ID token has them (a department that changed at the
        // provider changes what conditions on it decide).
        let auth = super::sign_in::SignInContext::of(who).to_json();
        let changed = sqlx::query(
            "WITH RECURSIVE family(id) AS ( \
               SELECT CAST($1 AS TEXT) \
               UNION SELECT s.id_digest FROM sessions s JOIN family f ON s.parent = f.id \
             ) UPDATE sessions SET email = $2, groups = $3, hd = $4, domain = $5, auth = $10 \
             WHERE id_digest IN (SELECT id FROM family) \
             AND (email <> $6 OR groups <> $7 OR hd <> $8 OR COALESCE(domain, '') <> $9 OR auth <> $11)",
        )
        .bind(id_digest)
        .bind(&who.email)
        .bind(&groups)
        .bind(hd)
        .bind(who.domain.as_deref())
        .bind(&who.email)
        .bind(&groups)
        .bind(hd)
        .bind(who.domain.as_deref().unwrap_or(""))
        .bind(&auth)
        .bind(&auth)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if changed {
            Store::record_change(
                &mut tx,
                &Actor {
                    name: format!("provider:{}", who.provider),
                    ip: String::new(),
                },
                "session.revalidated",
                &who.email,
                None,
                Some(&serde_json::json!({"groups": who.groups, "hd": who.hd})),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Ends a sign-in whose grant the provider refused, with the sessions handed off from it
    /// and the command-line logins approved from it (they share its provider session id).
    /// Returns how many sign-ins ended.
    pub async fn end_revoked_grant(&self, id_digest: &str, reason: &str) -> Result<u64> {
        let mut tx = self.write().await?;
        let row =
            sqlx::query("SELECT provider, email, provider_sid FROM sessions WHERE id_digest = $1")
                .bind(id_digest)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Ok(0);
        };
        let (provider, email, sid): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let mut ids = vec![id_digest.to_string()];
        if !sid.is_empty() {
            let same: Vec<String> = sqlx::query_scalar(
                "SELECT id_digest FROM sessions WHERE provider = $1 AND provider_sid = $2 AND parent = '' AND id_digest <> $3",
            )
            .bind(&provider)
            .bind(&sid)
            .bind(id_digest)
            .fetch_all(&mut *tx)
            .await?;
            ids.extend(same);
        }
        let ended = Store::delete_with_descendants(&mut tx, &ids).await?;
        Store::record_change(
            &mut tx,
            &Actor {
                name: format!("provider:{provider}"),
                ip: String::new(),
            },
            "session.end",
            &format!("sessions of {email}"),
            None,
            Some(&serde_json::json!({
                "by": "revalidation",
                "reason": reason,
                "sign_ins": ids.len(),
                "ended": ended,
            })),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }
    /// Keeps the provider's ID token with an OpenID Connect session (for sign-out) and the
    /// provider's session id (`sid`, '' when it sends none), which back-channel logout names.
    pub async fn set_provider_session(
        &self,
        id_digest: &str,
        id_token: &str,
        sid: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE sessions SET id_token = $1, provider_sid = $2 WHERE id_digest = $3")
            .bind(id_token)
            .bind(sid)
            .bind(id_digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks the session `to` (a command line's) as made from the provider session of `from`
    /// (the browser session that approved it), so a back-channel logout of that provider session
    /// ends both.
    pub async fn inherit_provider_session(&self, to: &str, from: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET provider_sid = (SELECT provider_sid FROM sessions WHERE id_digest = $1) \
             WHERE id_digest = $2",
        )
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends the sessions a provider's back-channel logout names: those signed in through the
    /// provider session `sid`, or (without `sid`) every session of the provider's user `subject`;
    /// with both, those that match both. Each ends with every session handed off from it.
    /// Returns how many sign-ins ended; naming neither ends nothing.
    pub async fn end_provider_sessions(
        &self,
        logout: &ProviderLogout<'_>,
        actor: &Actor,
    ) -> Result<u64> {
        if logout.subject.is_none() && logout.sid.is_none() {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id_digest FROM sessions WHERE provider = $1 AND parent = '' AND expires_at > $2 \
             AND ($3 IS NULL OR subject = $4) AND ($5 IS NULL OR provider_sid = $6)",
        )
        .bind(logout.provider)
        .bind(now())
        .bind(logout.subject)
        .bind(logout.subject)
        .bind(logout.sid)
        .bind(logout.sid)
        .fetch_all(&mut *tx)
        .await?;
        let n = ids.len() as u64;
        if n > 0 {
            let ended = Store::delete_with_descendants(&mut tx, &ids).await?;
            Store::record_change(
                &mut tx,
                actor,
                "session.end",
                &format!("sessions of {}", logout.provider),
                None,
                Some(&serde_json::json!({
                    "by": "back-channel logout",
                    "subject": logout.subject,
                    "sid": logout.sid,
                    "sign_ins": n,
                    "ended": ended,
                })),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Records that the token whose id digests to `digest` was used; false if it already was.
    /// Kept until `expires_at`, when the token could no longer be accepted anyway.
    pub async fn use_token_once(&self, digest: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO used_tokens (digest, expires_at) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The provider and ID token of a session (for RP-initiated logout).
    pub async fn session_provider_token(
        &self,
        id_digest: &str,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT provider, id_token FROM sessions WHERE id_digest = $1")
            .bind(id_digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::store_test;
    use super::*;
    use crate::policy::Identity;

    fn person(email: &str) -> Identity {
        Identity {
            email: email.into(),
            subject: format!("sub-{email}"),
            provider: "corp".into(),
            groups: vec![],
            hd: None,
            domain: None,
            amr: Vec::new(),
            acr: None,
            claims: Default::default(),
        }
    }

    store_test! {
        async fn a_back_channel_logout_ends_what_it_names_and_nothing_else(s: Store) {
            let life = Duration::from_secs(600);
            let id = |n: &str| crate::crypto::digest(n);
            // alice on two computers (provider sessions s1, s2), a command line made from s1,
            // and bob.
            for (n, who, sid) in [("a1", "alice@x", "s1"), ("a2", "alice@x", "s2"), ("b", "bob@x", "s3")] {
                s.create_session(&id(n), &person(who), life, "ip", "ua", None).await.unwrap();
                s.set_provider_session(&id(n), "token", sid).await.unwrap();
            }
            s.create_session(&id("cli"), &person("alice@x"), life, "ip", "ua", None).await.unwrap();
            s.inherit_provider_session(&id("cli"), &id("a1")).await.unwrap();
            let alive = |s: &Store| {
                let s = s.clone();
                async move {
                    let all = ["a1", "a2", "b", "cli"].map(crate::crypto::digest).to_vec();
                    let live = s.live_sessions(&all, life).await.unwrap();
                    ["a1", "a2", "b", "cli"]
                        .into_iter()
                        .filter(|n| live.contains(&crate::crypto::digest(n)))
                        .collect::<Vec<_>>()
                }
            };
            let logout = |subject, sid| ProviderLogout { provider: "corp", subject, sid };
            let actor = Actor::cli();
            // Nothing named, another provider, or a sid that is someone else's with this sub: nothing.
            assert_eq!(s.end_provider_sessions(&logout(None, None), &actor).await.unwrap(), 0);
            let other = ProviderLogout { provider: "other", subject: Some("sub-alice@x"), sid: None };
            assert_eq!(s.end_provider_sessions(&other, &actor).await.unwrap(), 0);
            assert_eq!(
                s.end_provider_sessions(&logout(Some("sub-alice@x"), Some("s3")), &actor).await.unwrap(),
                0
            );
            // A sid ends that provider session's sign-ins: the browser's and the command line's.
            let r0 = s.revision().await.unwrap();
            assert_eq!(s.end_provider_sessions(&logout(None, Some("s1")), &actor).await.unwrap(), 2);
            assert!(s.revision().await.unwrap() > r0, "replicas hear of it");
            assert_eq!(alive(&s).await, ["a2", "b"]);
            // A sub alone ends all of that person's sign-ins with the provider.
            assert_eq!(s.end_provider_sessions(&logout(Some("sub-alice@x"), None), &actor).await.unwrap(), 1);
            assert_eq!(alive(&s).await, ["b"]);
        }
    }

    store_test! {
        async fn grants_come_due_change_the_person_and_end_with_their_logins(s: Store) {
            let life = Duration::from_secs(600);
            let id = |n: &str| crate::crypto::digest(n);
            s.create_session(&id("web"), &person("alice@x"), life, "ip", "ua", None).await.unwrap();
            s.set_provider_session(&id("web"), "token", "sid-1").await.unwrap();
            s.set_refresh_token(&id("web"), "sealed-1").await.unwrap();
            s.create_session(&id("cli"), &person("alice@x"), life, "ip", "ua", None).await.unwrap();
            s.inherit_provider_session(&id("cli"), &id("web")).await.unwrap();
            assert!(s.due_revalidations("corp", now() - 60).await.unwrap().is_empty(), "just made");
            let due = s.due_revalidations("corp", now() + 1).await.unwrap();
            assert_eq!(due.len(), 1, "only sessions with a refresh token");
            assert_eq!(due[0].refresh_token, "sealed-1");
            // The same person: nothing changes; new groups: the revision moves.
            assert!(!s.revalidated(&id("web"), "sealed-2", Some(&person("alice@x"))).await.unwrap());
            let mut grouped = person("alice@x");
            grouped.groups = vec!["eng".into()];
            let r0 = s.revision().await.unwrap();
            assert!(s.revalidated(&id("web"), "sealed-3", Some(&grouped)).await.unwrap());
            assert!(s.revision().await.unwrap() > r0);
            let stored = s.session(&id("web"), life).await.unwrap().unwrap();
            assert_eq!(stored.identity.groups, vec!["eng".to_string()]);
            // Refused: the sign-in and the command line's login approved from it end.
            assert_eq!(s.end_revoked_grant(&id("web"), "invalid_grant").await.unwrap(), 2);
            assert!(s.live_sessions(&[id("web"), id("cli")], life).await.unwrap().is_empty());
        }
    }

    store_test! {
        async fn a_token_id_is_used_once_and_forgotten_when_it_could_not_work_anyway(s: Store) {
            let later = now() + 60;
            assert!(s.use_token_once("jti-1", later).await.unwrap());
            assert!(!s.use_token_once("jti-1", later).await.unwrap(), "a replay");
            assert!(s.use_token_once("jti-2", now() - 1).await.unwrap());
            s.sweep(Duration::from_secs(600)).await.unwrap();
            assert!(!s.use_token_once("jti-1", later).await.unwrap(), "kept until it expires");
            assert!(s.use_token_once("jti-2", later).await.unwrap(), "swept once expired");
        }
    }
}
