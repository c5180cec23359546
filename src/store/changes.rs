//! The change feed: tells a running server that some process committed a change to the store, so
//! it reloads at once instead of at its next revision poll. On PostgreSQL a trigger on the revision
//! row sends `NOTIFY castellan_revision` at commit (migrations/postgres); SQLite has no such
//! feed, and the poll alone serves.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::config::StoreLocation;

/// What the feed reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The feed (re)connected: whatever was committed while it was away is unknown, so reload
    /// everything.
    Connected,
    /// A change was committed.
    Committed,
}

/// Follows the store's changes for ever, reconnecting after a lost connection (one attempt a
/// second). Returns at once for SQLite.
pub async fn follow(location: &StoreLocation, mut on: impl FnMut(Change)) {
    let StoreLocation::Postgres(url) = location else {
        return;
    };
    loop {
        let mut listener = match PgListener::connect(url.as_str()).await {
            Ok(l) => l,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if listener.listen(super::REVISION_CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        on(Change::Connected);
        // `try_recv` answers `Ok(None)` when the connection was lost.
        while let Ok(Some(_)) = listener.try_recv().await {
            on(Change::Committed);
        }
        tracing::warn!("lost the store's change notifications; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
