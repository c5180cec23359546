//! Sessions as requests see them: the session cookie → the signed-in person, read from the store
//! and cached for at most [`SESSION_CACHE_TTL`]. The whole cache is dropped whenever the store
//! changes (sign-outs and revocations bump its revision), so a revoked session stops working as
//! fast as a policy change does. While the store cannot be reached, sessions seen before the
//! outage keep working for `store_outage_grace`, as decisions from the last snapshot do.

use std::collections::HashMap;
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
    pub digest: String,
    /// When the person signed in.
    pub signed_in_at: i64,
    /// When the person last proved who they are again in this session (0: never), and in which
    /// browser (the digest of its browser cookie).
    pub proved_at: i64,
    pub proved_by: String,
}

#[derive(Clone)]
struct Cached {
    session: SessionRef,
    expires_at: i64,
    last_seen: i64,
    read: Instant,
}

/// Sessions recently read from the store, by digest.
#[derive(Default)]
pub(super) struct Cache(Mutex<HashMap<String, Cached>>);

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
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
        self.session_by_digest(&crate::crypto::digest(id)).await
    }

    /// The session whose digest is `digest` (see [`State::session`]).
    pub async fn session_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<SessionRef>, store::Error> {
        let now = crate::clock::now();
        let idle = self.config.session_idle_timeout.as_secs() as i64;
        // Record use at most once a minute (sooner for short idle timeouts): enough for the idle
        // timeout, cheap for the store.
        let every = (idle / 4).clamp(1, 60);
        if let Some(s) = self
            .session_cache
            .lock()
            .get(digest)
            .filter(|c| {
                c.read.elapsed() < SESSION_CACHE_TTL
                    && c.expires_at > now
                    && c.last_seen > now - idle
                    && now - c.last_seen < every
            })
            .map(|c| c.session.clone())
        {
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
            digest: digest.to_string(),
            signed_in_at: stored.created_at,
            proved_at: stored.proved_at,
            proved_by: stored.proved_by,
        };
        let mut cache = self.session_cache.lock();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(
            digest.to_string(),
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
        let c = cache.get(digest)?;
        (c.expires_at > now).then(|| c.session.clone())
    }

    /// Drops a session from the cache at once (this process ended or changed it).
    pub fn forget_session(&self, digest: &str) {
        self.session_cache.lock().remove(digest);
    }
}
