//! What writing the audit trail costs, per decision, on SQLite: `cargo bench --bench audit`.
//!
//! The audit writer hands the store batches of decision records; how large a batch is depends on
//! the load and on how long the writer lets records gather. This writes 100,000 records through
//! `Store::append_audit` in batches of several sizes, from 1, 50 and 1,000 people (the trail's
//! `(actor, at)` index is written where each person's records are, so the number of people is
//! what decides how many pages a batch touches), and prints the CPU time of the whole process
//! (castellan's side and SQLite's thread) per record. `cargo test --bench audit` runs a
//! 2,000-record smoke.

use std::sync::Arc;
use std::time::Instant;

use castellan::config::StoreLocation;
use castellan::store::{AuditRecord, Store};

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
        "{:>7} {:>6} {:>14} {:>12} {:>10}",
        "people", "batch", "CPU µs/record", "records/s", "file MiB"
    );
    for actors in [1, 50, 1_000] {
        for batch in [75, 750] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("audit.db");
            let store = Store::open(&StoreLocation::Sqlite(db.clone()))
                .await
                .unwrap();
            let records: Vec<AuditRecord> = (0..total).map(|i| record(i, actors)).collect();
            let (cpu, wall) = (cpu_seconds(), Instant::now());
            for chunk in records.chunks(batch) {
                store.append_audit(chunk).await.unwrap();
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
            let size: u64 = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            println!(
                "{actors:>7} {batch:>6} {:>14.2} {:>12.0} {:>10.1}",
                cpu * 1e6 / total as f64,
                total as f64 / wall,
                size as f64 / (1 << 20) as f64
            );
        }
    }
}
