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

    /// Up to `limit` records after `after_id`, in id order, that have settled: the batch ends
    /// before the first record made at or after `settled_ms`, so a cursor moved to its last
    /// record never passes one still settling. Ids and times are not in the same order: a
    /// change is written at once, while decisions made before it wait up to the audit writer's
    /// linger in memory and take larger ids; a batch that skipped an unsettled record to take
    /// settled ones after it would leave that record behind the cursor for good.
    pub async fn audit_after(
        &self,
        after_id: i64,
        settled_ms: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(from_row)
            .take_while(|r| r.at < settled_ms)
            .collect())
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

    store_test! {
        async fn a_batch_stops_at_the_first_record_still_settling(s: Store) {
            // A change is written at once; decisions made just before it wait in the writer and
            // take larger ids with older times.
            let now = crate::clock::now_ms();
            let record = |at: i64, path: &str| crate::store::AuditRecord {
                at,
                kind: "decision".into(),
                actor: Actor::cli().name.into(),
                path: path.into(),
                ..Default::default()
            };
            s.append_audit(&[record(now - 10_000, "/old"), record(now, "/new"), record(now - 10_000, "/late")])
                .await
                .unwrap();
            let settled = now - 2_000;
            let batch = s.audit_after(0, settled, 10).await.unwrap();
            assert_eq!(
                batch.iter().map(|r| &*r.path).collect::<Vec<_>>(),
                ["/old"],
                "the batch must end before /new, or a cursor moved to /late leaves /new behind"
            );
            let later = s.audit_after(batch[0].id, now + 1, 10).await.unwrap();
            assert_eq!(later.iter().map(|r| &*r.path).collect::<Vec<_>>(), ["/new", "/late"]);
        }
    }
}
