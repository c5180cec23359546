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
        let r = sqlx::query("INSERT INTO service_accounts (name, description, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(description)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(Error::Exists(format!("service account {name}")));
        }
        let key = Store::insert_key(&mut tx, name, actor, "service-account.create").await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Mints a key for `name` inside `tx` and audits it; returns the key.
    async fn insert_key(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        actor: &Actor,
        action: &str,
    ) -> Result<String> {
        let (id, key) = new_key();
        sqlx::query(
            "INSERT INTO service_account_keys (id, name, digest, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(crate::crypto::digest(&key))
        .bind(now())
        .execute(&mut **tx)
        .await?;
        Store::record_change(
            tx,
            actor,
            action,
            &format!("serviceAccount:{name}"),
            None,
            Some(&serde_json::json!({ "key": id })),
        )
        .await?;
        Ok(key)
    }

    /// The service account a key belongs to, if the key is known and not revoked.
    pub async fn service_account_for_key(&self, key: &str) -> Result<Option<String>> {
        Ok(self.key_owner(key).await?.map(|(name, _)| name))
    }

    /// (service account, key id) for a key that is known and not revoked.
    pub async fn key_owner(&self, key: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT name, id FROM service_account_keys WHERE digest = $1 AND revoked_at IS NULL",
        )
        .bind(crate::crypto::digest(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Whether key `id` exists and is not revoked (tokens minted with it die with it).
    pub async fn key_active(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM service_account_keys WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Adds a key to an existing service account; returns the key (shown once).
    pub async fn create_key(&self, name: &str, actor: &Actor) -> Result<String> {
        let mut tx = self.write().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM service_accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(Error::NotFound(format!(
                "service account {name} (create it with `castellan service-accounts create {name}`)"
            )));
        }
        let key = Store::insert_key(&mut tx, name, actor, "service-account.key-create").await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Revokes key `id` of `name`; its tokens stop working at once.
    pub async fn revoke_key(&self, name: &str, id: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.write().await?;
        let r = sqlx::query("UPDATE service_account_keys SET revoked_at = $1 WHERE name = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(now())
            .bind(name)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(Error::NotFound(format!(
                "active key {id} of service account {name}"
            )));
        }
        Store::record_change(
            &mut tx,
            actor,
            "service-account.key-revoke",
            &format!("serviceAccount:{name}"),
            None,
            Some(&serde_json::json!({ "key": id })),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
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
        let rows = sqlx::query("SELECT id, name, created_at, revoked_at FROM service_account_keys WHERE name = $1 ORDER BY created_at")
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
    use super::super::store_test;
    use super::*;

    store_test! {
        async fn keys_identify_their_account(s: Store) {
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
            let second = s.create_key("ci-bot", &Actor::cli()).await.unwrap();
            let (_, id) = s.key_owner(&second).await.unwrap().unwrap();
            assert!(s.key_active(&id).await.unwrap());
            s.revoke_key("ci-bot", &id, &Actor::cli()).await.unwrap();
            assert!(!s.key_active(&id).await.unwrap());
            assert_eq!(s.service_account_for_key(&second).await.unwrap(), None);
            assert_eq!(
                s.service_account_for_key(&key).await.unwrap().as_deref(),
                Some("ci-bot"),
                "the other key still works"
            );
            assert!(s.create_key("nobody", &Actor::cli()).await.is_err());
        }
    }
}
