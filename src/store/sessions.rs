//! Sessions and sign-in flows in progress.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::Row;

use super::{Actor, Result, Store, now};
use crate::policy::Identity;

/// A live session as stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    /// When the person signed in (the provider's `auth_time` when it says).
    pub created_at: i64,
    pub last_seen: i64,
    pub expires_at: i64,
    /// When the person last proved who they are again in this session (0: never), for changes
    /// to their account, and the digest of the browser cookie of the browser they did it in.
    pub proved_at: i64,
    pub proved_by: String,
}

/// A hand-off code as the host that redeems it presents it.
#[derive(Debug, Clone, Copy)]
pub struct Redemption<'a> {
    pub code_digest: &'a str,
    /// The host redeeming it: the one it was made for.
    pub host: &'a str,
    /// The digest of the hand-off cookie of the browser redeeming it.
    pub browser_digest: &'a str,
    /// How long a code may wait.
    pub max_age: Duration,
}

/// How deep a family of hand-offs can go before castellan stops following parents.
const MAX_FAMILY_DEPTH: usize = 16;

/// A session as listed to administrators: the id is a prefix of the stored digest, never the
/// cookie value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub email: String,
    pub provider: String,
    pub created_at: i64,
    pub last_seen: i64,
    pub expires_at: i64,
    pub client_ip: String,
    pub user_agent: String,
}

/// How many characters of the digest make a session's public id.
const PUBLIC_ID_LEN: usize = 16;

/// An OpenID Connect sign-in in progress, between the redirect to the provider and the callback.
#[derive(Debug, Clone)]
pub struct Flow {
    pub browser_digest: String,
    pub provider: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub created_at: i64,
    /// The OIDC `max_age` this sign-in asked for (0: none); the ID token's `auth_time` must meet it.
    pub max_age: i64,
    /// The app whose step-up this sign-in is for ('' for none): the ID token must meet it.
    pub step_up_app: String,
    /// Whether the provider was already asked for a fresh authentication for that step-up.
    pub step_up_forced: bool,
}

impl Store {
    pub async fn create_session(
        &self,
        id_digest: &str,
        who: &Identity,
        lifetime: Duration,
        client_ip: &str,
        user_agent: &str,
        auth_time: Option<i64>,
    ) -> Result<()> {
        let now = now();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sessions (id_digest, email, subject, provider, created_at, last_seen, expires_at, client_ip, user_agent, groups, hd, domain, auth) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(id_digest)
        .bind(&who.email)
        .bind(&who.subject)
        .bind(&who.provider)
        .bind(auth_time.unwrap_or(now))
        .bind(now)
        .bind(now + lifetime.as_secs() as i64)
        .bind(client_ip)
        .bind(user_agent)
        .bind(serde_json::to_string(&who.groups).expect("a list of strings serialises"))
        .bind(who.hd.as_deref().unwrap_or(""))
        .bind(who.domain.as_deref())
        .bind(super::sign_in::SignInContext::of(who).to_json())
        .execute(&mut *tx)
        .await?;
        let actor = Actor {
            name: who.email.clone(),
            ip: client_ip.to_string(),
        };
        Store::record_change(
            &mut tx,
            &actor,
            "session.create",
            &format!("session {}", &id_digest[..PUBLIC_ID_LEN]),
            None,
            Some(&serde_json::json!({ "provider": who.provider, "groups": who.groups })),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session, if it exists, has not expired and has been used within `idle`.
    pub async fn session(&self, id_digest: &str, idle: Duration) -> Result<Option<Session>> {
        let now = now();
        let row = sqlx::query(
            "SELECT email, subject, provider, created_at, last_seen, expires_at, groups, hd, domain, proved_at, proved_by, auth FROM sessions \
             WHERE id_digest = $1 AND expires_at > $2 AND last_seen > $3",
        )
        .bind(id_digest)
        .bind(now)
        .bind(now - idle.as_secs() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            let auth = super::sign_in::SignInContext::parse(r.get::<&str, _>(11));
            Session {
                identity: Identity {
                    email: r.get(0),
                    subject: r.get(1),
                    provider: r.get(2),
                    groups: serde_json::from_str(r.get::<&str, _>(6)).unwrap_or_default(),
                    hd: Some(r.get::<String, _>(7)).filter(|h| !h.is_empty()),
                    domain: r.get(8),
                    amr: auth.amr,
                    acr: auth.acr,
                    claims: auth.claims,
                },
                created_at: r.get(3),
                last_seen: r.get(4),
                expires_at: r.get(5),
                proved_at: r.get(9),
                proved_by: r.get(10),
            }
        }))
    }

    /// Records that the person of session `id_digest` just proved who they are again, in the
    /// browser whose browser-cookie digest is `browser_digest`.
    pub async fn prove_session(
        &self,
        id_digest: &str,
        browser_digest: &str,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE sessions SET proved_at = $1, proved_by = $2 WHERE id_digest = $3")
            .bind(now())
            .bind(browser_digest)
            .bind(id_digest)
            .execute(&mut *tx)
            .await?;
        Store::record_change(
            &mut tx,
            actor,
            "session.confirm",
            &format!(
                "session {}",
                &id_digest[..PUBLIC_ID_LEN.min(id_digest.len())]
            ),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session a hand-off made this one from, and so on up: the family's root.
    async fn family_root(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id_digest: &str,
    ) -> Result<String> {
        let mut root = id_digest.to_string();
        for _ in 0..MAX_FAMILY_DEPTH {
            let parent: Option<String> =
                sqlx::query_scalar("SELECT parent FROM sessions WHERE id_digest = $1")
                    .bind(&root)
                    .fetch_optional(&mut **tx)
                    .await?;
            match parent {
                Some(p) if !p.is_empty() => root = p,
                _ => break,
            }
        }
        Ok(root)
    }

    /// Deletes the sessions `ids` and every session handed off from them, at any depth.
    pub(super) async fn delete_with_descendants(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        ids: &[String],
    ) -> Result<u64> {
        let mut n = 0;
        for id in ids {
            n += sqlx::query(
                "WITH RECURSIVE family(id) AS ( \
                   SELECT CAST($1 AS TEXT) \
                   UNION SELECT s.id_digest FROM sessions s JOIN family f ON s.parent = f.id \
                 ) DELETE FROM sessions WHERE id_digest IN (SELECT id FROM family)",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        }
        Ok(n)
    }

    /// Records that the session was used now, and so was the session it was handed off from
    /// (a sign-in is in use while any of its hosts is).
    pub async fn touch_session(&self, id_digest: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET last_seen = $1 WHERE id_digest = $2 \
             OR id_digest = (SELECT parent FROM sessions WHERE id_digest = $3)",
        )
        .bind(now())
        .bind(id_digest)
        .bind(id_digest)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Of `digests`, those that are still live sessions (for closing connections of ended ones).
    pub async fn live_sessions(
        &self,
        digests: &[String],
        idle: Duration,
    ) -> Result<HashSet<String>> {
        let mut live = HashSet::new();
        for d in digests {
            if self.session(d, idle).await?.is_some() {
                live.insert(d.clone());
            }
        }
        Ok(live)
    }

    /// Ends a session together with its whole family (sign-out): the sessions it was handed off
    /// from, up to the root, and every session handed off from those, at any depth. Signing out
    /// on any host signs out on all.
    pub async fn delete_session(&self, id_digest: &str, actor: &Actor) -> Result<bool> {
        let mut tx = self.write().await?;
        let root = Store::family_root(&mut tx, id_digest).await?;
        let n = Store::delete_with_descendants(&mut tx, &[root, id_digest.to_string()]).await?;
        if n > 0 {
            Store::record_change(
                &mut tx,
                actor,
                "session.end",
                &format!(
                    "session {}",
                    &id_digest[..PUBLIC_ID_LEN.min(id_digest.len())]
                ),
                None,
                Some(&serde_json::json!({ "ended": n })),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The sessions people signed in with (of `email`, or everyone's): a browser's, or a command
    /// line's. The sessions handed from one of them to app hosts are part of it (they end with
    /// it) and are not listed on their own.
    pub async fn list_sessions(&self, email: Option<&str>) -> Result<Vec<SessionInfo>> {
        let rows = sqlx::query(
            "SELECT id_digest, email, provider, created_at, last_seen, expires_at, client_ip, user_agent FROM sessions \
             WHERE expires_at > $1 AND ($2 IS NULL OR email = $3) AND parent = '' ORDER BY last_seen DESC",
        )
        .bind(now())
        .bind(email)
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| SessionInfo {
                id: r.get::<String, _>(0)[..PUBLIC_ID_LEN].to_string(),
                email: r.get(1),
                provider: r.get(2),
                created_at: r.get(3),
                last_seen: r.get(4),
                expires_at: r.get(5),
                client_ip: r.get(6),
                user_agent: r.get(7),
            })
            .collect())
    }

    /// Revokes the sessions whose public id is `id` (a prefix of at least 8 characters; with
    /// `email`, only if it is that person's) or, without `id`, all of `email`'s sessions, each
    /// with every session handed off from it; returns how many of those named ended.
    pub async fn revoke_sessions(
        &self,
        id: Option<&str>,
        email: Option<&str>,
        actor: &Actor,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let r = match (id, email) {
            (Some(id), _)
                if id.len() >= 8
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                // With an email too, only that person's session (a person revoking their own).
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id_digest FROM sessions WHERE substr(id_digest, 1, CAST($1 AS INTEGER)) = $2 AND expires_at > $3 AND ($4 IS NULL OR email = $5)",
                )
                .bind(id.len() as i64)
                .bind(id)
                .bind(now())
                .bind(email)
                .bind(email)
                .fetch_all(&mut *tx)
                .await?;
                Store::delete_with_descendants(&mut tx, &ids).await?;
                ids.len() as u64
            }
            (None, Some(email)) => {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id_digest FROM sessions WHERE email = $1 AND expires_at > $2 AND parent = ''",
                )
                .bind(email)
                .bind(now())
                .fetch_all(&mut *tx)
                .await?;
                Store::delete_with_descendants(&mut tx, &ids).await?;
                ids.len() as u64
            }
            _ => return Ok(0),
        };
        let n = r;
        if n > 0 {
            let target = match (id, email) {
                (Some(id), _) => format!("session {id}"),
                (_, Some(e)) => format!("sessions of {e}"),
                _ => String::new(),
            };
            Store::record_change(
                &mut tx,
                actor,
                "session.revoke",
                &target,
                None,
                Some(&serde_json::json!({ "ended": n })),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes expired sessions and abandoned sign-in flows; returns how many rows went.
    pub async fn sweep(&self, flow_lifetime: Duration) -> Result<u64> {
        let now = now();
        let a = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let b = sqlx::query("DELETE FROM login_flows WHERE created_at <= $1")
            .bind(now - flow_lifetime.as_secs() as i64)
            .execute(&self.pool)
            .await?;
        let c = sqlx::query("DELETE FROM handoff_codes WHERE created_at <= $1")
            .bind(now - flow_lifetime.as_secs() as i64)
            .execute(&self.pool)
            .await?;
        let d = sqlx::query("DELETE FROM used_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected() + c.rows_affected() + d.rows_affected())
    }

    /// Records a one-time code for the command line, tied to the browser session that approved it.
    pub async fn put_cli_code(
        &self,
        code_digest: &str,
        session_digest: &str,
        challenge: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO cli_codes (code_digest, session_digest, challenge, created_at) VALUES ($1, $2, $3, $4)")
            .bind(code_digest)
            .bind(session_digest)
            .bind(challenge)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A one-time code that hands the public host's session `session_digest` to `host`, for the
    /// browser whose hand-off cookie on that host has the digest `browser_digest`.
    pub async fn put_handoff_code(
        &self,
        code_digest: &str,
        session_digest: &str,
        host: &str,
        browser_digest: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO handoff_codes (code_digest, session_digest, host, created_at, browser_digest) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(code_digest)
        .bind(session_digest)
        .bind(host)
        .bind(now())
        .bind(browser_digest)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Redeems a handoff code (once, within its `max_age`, on its host, in the browser it was
    /// made for): makes a session `new_digest` for that host with the parent's identity and
    /// expiry, linked to the parent. Returns it, or None when the code does not hold.
    pub async fn redeem_handoff_code(
        &self,
        r: &Redemption<'_>,
        new_digest: &str,
        client_ip: &str,
        user_agent: &str,
    ) -> Result<Option<Session>> {
        let Redemption {
            code_digest,
            host,
            browser_digest,
            max_age,
        } = *r;
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "DELETE FROM handoff_codes WHERE code_digest = $1 RETURNING session_digest, host, created_at, browser_digest",
        )
        .bind(code_digest)
        .fetch_optional(&mut *tx)
        .await?;
        let now = now();
        let Some((parent, bound_host, created_at, bound_browser)) = row.map(|r| {
            (
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<i64, _>(2),
                r.get::<String, _>(3),
            )
        }) else {
            return Ok(None);
        };
        if bound_host != host
            || now - created_at > max_age.as_secs() as i64
            || bound_browser.is_empty()
            || !crate::crypto::equal(&bound_browser, browser_digest)
        {
            tx.commit().await?;
            return Ok(None);
        }
        let made = sqlx::query(
            "INSERT INTO sessions (id_digest, email, subject, provider, created_at, last_seen, expires_at, client_ip, user_agent, groups, parent, id_token, hd, domain, auth) \
             SELECT $1, email, subject, provider, created_at, $2, expires_at, $3, $4, groups, id_digest, id_token, hd, domain, auth FROM sessions \
             WHERE id_digest = $5 AND expires_at > $6",
        )
        .bind(new_digest)
        .bind(now)
        .bind(client_ip)
        .bind(user_agent)
        .bind(&parent)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if made.rows_affected() == 0 {
            return Ok(None);
        }
        self.session(new_digest, Duration::from_secs(u32::MAX as u64))
            .await
    }

    pub async fn take_cli_code(&self, code_digest: &str) -> Result<Option<(String, String, i64)>> {
        let row = sqlx::query("DELETE FROM cli_codes WHERE code_digest = $1 RETURNING session_digest, challenge, created_at")
            .bind(code_digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    pub async fn put_flow(&self, state_digest: &str, flow: &Flow) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_flows (state_digest, browser_digest, provider, nonce, pkce_verifier, return_to, created_at, max_age, step_up_app, step_up_forced) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(state_digest)
        .bind(&flow.browser_digest)
        .bind(&flow.provider)
        .bind(&flow.nonce)
        .bind(&flow.pkce_verifier)
        .bind(&flow.return_to)
        .bind(flow.created_at)
        .bind(flow.max_age)
        .bind(&flow.step_up_app)
        .bind(i64::from(flow.step_up_forced))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes and returns the flow: a state can be used once, whatever happens next.
    pub async fn take_flow(&self, state_digest: &str) -> Result<Option<Flow>> {
        let row = sqlx::query(
            "DELETE FROM login_flows WHERE state_digest = $1 \
             RETURNING browser_digest, provider, nonce, pkce_verifier, return_to, created_at, max_age, step_up_app, step_up_forced",
        )
        .bind(state_digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Flow {
            browser_digest: r.get(0),
            provider: r.get(1),
            nonce: r.get(2),
            pkce_verifier: r.get(3),
            return_to: r.get(4),
            created_at: r.get(5),
            max_age: r.get(6),
            step_up_app: r.get(7),
            step_up_forced: r.get::<i64, _>(8) != 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use super::*;

    fn who() -> Identity {
        Identity {
            email: "a@example.com".into(),
            subject: "a".into(),
            provider: "local".into(),
            groups: vec!["eng".into()],
            hd: None,
            domain: None,
            amr: Vec::new(),
            acr: None,
            claims: Default::default(),
        }
    }

    store_test! {
        async fn flows_are_single_use(s: Store) {
            let flow = Flow {
                max_age: 0,
                step_up_app: String::new(),
                step_up_forced: false,
                browser_digest: "b".into(),
                provider: "corp".into(),
                nonce: "n".into(),
                pkce_verifier: "v".into(),
                return_to: "/".into(),
                created_at: now(),
            };
            s.put_flow("st", &flow).await.unwrap();
            assert!(s.take_flow("st").await.unwrap().is_some());
            assert!(s.take_flow("st").await.unwrap().is_none());
        }
    }

    store_test! {
        async fn sessions_expire_list_and_revoke(s: Store) {
            let idle = Duration::from_secs(60);
            let d1 = crate::crypto::digest("one");
            let d2 = crate::crypto::digest("two");
            s.create_session(&d1, &who(), idle, "127.0.0.1", "t", None)
                .await
                .unwrap();
            s.create_session(&d2, &who(), idle, "127.0.0.1", "t", None)
                .await
                .unwrap();
            assert_eq!(
                s.session(&d1, idle).await.unwrap().unwrap().identity,
                who(),
                "groups survive"
            );
            let d3 = crate::crypto::digest("three");
            s.create_session(&d3, &who(), Duration::from_secs(0), "127.0.0.1", "t", None)
                .await
                .unwrap();
            assert!(s.session(&d3, idle).await.unwrap().is_none(), "expired");
            let listed = s.list_sessions(Some("a@example.com")).await.unwrap();
            assert_eq!(listed.len(), 2);
            let r0 = s.revision().await.unwrap();
            assert_eq!(
                s.revoke_sessions(Some(&listed[0].id), None, &Actor::cli())
                    .await
                    .unwrap(),
                1
            );
            assert!(s.revision().await.unwrap() > r0);
            assert_eq!(
                s.revoke_sessions(Some("short"), None, &Actor::cli())
                    .await
                    .unwrap(),
                0,
                "ids need 8 characters"
            );
            assert_eq!(
                s.revoke_sessions(None, Some("a@example.com"), &Actor::cli())
                    .await
                    .unwrap(),
                1
            );
            assert!(s.live_sessions(&[d1, d2], idle).await.unwrap().is_empty());
        }
    }

    /// Hands `parent` to another host as a browser would: a code bound to that browser, redeemed.
    async fn hand_off(s: &Store, parent: &str, child: &str) {
        let code = crate::crypto::digest(&format!("code for {child}"));
        s.put_handoff_code(&code, parent, "app.example.com", "browser")
            .await
            .unwrap();
        let r = Redemption {
            code_digest: &code,
            host: "app.example.com",
            browser_digest: "browser",
            max_age: Duration::from_secs(60),
        };
        assert!(
            s.redeem_handoff_code(&r, child, "127.0.0.1", "t")
                .await
                .unwrap()
                .is_some()
        );
    }

    store_test! {
        async fn a_session_family_ends_whole_at_any_depth(s: Store) {
            let idle = Duration::from_secs(60);
            let family = |tag: &str| {
                ["root", "child", "grandchild"].map(|g| crate::crypto::digest(&format!("{tag} {g}")))
            };
            let live = |s: &Store, ids: &[String; 3]| {
                let s = s.clone();
                let ids = ids.to_vec();
                async move { s.live_sessions(&ids, idle).await.unwrap().len() }
            };
            // Signing out on the grandchild's host ends the root and the child too.
            let [root, child, grandchild] = family("a");
            s.create_session(&root, &who(), idle, "127.0.0.1", "t", None).await.unwrap();
            hand_off(&s, &root, &child).await;
            hand_off(&s, &child, &grandchild).await;
            assert_eq!(live(&s, &[root.clone(), child.clone(), grandchild.clone()]).await, 3);
            assert_eq!(s.list_sessions(None).await.unwrap().len(), 1, "only roots are listed");
            assert!(s.delete_session(&grandchild, &Actor::cli()).await.unwrap());
            assert_eq!(live(&s, &[root, child, grandchild]).await, 0);

            // Signing out on castellan's host ends the grandchild.
            let [root, child, grandchild] = family("b");
            s.create_session(&root, &who(), idle, "127.0.0.1", "t", None).await.unwrap();
            hand_off(&s, &root, &child).await;
            hand_off(&s, &child, &grandchild).await;
            assert!(s.delete_session(&root, &Actor::cli()).await.unwrap());
            assert_eq!(live(&s, &[root, child, grandchild]).await, 0);

            // Revoking the root by the id `sessions list` shows ends its descendants.
            let [root, child, grandchild] = family("c");
            s.create_session(&root, &who(), idle, "127.0.0.1", "t", None).await.unwrap();
            hand_off(&s, &root, &child).await;
            hand_off(&s, &child, &grandchild).await;
            let id = s.list_sessions(None).await.unwrap()[0].id.clone();
            assert_eq!(s.revoke_sessions(Some(&id), None, &Actor::cli()).await.unwrap(), 1);
            assert_eq!(live(&s, &[root, child, grandchild]).await, 0);
        }
    }
}
