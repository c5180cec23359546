//! castellan's state in SQLite: local accounts, sessions, sign-in flows, access bindings and keys.
//!
//! Driver errors become [`Error`] variants here; nothing above this module sees sqlx.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::config::StoreLocation;
use crate::policy::{Identity, Member};

/// The role every core binding grants: open the app.
pub const ACCESSOR: &str = "roles/accessor";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open the store {location}: {source}. Check that the folder exists and is writable, or set `store` in the config"
    )]
    Open {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot prepare the store {location} (schema migration failed): {source}")]
    Migrate {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("a local account for {0} already exists")]
    UserExists(String),
    #[error("the store failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the store holds a value castellan cannot read: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// A live session as stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    pub created_at: i64,
    pub last_seen: i64,
    pub expires_at: i64,
}

/// An OpenID Connect sign-in in progress, between the redirect to the provider and the callback.
#[derive(Debug, Clone)]
pub struct Flow {
    pub browser_digest: String,
    pub provider: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub created_at: i64,
}

impl Store {
    pub async fn open(location: &StoreLocation) -> Result<Store> {
        let StoreLocation::Sqlite(path) = location;
        Store::open_sqlite(path.clone(), location.to_string()).await
    }

    async fn open_sqlite(path: PathBuf, location: String) -> Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| Error::Open {
                location: location.clone(),
                source,
            })?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| Error::Open {
                location: location.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| Error::Migrate { location, source })?;
        Ok(Store { pool })
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- local accounts -------------------------------------------------------------------------

    pub async fn add_user(&self, email: &str, password_hash: &str) -> Result<()> {
        let r = sqlx::query("INSERT INTO users (email, password_hash, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
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

    pub async fn set_password(&self, email: &str, password_hash: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = ? WHERE email = ?")
            .bind(password_hash)
            .bind(email)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn password_hash(&self, email: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT password_hash FROM users WHERE email = ?")
                .bind(email)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Removes the account and ends its sessions.
    pub async fn remove_user(&self, email: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM users WHERE email = ?")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE email = ? AND provider = 'local'")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn list_users(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT email, created_at FROM users ORDER BY email")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    // ---- sessions -------------------------------------------------------------------------------

    pub async fn create_session(
        &self,
        id_digest: &str,
        who: &Identity,
        lifetime: Duration,
        client_ip: &str,
        user_agent: &str,
    ) -> Result<()> {
        let now = now();
        sqlx::query(
            "INSERT INTO sessions (id_digest, email, subject, provider, created_at, last_seen, expires_at, client_ip, user_agent) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_digest)
        .bind(&who.email)
        .bind(&who.subject)
        .bind(&who.provider)
        .bind(now)
        .bind(now)
        .bind(now + lifetime.as_secs() as i64)
        .bind(client_ip)
        .bind(user_agent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The session, if it exists, has not expired and has been used within `idle`.
    pub async fn session(&self, id_digest: &str, idle: Duration) -> Result<Option<Session>> {
        let now = now();
        let row = sqlx::query(
            "SELECT email, subject, provider, created_at, last_seen, expires_at FROM sessions \
             WHERE id_digest = ? AND expires_at > ? AND last_seen > ?",
        )
        .bind(id_digest)
        .bind(now)
        .bind(now - idle.as_secs() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Session {
            identity: Identity {
                email: r.get(0),
                subject: r.get(1),
                provider: r.get(2),
            },
            created_at: r.get(3),
            last_seen: r.get(4),
            expires_at: r.get(5),
        }))
    }

    pub async fn touch_session(&self, id_digest: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen = ? WHERE id_digest = ?")
            .bind(now())
            .bind(id_digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_session(&self, id_digest: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM sessions WHERE id_digest = ?")
            .bind(id_digest)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes expired sessions and abandoned sign-in flows; returns how many rows went.
    pub async fn sweep(&self, flow_lifetime: Duration) -> Result<u64> {
        let now = now();
        let a = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let b = sqlx::query("DELETE FROM login_flows WHERE created_at <= ?")
            .bind(now - flow_lifetime.as_secs() as i64)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    // ---- sign-in flows --------------------------------------------------------------------------

    pub async fn put_flow(&self, state_digest: &str, flow: &Flow) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_flows (state_digest, browser_digest, provider, nonce, pkce_verifier, return_to, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(state_digest)
        .bind(&flow.browser_digest)
        .bind(&flow.provider)
        .bind(&flow.nonce)
        .bind(&flow.pkce_verifier)
        .bind(&flow.return_to)
        .bind(flow.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes and returns the flow: a state can be used once, whatever happens next.
    pub async fn take_flow(&self, state_digest: &str) -> Result<Option<Flow>> {
        let row = sqlx::query(
            "DELETE FROM login_flows WHERE state_digest = ? \
             RETURNING browser_digest, provider, nonce, pkce_verifier, return_to, created_at",
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
        }))
    }

    // ---- access bindings ------------------------------------------------------------------------

    /// Grants `member` access to `app`; false when it already had it.
    pub async fn add_binding(&self, app: &str, member: &Member) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("INSERT INTO bindings (app, role, member, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(app)
            .bind(ACCESSOR)
            .bind(member.to_string())
            .bind(now())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes `member`'s access to `app`; false when it had none.
    pub async fn remove_binding(&self, app: &str, member: &Member) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM bindings WHERE app = ? AND role = ? AND member = ?")
            .bind(app)
            .bind(ACCESSOR)
            .bind(member.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Every binding, as (app, member, created_at), ordered by app then member.
    pub async fn bindings(&self) -> Result<Vec<(String, Member, i64)>> {
        let rows = sqlx::query(
            "SELECT app, member, created_at FROM bindings WHERE role = ? ORDER BY app, member",
        )
        .bind(ACCESSOR)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let member: String = r.get(1);
                let member = Member::parse(&member).map_err(|e| {
                    Error::Corrupt(format!("binding of app {}: {e}", r.get::<String, _>(0)))
                })?;
                Ok((r.get(0), member, r.get(2)))
            })
            .collect()
    }

    /// A number that changes whenever bindings change.
    pub async fn revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    // ---- keys -----------------------------------------------------------------------------------

    /// The key for `purpose`, created with `make` when there is none yet. Safe when several
    /// processes start at once: the first insert wins and everyone reads it back.
    pub async fn key_or_create(
        &self,
        purpose: &str,
        make: impl FnOnce() -> (String, Vec<u8>),
    ) -> Result<(String, Vec<u8>)> {
        let (kid, material) = make();
        sqlx::query("INSERT INTO keys (purpose, kid, material, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(purpose)
            .bind(&kid)
            .bind(&material)
            .bind(now())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT kid, material FROM keys WHERE purpose = ?")
            .bind(purpose)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreLocation::Sqlite(dir.path().join("t.db")))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn flows_are_single_use() {
        let (_d, s) = temp_store().await;
        let flow = Flow {
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

    #[tokio::test]
    async fn sessions_expire_and_delete() {
        let (_d, s) = temp_store().await;
        let who = Identity {
            email: "a@example.com".into(),
            subject: "a".into(),
            provider: "local".into(),
        };
        s.create_session("d", &who, Duration::from_secs(60), "127.0.0.1", "t")
            .await
            .unwrap();
        assert_eq!(
            s.session("d", Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap()
                .identity,
            who
        );
        s.create_session("e", &who, Duration::from_secs(0), "127.0.0.1", "t")
            .await
            .unwrap();
        assert!(
            s.session("e", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none(),
            "expired"
        );
        assert!(s.delete_session("d").await.unwrap());
        assert!(
            s.session("d", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn bindings_bump_the_revision() {
        let (_d, s) = temp_store().await;
        let r0 = s.revision().await.unwrap();
        let m = Member::parse("user:a@example.com").unwrap();
        assert!(s.add_binding("demo", &m).await.unwrap());
        assert!(!s.add_binding("demo", &m).await.unwrap());
        assert!(s.revision().await.unwrap() > r0);
        assert_eq!(s.bindings().await.unwrap().len(), 1);
        assert!(s.remove_binding("demo", &m).await.unwrap());
        assert!(!s.remove_binding("demo", &m).await.unwrap());
        assert!(s.bindings().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_are_created_once() {
        let (_d, s) = temp_store().await;
        let a = s
            .key_or_create("k", || ("1".into(), vec![1]))
            .await
            .unwrap();
        let b = s
            .key_or_create("k", || ("2".into(), vec![2]))
            .await
            .unwrap();
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn users_are_unique() {
        let (_d, s) = temp_store().await;
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
