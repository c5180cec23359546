//! Where each audit sink is in the audit trail: the id of the last record it delivered. The
//! trail itself is the sinks' spool: a sink that is down falls behind and catches up, in order.

use sqlx::{AssertSqlSafe, Row};

use super::audit::{COLUMNS, from_row};
use super::{AuditRecord, Result, Store};

impl Store {
    /// The id of the last record `sink` delivered (0: none yet).
    pub async fn audit_cursor(&self, sink: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT last_id FROM audit_cursors WHERE sink = $1")
                .bind(sink)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(0),
        )
    }

    /// Records that `sink` delivered everything up to `last_id`.
    pub async fn set_audit_cursor(&self, sink: &str, last_id: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_cursors (sink, last_id) VALUES ($1, $2) \
             ON CONFLICT (sink) DO UPDATE SET last_id = excluded.last_id",
        )
        .bind(sink)
        .bind(last_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` records after `after_id`, oldest first, written before `before_ms` (records
    /// are read once they have settled, so one whose write committed late is not skipped).
    pub async fn audit_after(
        &self,
        after_id: i64,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit WHERE id > $1 AND at < $2 ORDER BY id LIMIT $3"
        )))
        .bind(after_id)
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// How many records are after `after_id` (a sink's backlog).
    pub async fn audit_backlog(&self, after_id: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM audit WHERE id > $1")
            .bind(after_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<i64, _>(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use crate::store::Actor;

    store_test! {
        async fn a_cursor_reads_the_trail_in_order_from_where_it_stopped(s: Store) {
            let records: Vec<crate::store::AuditRecord> = (0..5)
                .map(|i| crate::store::AuditRecord {
                    at: crate::clock::now_ms(),
                    kind: "decision".into(),
                    actor: Actor::cli().name.into(),
                    path: format!("/t{i}").into(),
                    ..Default::default()
                })
                .collect();
            s.append_audit(&records).await.unwrap();
            assert_eq!(s.audit_cursor("siem").await.unwrap(), 0);
            let later = crate::clock::now_ms() + 60_000;
            let first = s.audit_after(0, later, 3).await.unwrap();
            assert_eq!(first.len(), 3);
            assert!(first.windows(2).all(|w| w[0].id < w[1].id));
            s.set_audit_cursor("siem", first[2].id).await.unwrap();
            assert_eq!(s.audit_backlog(first[2].id).await.unwrap(), 2);
            let rest = s.audit_after(s.audit_cursor("siem").await.unwrap(), later, 10).await.unwrap();
            assert_eq!(rest.iter().map(|r| &*r.path).collect::<Vec<_>>(), ["/t3", "/t4"]);
            // Records not settled yet wait.
            assert!(s.audit_after(0, 0, 10).await.unwrap().is_empty());
        }
    }
}
