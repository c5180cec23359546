//! Writes access decisions to the audit trail off the request path, in batches.
//!
//! Changes are audited by the store in the same transaction that makes them; decisions are many,
//! so requests hand them to a bounded queue that a background task writes 50 milliseconds after
//! the first of them arrives, all that has gathered in one transaction.
//! When the store cannot take them (PostgreSQL restarting, a network cut), batches go to an
//! on-disk spool (`audit_spool`, JSON lines, one file per process, at most [`SPOOL_MAX_BYTES`])
//! and are written to the store once it answers again, so an outage loses no record. Records
//! spooled by a process that then stopped are picked up by the next one to start. When decisions
//! come faster than the store records them, the queue fills and requests wait for room (back
//! pressure) instead of losing records. Only a full spool or a writer stuck for two seconds drops
//! records, counted in `castellan_audit_dropped_total`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditRecord, Store};

const QUEUE: usize = 65_536;
const BATCH: usize = 2_000;
/// How long the writer lets records gather after the first one arrives. A record costs SQLite
/// less the more records share its transaction (the pages a batch touches are written once):
/// `cargo bench --bench audit` measured 9.7 µs of CPU a record in batches of 75 and 5.9 µs in
/// batches of 750 from one person, 17.3 and 10.5 µs from 50 people. At 15,000 requests a
/// second 50 ms gathers about 750; a record waits at most that long (plus the write) before it
/// is in the store, and a graceful stop writes what is waiting first.
const LINGER: Duration = Duration::from_millis(50);
/// How long a request waits for room in a full audit queue before its record is dropped.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The most the spool folder may hold.
pub const SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How often a spooled backlog is offered to the store.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

enum Msg {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    dropped: Counter,
}

impl AuditSink {
    pub fn start(
        store: Store,
        spool: Spool,
        dropped: Counter,
        spooled: Gauge,
        set_aside: Gauge,
    ) -> AuditSink {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(
            store,
            spool,
            rx,
            dropped.clone(),
            spooled,
            set_aside,
        ));
        AuditSink { tx, dropped }
    }

    /// Queues a decision record. When the queue is full (more decisions a second than the store
    /// takes), the request waits for room, up to [`QUEUE_WAIT`]: the audit trail stays whole and
    /// throughput drops to what the store can record. Only a writer that is stuck for that long
    /// loses records, counted in `castellan_audit_dropped_total`.
    pub async fn record(&self, r: AuditRecord) {
        let msg = match self.tx.try_send(Msg::Record(Box::new(r))) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped.inc();
                return;
            }
        };
        if let Ok(Ok(())) = tokio::time::timeout(QUEUE_WAIT, self.tx.send(msg)).await {
            return;
        }
        if self.dropped.get() == 0 {
            tracing::error!(
                "the audit writer has taken no record for {QUEUE_WAIT:?} (is the store stuck?): decision records are being dropped"
            );
        }
        self.dropped.inc();
    }

    /// Waits until everything recorded so far is in the store or the spool.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Decision records waiting on disk for the store.
pub struct Spool {
    dir: PathBuf,
    /// This process's file; others' files in `dir` are drained too, never written.
    file: PathBuf,
    /// How many times in a row the store refused each file's records (reachable, but saying no).
    refusals: HashMap<PathBuf, u32>,
}

/// After this many refusals in a row a spool file is set aside (renamed `*.refused`), so one
/// batch the store will never take cannot hold every later record back.
const REFUSALS_BEFORE_SET_ASIDE: u32 = 3;

impl Spool {
    /// The spool for `store` under `dir` (a folder per store, so processes on one machine that
    /// use different stores never drain into each other's).
    pub fn new(dir: &Path, store: &crate::config::StoreLocation) -> Spool {
        let dir = dir.join(&crate::crypto::digest(&store.to_string())[..16]);
        Spool {
            file: Spool::new_file(&dir),
            dir,
            refusals: HashMap::new(),
        }
    }

    fn new_file(dir: &Path) -> PathBuf {
        dir.join(format!(
            "{}-{}.jsonl",
            std::process::id(),
            crate::clock::now_ms()
        ))
    }

    /// Appends `records`, one JSON line each, under an exclusive lock.
    fn append(&self, records: &[AuditRecord]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut lines = Vec::new();
        for r in records {
            serde_json::to_writer(&mut lines, r)?;
            lines.push(b'\n');
        }
        if self.size()? + lines.len() as u64 > SPOOL_MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "the spool {} is full ({} MiB)",
                self.dir.display(),
                SPOOL_MAX_BYTES >> 20
            )));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        f.lock()?;
        f.write_all(&lines)?;
        f.sync_data()
    }

    /// The files waiting to be written, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        self.with_extension("jsonl")
    }

    /// The files set aside after the store refused them.
    fn set_aside(&self) -> Vec<PathBuf> {
        self.with_extension("refused")
    }

    fn with_extension(&self, ext: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        files
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self
            .files()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum())
    }

    /// Writes every spooled record to the store, file by file (each file in one transaction,
    /// then deleted). Returns how many were written; stops at the first store error, except that
    /// a file the store has refused [`REFUSALS_BEFORE_SET_ASIDE`] times in a row while reachable
    /// is renamed `*.refused`, kept for an operator, and skipped from then on.
    async fn drain(&mut self, store: &Store) -> Result<usize, crate::store::Error> {
        let mut written = 0;
        for path in self.files() {
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            // Another process is writing or draining this file: leave it to them.
            if file.try_lock().is_err() {
                continue;
            }
            let mut records = Vec::new();
            for (n, line) in std::io::BufReader::new(&file).lines().enumerate() {
                match line.map(|l| serde_json::from_str::<AuditRecord>(&l)) {
                    Ok(Ok(r)) => records.push(r),
                    // A line cut short by a crash mid-write: the rest of the file still counts.
                    Ok(Err(e)) => tracing::warn!(
                        "skipping line {} of the audit spool {}: {e}",
                        n + 1,
                        path.display()
                    ),
                    Err(_) => break,
                }
            }
            if let Err(e) = store.append_audit(&records).await {
                if e.is_transient() {
                    return Err(e);
                }
                // Later records go to a file of their own, so they are not set aside with these.
                if path == self.file {
                    self.file = Spool::new_file(&self.dir);
                }
                let refusals = self.refusals.entry(path.clone()).or_default();
                *refusals += 1;
                if *refusals < REFUSALS_BEFORE_SET_ASIDE {
                    return Err(e);
                }
                self.refusals.remove(&path);
                let aside = path.with_extension("refused");
                match std::fs::rename(&path, &aside) {
                    Ok(()) => tracing::error!(
                        "the store refused the {} audit records in {} {REFUSALS_BEFORE_SET_ASIDE} times ({e}); \
                         they are kept in {} and no longer retried, so later records can reach the store",
                        records.len(),
                        path.display(),
                        aside.display()
                    ),
                    Err(io) => {
                        tracing::error!(
                            "cannot set aside the refused audit spool {}: {io}",
                            path.display()
                        );
                        return Err(e);
                    }
                }
                continue;
            }
            self.refusals.remove(&path);
            let _ = file.set_len(0);
            let _ = std::fs::remove_file(&path);
            written += records.len();
        }
        Ok(written)
    }
}

async fn write_loop(
    store: Store,
    mut spool: Spool,
    mut rx: mpsc::Receiver<Msg>,
    dropped: Counter,
    spooled: Gauge,
    set_aside: Gauge,
) {
    let mut batch: Vec<AuditRecord> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    // Records a previous process left behind count as a backlog from the start.
    let mut backlog = !spool.files().is_empty();
    let aside = spool.set_aside();
    set_aside.set(aside.len() as i64);
    if !aside.is_empty() {
        tracing::warn!(
            "{} audit spool file(s) in {} were set aside because the store refused them; once the \
             cause is fixed, rename each back to .jsonl and castellan writes it",
            aside.len(),
            spool.dir.display()
        );
    }
    let mut last_look = Instant::now();
    let mut last_drain: Option<Instant> = None;
    loop {
        let first = match tokio::time::timeout(DRAIN_EVERY, rx.recv()).await {
            Ok(Some(msg)) => Some(msg),
            Ok(None) => break,
            Err(_) => None,
        };
        // Let the records of a busy moment gather, so they go to the store in one statement and
        // one wake-up of the writer instead of one each. A flush goes at once.
        if matches!(first, Some(Msg::Record(_))) {
            tokio::time::sleep(LINGER).await;
        }
        let mut next = first;
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            match msg {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(done) => waiting.push(done),
            }
            if batch.len() >= BATCH {
                break;
            }
        }
        // Spool files also appear while castellan runs: one a stopped process left behind, or a
        // set-aside `*.refused` file renamed back to `.jsonl` once its cause was fixed.
        if last_look.elapsed() >= DRAIN_EVERY {
            last_look = Instant::now();
            backlog = backlog || !spool.files().is_empty();
            set_aside.set(spool.set_aside().len() as i64);
        }
        if backlog && last_drain.is_none_or(|t| t.elapsed() >= DRAIN_EVERY) {
            last_drain = Some(Instant::now());
            match spool.drain(&store).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!("wrote {n} spooled audit records to the store");
                    }
                    backlog = false;
                    spooled.set(0);
                }
                Err(e) => tracing::debug!("the audit spool waits for the store: {e}"),
            }
        }
        if !batch.is_empty() {
            // While a backlog waits, new records queue behind it, so the trail stays in order.
            let written = if backlog {
                false
            } else {
                match store.append_audit(&batch).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            "the store would not take {} audit records ({e}); spooling them to {}",
                            batch.len(),
                            spool.dir.display()
                        );
                        false
                    }
                }
            };
            if !written {
                match spool.append(&batch) {
                    Ok(()) => {
                        backlog = true;
                        spooled.inc_by(batch.len() as i64);
                    }
                    Err(e) => {
                        tracing::error!("dropping {} audit records: {e}", batch.len());
                        dropped.inc_by(batch.len() as u64);
                    }
                }
            }
            batch.clear();
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreLocation;
    use crate::store::AuditFilter;

    fn record(actor: &str) -> AuditRecord {
        AuditRecord {
            at: crate::clock::now_ms(),
            kind: "decision".into(),
            actor: actor.into(),
            action: "allow".into(),
            ..Default::default()
        }
    }

    async fn actors(store: &Store) -> Vec<String> {
        let filter = AuditFilter {
            limit: 100,
            ..Default::default()
        };
        let all = store.audit(&filter).await.unwrap();
        all.into_iter().map(|r| r.actor.to_string()).collect()
    }

    #[tokio::test]
    async fn a_batch_the_store_refuses_is_set_aside_and_later_records_get_through() {
        let (dir, store) = crate::store::temp_store().await;
        let db = dir.path().join("t.db");
        // The store is reachable but refuses one record, as a constraint or a trigger might.
        store
            .run_sql_for_test(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit WHEN NEW.actor = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
            )
            .await;
        let spool_dir = tempfile::tempdir().unwrap();
        let set_aside = Gauge::default();
        let sink = AuditSink::start(
            store.clone(),
            Spool::new(spool_dir.path(), &StoreLocation::Sqlite(db)),
            Counter::default(),
            Gauge::default(),
            set_aside.clone(),
        );
        sink.record(record("poison")).await;
        sink.flush().await;
        sink.record(record("later")).await;
        sink.flush().await;
        until(
            async || actors(&store).await.contains(&"later".to_string()),
            "the record after the refused one never reached the store",
        )
        .await;
        assert!(!actors(&store).await.contains(&"poison".to_string()));
        // The refused record is kept, alone, for an operator.
        let refused: Vec<String> = walk(spool_dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "refused"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("\"poison\"") && !refused[0].contains("\"later\""));
        // And the trail flows straight to the store again.
        sink.record(record("after")).await;
        sink.flush().await;
        assert!(actors(&store).await.contains(&"after".to_string()));

        // The metric says so.
        until(
            async || set_aside.get() == 1,
            "the set-aside gauge never showed the file",
        )
        .await;

        // Once the cause is fixed, renaming the file back is all it takes: the running writer
        // finds it and writes it.
        store.run_sql_for_test("DROP TRIGGER refuse_poison").await;
        let aside = walk(spool_dir.path())
            .into_iter()
            .find(|p| p.extension().is_some_and(|x| x == "refused"))
            .unwrap();
        std::fs::rename(&aside, aside.with_extension("jsonl")).unwrap();
        until(
            async || actors(&store).await.contains(&"poison".to_string()),
            "a spool file renamed back was never written",
        )
        .await;
        assert!(
            walk(spool_dir.path()).is_empty(),
            "the written file is deleted"
        );
        until(
            async || set_aside.get() == 0,
            "the set-aside gauge kept counting the file",
        )
        .await;
    }

    /// Waits up to 15 s for `done` (the writer retries a refused batch once a second, three times).
    async fn until(done: impl AsyncFn() -> bool, failure: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done().await {
            assert!(Instant::now() < deadline, "{failure}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
