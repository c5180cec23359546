//! The one CSRF and same-origin guard. Every endpoint that changes state on behalf of a browser
//! session calls [`check`]; there is no other copy of these rules.
//!
//! A write is accepted only when
//! 1. it comes from castellan's own origin: `Sec-Fetch-Site: same-origin` when the browser sends
//!    that header, and `Origin` equal to castellan's origin when it sends that one; a request
//!    with neither (no browser leaves both out of a cross-site form post or `fetch`) is refused;
//! 2. and it carries a proof only castellan's page could have: the CSRF token made for this
//!    browser (an HMAC of its browser cookie, see [`Keys`]), or, for the JSON API, a request that
//!    a cross-site page cannot send without a CORS preflight that castellan never grants (a JSON
//!    body, or the methods PUT, PATCH and DELETE).

use http::HeaderMap;
use http::header;

use super::failure::Failure;

/// CSRF keys from the store's key ring: the active one makes tokens, every one of them checks
/// tokens (so a form shown before a rotation still posts).
pub struct Keys {
    pub keys: Vec<Vec<u8>>,
    pub active: usize,
}

impl Keys {
    /// The token for forms shown to the browser whose browser cookie is `browser_id`.
    pub fn token(&self, browser_id: &str) -> String {
        self.mac(&format!("csrf:{browser_id}"))
    }

    /// Whether `token` was made for `browser_id` under any key of the ring.
    pub fn valid(&self, browser_id: &str, token: &str) -> bool {
        self.verify(&format!("csrf:{browser_id}"), token)
    }

    /// An HMAC of `message` (which starts with its purpose, `csrf:` or `device:`) under the
    /// active key.
    pub fn mac(&self, message: &str) -> String {
        crate::crypto::mac(&self.keys[self.active], message)
    }

    /// Whether `mac` is an HMAC of `message` under any key of the ring.
    pub fn verify(&self, message: &str, mac: &str) -> bool {
        self.keys
            .iter()
            .any(|k| crate::crypto::equal(&crate::crypto::mac(k, message), mac))
    }
}

/// What proves a write came from castellan's own page.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// The CSRF token from the form (field `csrf`) or the `x-castellan-csrf` header.
    Token(&'a str),
    /// A request only a same-origin page can send without a CORS preflight: a JSON body, or the
    /// method PUT, PATCH or DELETE (the admin API with a browser session).
    Preflighted(&'a http::Method),
}

/// Checks a state-changing request against castellan's `origin` (`scheme://host[:port]`);
/// `browser_id` is the value of the browser cookie, if any.
pub fn check(
    headers: &HeaderMap,
    origin: &str,
    browser_id: Option<&str>,
    keys: &Keys,
    proof: Proof<'_>,
) -> Result<(), Failure> {
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    let from = headers.get(header::ORIGIN).map(|v| v.as_bytes());
    let same_origin = match (site, from) {
        (None, None) => false,
        (site, from) => {
            site.is_none_or(|s| s == b"same-origin") && from.is_none_or(|o| o == origin.as_bytes())
        }
    };
    if !same_origin {
        return Err(Failure::csrf(
            "This form did not come from this site (its Origin is another one). Go back, reload the page and try again.",
        ));
    }
    let proved = match proof {
        Proof::Token(token) => {
            browser_id.is_some_and(|b| !token.is_empty() && keys.valid(b, token))
        }
        Proof::Preflighted(method) => {
            matches!(
                *method,
                http::Method::PUT | http::Method::PATCH | http::Method::DELETE
            ) || headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"))
        }
    };
    if !proved {
        return Err(match proof {
            Proof::Token(_) => Failure::csrf(
                "This form has expired or did not come from this site. Go back, reload the page and try again.",
            ),
            Proof::Preflighted(_) => Failure::csrf(
                "writes with a browser session must send Content-Type: application/json from castellan's own origin",
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const ORIGIN: &str = "https://auth.example.com";

    fn keys() -> Keys {
        Keys {
            keys: vec![b"old".to_vec(), b"new".to_vec()],
            active: 1,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_guard_has_one_meaning() {
        let k = keys();
        let token = k.token("browser");
        let ok = |h: &HeaderMap, b: Option<&str>, p: Proof| check(h, ORIGIN, b, &k, p).is_ok();
        let same = headers(&[("origin", ORIGIN)]);
        assert!(ok(&same, Some("browser"), Proof::Token(&token)));
        // A token from before the rotation still works; another browser's does not.
        let old = Keys {
            keys: vec![b"old".to_vec()],
            active: 0,
        }
        .token("browser");
        assert!(ok(&same, Some("browser"), Proof::Token(&old)));
        assert!(!ok(&same, Some("other"), Proof::Token(&token)));
        assert!(!ok(&same, None, Proof::Token(&token)));
        assert!(!ok(&same, Some("browser"), Proof::Token("")));
        // Another origin, a same-site page, or neither header: refused whatever the token.
        assert!(!ok(
            &headers(&[("origin", "https://app.example.com")]),
            Some("browser"),
            Proof::Token(&token)
        ));
        assert!(!ok(
            &headers(&[("origin", "null")]),
            Some("browser"),
            Proof::Token(&token)
        ));
        assert!(!ok(
            &headers(&[("sec-fetch-site", "same-site"), ("origin", ORIGIN)]),
            Some("browser"),
            Proof::Token(&token)
        ));
        assert!(!ok(&headers(&[]), Some("browser"), Proof::Token(&token)));
        assert!(ok(
            &headers(&[("sec-fetch-site", "same-origin")]),
            Some("browser"),
            Proof::Token(&token)
        ));
        // API writes: a JSON body or a method that needs a preflight is the proof.
        let (post, delete) = (http::Method::POST, http::Method::DELETE);
        let json = headers(&[("origin", ORIGIN), ("content-type", "application/json")]);
        assert!(ok(&json, None, Proof::Preflighted(&post)));
        let plain = headers(&[("origin", ORIGIN), ("content-type", "text/plain")]);
        assert!(!ok(&plain, None, Proof::Preflighted(&post)));
        assert!(ok(
            &headers(&[("origin", ORIGIN)]),
            None,
            Proof::Preflighted(&delete)
        ));
        let evil = headers(&[
            ("origin", "https://evil.example"),
            ("content-type", "application/json"),
        ]);
        assert!(!ok(&evil, None, Proof::Preflighted(&post)));
    }
}
