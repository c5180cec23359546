//! Writes access decisions to the audit trail off the request path, in batches.
//!
//! Changes are audited by the store in the same transaction that makes them; decisions are many,
//! so requests hand them to a bounded queue that a background task writes every few milliseconds.
//! A full queue (the store far behind) drops records and counts them in
//! `castellan_audit_dropped_total` rather than slowing or failing requests.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditRecord, Store};

const QUEUE: usize = 65_536;
const BATCH: usize = 2_000;

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
    pub fn start(store: Store, dropped: Counter) -> AuditSink {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(store, rx));
        AuditSink { tx, dropped }
    }

    pub fn record(&self, r: AuditRecord) {
        if self.tx.try_send(Msg::Record(Box::new(r))).is_err() {
            if self.dropped.get() == 0 {
                tracing::error!(
                    "the audit queue is full (is the store slow or down?): decision records are being dropped"
                );
            }
            self.dropped.inc();
        }
    }

    /// Waits until everything recorded so far is written (or has failed to be).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<AuditRecord> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            match msg {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(done) => waiting.push(done),
            }
            if batch.len() >= BATCH {
                break;
            }
        }
        for attempt in 1..=3 {
            match store.append_audit(&batch).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => {
                    tracing::error!(
                        "dropping {} audit records the store would not take: {e}",
                        batch.len()
                    );
                }
                Err(e) => {
                    tracing::warn!("writing audit records failed (attempt {attempt}): {e}");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}
