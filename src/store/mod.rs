//! castellan's state in SQLite or PostgreSQL: local accounts, sessions, sign-in flows, policies, groups, service
//! accounts, keys and the audit trail. One file per concern; driver errors become [`Error`] variants
//! here, and nothing above this module sees sqlx.
//!
//! Both backends run the same SQL (written in the dialect both accept, `$N` placeholders) through
//! sqlx's `Any` driver, each with its own migrations folder; the one exception is the SQLite audit
//! writer, which has a connection of its own on sqlx's native driver (see `audit.rs`). Every change that can alter a decision
//! bumps the store's revision in the same transaction, so running servers (in this or any other
//! process or replica) reload: by polling, and on PostgreSQL also woken by a NOTIFY that a trigger
//! on the revision row sends at commit.
//!
//! May use: config, policy and the leaves; never HTTP.

mod acme;
mod audit;
mod audit_actors;
mod audit_sinks;
pub mod changes;
mod copy;
mod directory;
mod groups;
mod migrations;
mod passkeys;
mod policies;
mod provider_sessions;
mod provider_tokens;
mod requests;
mod scim;
mod second_factor;
mod service_accounts;
mod sessions;
mod sign_in;
mod users;

use std::path::Path;
use std::time::Duration;

use crate::clock::{now, now_ms};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::config::StoreLocation;

pub use acme::StoredCertificate;
pub use audit::{AuditFilter, AuditRecord};
pub use copy::Copied;
pub use directory::DirectoryGroups;
pub use groups::Group;
pub use passkeys::{Ceremony, Passkey};
pub use provider_sessions::{DueRevalidation, ProviderLogout};
pub use provider_tokens::ProviderTokens;
pub use requests::AccessRequest;
pub use scim::{ScimFilter, ScimGroup, ScimPage, ScimUser};
pub use second_factor::PendingSecondFactor;
pub use service_accounts::{ServiceAccount, ServiceAccountKey};
pub use sessions::{Flow, Redemption, Session, SessionInfo};

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
    #[error(
        "the destination's `{0}` table is not empty, so copying would mix two installations: migrate into a new, empty database"
    )]
    NotEmpty(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error(
        "the policy changed since you read it (etag {given} is not the current {current}): read it again, reapply your change, or use --force to overwrite"
    )]
    StaleEtag { given: String, current: String },
    #[error(
        "the store cannot be reached ({0}): check that the database is running and reachable from here; nothing was changed"
    )]
    Unavailable(sqlx::Error),
    #[error(
        "the disk holding the store is full ({0}): free space on it and try again; nothing was changed"
    )]
    Full(sqlx::Error),
    #[error("the store failed: {0}")]
    Query(sqlx::Error),
    #[error("the store holds a value castellan cannot read: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        if unreachable(&e) {
            Error::Unavailable(e)
        } else if disk_full(&e) {
            Error::Full(e)
        } else {
            Error::Query(e)
        }
    }
}

/// SQLITE_FULL (13) or PostgreSQL's disk_full (53100).
fn disk_full(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "13" || c == "53100"))
}

/// Whether `e` means the database could not be reached (as opposed to refusing a statement).
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08…) and operator intervention (57P…: shutting
        // down, starting up). SQLite: SQLITE_BUSY (5) after the busy timeout.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "5"),
        _ => false,
    }
}

impl Error {
    /// True when the store could not be reached at all: castellan serves from its last snapshot.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// True when trying again later may work: the store is unreachable, its disk is full, or it
    /// turned the statement away for its own state rather than for the data. PostgreSQL:
    /// insufficient resources (53…, e.g. too many connections), transaction rollback (40…:
    /// serialization failure, deadlock), lock not available (55P03), query canceled (57014).
    /// SQLite: SQLITE_LOCKED (6).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Full(_) => true,
            Error::Query(sqlx::Error::Database(d)) => d.code().is_some_and(|c| {
                c.starts_with("53")
                    || c.starts_with("40")
                    || c == "55P03"
                    || c == "57014"
                    || c == "6"
            }),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Who made a change, for the audit trail: `cli:USER`, or the email of an admin using the API.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub ip: String,
}

impl Actor {
    /// The operating-system user running the command line.
    pub fn cli() -> Actor {
        Actor {
            name: format!("cli:{}", crate::config::invoking_user()),
            ip: String::new(),
        }
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL channel a trigger notifies (with the new revision) when the revision changes.
pub const REVISION_CHANNEL: &str = "castellan_revision";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only: the audit writer's own connection, driven by sqlx's native SQLite driver.
    /// Through `Any`, binding a batch's values cost more than inserting them.
    sqlite_audit: Option<sqlx::SqlitePool>,
}

impl Store {
    pub async fn open(location: &StoreLocation) -> Result<Store> {
        install_default_drivers();
        let shown = location.to_string();
        let open_error = |source| Error::Open {
            location: shown.clone(),
            source,
        };
        const SQLITE_SETUP: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                    PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";
        let (backend, pool) = match location {
            StoreLocation::Sqlite(path) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(SQLITE_SETUP).await?;
                            Ok(())
                        })
                    })
                    .connect(&sqlite_url(path))
                    .await
                    .map_err(open_error)?;
                (Backend::Sqlite, pool)
            }
            StoreLocation::Postgres(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(url.as_str())
                    .await
                    .map_err(open_error)?;
                (Backend::Postgres, pool)
            }
        };
        let migrated = match backend {
            Backend::Sqlite => migrations::sqlite().run(&pool).await,
            Backend::Postgres => migrations::postgres().run(&pool).await,
        };
        migrated.map_err(|source| Error::Migrate {
            location: shown.clone(),
            source,
        })?;
        let sqlite_audit = match location {
            StoreLocation::Sqlite(path) => {
                use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
                // The settings of SQLITE_SETUP, typed.
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                Some(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(options)
                        .await
                        .map_err(open_error)?,
                )
            }
            StoreLocation::Postgres(_) => None,
        };
        Ok(Store {
            pool,
            backend,
            sqlite_audit,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A write transaction that holds the write lock from the start, so a read-modify-write
    /// cannot interleave with another process's.
    async fn write(&self) -> Result<Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                // One writer at a time across all replicas, as SQLite's write lock gives.
                sqlx::query("SELECT pg_advisory_xact_lock(7370616)")
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// A number that changes whenever anything a decision depends on changes.
    pub async fn revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn bump(tx: &mut Transaction<'static, Any>) -> Result<()> {
        sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The key ring for `purpose`, oldest first. When the newest key was made `rotate_after` or
    /// longer before `now` (or there is none), a new key made by `make` (a kid and its material)
    /// joins first, and only the newest [`KEYS_KEPT`] stay. Safe when several processes do this at
    /// once: the check is repeated under the write lock, so one key is added per rotation.
    pub async fn key_ring(
        &self,
        purpose: &str,
        now: i64,
        rotate_after: Duration,
        make: impl FnOnce() -> (String, Vec<u8>),
    ) -> Result<Vec<RingKey>> {
        let due = |ring: &[RingKey]| {
            ring.last()
                .is_none_or(|k| now - k.created_at >= rotate_after.as_secs() as i64)
        };
        let ring = self.read_ring(purpose, &self.pool).await?;
        if !due(&ring) {
            return Ok(ring);
        }
        let mut tx = self.write().await?;
        let ring = self.read_ring(purpose, &mut *tx).await?;
        if due(&ring) {
            let (kid, material) = make();
            sqlx::query(
                "INSERT INTO key_ring (purpose, kid, material, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(purpose)
            .bind(&kid)
            .bind(&material)
            .bind(now.max(ring.last().map_or(now, |k| k.created_at + 1)))
            .execute(&mut *tx)
            .await?;
            let all = self.read_ring(purpose, &mut *tx).await?;
            for old in all.iter().take(all.len().saturating_sub(KEYS_KEPT)) {
                sqlx::query("DELETE FROM key_ring WHERE purpose = $1 AND kid = $2")
                    .bind(purpose)
                    .bind(&old.kid)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let ring = self.read_ring(purpose, &mut *tx).await?;
        tx.commit().await?;
        Ok(ring)
    }

    async fn read_ring<'e>(
        &self,
        purpose: &str,
        on: impl sqlx::Executor<'e, Database = Any>,
    ) -> Result<Vec<RingKey>> {
        let rows = sqlx::query(
            "SELECT kid, material, created_at FROM key_ring WHERE purpose = $1 ORDER BY created_at, kid",
        )
        .bind(purpose)
        .fetch_all(on)
        .await?;
        Ok(rows
            .iter()
            .map(|r| RingKey {
                kid: r.get(0),
                material: r.get(1),
                created_at: r.get(2),
            })
            .collect())
    }
}

/// How many keys a ring keeps: the next one, the one in use and the previous one.
pub const KEYS_KEPT: usize = 3;

/// One key of a ring (see [`Store::key_ring`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RingKey {
    pub kid: String,
    pub material: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

/// The sqlx URL of a SQLite file, created when missing (the path percent-encoded, so `?`, `#` or
/// `%` in a folder name cannot change its meaning).
fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url + "?mode=rwc"
}

#[cfg(test)]
impl Store {
    /// Runs raw SQL against this store, for tests that stage what castellan itself never does
    /// (a trigger that refuses rows, say).
    pub(crate) async fn run_sql_for_test(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap();
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

/// The PostgreSQL server tests use: `CASTELLAN_TEST_POSTGRES` (an admin URL) when set, otherwise
/// a throwaway cluster started once for this test process (stopped when the process exits).
#[cfg(test)]
pub(crate) fn test_postgres_admin_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("CASTELLAN_TEST_POSTGRES") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/throwaway-postgres.sh");
        let out = std::process::Command::new(script)
            .arg(std::process::id().to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run tests/support/throwaway-postgres.sh");
        assert!(
            out.status.success(),
            "no PostgreSQL for the tests: set CASTELLAN_TEST_POSTGRES=postgres://USER@HOST:PORT/DB or install Debian's postgresql (scripts/test-deps.sh)"
        );
        String::from_utf8(out.stdout).unwrap().split(' ').next().unwrap().to_string()
    })
    .clone()
}

/// A database of its own on the test PostgreSQL server, dropped when this value is.
#[cfg(test)]
pub(crate) struct TestDatabase {
    admin: String,
    name: String,
}

#[cfg(test)]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                install_default_drivers();
                if let Ok(pool) = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin)
                    .await
                {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                }
            })
        })
        .join();
    }
}

#[cfg(test)]
pub(crate) async fn temp_postgres_store() -> (TestDatabase, Store) {
    install_default_drivers();
    let admin = test_postgres_admin_url();
    let name = format!(
        "castellan_test_{}",
        crate::crypto::random_token(6)
            .to_lowercase()
            .replace(['-', '_'], "x")
    );
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL ({e})"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let db = TestDatabase { admin, name };
    let mut url = url::Url::parse(&db.admin).unwrap();
    url.set_path(&db.name);
    let store = Store::open(&StoreLocation::Postgres(url)).await.unwrap();
    (db, store)
}

/// A store test, run once against SQLite and once against PostgreSQL: the conformance suite that
/// keeps both backends answering alike.
#[cfg(test)]
macro_rules! store_test {
    (async fn $name:ident($s:ident: Store) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($s: $crate::store::Store) $body

            #[tokio::test]
            async fn sqlite() {
                let (_dir, store) = $crate::store::temp_store().await;
                run(store).await
            }

            #[tokio::test]
            async fn postgres() {
                let (_db, store) = $crate::store::temp_postgres_store().await;
                run(store).await
            }
        }
    };
}
#[cfg(test)]
pub(crate) use store_test;

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use std::str::FromStr;

    store_test! {
        async fn refusals_for_the_data_are_told_from_passing_trouble(s: Store) {
            let err = |sql: String| {
                let pool = s.pool.clone();
                async move {
                    let q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    Error::from(q.execute(&pool).await.unwrap_err())
                }
            };
            match s.backend {
                Backend::Postgres => {
                    for (code, transient) in [
                        ("40001", true),
                        ("40P01", true),
                        ("53300", true),
                        ("55P03", true),
                        ("23514", false),
                        ("22001", false),
                    ] {
                        let sql = format!(
                            "DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$"
                        );
                        let e = err(sql).await;
                        assert_eq!(e.is_transient(), transient, "{code}: {e}");
                    }
                }
                Backend::Sqlite => {
                    // A constraint says no to the data: retrying cannot help.
                    let e = err("INSERT INTO audit (at) VALUES (NULL)".into()).await;
                    assert!(!e.is_transient(), "{e}");
                }
            }
        }
    }

    store_test! {
        async fn key_rings_rotate_once_per_period_and_keep_three(s: Store) {
            let day = Duration::from_secs(86_400);
            let mut n = 0;
            let mut make = || {
                n += 1;
                (format!("k{n}"), vec![n as u8])
            };
            let t0 = 1_000_000;
            let ring = s.key_ring("k", t0, day, &mut make).await.unwrap();
            assert_eq!(ring.len(), 1);
            // Not due yet: the same ring, nothing made.
            let again = s.key_ring("k", t0 + 3600, day, &mut make).await.unwrap();
            assert_eq!(again, ring);
            // Two processes at the same moment after a period: one new key between them.
            let (a, b) = tokio::join!(
                s.key_ring("k", t0 + 86_400, day, || ("x1".into(), vec![9])),
                s.key_ring("k", t0 + 86_400, day, || ("x2".into(), vec![9]))
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.len(), 2);
            assert_eq!(a, b);
            for d in 2..=4 {
                s.key_ring("k", t0 + d * 86_400, day, &mut make).await.unwrap();
            }
            let ring = s.key_ring("k", t0 + 4 * 86_400, day, &mut make).await.unwrap();
            assert_eq!(ring.len(), KEYS_KEPT, "{ring:?}");
            assert!(ring.windows(2).all(|w| w[0].created_at < w[1].created_at));
            assert!(!ring.iter().any(|k| k.kid == "k1"), "the oldest key is gone");
        }
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
            sqlx::query("INSERT INTO bindings VALUES ('demo', 'roles/accessor', $1, 0)")
                .bind(m)
                .execute(&pool)
                .await
                .unwrap();
        }
        // Record migration 1 as applied, as sqlx would have.
        let m = migrations::sqlite();
        let first = m.iter().next().unwrap();
        sqlx::query("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES ($1, $2, 1, $3, 0)")
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
