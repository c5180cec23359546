//! The audit trail: every access decision and every change, in one table.

use std::sync::Arc;

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::{Actor, Result, Store, now_ms};

/// One audit record, as stored and as printed by `castellan audit --json`.
///
/// Text is `Arc<str>`: a decision's record is made on every request and its text bound to the
/// store's statement, and shared text (the app, the binding, the fixed words) is then counted,
/// not copied, on both sides.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// `decision` or `change`.
    pub kind: Arc<str>,
    pub actor: Arc<str>,
    pub ip: Arc<str>,
    pub app: Arc<str>,
    /// For decisions `allow`, `deny` or `sign-in`; for changes what was done (`policy.add`, …).
    pub action: Arc<str>,
    pub method: Arc<str>,
    pub path: Arc<str>,
    pub target: Arc<str>,
    pub reason: Arc<str>,
    pub binding: Arc<str>,
    pub status: Option<i64>,
    pub latency_us: Option<i64>,
    pub reference: Arc<str>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl AuditRecord {
    /// A fixed word (`decision`, `allow`, a method) as record text, without an allocation: each
    /// thread keeps one shared copy of each word it has used.
    pub fn word(word: &'static str) -> Arc<str> {
        thread_local! {
            static WORDS: std::cell::RefCell<Vec<(&'static str, Arc<str>)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        WORDS.with_borrow_mut(|words| {
            if let Some((_, shared)) = words.iter().find(|(w, _)| std::ptr::eq(*w, word)) {
                return shared.clone();
            }
            let shared: Arc<str> = word.into();
            // The words are the few fixed spellings of outcomes, reasons and methods; a bound
            // keeps a mistake from growing the list.
            if words.len() < 256 {
                words.push((word, shared.clone()));
            }
            shared
        })
    }
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

pub(super) const COLUMNS: &str = "id, at, kind, actor, ip, app, action, method, path, target, reason, binding, status, latency_us, reference, before, after";

pub(super) fn from_row(r: &sqlx::any::AnyRow) -> AuditRecord {
    let json = |i: usize| {
        r.get::<Option<String>, _>(i)
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    let text = |i: usize| -> Arc<str> { r.get::<String, _>(i).into() };
    AuditRecord {
        id: r.get(0),
        at: r.get(1),
        kind: text(2),
        actor: text(3),
        ip: text(4),
        app: text(5),
        action: text(6),
        method: text(7),
        path: text(8),
        target: text(9),
        reason: text(10),
        binding: text(11),
        status: r.get(12),
        latency_us: r.get(13),
        reference: text(14),
        before: json(15),
        after: json(16),
    }
}

/// The most rows one SQLite audit statement inserts.
const SQLITE_ROWS: usize = 256;
const SQLITE_COLUMNS: usize = 14;

/// `INSERT … SELECT * FROM (VALUES (?, …), …) WHERE column1 IS NOT NULL` for `rows` rows (a power
/// of two). A batch fills the rest of the statement with NULL rows, which the statement skips, so
/// nine statement texts serve every batch size: each is prepared once and cached, and padding is
/// less than half the values bound.
fn sqlite_insert_sql(rows: usize) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; SQLITE_ROWS.trailing_zeros() as usize + 1] =
        [const { std::sync::OnceLock::new() }; SQLITE_ROWS.trailing_zeros() as usize + 1];
    debug_assert!(rows.is_power_of_two() && rows <= SQLITE_ROWS);
    SQL[rows.trailing_zeros() as usize].get_or_init(|| {
        let row = format!("({})", vec!["?"; SQLITE_COLUMNS].join(","));
        format!(
            "INSERT INTO audit (at, kind, actor, ip, app, action, method, path, reason, binding, status, latency_us, reference, after) \
             SELECT * FROM (VALUES {}) WHERE column1 IS NOT NULL",
            vec![row; rows].join(",")
        )
    })
}

/// Writes `records` through the native SQLite driver, at most [`SQLITE_ROWS`] to a statement, in
/// one transaction when there is more than one statement.
async fn append_sqlite(pool: &sqlx::SqlitePool, records: &[AuditRecord]) -> Result<()> {
    use sqlx::Arguments;
    use sqlx::sqlite::SqliteArguments;
    /// The statement and arguments for up to [`SQLITE_ROWS`] records.
    fn insert(chunk: &[AuditRecord]) -> (&'static str, SqliteArguments) {
        let rows = chunk.len().next_power_of_two();
        // Shared, not copied, unless a NUL has to be replaced.
        let text = |s: &Arc<str>| -> Arc<str> {
            match text_without_nul(s) {
                std::borrow::Cow::Borrowed(_) => s.clone(),
                std::borrow::Cow::Owned(replaced) => replaced.into(),
            }
        };
        let mut args = SqliteArguments::default();
        args.reserve(rows * SQLITE_COLUMNS, 0);
        let add = |r: std::result::Result<(), sqlx::error::BoxDynError>| {
            r.expect("binding text or an integer to SQLite cannot fail")
        };
        for r in chunk {
            add(args.add(r.at));
            add(args.add(text(&r.kind)));
            add(args.add(text(&r.actor)));
            add(args.add(text(&r.ip)));
            add(args.add(text(&r.app)));
            add(args.add(text(&r.action)));
            add(args.add(text(&r.method)));
            add(args.add(text(&r.path)));
            add(args.add(text(&r.reason)));
            add(args.add(text(&r.binding)));
            add(args.add(r.status));
            add(args.add(r.latency_us));
            add(args.add(text(&r.reference)));
            add(args.add(r.after.as_ref().map(|v| v.to_string())));
        }
        for _ in chunk.len() * SQLITE_COLUMNS..rows * SQLITE_COLUMNS {
            add(args.add(None::<i64>));
        }
        (sqlite_insert_sql(rows), args)
    }
    match records.len() {
        0 => {}
        n if n <= SQLITE_ROWS => {
            let (sql, args) = insert(records);
            sqlx::query_with(sql, args).execute(pool).await?;
        }
        _ => {
            let mut tx = pool.begin().await?;
            for chunk in records.chunks(SQLITE_ROWS) {
                let (sql, args) = insert(chunk);
                sqlx::query_with(sql, args).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// PostgreSQL text cannot hold NUL, and C readers of SQLite text stop at one: a NUL in a claim or
/// header becomes U+FFFD rather than sink the batch or cut the value short.
fn text_without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}").into()
    } else {
        s.into()
    }
}

/// The most JSON one audit insert binds (PostgreSQL's jsonb holds at most 256 MiB; a spool file
/// drained at once can hold more than that).
const CHUNK_BYTES: usize = 4 << 20;

/// `records` as JSON arrays of rows of at most [`CHUNK_BYTES`] (a larger single row goes alone).
fn audit_json_chunks(records: &[AuditRecord]) -> Vec<String> {
    let text = text_without_nul;
    let mut chunks = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for r in records {
        let start = buf.len();
        buf.push(if start == 0 { b'[' } else { b',' });
        let row = (
            r.at,
            text(&r.kind),
            text(&r.actor),
            text(&r.ip),
            text(&r.app),
            text(&r.action),
            text(&r.method),
            text(&r.path),
            text(&r.reason),
            text(&r.binding),
            r.status,
            r.latency_us,
            text(&r.reference),
            r.after.as_ref().map(|v| v.to_string()),
        );
        serde_json::to_writer(&mut buf, &row).expect("an audit row serialises");
        if buf.len() > CHUNK_BYTES && start > 0 {
            // This row starts the next chunk.
            let mut next = buf.split_off(start);
            next[0] = b'[';
            buf.push(b']');
            chunks
                .push(String::from_utf8(std::mem::replace(&mut buf, next)).expect("JSON is UTF-8"));
        }
    }
    if !buf.is_empty() {
        buf.push(b']');
        chunks.push(String::from_utf8(buf).expect("JSON is UTF-8"));
    }
    chunks
}

impl Store {
    /// Records a change inside the transaction that makes it: both land, or neither.
    pub(super) async fn record_change(
        tx: &mut Transaction<'static, Any>,
        actor: &Actor,
        action: &str,
        target: &str,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<()> {
        let app = target.strip_prefix("app:").unwrap_or("");
        sqlx::query(
            "INSERT INTO audit (at, kind, actor, ip, app, action, target, before, after) VALUES ($1, 'change', $2, $3, $4, $5, $6, $7, $8)",
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

    /// Writes a batch of decision records, all or none.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        match &self.sqlite_audit {
            Some(pool) => append_sqlite(pool, records).await,
            None => self.append_postgres(records).await,
        }
    }

    /// Each statement binds one value: up to [`CHUNK_BYTES`] of rows as a JSON array, which
    /// PostgreSQL takes apart itself. Binding each column of each row instead cost more than the
    /// insert (sqlx's `Any` layer looks each parameter up by name).
    async fn append_postgres(&self, records: &[AuditRecord]) -> Result<()> {
        let sql = "INSERT INTO audit (at, kind, actor, ip, app, action, method, path, reason, binding, status, latency_us, reference, after) \
                   SELECT (r ->> 0)::bigint, r ->> 1, r ->> 2, r ->> 3, r ->> 4, r ->> 5, r ->> 6, \
                          r ->> 7, r ->> 8, r ->> 9, (r ->> 10)::bigint, (r ->> 11)::bigint, r ->> 12, r ->> 13 \
                   FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, n) ORDER BY n";
        match audit_json_chunks(records).as_slice() {
            [] => {}
            [one] => {
                sqlx::query(sql).bind(one).execute(&self.pool).await?;
            }
            many => {
                let mut tx = self.pool.begin().await?;
                for chunk in many {
                    sqlx::query(sql).bind(chunk).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Records matching `f`, oldest first within the newest `f.limit`.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        enum Arg<'a> {
            Text(&'a str),
            Int(i64),
        }
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1");
        let mut args: Vec<Arg<'_>> = Vec::new();
        let mut cond = |sql_part: &str, arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {sql_part} ${}", args.len()));
        };
        if let Some(app) = &f.app {
            cond("app =", Arg::Text(app));
        }
        if let Some(t) = f.since_ms {
            cond("at >=", Arg::Int(t));
        }
        if let Some(t) = f.until_ms {
            cond("at <=", Arg::Int(t));
        }
        if let Some(d) = &f.decision {
            cond("kind = 'decision' AND action =", Arg::Text(d));
        }
        if let Some(k) = &f.kind {
            cond("kind =", Arg::Text(k));
        }
        if let Some(id) = f.after_id {
            cond("id >", Arg::Int(id));
        }
        if let Some(actor) = &f.actor {
            args.extend([Arg::Text(actor), Arg::Text(actor)]);
            let n = args.len();
            sql.push_str(" AND ");
            sql.push_str(&super::audit_actors::by_actor(n - 1, n));
        }
        args.push(Arg::Int(f.limit.clamp(1, 100_000)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for a in args {
            q = match a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            };
        }
        let mut rows: Vec<AuditRecord> = q
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect();
        rows.reverse();
        Ok(rows)
    }

    /// Deletes records older than `before_ms`, and their entries in the index by person.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Every record removed has an id up to this one: the index's entries are found by id.
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM audit WHERE at < $1")
            .bind(before_ms)
            .fetch_one(&mut *tx)
            .await?;
        let Some(last) = last else {
            return Ok(0);
        };
        let removed = sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM audit_actors WHERE id <= $1 AND at < $2")
            .bind(last)
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;

    #[test]
    fn a_fixed_word_is_shared_not_copied_and_reads_as_itself() {
        use super::AuditRecord;
        let (a, b) = (AuditRecord::word("allow"), AuditRecord::word("allow"));
        assert!(std::sync::Arc::ptr_eq(&a, &b), "one copy per thread");
        assert_eq!(&*a, "allow");
        let deny = AuditRecord::word("deny");
        assert_eq!(&*deny, "deny");
        assert!(!std::sync::Arc::ptr_eq(&a, &deny));
    }
    use super::*;

    /// Appends `batch` to an empty trail and reads the whole trail back, oldest first.
    async fn written_back(s: &Store, batch: &[AuditRecord]) -> Vec<AuditRecord> {
        s.append_audit(batch).await.unwrap();
        let all = s
            .audit(&AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), batch.len());
        all
    }

    store_test! {
        async fn batches_of_any_size_are_written_whole_and_in_order(s: Store) {
            // SQLite pads each statement to a power of two rows and cuts batches at 256 rows:
            // sizes around those edges, each written as it came.
            let sizes = [1, 2, 3, 127, 128, 129, 255, 256, 257, 600];
            let mut i = 0;
            for n in sizes {
                let batch: Vec<AuditRecord> = (i..i + n)
                    .map(|i| AuditRecord {
                        at: i,
                        kind: "decision".into(),
                        actor: format!("u{i}@x.com").into(),
                        action: "allow".into(),
                        ..Default::default()
                    })
                    .collect();
                s.append_audit(&batch).await.unwrap();
                i += n;
            }
            let all = s
                .audit(&AuditFilter {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(all.len() as i64, i);
            assert!(all.windows(2).all(|w| w[0].id < w[1].id));
            assert!(all.iter().enumerate().all(|(i, r)| *r.actor == format!("u{i}@x.com") && r.at == i as i64));
        }
    }

    #[test]
    fn large_batches_are_cut_into_chunks_of_whole_rows() {
        let row = |i: usize| AuditRecord {
            at: i as i64,
            path: "/".repeat(100_000).into(),
            ..Default::default()
        };
        let records: Vec<AuditRecord> = (0..100).map(row).collect();
        let chunks = audit_json_chunks(&records);
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        let mut at = 0;
        for c in &chunks {
            assert!(c.len() <= CHUNK_BYTES + 200_000, "{}", c.len());
            let rows: Vec<serde_json::Value> = serde_json::from_str(c).unwrap();
            for r in rows {
                assert_eq!(r[0], at, "rows stay whole and in order");
                at += 1;
            }
        }
        assert_eq!(at, 100);
        assert!(audit_json_chunks(&[]).is_empty());
        let huge = AuditRecord {
            path: "x".repeat(CHUNK_BYTES * 2).into(),
            ..Default::default()
        };
        assert_eq!(audit_json_chunks(&[huge]).len(), 1, "a huge row goes alone");
    }

    store_test! {
        async fn a_batch_larger_than_one_chunk_is_written_whole(s: Store) {
            let batch: Vec<AuditRecord> = (0..120)
                .map(|i| AuditRecord {
                    at: i,
                    kind: "decision".into(),
                    actor: format!("u{i}@x.com").into(),
                    action: "allow".into(),
                    path: format!("/{}", "p".repeat(60_000)).into(),
                    ..Default::default()
                })
                .collect();
            assert!(audit_json_chunks(&batch).len() > 1);
            let all = written_back(&s, &batch).await;
            assert!(all.iter().enumerate().all(|(i, r)| r.at == i as i64 && r.path.len() == 60_001));
        }
    }

    store_test! {
        async fn every_field_comes_back_as_it_was_written(s: Store) {
            // Text that JSON escapes (PostgreSQL's batches travel as one JSON value) or that SQL
            // quotes, numbers at their limits and missing numbers must come back unchanged.
            let odd = AuditRecord {
                at: i64::MAX,
                kind: "decision".into(),
                actor: "o'brien\"@x.com".into(),
                ip: "::1".into(),
                app: "démo ✓".into(),
                action: "deny".into(),
                method: "PROPFIND".into(),
                path: "/a\\b\n\t\u{0}\u{7f}/$1/?x=1&y='2'".into(),
                reason: "0".into(),
                binding: "[\"not\", \"json\"]".into(),
                status: None,
                latency_us: Some(i64::MIN),
                reference: "".into(),
                ..Default::default()
            };
            let plain = AuditRecord {
                at: 1,
                kind: "decision".into(),
                actor: "anonymous".into(),
                action: "allow".into(),
                status: Some(200),
                latency_us: None,
                ..Default::default()
            };
            let all = written_back(&s, &[odd.clone(), plain.clone()]).await;
            let written = AuditRecord {
                id: all[0].id,
                path: odd.path.replace('\0', "\u{fffd}").into(),
                ..odd
            };
            assert_eq!(written, all[0]);
            assert_eq!(AuditRecord { id: all[1].id, ..plain }, all[1]);
        }
    }

    store_test! {
        async fn decisions_and_changes_are_queryable(s: Store) {
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
            assert_eq!(&*all[3].kind, "change");
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
            assert_eq!(&*denied_demo[0].actor, "b@x.com");
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
}
