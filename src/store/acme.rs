//! ACME state: accounts, certificates, challenges in flight, and leases.

use sqlx::Row;

use super::{Result, Store, now};

/// A certificate as stored: PEM chain and key, and its validity (unix seconds).
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl Store {
    pub async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT credentials FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn save_acme_account(&self, directory: &str, credentials: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, credentials, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
        )
        .bind(directory)
        .bind(credentials)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn acme_certificate(&self, domains: &str) -> Result<Option<StoredCertificate>> {
        let row = sqlx::query(
            "SELECT chain_pem, key_pem, not_before, not_after FROM acme_certificates WHERE domains = $1",
        )
        .bind(domains)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| StoredCertificate {
            chain_pem: r.get(0),
            key_pem: r.get(1),
            not_before: r.get(2),
            not_after: r.get(3),
        }))
    }

    pub async fn save_acme_certificate(&self, domains: &str, c: &StoredCertificate) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_certificates (domains, chain_pem, key_pem, not_before, not_after, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (domains) DO UPDATE SET chain_pem = excluded.chain_pem, \
             key_pem = excluded.key_pem, not_before = excluded.not_before, not_after = excluded.not_after, \
             updated_at = excluded.updated_at",
        )
        .bind(domains)
        .bind(&c.chain_pem)
        .bind(&c.key_pem)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn put_acme_challenge(
        &self,
        token: &str,
        domain: &str,
        kind: &str,
        key_authorization: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_challenges (token, domain, kind, key_authorization, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (token) DO UPDATE SET key_authorization = excluded.key_authorization",
        )
        .bind(token)
        .bind(domain)
        .bind(kind)
        .bind(key_authorization)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key authorization for an HTTP-01 token, if one is being validated.
    pub async fn http01_key_authorization(&self, token: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT key_authorization FROM acme_challenges WHERE token = $1 AND kind = 'http-01'",
        )
        .bind(token)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// TLS-ALPN-01 challenges being validated: (domain, key authorization).
    pub async fn tls_alpn01_challenges(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT domain, key_authorization FROM acme_challenges WHERE kind = 'tls-alpn-01'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn clear_acme_challenges(&self, tokens: &[String]) -> Result<()> {
        for t in tokens {
            sqlx::query("DELETE FROM acme_challenges WHERE token = $1")
                .bind(t)
                .execute(&self.pool)
                .await?;
        }
        // Challenges an interrupted order left behind.
        sqlx::query("DELETE FROM acme_challenges WHERE created_at < $1")
            .bind(now() - 3600)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes (or renews) the lease `name` for `holder` for `seconds`; false when another holder
    /// has it and it has not expired.
    pub async fn take_lease(&self, name: &str, holder: &str, seconds: i64) -> Result<bool> {
        let mut tx = self.write().await?;
        let current: Option<(String, i64)> =
            sqlx::query("SELECT holder, expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| (r.get(0), r.get(1)));
        let now = now();
        if let Some((h, until)) = current
            && h != holder
            && until > now
        {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
        )
        .bind(name)
        .bind(holder)
        .bind(now + seconds)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::store_test;

    store_test! {
        async fn one_holder_at_a_time(s: Store) {
            assert!(s.take_lease("acme", "a", 60).await.unwrap());
            assert!(!s.take_lease("acme", "b", 60).await.unwrap());
            assert!(s.take_lease("acme", "a", 60).await.unwrap(), "the holder renews");
            s.release_lease("acme", "a").await.unwrap();
            assert!(s.take_lease("acme", "b", 60).await.unwrap());
            // An expired lease can be taken over.
            assert!(s.take_lease("other", "a", -1).await.unwrap());
            assert!(s.take_lease("other", "b", 60).await.unwrap());
        }
    }
}
