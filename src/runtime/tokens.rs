//! castellan access tokens recently verified. Checking a token's ES256 signature costs several
//! times the rest of a request, and a script presents the same token for its whole hour; so a
//! token whose signature and claims held is remembered, by the SHA-256 of its audience and its
//! bytes, until its `exp` (with the leeway verification allows).
//!
//! Only the verification is remembered. What can end a token before its `exp` is asked on every
//! request as before: its signing key must still be in the ring (checked before this cache is),
//! a service account's key must be active (the store), a person's session must stand (the session
//! cache, cleared with every store change). A configuration reload starts an empty cache, as the
//! issuer comes from the configuration.

use crate::crypto::FastMap;
use std::sync::Mutex;

use super::State;
use crate::identity::assertion::{TokenSubject, VerifiedToken};

/// At most this many tokens are remembered; past it the cache starts again empty.
const MAX_TOKENS: usize = 100_000;

/// Verified tokens by [`Verified::key`].
#[derive(Default)]
pub(super) struct Verified(Mutex<FastMap<[u8; 32], VerifiedToken>>);

impl Verified {
    fn key(audience: &str, token: &str) -> [u8; 32] {
        crate::crypto::digest_parts(&[audience, token])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<[u8; 32], VerifiedToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whom `token` names for `audience`, when it was verified before and is still current.
    fn get(&self, audience: &str, token: &str, now: i64) -> Option<TokenSubject> {
        self.lock()
            .get(&Verified::key(audience, token))
            .filter(|v| v.current(now))
            .map(|v| v.subject.clone())
    }

    fn put(&self, audience: &str, token: &str, verified: VerifiedToken) {
        let mut cache = self.lock();
        if cache.len() >= MAX_TOKENS {
            cache.clear();
        }
        cache.insert(Verified::key(audience, token), verified);
    }
}

impl State {
    /// Verifies a castellan access token for `audience` (see the module docs).
    pub fn verify_access_token(&self, token: &str, audience: &str) -> Result<TokenSubject, String> {
        if let Some(subject) = self
            .verified_tokens
            .get(audience, token, crate::clock::now())
        {
            return Ok(subject);
        }
        // Not seen, or expired: verified in full (which says why an expired one is refused).
        let verified = self.signer().verify_access_token(token, audience)?;
        let subject = verified.subject.clone();
        self.verified_tokens.put(audience, token, verified);
        Ok(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_remembered_for_its_audience_until_it_expires() {
        let cache = Verified::default();
        let subject = TokenSubject::ServiceAccount {
            name: "etl".into(),
            key: "k1".into(),
        };
        cache.put(
            "castellan:demo",
            "a.b.c",
            VerifiedToken {
                subject: subject.clone(),
                expires_at: 1_000,
            },
        );
        assert_eq!(
            cache.get("castellan:demo", "a.b.c", 900),
            Some(subject.clone())
        );
        // The leeway verification allows, and not a second more.
        assert_eq!(cache.get("castellan:demo", "a.b.c", 1_030), Some(subject));
        assert_eq!(cache.get("castellan:demo", "a.b.c", 1_031), None);
        // Another app's audience, or another token, is verified afresh.
        assert_eq!(cache.get("castellan:other", "a.b.c", 900), None);
        assert_eq!(cache.get("castellan:demo", "a.b.d", 900), None);
        assert_ne!(Verified::key("a", "b\0c"), Verified::key("a\0b", "c"));
    }
}
