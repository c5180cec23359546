//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30-second steps, six digits), the second
//! factor for local accounts, and their recovery codes.

use aws_lc_rs::hmac;

/// Seconds per step.
pub const STEP: i64 = 30;

/// A new secret: 20 random bytes, base32 (what authenticator apps take).
pub fn new_secret() -> String {
    base32(&crate::crypto::random_bytes(20))
}

/// The code for `secret` (base32) at time step `step`.
pub fn code(secret: &str, step: i64) -> Option<u32> {
    let key = unbase32(secret)?;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    let offset = (mac[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    Some(bin % 1_000_000)
}

/// The time step `entered` is valid for at `now` (one step of clock drift either way), if any.
pub fn check(secret: &str, entered: &str, now: i64) -> Option<i64> {
    let entered: String = entered.chars().filter(|c| !c.is_whitespace()).collect();
    if entered.len() != 6 || !entered.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = entered.parse().ok()?;
    let current = now / STEP;
    (current - 1..=current + 1).find(|s| {
        code(secret, *s)
            .is_some_and(|c| crate::crypto::equal(&format!("{c:06}"), &format!("{want:06}")))
    })
}

/// The `otpauth://` URI authenticator apps import (as a link or a QR code).
pub fn uri(issuer: &str, email: &str, secret: &str) -> String {
    let q = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        q(issuer),
        q(email),
        q(issuer)
    )
}

/// Ten recovery codes (each usable once instead of a code), shown once.
pub fn recovery_codes() -> Vec<String> {
    (0..10)
        .map(|_| {
            let b = base32(&crate::crypto::random_bytes(8)).to_ascii_lowercase();
            format!("{}-{}", &b[..5], &b[5..10])
        })
        .collect()
}

/// How recovery codes are stored (and looked up): their SHA-256, without the dash.
pub fn recovery_digest(code: &str) -> String {
    crate::crypto::digest(&code.trim().to_ascii_lowercase().replace('-', ""))
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && *c != b' ') {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", last six digits.
        let secret = base32(b"12345678901234567890");
        for (t, want) in [
            (59, 287082),
            (1111111109, 81804),
            (1111111111, 50471),
            (1234567890, 5924),
            (2000000000, 279037),
        ] {
            assert_eq!(code(&secret, t / STEP), Some(want), "t = {t}");
        }
    }

    #[test]
    fn codes_are_checked_within_one_step_and_nothing_else_passes() {
        let s = new_secret();
        let now = 1_700_000_000;
        let c = format!("{:06}", code(&s, now / STEP).unwrap());
        assert_eq!(check(&s, &c, now), Some(now / STEP));
        assert_eq!(check(&s, &c, now + STEP), Some(now / STEP), "one step late");
        assert_eq!(check(&s, &c, now + 3 * STEP), None);
        assert_eq!(check(&s, "12345", now), None);
        assert_eq!(check(&s, "abcdef", now), None);
        assert_eq!(unbase32(&s).unwrap().len(), 20);
    }
}
