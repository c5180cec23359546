//! The audit trail: every access decision and every change, in one table.

use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::{Actor, Result, Store, now_ms};

/// One audit record, as stored and as printed by `castellan audit --json`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// `decision` or `change`.
    pub kind: String,
    pub actor: String,
    pub ip: String,
    pub app: String,
    /// For decisions `allow`, `deny` or `sign-in`; for changes what was done (`policy.add`, …).
    pub action: String,
    pub method: String,
    pub path: String,
    pub target: String,
    pub reason: String,
    pub binding: String,
    pub status: Option<i64>,
    pub latency_us: Option<i64>,
    pub reference: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What `castellan audit` and the API filter on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub app: Option<String>,
    pub actor: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// `allow`, `deny` or `sign-in` (decisions only).
    pub decision: Option<String>,
    pub kind: Option<String>,
    /// Only records with a larger id (for following).
    pub after_id: Option<i64>,
    pub limit: i64,
}

const COLUMNS: &str = "id, at, kind, actor, ip, app, action, method, path, target, reason, binding, status, latency_us, reference, before, after";

fn from_row(r: &sqlx::sqlite::SqliteRow) -> AuditRecord {
    let json = |i: usize| {
        r.get::<Option<String>, _>(i)
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    AuditRecord {
        id: r.get(0),
        at: r.get(1),
        kind: r.get(2),
        actor: r.get(3),
        ip: r.get(4),
        app: r.get(5),
        action: r.get(6),
        method: r.get(7),
        path: r.get(8),
        target: r.get(9),
        reason: r.get(10),
        binding: r.get(11),
        status: r.get(12),
        latency_us: r.get(13),
        reference: r.get(14),
        before: json(15),
        after: json(16),
    }
}

impl Store {
    /// Records a change inside the transaction that makes it: both land, or neither.
    pub(super) async fn record_change(
        tx: &mut Transaction<'static, Sqlite>,
        actor: &Actor,
        action: &str,
        target: &str,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<()> {
        let app = target.strip_prefix("app:").unwrap_or("");
        sqlx::query(
            "INSERT INTO audit (at, kind, actor, ip, app, action, target, before, after) VALUES (?, 'change', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(now_ms())
        .bind(&actor.name)
        .bind(&actor.ip)
        .bind(app)
        .bind(action)
        .bind(target)
        .bind(before.map(|v| v.to_string()))
        .bind(after.map(|v| v.to_string()))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Writes a batch of decision records in one transaction.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in records.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO audit (at, kind, actor, ip, app, action, method, path, reason, binding, status, latency_us, reference) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.at)
                    .push_bind(&r.kind)
                    .push_bind(&r.actor)
                    .push_bind(&r.ip)
                    .push_bind(&r.app)
                    .push_bind(&r.action)
                    .push_bind(&r.method)
                    .push_bind(&r.path)
                    .push_bind(&r.reason)
                    .push_bind(&r.binding)
                    .push_bind(r.status)
                    .push_bind(r.latency_us)
                    .push_bind(&r.reference);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records matching `f`, oldest first within the newest `f.limit`.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1"));
        if let Some(app) = &f.app {
            q.push(" AND app = ").push_bind(app);
        }
        if let Some(actor) = &f.actor {
            q.push(" AND actor = ").push_bind(actor);
        }
        if let Some(t) = f.since_ms {
            q.push(" AND at >= ").push_bind(t);
        }
        if let Some(t) = f.until_ms {
            q.push(" AND at <= ").push_bind(t);
        }
        if let Some(d) = &f.decision {
            q.push(" AND kind = 'decision' AND action = ").push_bind(d);
        }
        if let Some(k) = &f.kind {
            q.push(" AND kind = ").push_bind(k);
        }
        if let Some(id) = f.after_id {
            q.push(" AND id > ").push_bind(id);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(f.limit.clamp(1, 100_000));
        let mut rows: Vec<AuditRecord> = q
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect();
        rows.reverse();
        Ok(rows)
    }

    /// Deletes records older than `before_ms`.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM audit WHERE at < ?")
            .bind(before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::super::temp_store;
    use super::*;

    #[tokio::test]
    async fn decisions_and_changes_are_queryable() {
        let (_d, s) = temp_store().await;
        let rec = |actor: &str, action: &str, app: &str| AuditRecord {
            at: now_ms(),
            kind: "decision".into(),
            actor: actor.into(),
            app: app.into(),
            action: action.into(),
            method: "GET".into(),
            path: "/".into(),
            ..Default::default()
        };
        s.append_audit(&[
            rec("a@x.com", "allow", "demo"),
            rec("b@x.com", "deny", "demo"),
            rec("a@x.com", "deny", "other"),
        ])
        .await
        .unwrap();
        s.create_group("g", "", &Actor::cli()).await.unwrap();
        let all = s
            .audit(&AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].kind, "change");
        let denied_demo = s
            .audit(&AuditFilter {
                app: Some("demo".into()),
                decision: Some("deny".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(denied_demo.len(), 1);
        assert_eq!(denied_demo[0].actor, "b@x.com");
        let after = s
            .audit(&AuditFilter {
                after_id: Some(all[1].id),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(s.prune_audit(now_ms() + 1).await.unwrap(), 4);
    }
}
