//! TOTP secrets, recovery codes and sign-ins waiting for their second factor.

use sqlx::Row;

use super::{Actor, Result, Store, now};

/// A sign-in that passed the password and waits for a code (or for TOTP to be set up).
#[derive(Debug, Clone)]
pub struct PendingSecondFactor {
    pub email: String,
    pub return_to: String,
    /// Non-empty while the person sets up TOTP: the secret they are adding to their app.
    pub enrol_secret: String,
    pub created_at: i64,
}

impl Store {
    /// The account's TOTP secret, if it has one.
    pub async fn totp_secret(&self, email: &str) -> Result<Option<String>> {
        let s: Option<String> =
            sqlx::query_scalar("SELECT totp_secret FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(&self.pool)
                .await?;
        Ok(s.filter(|s| !s.is_empty()))
    }

    /// Turns TOTP on with `secret` (first used at `step`), replacing the recovery codes; recorded
    /// in the audit trail.
    pub async fn enable_totp(
        &self,
        email: &str,
        secret: &str,
        step: i64,
        recovery: &[String],
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE users SET totp_secret = $1, totp_last_step = $2 WHERE email = $3")
            .bind(secret)
            .bind(step)
            .bind(email)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        for d in recovery {
            sqlx::query("INSERT INTO recovery_codes (email, digest) VALUES ($1, $2)")
                .bind(email)
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        Store::record_change(
            &mut tx,
            actor,
            "totp.enable",
            &format!("account {email}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Turns TOTP off and drops the recovery codes; recorded in the audit trail.
    pub async fn disable_totp(&self, email: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE users SET totp_secret = '', totp_last_step = 0 WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        Store::record_change(
            &mut tx,
            actor,
            "totp.disable",
            &format!("account {email}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the account's recovery codes (their digests); recorded in the audit trail.
    pub async fn replace_recovery_codes(
        &self,
        email: &str,
        recovery: &[String],
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        for d in recovery {
            sqlx::query("INSERT INTO recovery_codes (email, digest) VALUES ($1, $2)")
                .bind(email)
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        Store::record_change(
            &mut tx,
            actor,
            "recovery-codes.regenerate",
            &format!("account {email}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that `step`'s code was used; false when it (or a later one) already was.
    pub async fn use_totp_step(&self, email: &str, step: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE email = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(email)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Uses up a recovery code; false when it is not one of the account's (any more).
    pub async fn use_recovery_code(&self, email: &str, digest: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM recovery_codes WHERE email = $1 AND digest = $2")
            .bind(email)
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn put_second_factor_pending(
        &self,
        browser_digest: &str,
        p: &PendingSecondFactor,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO second_factor_pending (browser_digest, email, return_to, enrol_secret, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (browser_digest) DO UPDATE SET email = excluded.email, return_to = excluded.return_to, \
             enrol_secret = excluded.enrol_secret, created_at = excluded.created_at",
        )
        .bind(browser_digest)
        .bind(&p.email)
        .bind(&p.return_to)
        .bind(&p.enrol_secret)
        .bind(p.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The browser's pending sign-in, if younger than `max_age` seconds.
    pub async fn second_factor_pending(
        &self,
        browser_digest: &str,
        max_age: i64,
    ) -> Result<Option<PendingSecondFactor>> {
        let row = sqlx::query(
            "SELECT email, return_to, enrol_secret, created_at FROM second_factor_pending WHERE browser_digest = $1 AND created_at > $2",
        )
        .bind(browser_digest)
        .bind(now() - max_age)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| PendingSecondFactor {
            email: r.get(0),
            return_to: r.get(1),
            enrol_secret: r.get(2),
            created_at: r.get(3),
        }))
    }

    pub async fn clear_second_factor_pending(&self, browser_digest: &str) -> Result<()> {
        sqlx::query("DELETE FROM second_factor_pending WHERE browser_digest = $1")
            .bind(browser_digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::store_test;

    store_test! {
        async fn a_code_step_and_a_recovery_code_work_once(s: Store) {
            s.add_user("a@example.com", "hash").await.unwrap();
            assert_eq!(s.totp_secret("a@example.com").await.unwrap(), None);
            let who = crate::store::Actor::cli();
            s.enable_totp("a@example.com", "SECRET", 100, &["r1".into(), "r2".into()], &who).await.unwrap();
            assert_eq!(s.totp_secret("a@example.com").await.unwrap().as_deref(), Some("SECRET"));
            assert!(!s.use_totp_step("a@example.com", 100).await.unwrap(), "the enrolment code is used");
            assert!(s.use_totp_step("a@example.com", 101).await.unwrap());
            assert!(!s.use_totp_step("a@example.com", 101).await.unwrap(), "replayed");
            assert!(s.use_recovery_code("a@example.com", "r1").await.unwrap());
            assert!(!s.use_recovery_code("a@example.com", "r1").await.unwrap());
            s.replace_recovery_codes("a@example.com", &["r3".into()], &who).await.unwrap();
            assert!(!s.use_recovery_code("a@example.com", "r2").await.unwrap(), "replaced");
            assert!(s.use_recovery_code("a@example.com", "r3").await.unwrap());
            s.disable_totp("a@example.com", &who).await.unwrap();
            assert_eq!(s.totp_secret("a@example.com").await.unwrap(), None);
        }
    }
}
