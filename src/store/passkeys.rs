//! Passkeys of local accounts and the challenges of WebAuthn ceremonies in progress.

use sqlx::Row;

use super::{Result, Store, now};

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
}

impl Ceremony {
    fn as_str(self) -> &'static str {
        match self {
            Ceremony::Register => "register",
            Ceremony::SignIn => "sign_in",
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
    pub async fn add_passkey(&self, p: &Passkey) -> Result<()> {
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
        .execute(&self.pool)
        .await?;
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

    /// Removes one of `email`'s passkeys; false when it has no such passkey.
    pub async fn remove_passkey(&self, email: &str, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM passkeys WHERE email = $1 AND id = $2")
            .bind(email)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
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
            s.add_passkey(&p).await.unwrap();
            assert!(s.add_passkey(&p).await.is_err(), "a credential id is registered once");
            let got = s.passkey("cred").await.unwrap().unwrap();
            assert_eq!((got.public_key, got.sign_count), (vec![0xa5, 0, 255], 3));
            assert!(s.use_passkey("cred", 3, 4).await.unwrap());
            assert!(!s.use_passkey("cred", 3, 5).await.unwrap(), "the count moved meanwhile");
            assert_eq!(s.passkeys_of("a@example.com").await.unwrap().len(), 1);
            assert!(!s.remove_passkey("b@example.com", "cred").await.unwrap(), "not theirs");
            assert!(s.remove_passkey("a@example.com", "cred").await.unwrap());
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
