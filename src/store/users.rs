//! Local accounts.

use sqlx::Row;

use super::{Actor, Error, Result, Store, now};

impl Store {
    pub async fn add_user(&self, email: &str, password_hash: &str) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO users (email, password_hash, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(email)
        .bind(password_hash)
        .bind(now())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(Error::UserExists(email.to_string()));
        }
        Ok(())
    }

    /// Changes a local account's password; false when there is no such account. Recorded in the
    /// audit trail.
    pub async fn set_password(
        &self,
        email: &str,
        password_hash: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE email = $2")
            .bind(password_hash)
            .bind(email)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() > 0 {
            Store::record_change(
                &mut tx,
                actor,
                "password.change",
                &format!("account {email}"),
                None,
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn password_hash(&self, email: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Removes the account and ends its sessions.
    pub async fn remove_user(&self, email: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let r = sqlx::query("DELETE FROM users WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE email = $1 AND provider = 'local'")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        // Its second factors go with it, so a new account of the same name starts clean.
        for table in ["passkeys", "recovery_codes"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE email = $1"
            )))
            .bind(email)
            .execute(&mut *tx)
            .await?;
        }
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn list_users(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT email, created_at FROM users ORDER BY email")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use super::*;

    store_test! {
        async fn users_are_unique(s: Store) {
            s.add_user("a@example.com", "h").await.unwrap();
            assert!(matches!(
                s.add_user("a@example.com", "h").await,
                Err(Error::UserExists(_))
            ));
            assert_eq!(
                s.password_hash("a@example.com").await.unwrap().as_deref(),
                Some("h")
            );
        }
    }
}
