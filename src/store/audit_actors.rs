//! The audit trail by person, indexed in bulk. An index on the trail's `(actor, at)` costs a page
//! write a record when many people are signed in (each record lands where that person's records
//! are); `audit_actors` holds each record's id, person and time instead, copied many at a time by
//! [`Store::index_audit`], which the server runs every second. A query by person reads it for
//! the records copied so far and the trail itself for the few after them (see [`Store::audit`]), so
//! it finds every record whether or not the copy has caught up.

use sqlx::Row;

use super::{Result, Store};

/// The most records one statement of [`Store::index_audit`] copies. On SQLite a statement holds
/// the store's one write lock, which a sign-in or a session's touch may be waiting for: 10,000
/// records took 16 ms (median) and at most 40 ms on the audit bench.
const CHUNK: i64 = 10_000;

/// The part of a query's `WHERE` that keeps one person's records: those copied to `audit_actors`,
/// and those after the last one copied. `$actor` and `$again` are the person, bound twice.
pub(super) fn by_actor(actor: usize, again: usize) -> String {
    format!(
        "id IN (SELECT id FROM audit_actors WHERE actor = ${actor} \
         UNION ALL SELECT id FROM audit WHERE id > (SELECT COALESCE(MAX(id), 0) FROM audit_actors) \
         AND actor = ${again})"
    )
}

/// [`Store::index_audit`] on `$pool` (SQLite's own pool or the `Any` one: the same statements,
/// checked for each).
macro_rules! index_on {
    ($pool:expr, $settled_ms:expr) => {{
        let mut copied = 0;
        loop {
            let from: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM audit_actors")
                .fetch_one($pool)
                .await?;
            let chunk = sqlx::query(
                "SELECT COUNT(*), MAX(id), MIN(CASE WHEN at >= $2 THEN id END) \
                 FROM (SELECT id, at FROM audit WHERE id > $1 ORDER BY id LIMIT $3) AS chunk",
            )
            .bind(from)
            .bind($settled_ms)
            .bind(CHUNK)
            .fetch_one($pool)
            .await?;
            let (count, last, unsettled): (i64, Option<i64>, Option<i64>) =
                (chunk.get(0), chunk.get(1), chunk.get(2));
            let upto = match (last, unsettled) {
                (_, Some(first_unsettled)) => first_unsettled - 1,
                (Some(last), None) => last,
                (None, None) => break,
            };
            if upto > from {
                copied += sqlx::query(
                    "INSERT INTO audit_actors (id, actor, at) \
                     SELECT id, actor, at FROM audit WHERE id > $1 AND id <= $2 ORDER BY actor, at \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(from)
                .bind(upto)
                .execute($pool)
                .await?
                .rows_affected();
            }
            if unsettled.is_some() || count < CHUNK {
                break;
            }
        }
        Ok(copied)
    }};
}

impl Store {
    /// Copies the records written since the last call, in id order up to the first one made at
    /// or after `settled_ms` (one whose write may still commit late has not settled; see
    /// [`Store::audit_after`]), into the index by person. Returns how many were copied. Safe to
    /// run from several replicas at once: a record copied twice is kept once.
    ///
    /// On SQLite it runs on the audit writer's own connection: that connection's page cache
    /// already holds the records just written (another connection would read them again and
    /// keep a second copy of those pages), and the writer and the copy take turns rather than
    /// wait for each other's lock.
    pub async fn index_audit(&self, settled_ms: i64) -> Result<u64> {
        match &self.sqlite_audit {
            Some(pool) => index_on!(pool, settled_ms),
            None => index_on!(&self.pool, settled_ms),
        }
    }

    /// How many records were written after the last one in the index by person, from their ids
    /// (counting them would read their pages; ids can skip on PostgreSQL, so at most that many).
    pub async fn audit_unindexed(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM audit) \
                  - (SELECT COALESCE(MAX(id), 0) FROM audit_actors)",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;

    store_test! {
        async fn a_person_s_records_are_found_before_and_after_they_are_indexed(s: Store) {
            use crate::store::{AuditFilter, AuditRecord};
            let now = crate::clock::now_ms();
            let record = |actor: &str, at: i64, path: &str| AuditRecord {
                at,
                kind: "decision".into(),
                actor: actor.into(),
                action: "allow".into(),
                path: path.into(),
                ..Default::default()
            };
            let paths = |records: Vec<AuditRecord>| {
                records.iter().map(|r| r.path.to_string()).collect::<Vec<_>>()
            };
            let of = |actor: &str| AuditFilter {
                actor: Some(actor.into()),
                limit: 100,
                ..Default::default()
            };
            s.append_audit(&[
                record("a@x.com", now - 60_000, "/a1"),
                record("b@x.com", now - 60_000, "/b1"),
                record("a@x.com", now - 50_000, "/a2"),
                record("a@x.com", now, "/a3"),
                record("b@x.com", now - 50_000, "/b2"),
            ])
            .await
            .unwrap();
            // Nothing indexed yet: found in the trail itself.
            assert_eq!(paths(s.audit(&of("a@x.com")).await.unwrap()), ["/a1", "/a2", "/a3"]);
            // Indexed up to the first record that has not settled (/a3), not past it.
            let settled = now - 2_000;
            assert_eq!(s.audit_unindexed().await.unwrap(), 5);
            assert_eq!(s.index_audit(settled).await.unwrap(), 3);
            assert_eq!(s.index_audit(settled).await.unwrap(), 0, "nothing new");
            assert_eq!(s.audit_unindexed().await.unwrap(), 2);
            assert_eq!(paths(s.audit(&of("a@x.com")).await.unwrap()), ["/a1", "/a2", "/a3"]);
            assert_eq!(paths(s.audit(&of("b@x.com")).await.unwrap()), ["/b1", "/b2"]);
            s.append_audit(&[record("b@x.com", now, "/b3")]).await.unwrap();
            assert_eq!(s.index_audit(now + 1).await.unwrap(), 3);
            // Partly from the index, partly from the trail; newest first within the limit.
            s.append_audit(&[record("a@x.com", now, "/a4")]).await.unwrap();
            assert_eq!(paths(s.audit(&of("a@x.com")).await.unwrap()), ["/a1", "/a2", "/a3", "/a4"]);
            let newest = s.audit(&AuditFilter { limit: 2, ..of("a@x.com") }).await.unwrap();
            assert_eq!(paths(newest), ["/a3", "/a4"]);
            let denied = AuditFilter { decision: Some("deny".into()), ..of("a@x.com") };
            assert!(s.audit(&denied).await.unwrap().is_empty(), "the other filters still apply");
            assert!(s.audit(&of("c@x.com")).await.unwrap().is_empty());

            // Pruning removes the index's entries with the records.
            assert_eq!(s.prune_audit(now - 55_000).await.unwrap(), 2);
            assert_eq!(paths(s.audit(&of("a@x.com")).await.unwrap()), ["/a2", "/a3", "/a4"]);
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_actors")
                .fetch_one(&s.pool)
                .await
                .unwrap();
            assert_eq!(left, 4, "/a2, /a3, /b2 and /b3 are indexed; /a4 is not yet");
        }
    }
}
