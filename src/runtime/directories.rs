//! Keeping directory groups fresh: each person is asked about when they sign in, and everyone
//! with a live session every `refresh` (one replica at a time, by a lease in the store; the
//! others follow the store's revision). An answer that changes someone's groups reaches every
//! replica's decisions, and re-checks their open connections, like any other change. When a
//! directory cannot be reached, its last answers count for `grace`, then are dropped: `group:`
//! bindings that needed them fail closed, nothing else does.

use std::time::Duration;

use super::State;

/// How long castellan waits for a directory during a sign-in before going on with what it knew.
const SIGN_IN_WAIT: Duration = Duration::from_secs(5);

impl State {
    /// Asks every directory about `email` now (at sign-in) and records the answers.
    pub async fn refresh_directory_groups(&self, email: &str) {
        if self.directories.is_empty() {
            return;
        }
        let mut changed = false;
        for d in &self.directories {
            match tokio::time::timeout(SIGN_IN_WAIT, d.groups_of(email)).await {
                Ok(Ok(groups)) => {
                    match self
                        .store
                        .put_directory_groups(&d.config.id, email, &groups)
                        .await
                    {
                        Ok(c) => changed |= c,
                        Err(e) => tracing::warn!("recording directory groups of {email}: {e}"),
                    }
                }
                Ok(Err(e)) => tracing::warn!(
                    "{e}; the last answer about {email} counts for up to {} s (grace)",
                    d.config.grace.as_secs()
                ),
                Err(_) => tracing::warn!(
                    "directory {} did not answer about {email} within {} s; the last answer counts for up to {} s (grace)",
                    d.config.id,
                    SIGN_IN_WAIT.as_secs(),
                    d.config.grace.as_secs()
                ),
            }
        }
        if changed {
            self.apply_own_change().await;
        }
    }

    /// One round for every directory: everyone signed in is asked again, and answers older than
    /// the grace are dropped.
    pub async fn refresh_directories(&self) {
        let people = match self.store.signed_in_people().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot list who is signed in to refresh directory groups: {e}");
                return;
            }
        };
        for email in &people {
            self.refresh_directory_groups(email).await;
        }
        let now = crate::clock::now();
        let mut dropped = false;
        for d in &self.directories {
            match self
                .store
                .expire_directory_groups(&d.config.id, now - d.config.grace.as_secs() as i64)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        "directory {} has not answered about {n} people for longer than its grace ({} s): their groups from it no longer count",
                        d.config.id,
                        d.config.grace.as_secs()
                    );
                    dropped = true;
                }
                Err(e) => tracing::warn!("dropping stale directory groups: {e}"),
            }
        }
        if dropped {
            self.apply_own_change().await;
        }
    }

    /// How often the directories are asked again: the shortest `refresh`.
    pub fn directory_refresh(&self) -> Option<Duration> {
        self.directories.iter().map(|d| d.config.refresh).min()
    }
}
