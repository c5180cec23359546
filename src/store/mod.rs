//! castellan's state in SQLite: local accounts, sessions, sign-in flows, policies, groups, service
//! accounts, keys and the audit trail. One file per concern; driver errors become [`Error`] variants
//! here, and nothing above this module sees sqlx.
//!
//! Every change that can alter a decision bumps the store's revision in the same transaction, so
//! running servers (in this or any other process) reload within their poll interval.

mod audit;
mod groups;
mod policies;
mod requests;
mod service_accounts;
mod sessions;
mod users;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use crate::config::StoreLocation;

pub use audit::{AuditFilter, AuditRecord};
pub use groups::Group;
pub use requests::AccessRequest;
pub use service_accounts::{ServiceAccount, ServiceAccountKey};
pub use sessions::{Flow, Session, SessionInfo};

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
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error(
        "the policy changed since you read it (etag {given} is not the current {current}): read it again, reapply your change, or use --force to overwrite"
    )]
    StaleEtag { given: String, current: String },
    #[error("the store failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the store holds a value castellan cannot read: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who made a change, for the audit trail: `cli:USER`, or the email of an admin using the API.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub ip: String,
}

impl Actor {
    /// The operating-system user running the command line.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(os_user)
            .unwrap_or_else(|| "unknown".into());
        Actor {
            name: format!("cli:{user}"),
            ip: String::new(),
        }
    }
}

/// The name of the user this process runs as, from /etc/passwd (containers often set no $USER).
fn os_user() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
            .or(Some(format!("uid {uid}")))
    }
    #[cfg(not(unix))]
    None
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
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

    /// A write transaction that holds the write lock from the start, so a read-modify-write
    /// cannot interleave with another process's.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A number that changes whenever anything a decision depends on changes.
    pub async fn revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn bump(tx: &mut Transaction<'static, Sqlite>) -> Result<()> {
        sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

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
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreLocation::Sqlite(dir.path().join("t.db")))
        .await
        .unwrap();
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn the_core_access_lists_migrate_into_policies() {
        // A store made by the core release (migration 1 only) with two members on one app.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(include_str!(
            "../../migrations/sqlite/0001_core.sql"
        )))
        .execute(&pool)
        .await
        .unwrap();
        for m in ["user:a@example.com", "domain:example.org"] {
            sqlx::query("INSERT INTO bindings VALUES ('demo', 'roles/accessor', ?, 0)")
                .bind(m)
                .execute(&pool)
                .await
                .unwrap();
        }
        // Record migration 1 as applied, as sqlx would have.
        let m = sqlx::migrate!("./migrations/sqlite");
        let first = m.iter().next().unwrap();
        sqlx::query("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (?, ?, 1, ?, 0)")
            .bind(first.version)
            .bind(first.description.to_string())
            .bind(first.checksum.to_vec())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = Store::open(&StoreLocation::Sqlite(path)).await.unwrap();
        let p = store
            .policy(&crate::policy::snapshot::Resource::App("demo".into()))
            .await
            .unwrap();
        let doc = serde_json::to_value(p.to_document()).unwrap();
        assert_eq!(doc["bindings"][0]["role"], "roles/accessor");
        let mut members: Vec<String> =
            serde_json::from_value(doc["bindings"][0]["members"].clone()).unwrap();
        members.sort();
        assert_eq!(members, vec!["domain:example.org", "user:a@example.com"]);
        assert!(!p.etag.is_empty());
    }
}
