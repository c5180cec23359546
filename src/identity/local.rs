//! Local accounts: argon2id password hashes, verification without a timing difference between an
//! unknown account and a wrong password, and the attempt limiter that slows guessing.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Shortest password `castellan users add` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&crate::crypto::random_bytes(16))
        .expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id hashing with default parameters cannot fail")
        .to_string()
}

/// A hash of a password nobody knows, verified when the account does not exist so that both
/// answers take the same time.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password(&crate::crypto::random_token(24)));

/// Checks `password` against `stored` (or against a dummy when there is no such account). CPU-heavy:
/// call from a blocking thread.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    let (hash, exists) = match stored {
        Some(h) => (h, true),
        None => (DUMMY_HASH.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        // An unreadable hash admits nobody; still spend the time.
        let _ = Argon2::default().verify_password(
            password.as_bytes(),
            &PasswordHash::new(&DUMMY_HASH).expect("dummy hash parses"),
        );
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && exists
}

/// Checks a new password; the message says what to change.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!(
            "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    if password.len() > 1024 {
        return Err("the password is longer than 1024 bytes".into());
    }
    Ok(())
}

/// Counts failed sign-ins per key (an account, a client address) in a sliding window.
pub struct Limiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Limiter {
    pub fn new(max_failures: usize, window: Duration) -> Limiter {
        Limiter {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when `key` has used up its failures and must wait that long.
    pub fn blocked(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(key)?;
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() < self.max_failures {
            return None;
        }
        let oldest = list[list.len() - self.max_failures];
        Some(
            self.window
                .saturating_sub(now.duration_since(oldest))
                .max(Duration::from_secs(1)),
        )
    }

    pub fn fail(&self, key: &str) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded memory under a spray of distinct keys: forget stale entries first.
        if map.len() > 100_000 {
            map.retain(|_, l| {
                l.last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let list = map.entry(key.to_string()).or_default();
        list.push(now);
        if list.len() > self.max_failures * 2 {
            list.drain(..list.len() - self.max_failures);
        }
    }

    pub fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_unknown_accounts_never_pass() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(Some(&h), "correct horse battery"));
        assert!(!verify_password(Some(&h), "wrong"));
        assert!(!verify_password(None, "correct horse battery"));
        assert!(!verify_password(Some("garbage"), "x"));
    }

    #[test]
    fn limiter_blocks_after_max_failures_and_clears() {
        let l = Limiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(l.blocked("a").is_none());
            l.fail("a");
        }
        let wait = l.blocked("a").unwrap();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(l.blocked("b").is_none());
        l.clear("a");
        assert!(l.blocked("a").is_none());
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough password").is_ok());
    }
}
