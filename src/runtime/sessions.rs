//! Sessions as requests see them: the session cookie → the signed-in person, read from the store
//! and cached for at most [`SESSION_CACHE_TTL`]. The whole cache is dropped whenever the store
//! changes (sign-outs and revocations bump its revision), so a revoked session stops working as
//! fast as a policy change does. While the store cannot be reached, sessions seen before the
//! outage keep working for `store_outage_grace`, as decisions from the last snapshot do.
//!
//! The store knows a session by the digest of its id (SHA-256), never by the id. The cache also
//! remembers which digest the id of a session it has read has, so that a request whose session is
//! cached costs a lookup, not a digest (a SHA-256 a request was about 7% of castellan's work on
//! the request's way).

use crate::crypto::FastMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{SESSION_CACHE_TTL, State};
use crate::policy::Identity;
use crate::store;

/// A session the cookie named, as the gate and castellan's pages use it.
#[derive(Debug, Clone)]
pub struct SessionRef {
    pub identity: Arc<Identity>,
    /// The digest of the session id (the store's key; never the cookie value).
    pub digest: Arc<str>,
    /// When the person signed in.
    pub signed_in_at: i64,
    /// When the person last proved who they are again in this session (0: never), and in which
    /// browser (the digest of its browser cookie).
    pub proved_at: i64,
    pub proved_by: Arc<str>,
}

#[derive(Clone)]
struct Cached {
    session: SessionRef,
    expires_at: i64,
    last_seen: i64,
    read: Instant,
}

/// Sessions recently read from the store, by digest, and the digests of the ids of those sessions
/// that recent requests carried.
#[derive(Default)]
pub(super) struct Cache(Mutex<Entries>);

#[derive(Default)]
struct Entries {
    sessions: FastMap<Arc<str>, Cached>,
    /// A session id → its digest, for ids of sessions the store knew. An entry outlives its
    /// session's (a forgotten session is read from the store again, by the same digest), so it
    /// never answers for a session by itself.
    digests: FastMap<Box<str>, Arc<str>>,
}

impl Entries {
    /// The session `digest` names, when the cache may answer for it: read less than
    /// [`SESSION_CACHE_TTL`] ago, not expired, not idle too long, and its use recorded recently
    /// enough.
    fn fresh(&self, digest: &str, now: i64, idle: i64) -> Option<SessionRef> {
        self.sessions
            .get(digest)
            .filter(|c| {
                c.read.elapsed() < SESSION_CACHE_TTL
                    && c.expires_at > now
                    && c.last_seen > now - idle
                    && now - c.last_seen < touch_every(idle)
            })
            .map(|c| c.session.clone())
    }
}

/// How often a session's use is recorded in the store: at most once a minute (sooner for short
/// idle timeouts), enough for the idle timeout and cheap for the store.
fn touch_every(idle: i64) -> i64 {
    (idle / 4).clamp(1, 60)
}

/// The most sessions (and session ids) the cache holds; past it, it starts again empty.
const CACHE_MAX: usize = 100_000;

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn clear(&self) {
        let mut entries = self.lock();
        entries.sessions.clear();
        entries.digests.clear();
    }
}

impl State {
    /// The session the request's cookie names. `Ok(None)` for no, unknown, expired or ambiguous
    /// cookies; `Err` when the store cannot answer (the caller fails closed).
    pub async fn session(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<SessionRef>, store::Error> {
        let Some(id) = crate::web::cookies::cookie(headers, self.cookies.session) else {
            return Ok(None);
        };
        if id.len() != 43
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(None);
        }
        let idle = self.config.session_idle_timeout.as_secs() as i64;
        let known = {
            let cache = self.session_cache.lock();
            match cache.digests.get(id) {
                Some(digest) => match cache.fresh(digest, crate::clock::now(), idle) {
                    Some(s) => return Ok(Some(s)),
                    None => Some(digest.clone()),
                },
                None => None,
            }
        };
        if let Some(digest) = known {
            return self.session_by_digest(&digest).await;
        }
        let digest: Arc<str> = crate::crypto::digest(id).into();
        let session = self.session_by_digest(&digest).await?;
        // Only the ids of sessions the store knows: made-up cookies must not fill the cache.
        if session.is_some() {
            let mut cache = self.session_cache.lock();
            if cache.digests.len() >= CACHE_MAX {
                cache.digests.clear();
            }
            cache.digests.insert(id.into(), digest);
        }
        Ok(session)
    }

    /// The session whose digest is `digest` (see [`State::session`]).
    pub async fn session_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<SessionRef>, store::Error> {
        let now = crate::clock::now();
        let idle = self.config.session_idle_timeout.as_secs() as i64;
        let every = touch_every(idle);
        if let Some(s) = self.session_cache.lock().fresh(digest, now, idle) {
            return Ok(Some(s));
        }
        // While the store is known to be down, a session seen before the outage is answered from
        // the cache at once (asking the store would wait out its connection timeout).
        if !self.store_health.up.load(Ordering::Acquire)
            && self.store_usable()
            && let Some(s) = self.cached_session(digest, now)
        {
            return Ok(Some(s));
        }
        let stored = match self
            .store
            .session(digest, self.config.session_idle_timeout)
            .await
        {
            Ok(stored) => stored,
            // The store is down: a session seen before the outage keeps working within the
            // grace period, as decisions from the last snapshot do. Nothing else gets in.
            Err(e) if e.is_unavailable() && self.store_usable() => {
                return match self.cached_session(digest, now) {
                    Some(s) => Ok(Some(s)),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let Some(stored) = stored else {
            self.forget_session(digest);
            return Ok(None);
        };
        let mut last_seen = stored.last_seen;
        if now - stored.last_seen >= every {
            match self.store.touch_session(digest).await {
                Ok(()) => last_seen = now,
                Err(e) if e.is_unavailable() => {}
                Err(e) => return Err(e),
            }
        }
        let session = SessionRef {
            identity: Arc::new(stored.identity),
            digest: digest.into(),
            signed_in_at: stored.created_at,
            proved_at: stored.proved_at,
            proved_by: stored.proved_by.into(),
        };
        let mut cache = self.session_cache.lock();
        if cache.sessions.len() >= CACHE_MAX {
            cache.sessions.clear();
        }
        cache.sessions.insert(
            session.digest.clone(),
            Cached {
                session: session.clone(),
                expires_at: stored.expires_at,
                last_seen,
                read: Instant::now(),
            },
        );
        Ok(Some(session))
    }

    /// A session in the cache that has not expired, however long ago it was read.
    fn cached_session(&self, digest: &str, now: i64) -> Option<SessionRef> {
        let cache = self.session_cache.lock();
        let c = cache.sessions.get(digest)?;
        (c.expires_at > now).then(|| c.session.clone())
    }

    /// Drops a session from the cache at once (this process ended or changed it).
    pub fn forget_session(&self, digest: &str) {
        self.session_cache.lock().sessions.remove(digest);
    }
}

#[cfg(test)]
mod tests;
