//! The policy snapshot decisions read, rebuilt whole whenever the store's revision moves; the
//! store's health as reloads see it; and re-deciding live connections after every change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::State;
use super::live::Revocation;
use crate::config::App;
use crate::policy::Principal;
use crate::policy::condition::Context;
use crate::policy::snapshot::Snapshot;
use crate::store;

/// What the background reload learned about the store.
pub(super) struct StoreHealth {
    /// The last reload reached the store.
    pub(super) up: AtomicBool,
    /// When a reload last reached the store (unix ms).
    last_ok_ms: AtomicI64,
}

impl StoreHealth {
    pub(super) fn new() -> StoreHealth {
        StoreHealth {
            up: AtomicBool::new(true),
            last_ok_ms: AtomicI64::new(crate::clock::now_ms()),
        }
    }
}

impl State {
    /// The policy snapshot decisions read: immutable, swapped whole.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether decisions may still be made: the store answers, or it stopped answering less than
    /// `store_outage_grace` ago (decisions then continue from the last snapshot). After that,
    /// every protected request is refused until the store is back.
    pub fn store_usable(&self) -> bool {
        self.store_health.up.load(Ordering::Acquire)
            || crate::clock::now_ms() - self.store_health.last_ok_ms.load(Ordering::Acquire)
                <= self.config.store_outage_grace.as_millis() as i64
    }

    /// Seconds since the store last answered a reload, when the last one failed.
    pub fn store_down_for(&self) -> Option<i64> {
        (!self.store_health.up.load(Ordering::Acquire)).then(|| {
            (crate::clock::now_ms() - self.store_health.last_ok_ms.load(Ordering::Acquire)) / 1000
        })
    }

    /// Forces the next reload to rebuild everything (after missed change notifications).
    pub fn invalidate(&self) {
        self.revision.store(-1, Ordering::Release);
        self.changed.notify_one();
    }

    /// Rebuilds the snapshot if the store changed; returns whether it did.
    pub async fn reload(&self) -> Result<bool, store::Error> {
        let result = self.reload_inner().await;
        match &result {
            Ok(_) => {
                self.store_health
                    .last_ok_ms
                    .store(crate::clock::now_ms(), Ordering::Release);
                self.store_health.up.store(true, Ordering::Release);
            }
            Err(_) => self.store_health.up.store(false, Ordering::Release),
        }
        result
    }

    /// Whether `email` was provisioned over SCIM and made inactive: refused at sign-in and as
    /// a bearer, whatever the provider says.
    pub fn deactivated(&self, email: &str) -> bool {
        self.deactivated
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(email)
    }

    /// Applies a change this process just made at once (not at the next poll), closing the live
    /// connections it ended.
    pub async fn apply_own_change(&self) {
        if self.reload().await.unwrap_or(false) {
            self.recheck_live(true).await;
        }
    }

    async fn reload_inner(&self) -> Result<bool, store::Error> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let revision = self.store.revision().await?;
        if self.revision.load(Ordering::Acquire) == revision {
            return Ok(false);
        }
        let snapshot = Snapshot::with_admins(
            self.store.policies().await?,
            self.store.memberships().await?,
            &self.config.admins,
        );
        let deactivated = self.store.scim_inactive().await?.into_iter().collect();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        *self.deactivated.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(deactivated);
        self.session_cache.clear();
        self.identity_cache.clear();
        self.revision.store(revision, Ordering::Release);
        Ok(true)
    }

    /// Re-decides every live connection (WebSockets, streams, tunnels) against the current
    /// snapshot and the clock, and, with `credentials`, checks that the sessions and service
    /// account keys they ride on still stand; closes those that fail. Every kind of credential is
    /// checked alike: a bearer-authenticated WebSocket closes like a cookie one.
    pub async fn recheck_live(&self, credentials: bool) {
        let entries = self.live.snapshot();
        if entries.is_empty() {
            return;
        }
        let standing: Option<HashMap<&Revocation, bool>> = if credentials {
            let mut standing = HashMap::new();
            let sessions: Vec<String> = entries
                .iter()
                .filter_map(|(_, g)| match &g.revocation {
                    Revocation::Session(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let live = match self
                .store
                .live_sessions(&sessions, self.config.session_idle_timeout)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot check the sessions of live connections: {e}");
                    return;
                }
            };
            for (_, g) in &entries {
                let ok = match &g.revocation {
                    Revocation::Session(d) => live.contains(&**d),
                    Revocation::Key(k) => match self.store.key_active(k).await {
                        Ok(active) => active,
                        Err(e) => {
                            tracing::warn!("cannot check the keys of live connections: {e}");
                            return;
                        }
                    },
                    Revocation::Never => true,
                };
                standing.insert(&g.revocation, ok);
            }
            Some(standing)
        } else {
            None
        };
        let snapshot = self.snapshot();
        let now = crate::clock::now();
        let ended: Vec<u64> = entries
            .iter()
            .filter(|(_, g)| {
                let app = self.config.apps.iter().find(|a| a.id == g.app);
                // A step-up added since the connection opened ends it too, if its sign-in lacks it.
                let stepped_up = match (&g.principal, app) {
                    (Principal::Person(who), Some(app)) => app.step_up.shortfall(who).is_none(),
                    _ => true,
                };
                let levels = crate::policy::access_level::met(
                    &self.config.access_levels,
                    &crate::policy::access_level::Seen {
                        ip: g.ip,
                        client_certificate: g.client_certificate,
                        time: now,
                    },
                );
                let cx = Context {
                    path: &g.path,
                    host: &g.host,
                    method: &g.method,
                    time: now,
                    ip: g.ip,
                    destination: app.and_then(App::destination),
                    auth: Some(g.principal.auth(g.principal.castellan_groups(&snapshot))),
                    access_levels: &levels,
                };
                let allowed = snapshot
                    .decide(&g.app, g.role, g.principal.who(), &cx)
                    .allowed();
                let stands = standing
                    .as_ref()
                    .is_none_or(|s| s.get(&g.revocation).copied().unwrap_or(false));
                !allowed || !stands || !stepped_up
            })
            .map(|(id, _)| *id)
            .collect();
        let n = self.live.revoke(&ended);
        if n > 0 {
            tracing::info!("closed {n} live connection(s) whose access ended");
        }
    }
}
