//! `castellan store migrate`: copies every table of one store into another, empty one (SQLite to
//! PostgreSQL, or back), then counts both sides.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Backend, Error, Result, Store};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Int,
    OptInt,
    OptText,
    Blob,
}
use Kind::*;

/// Every table and its columns, parents before children (foreign keys). The audit trail's index by
/// person (`audit_actors`) is not copied: the destination's server builds it from the trail.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "users",
        &[
            ("email", Text),
            ("password_hash", Text),
            ("created_at", Int),
            ("totp_secret", Text),
            ("totp_last_step", Int),
        ],
    ),
    ("recovery_codes", &[("email", Text), ("digest", Text)]),
    (
        "passkeys",
        &[
            ("id", Text),
            ("email", Text),
            ("user_handle", Text),
            ("public_key", Blob),
            ("sign_count", Int),
            ("name", Text),
            ("created_at", Int),
            ("last_used_at", Int),
        ],
    ),
    (
        "sessions",
        &[
            ("id_digest", Text),
            ("email", Text),
            ("subject", Text),
            ("provider", Text),
            ("created_at", Int),
            ("last_seen", Int),
            ("expires_at", Int),
            ("client_ip", Text),
            ("user_agent", Text),
            ("groups", Text),
            ("parent", Text),
            ("id_token", Text),
            ("hd", Text),
            ("domain", OptText),
            ("proved_at", Int),
            ("proved_by", Text),
            ("auth", Text),
        ],
    ),
    (
        "key_ring",
        &[
            ("purpose", Text),
            ("kid", Text),
            ("material", Blob),
            ("created_at", Int),
        ],
    ),
    (
        "policies",
        &[
            ("resource", Text),
            ("document", Text),
            ("etag", Text),
            ("updated_at", Int),
        ],
    ),
    (
        "groups",
        &[("name", Text), ("description", Text), ("created_at", Int)],
    ),
    (
        "group_members",
        &[("group_name", Text), ("email", Text), ("added_at", Int)],
    ),
    (
        "service_accounts",
        &[("name", Text), ("description", Text), ("created_at", Int)],
    ),
    (
        "service_account_keys",
        &[
            ("id", Text),
            ("name", Text),
            ("digest", Text),
            ("created_at", Int),
            ("revoked_at", OptInt),
        ],
    ),
    (
        "access_requests",
        &[
            ("id", Int),
            ("app", Text),
            ("email", Text),
            ("reason", Text),
            ("status", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("decided_by", Text),
            ("expires_at", OptInt),
        ],
    ),
    (
        "acme_accounts",
        &[
            ("directory", Text),
            ("credentials", Text),
            ("created_at", Int),
        ],
    ),
    (
        "acme_certificates",
        &[
            ("domains", Text),
            ("chain_pem", Text),
            ("key_pem", Text),
            ("not_before", Int),
            ("not_after", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "audit",
        &[
            ("id", Int),
            ("at", Int),
            ("kind", Text),
            ("actor", Text),
            ("ip", Text),
            ("app", Text),
            ("action", Text),
            ("method", Text),
            ("path", Text),
            ("target", Text),
            ("reason", Text),
            ("binding", Text),
            ("status", OptInt),
            ("latency_us", OptInt),
            ("reference", Text),
            ("before", OptText),
            ("after", OptText),
        ],
    ),
];

/// Rows copied per statement.
const CHUNK: i64 = 500;

/// What was copied: per table, rows in the source and in the destination afterwards.
#[derive(Debug)]
pub struct Copied {
    pub tables: Vec<(&'static str, i64, i64)>,
}

impl Copied {
    pub fn verified(&self) -> bool {
        self.tables.iter().all(|(_, a, b)| a == b)
    }
}

impl Store {
    async fn count(&self, table: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Copies everything in `self` into `to`, which must hold no users, sessions, policies,
    /// groups, service accounts, requests or audit records yet. `progress(table, done, total)`
    /// is called as rows are copied.
    pub async fn copy_into(
        &self,
        to: &Store,
        mut progress: impl FnMut(&str, i64, i64),
    ) -> Result<Copied> {
        for (table, _) in TABLES {
            // Keys are made when a server first opens a store: the source's replace them.
            if *table != "key_ring" && to.count(table).await? > 0 {
                return Err(Error::NotEmpty(table.to_string()));
            }
        }
        let mut tx = to.write().await?;
        sqlx::query("DELETE FROM key_ring")
            .execute(&mut *tx)
            .await?;
        for (table, columns) in TABLES {
            let total = self.count(table).await?;
            let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
            let names = names.join(", ");
            let order = columns[0].0;
            let mut done = 0;
            progress(table, 0, total);
            while done < total {
                let rows: Vec<AnyRow> = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {names} FROM {table} ORDER BY {order} LIMIT $1 OFFSET $2"
                )))
                .bind(CHUNK)
                .bind(done)
                .fetch_all(&self.pool)
                .await?;
                if rows.is_empty() {
                    break;
                }
                let width = columns.len();
                let values: Vec<String> = (0..rows.len())
                    .map(|r| {
                        let p: Vec<String> =
                            (1..=width).map(|c| format!("${}", r * width + c)).collect();
                        format!("({})", p.join(", "))
                    })
                    .collect();
                // PostgreSQL's identity columns take copied ids only when told to.
                let overriding = if to.backend == Backend::Postgres && columns[0] == ("id", Int) {
                    " OVERRIDING SYSTEM VALUE"
                } else {
                    ""
                };
                let sql = format!(
                    "INSERT INTO {table} ({names}){overriding} VALUES {}",
                    values.join(", ")
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for row in &rows {
                    for (i, (_, kind)) in columns.iter().enumerate() {
                        q = match kind {
                            Text => q.bind(row.try_get::<String, _>(i)?),
                            Int => q.bind(row.try_get::<i64, _>(i)?),
                            OptInt => q.bind(row.try_get::<Option<i64>, _>(i)?),
                            OptText => q.bind(row.try_get::<Option<String>, _>(i)?),
                            Blob => q.bind(row.try_get::<Vec<u8>, _>(i)?),
                        };
                    }
                }
                q.execute(&mut *tx).await?;
                done += rows.len() as i64;
                progress(table, done, total);
            }
            if to.backend == Backend::Postgres && columns[0] == ("id", Int) {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                )))
                .execute(&mut *tx)
                .await?;
            }
        }
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        let mut tables = Vec::new();
        for (table, _) in TABLES {
            tables.push((*table, self.count(table).await?, to.count(table).await?));
        }
        Ok(Copied { tables })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{temp_postgres_store, temp_store};
    use crate::policy::{Identity, Member, Role, snapshot::Resource};
    use crate::store::{Actor, AuditRecord};
    use std::time::Duration;

    #[tokio::test]
    async fn a_sqlite_store_moves_to_postgres_and_back() {
        let (_d, sqlite) = temp_store().await;
        sqlite.add_user("a@example.com", "hash").await.unwrap();
        let who = Identity {
            email: "a@example.com".into(),
            subject: "a".into(),
            provider: "local".into(),
            groups: vec!["eng".into()],
            hd: None,
            domain: None,
            amr: Vec::new(),
            acr: None,
            claims: Default::default(),
        };
        sqlite
            .create_session(
                "d1d1d1d1d1d1d1d1d1d1",
                &who,
                Duration::from_secs(60),
                "127.0.0.1",
                "ua",
                None,
            )
            .await
            .unwrap();
        sqlite
            .update_policy(
                &Resource::App("demo".into()),
                &Actor::cli(),
                "policy.add",
                |p| {
                    (
                        p.add(
                            Role::Accessor,
                            Member::parse("user:a@example.com").unwrap(),
                            None,
                        ),
                        (),
                    )
                },
            )
            .await
            .unwrap();
        sqlite.create_group("eng", "", &Actor::cli()).await.unwrap();
        sqlite
            .request_access("demo", "b@example.com", "please", "")
            .await
            .unwrap();
        let records: Vec<AuditRecord> = (0..1234)
            .map(|i| AuditRecord {
                at: i,
                kind: "decision".into(),
                action: "allow".into(),
                ..Default::default()
            })
            .collect();
        sqlite.append_audit(&records).await.unwrap();
        let (_db, pg) = temp_postgres_store().await;
        let mut seen = Vec::new();
        let copied = sqlite
            .copy_into(&pg, |t, done, total| {
                seen.push((t.to_string(), done, total))
            })
            .await
            .unwrap();
        assert!(copied.verified(), "{:?}", copied.tables);
        assert!(seen.contains(&(
            "audit".to_string(),
            1000,
            copied.tables.iter().find(|t| t.0 == "audit").unwrap().1
        )));
        let p = pg.policy(&Resource::App("demo".into())).await.unwrap();
        assert_eq!(p.bindings.len(), 1);
        assert!(
            pg.session("d1d1d1d1d1d1d1d1d1d1", Duration::from_secs(60))
                .await
                .unwrap()
                .is_some()
        );
        // Ids keep counting after the copied ones.
        let (r, _) = pg
            .request_access("demo", "c@example.com", "", "")
            .await
            .unwrap();
        assert!(r.id > 1);
        // Refuses to mix installations.
        let err = sqlite.copy_into(&pg, |_, _, _| {}).await.unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        // And back to a fresh SQLite file.
        let (_d2, back) = temp_store().await;
        assert!(pg.copy_into(&back, |_, _, _| {}).await.unwrap().verified());
    }
}
