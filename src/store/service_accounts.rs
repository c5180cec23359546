//! Service accounts (`serviceAccount:NAME`) and their keys, stored as SHA-256 digests.

use sqlx::Row;

use super::{Actor, Error, Result, Store, now};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceAccount {
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceAccountKey {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A key handed to a caller: `csk_<id>_<secret>`. Only the digest of the whole key is stored.
fn new_key() -> (String, String) {
    let id = crate::crypto::random_token(6).replace(['-', '_'], "x");
    let key = format!("csk_{id}_{}", crate::crypto::random_token(32));
    (id, key)
}

impl Store {
    /// Creates the service account and its first key; returns the key (shown once).
    pub async fn create_service_account(
        &self,
        name: &str,
        description: &str,
        actor: &Actor,
    ) -> Result<String> {
        let mut tx = self.write().await?;
        let r = sqlx::query("INSERT INTO service_accounts (name, description, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(description)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(Error::Exists(format!("service account {name}")));
        }
        let (id, key) = new_key();
        sqlx::query(
            "INSERT INTO service_account_keys (id, name, digest, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(crate::crypto::digest(&key))
        .bind(now())
        .execute(&mut *tx)
        .await?;
        Store::record_change(
            &mut tx,
            actor,
            "service-account.create",
            &format!("serviceAccount:{name}"),
            None,
            Some(&serde_json::json!({ "key": id })),
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The service account a key belongs to, if the key is known and not revoked.
    pub async fn service_account_for_key(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM service_account_keys WHERE digest = ? AND revoked_at IS NULL",
        )
        .bind(crate::crypto::digest(key))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn service_accounts(&self) -> Result<Vec<ServiceAccount>> {
        let rows =
            sqlx::query("SELECT name, description, created_at FROM service_accounts ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| ServiceAccount {
                name: r.get(0),
                description: r.get(1),
                created_at: r.get(2),
            })
            .collect())
    }

    pub async fn service_account_keys(&self, name: &str) -> Result<Vec<ServiceAccountKey>> {
        let rows = sqlx::query("SELECT id, name, created_at, revoked_at FROM service_account_keys WHERE name = ? ORDER BY created_at")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| ServiceAccountKey {
                id: r.get(0),
                name: r.get(1),
                created_at: r.get(2),
                revoked_at: r.get(3),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::temp_store;
    use super::*;

    #[tokio::test]
    async fn keys_identify_their_account() {
        let (_d, s) = temp_store().await;
        let key = s
            .create_service_account("ci-bot", "", &Actor::cli())
            .await
            .unwrap();
        assert!(key.starts_with("csk_"));
        assert_eq!(
            s.service_account_for_key(&key).await.unwrap().as_deref(),
            Some("ci-bot")
        );
        assert_eq!(s.service_account_for_key("csk_nope").await.unwrap(), None);
        assert!(matches!(
            s.create_service_account("ci-bot", "", &Actor::cli()).await,
            Err(Error::Exists(_))
        ));
        assert_eq!(s.service_account_keys("ci-bot").await.unwrap().len(), 1);
    }
}
