//! What writing the audit trail costs, per decision, on SQLite: `cargo bench --bench audit`.
//!
//! The audit writer hands the store batches of decision records; how large a batch is depends on
//! the load and on how long the writer lets records gather. This writes 100,000 records through
//! `Store::append_audit` in batches of several sizes, from 1, 50 and 1,000 people (an index by
//! person puts each record where that person's records are, so the number of people decides how
//! many pages a batch touches), and prints the CPU time of the whole process (castellan's side
//! and SQLite's thread) per record. It does so three ways: as the store does it (the index by
//! person built in bulk by `Store::index_audit`, here every 15,000 records, which is every second
//! at 15,000 requests a second, and once at the end, all counted); with an index on the
//! trail's `(actor, at)` written with every record instead, as the store did before; and with no
//! secondary index at all, which is the least a decision record can cost as a row of the store.
//! `cargo test --bench audit` runs a 2,000-record smoke.

use std::sync::Arc;
use std::time::Instant;

use castellan::config::StoreLocation;
use castellan::store::{AuditRecord, Store};
use sqlx::Connection;

/// How the trail is indexed in a run.
#[derive(Clone, Copy, PartialEq)]
enum Indexes {
    /// As the store does it: by time and by (app, time) with each write, by person in bulk.
    Store,
    /// By time, by (app, time) and by (person, time), all with each write.
    PerWrite,
    /// None: the table and its row id only.
    None,
}

/// Records between two runs of the bulk index (a second at 15,000 requests a second).
const INDEX_EVERY: usize = 15_000;

impl Indexes {
    fn label(self) -> &'static str {
        match self {
            Indexes::Store => "store",
            Indexes::PerWrite => "per write",
            Indexes::None => "none",
        }
    }

    /// The statements that make a new store's trail indexed this way.
    fn setup(self) -> &'static [&'static str] {
        match self {
            Indexes::Store => &[],
            Indexes::PerWrite => &["CREATE INDEX audit_by_actor ON audit (actor, at)"],
            Indexes::None => &["DROP INDEX audit_by_app", "DROP INDEX audit_by_time"],
        }
    }
}

/// The process's CPU time (user and system, every thread) in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux's /proc");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    ticks / 100.0
}

/// A decision record as the gate makes one: fixed words shared, the person and path its own.
fn record(i: usize, actors: usize) -> AuditRecord {
    AuditRecord {
        at: 1_800_000_000_000 + i as i64,
        kind: AuditRecord::word("decision"),
        actor: format!("user{}@example.com", (i * 7919) % actors).into(),
        ip: "10.1.2.3".into(),
        app: AuditRecord::word("demo"),
        action: AuditRecord::word("allow"),
        method: AuditRecord::word("GET"),
        path: format!("/reports/{}", i % 100).into(),
        reason: AuditRecord::word("policy"),
        binding: Arc::from("roles/iap.httpsResourceAccessor user:someone@example.com"),
        status: Some(200),
        latency_us: Some(900),
        reference: AuditRecord::word(""),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let total = if bench { 100_000 } else { 2_000 };
    println!(
        "{total} decision records a run, SQLite (WAL, synchronous = NORMAL), CPU of the whole process"
    );
    println!(
        "{:>9} {:>7} {:>6} {:>14} {:>12} {:>10}",
        "indexes", "people", "batch", "CPU µs/record", "records/s", "file MiB"
    );
    for indexes in [Indexes::Store, Indexes::PerWrite, Indexes::None] {
        for actors in [1, 50, 1_000] {
            for batch in [75, 750] {
                let dir = tempfile::tempdir().unwrap();
                let db = dir.path().join("audit.db");
                let store = Store::open(&StoreLocation::Sqlite(db.clone()))
                    .await
                    .unwrap();
                if !indexes.setup().is_empty() {
                    let mut conn =
                        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                            .await
                            .unwrap();
                    for statement in indexes.setup() {
                        sqlx::query(sqlx::AssertSqlSafe(*statement))
                            .execute(&mut conn)
                            .await
                            .unwrap();
                    }
                    conn.close().await.unwrap();
                }
                let records: Vec<AuditRecord> = (0..total).map(|i| record(i, actors)).collect();
                let (cpu, wall) = (cpu_seconds(), Instant::now());
                let mut unindexed = 0;
                for chunk in records.chunks(batch) {
                    store.append_audit(chunk).await.unwrap();
                    unindexed += chunk.len();
                    if indexes == Indexes::Store && unindexed >= INDEX_EVERY {
                        store.index_audit(i64::MAX).await.unwrap();
                        unindexed = 0;
                    }
                }
                if indexes == Indexes::Store {
                    store.index_audit(i64::MAX).await.unwrap();
                }
                let (cpu, wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
                let written = store
                    .audit(&castellan::store::AuditFilter {
                        limit: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(
                    written.last().map(|r| r.id),
                    Some(total as i64),
                    "every record is in the trail"
                );
                let someone = record(0, actors).actor;
                let theirs = store
                    .audit(&castellan::store::AuditFilter {
                        actor: Some(someone.to_string()),
                        limit: 100_000,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(
                    theirs.len(),
                    records.iter().filter(|r| r.actor == someone).count(),
                    "a query by person finds every record of {someone}"
                );
                let size: u64 = std::fs::read_dir(dir.path())
                    .unwrap()
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum();
                println!(
                    "{:>9} {actors:>7} {batch:>6} {:>14.2} {:>12.0} {:>10.1}",
                    indexes.label(),
                    cpu * 1e6 / total as f64,
                    total as f64 / wall,
                    size as f64 / (1 << 20) as f64
                );
            }
        }
    }
}
