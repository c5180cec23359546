//! Passkeys of local accounts and the challenges of WebAuthn ceremonies in progress.

use sqlx::Row;

use super::{Actor, Result, Store, now};

/// A registered passkey.
#[derive(Debug, Clone)]
pub struct Passkey {
    /// The credential id, base64url.
    pub id: String,
    pub email: String,
    pub user_handle: String,
    /// The COSE public key.
    pub public_key: Vec<u8>,
    pub sign_count: u32,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: i64,
}

/// Which ceremony a challenge was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceremony {
    Register,
    SignIn,
    /// A fresh proof by a signed-in person before a change to their account.
    Confirm,
}

impl Ceremony {
    fn as_str(self) -> &'static str {
        match self {
            Ceremony::Register => "register",
            Ceremony::SignIn => "sign_in",
            Ceremony::Confirm => "confirm",
        }
    }
}

const COLUMNS: &str =
    "id, email, user_handle, public_key, sign_count, name, created_at, last_used_at";

fn from_row(r: &sqlx::any::AnyRow) -> Passkey {
    Passkey {
        id: r.get(0),
        email: r.get(1),
        user_handle: r.get(2),
        public_key: r.get(3),
        sign_count: u32::try_from(r.get::<i64, _>(4)).unwrap_or(u32::MAX),
        name: r.get(5),
        created_at: r.get(6),
        last_used_at: r.get(7),
    }
}

impl Store {
    /// Registers a passkey, recorded in the audit trail.
    pub async fn add_passkey(&self, p: &Passkey, actor: &Actor) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO passkeys (id, email, user_handle, public_key, sign_count, name, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&p.id)
        .bind(&p.email)
        .bind(&p.user_handle)
        .bind(&p.public_key)
        .bind(i64::from(p.sign_count))
        .bind(&p.name)
        .bind(p.created_at)
        .execute(&mut *tx)
        .await?;
        Store::record_change(
            &mut tx,
            actor,
            "passkey.add",
            &format!("account {}", p.email),
            None,
            Some(&serde_json::json!({ "passkey": p.name, "id": p.id })),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn passkey(&self, id: &str) -> Result<Option<Passkey>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM passkeys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(from_row))
    }

    pub async fn passkeys_of(&self, email: &str) -> Result<Vec<Passkey>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM passkeys WHERE email = $1 ORDER BY created_at, id"
        )))
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Records a sign-in with the passkey; false when its counter moved meanwhile (a concurrent
    /// use of the same response, or a clone), which refuses the sign-in.
    pub async fn use_passkey(&self, id: &str, old_count: u32, new_count: u32) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE passkeys SET sign_count = $1, last_used_at = $2 WHERE id = $3 AND sign_count = $4",
        )
        .bind(i64::from(new_count))
        .bind(now())
        .bind(id)
        .bind(i64::from(old_count))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Removes one of `email`'s passkeys (every one, with `id` None); returns how many went.
    /// Recorded in the audit trail.
    pub async fn remove_passkeys(
        &self,
        email: &str,
        id: Option<&str>,
        actor: &Actor,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let r = sqlx::query("DELETE FROM passkeys WHERE email = $1 AND ($2 IS NULL OR id = $3)")
            .bind(email)
            .bind(id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = r.rows_affected();
        if n > 0 {
            Store::record_change(
                &mut tx,
                actor,
                "passkey.remove",
                &format!("account {email}"),
                None,
                Some(&serde_json::json!({ "id": id, "removed": n })),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Issues `challenge` to the browser for a ceremony, replacing any earlier one.
    pub async fn put_passkey_challenge(
        &self,
        browser_digest: &str,
        ceremony: Ceremony,
        email: &str,
        challenge: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO passkey_challenges (browser_digest, purpose, email, challenge, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (browser_digest) DO UPDATE SET purpose = excluded.purpose, email = excluded.email, \
             challenge = excluded.challenge, created_at = excluded.created_at",
        )
        .bind(browser_digest)
        .bind(ceremony.as_str())
        .bind(email)
        .bind(challenge)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (deletes and returns) the browser's challenge for `ceremony` if younger than `max_age`
    /// seconds: `(email, challenge)`. A challenge is answered once.
    pub async fn take_passkey_challenge(
        &self,
        browser_digest: &str,
        ceremony: Ceremony,
        max_age: i64,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "DELETE FROM passkey_challenges WHERE browser_digest = $1 RETURNING purpose, email, challenge, created_at",
        )
        .bind(browser_digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| {
            let (purpose, created): (String, i64) = (r.get(0), r.get(3));
            (purpose == ceremony.as_str() && created > now() - max_age)
                .then(|| (r.get(1), r.get(2)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::store_test;

    store_test! {
        async fn passkeys_count_forward_and_challenges_work_once(s: Store) {
            let p = Passkey {
                id: "cred".into(),
                email: "a@example.com".into(),
                user_handle: "h".into(),
                public_key: vec![0xa5, 0, 255],
                sign_count: 3,
                name: "laptop".into(),
                created_at: 1,
                last_used_at: 0,
            };
            let who = Actor::cli();
            s.add_passkey(&p, &who).await.unwrap();
            assert!(s.add_passkey(&p, &who).await.is_err(), "a credential id is registered once");
            let got = s.passkey("cred").await.unwrap().unwrap();
            assert_eq!((got.public_key, got.sign_count), (vec![0xa5, 0, 255], 3));
            assert!(s.use_passkey("cred", 3, 4).await.unwrap());
            assert!(!s.use_passkey("cred", 3, 5).await.unwrap(), "the count moved meanwhile");
            assert_eq!(s.passkeys_of("a@example.com").await.unwrap().len(), 1);
            assert_eq!(s.remove_passkeys("b@example.com", Some("cred"), &who).await.unwrap(), 0, "not theirs");
            assert_eq!(s.remove_passkeys("a@example.com", Some("cred"), &who).await.unwrap(), 1);
            assert!(s.passkey("cred").await.unwrap().is_none());

            s.put_passkey_challenge("b1", Ceremony::SignIn, "", "ch").await.unwrap();
            assert_eq!(s.take_passkey_challenge("b1", Ceremony::Register, 60).await.unwrap(), None,
                "a sign-in challenge does not register (and is used up)");
            s.put_passkey_challenge("b1", Ceremony::SignIn, "", "ch").await.unwrap();
            assert_eq!(s.take_passkey_challenge("b1", Ceremony::SignIn, 60).await.unwrap(),
                Some((String::new(), "ch".into())));
            assert_eq!(s.take_passkey_challenge("b1", Ceremony::SignIn, 60).await.unwrap(), None);
        }
    }
}
