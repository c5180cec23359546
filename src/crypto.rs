//! Small cryptographic helpers: random tokens, digests, MACs and constant-time comparison (all aws-lc-rs).

use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A hash map for the lookups every request makes (sessions, identity headers, the policy
/// snapshot, idle upstream connections): foldhash, seeded at random per process, hashes a short
/// key several times faster than std's SipHash. Its keys are never chosen in bulk by a client
/// (session ids are castellan's own random tokens, the rest come from sign-ins and the policy),
/// so SipHash's stronger defence against crafted collisions buys nothing here.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// A random URL-safe token carrying `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    buf
}

pub fn fill_random(buf: &mut [u8]) {
    rand::fill(buf).expect("the system random number generator failed");
}

/// A short id that ties a page shown to a user to the log line about it.
pub fn reference_id() -> String {
    random_bytes(6).iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `value`, base64url: how session ids and flow states are stored, so a copy of the
/// store does not hand out live sessions.
pub fn digest(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, value.as_bytes()))
}

/// SHA-256 of `parts`, each preceded by its length (so no two lists of parts are hashed alike):
/// a cache key that keeps no secret in memory in the clear.
pub fn digest_parts(parts: &[&str]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    digest(verifier)
}

/// HMAC-SHA256 of `message` under `key`, base64url.
pub fn mac(key: &[u8], message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, message.as_bytes()))
}

/// HMAC-SHA256 of `message` under `key`: 32 bytes, e.g. a key derived for one purpose.
pub fn mac_bytes(key: &[u8], message: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&key, message).as_ref());
    out
}

pub fn equal(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn tokens_are_random_and_long_enough() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token(32));
        assert!(equal(&a, &a.clone()));
        assert!(!equal(&a, &random_token(32)));
    }
}
