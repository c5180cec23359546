//! Keys from the store's key rings: the assertion signer and the CSRF keys, re-read (and rotated
//! when due) every minute by every replica; and the cache of identity headers signed with them.

use crate::crypto::FastMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ASSERTION_REUSE_SECS, State};
use crate::config::Config;
use crate::identity::assertion::{self, Signer};
use crate::store::Store;
use crate::web::HeaderList;
use crate::web::guard;

/// How long a device cookie lasts.
const DEVICE_COOKIE_SECS: u64 = 180 * 86_400;

/// The assertion signer and the CSRF keys, from the store's key rings at this moment.
pub(super) async fn load(
    config: &Config,
    store: &Store,
) -> Result<(Signer, guard::Keys), assertion::Error> {
    let now = crate::clock::now();
    let signer = Signer::load(store, &config.public_origin(), config.key_rotation, now).await?;
    let rotate_after = config
        .key_rotation
        .saturating_sub(Duration::from_secs(assertion::PUBLISH_AHEAD_SECS as u64));
    let ring = store
        .key_ring("csrf", now, rotate_after, || {
            (
                crate::crypto::random_token(12),
                crate::crypto::random_bytes(32),
            )
        })
        .await?;
    let csrf = guard::Keys {
        active: assertion::active_key(&ring, now),
        keys: ring.into_iter().map(|k| k.material).collect(),
    };
    Ok((signer, csrf))
}

impl State {
    /// The signer for the current key ring.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The CSRF keys of the current ring (for [`guard::check`] and for the tokens of forms).
    pub fn csrf_keys(&self) -> Arc<guard::Keys> {
        self.csrf_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The CSRF token for forms shown to the browser identified by `browser_id`.
    pub fn csrf_token(&self, browser_id: &str) -> String {
        self.csrf_keys().token(browser_id)
    }

    /// A device cookie for a browser that just signed in to `email`'s account: a random id with
    /// castellan's MAC, kept 180 days. Its failed attempts are counted apart from strangers'.
    pub fn device_cookie(&self, email: &str) -> http::HeaderValue {
        let id = crate::crypto::random_token(16);
        let mac = self.csrf_keys().mac(&format!("device:{email}:{id}"));
        self.cookies.set(
            self.cookies.device,
            &format!("{id}.{mac}"),
            Some(DEVICE_COOKIE_SECS),
        )
    }

    /// The id of this browser's device cookie, when castellan made it for `email`.
    pub fn trusted_device(&self, headers: &http::HeaderMap, email: &str) -> Option<String> {
        let value = crate::web::cookies::cookie(headers, self.cookies.device)?;
        let (id, mac) = value.split_once('.')?;
        self.csrf_keys()
            .verify(&format!("device:{email}:{id}"), mac)
            .then(|| id.to_string())
    }

    /// Re-reads the key rings (rotating them when due) and swaps in the result.
    pub async fn refresh_keys(&self) -> Result<(), assertion::Error> {
        let (signer, csrf) = load(&self.config, &self.store).await?;
        if signer.kid() != self.signer().kid() {
            tracing::info!(
                kid = signer.kid(),
                "assertions are now signed with a new key"
            );
        }
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        *self.csrf_keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(csrf);
        Ok(())
    }

    /// The identity-header cache.
    pub fn identity_cache(&self) -> &IdentityCache {
        &self.identity_cache
    }
}

/// Identity headers recently made, by what they say (see [`IdentityCache::key`]): reused for up
/// to [`ASSERTION_REUSE_SECS`] of their assertion's five-minute life, so signing is not paid per
/// request. Cleared whenever the store changes.
#[derive(Default)]
pub struct IdentityCache(Mutex<FastMap<String, (HeaderList, i64)>>);

impl IdentityCache {
    /// The cache's key: everything the headers say, NUL-separated. None when a part holds a NUL
    /// itself (two different identities could then share a key): such headers are made afresh
    /// every time.
    pub fn key(parts: &[&str]) -> Option<String> {
        if parts.iter().any(|p| p.as_bytes().contains(&0)) {
            return None;
        }
        let mut key = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for part in parts {
            key.push_str(part);
            key.push('\0');
        }
        Some(key)
    }

    /// Headers made less than [`ASSERTION_REUSE_SECS`] before `now`.
    pub fn get(&self, key: &str, now: i64) -> Option<HeaderList> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|(_, made)| now - made < ASSERTION_REUSE_SECS)
            .map(|(h, _)| h.clone())
    }

    pub fn put(&self, key: String, headers: HeaderList, now: i64) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key, (headers, now));
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_cache_keys_never_mistake_one_person_for_another() {
        let key = |parts: &[&str]| IdentityCache::key(parts);
        let a = key(&["c", "idp", "a", "a@x.com", "", "aud"]).unwrap();
        assert_ne!(
            Some(a.clone()),
            key(&["c", "idp", "b", "a@x.com", "", "aud"])
        );
        assert_ne!(
            Some(a.clone()),
            key(&["g", "idp", "a", "a@x.com", "", "aud"])
        );
        assert_ne!(Some(a), key(&["c", "idp", "a", "a@x.com", "", "other"]));
        // With NUL inside a claim these two would join to the same string: neither is cached.
        assert_eq!(key(&["c", "idp", "s\0e", "x", "", "aud"]), None);
        assert_eq!(key(&["c", "idp", "s", "e\0x", "", "aud"]), None);
    }
}
