//! castellan's cookies: their names (with the `__Host-` prefix on HTTPS), reading them without
//! ambiguity, and keeping them away from apps in both directions: never forwarded upstream, and
//! never set or cleared by an app's response.

use http::header::{self, HeaderMap, HeaderValue};

/// The names of castellan's cookies. With an https `public_url` they carry the `__Host-` prefix, which
/// browsers only accept with `Secure`, `Path=/` and no `Domain`, so no sibling host can plant them.
#[derive(Debug, Clone)]
pub struct CookieNames {
    /// The session (a random id; the store keeps its digest).
    pub session: &'static str,
    /// The browser: what CSRF tokens and sign-in flows are bound to.
    pub browser: &'static str,
    /// On an app's host, while a sign-in is on its way back: the hand-off is bound to it.
    pub handoff: &'static str,
    /// A device that signed in to an account before: its failed attempts do not lock the
    /// account for everyone else, nor others' for it (OWASP's device cookies).
    pub device: &'static str,
    pub secure: bool,
}

impl CookieNames {
    pub fn new(secure: bool) -> CookieNames {
        if secure {
            CookieNames {
                session: "__Host-castellan_session",
                browser: "__Host-castellan_browser",
                handoff: "__Host-castellan_handoff",
                device: "__Host-castellan_device",
                secure,
            }
        } else {
            CookieNames {
                session: "castellan_session",
                browser: "castellan_browser",
                handoff: "castellan_handoff",
                device: "castellan_device",
                secure,
            }
        }
    }

    /// A `Set-Cookie` value; `max_age` None makes a cookie that ends with the browser session,
    /// `Some(0)` deletes it.
    pub fn set(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut s = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.secure {
            s.push_str("; Secure");
        }
        if let Some(age) = max_age {
            s.push_str(&format!("; Max-Age={age}"));
        }
        HeaderValue::from_str(&s).expect("cookie values are base64url tokens")
    }
}

/// Whether a cookie name is one of castellan's (in either spelling): such cookies never go upstream.
pub fn is_own_cookie(name: &[u8]) -> bool {
    // Any case, with or without a `__Host-` or `__Secure-` prefix (browsers match the prefixes
    // without regard to case).
    let own = |n: &[u8]| {
        let n = n.to_ascii_lowercase();
        let n = n
            .strip_prefix(b"__host-")
            .or_else(|| n.strip_prefix(b"__secure-"))
            .unwrap_or(&n);
        n.starts_with(b"castellan_")
    };
    let ascii = name.trim_ascii();
    // Bytes outside ASCII around a name: also judge it as an app that decodes it and trims
    // Unicode spaces (U+00A0, U+0085) would see it.
    own(ascii) || (!ascii.is_ascii() && own(String::from_utf8_lossy(ascii).trim().as_bytes()))
}

/// Removes from an app's response every `Set-Cookie` that would set or clear one of castellan's
/// cookies (in any spelling), and the `cookies` and `*` directives of `Clear-Site-Data`: an app
/// cannot sign a browser in as someone else, nor out. Returns how many it removed.
pub fn strip_own_set_cookies(headers: &mut HeaderMap) -> usize {
    let before = headers.get_all(header::SET_COOKIE).iter().count();
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let name = v
                .as_bytes()
                .split(|&b| b == b'=' || b == b';')
                .next()
                .unwrap_or(b"");
            !is_own_cookie(name)
        })
        .cloned()
        .collect();
    let mut removed = before - kept.len();
    if removed > 0 {
        headers.remove(header::SET_COOKIE);
        for v in kept {
            headers.append(header::SET_COOKIE, v);
        }
    }
    if let Some(csd) = headers.get(CLEAR_SITE_DATA) {
        let text = String::from_utf8_lossy(csd.as_bytes()).into_owned();
        let directives: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|d| !matches!(d.trim_matches('"'), "cookies" | "*"))
            .collect();
        if directives.len() != text.split(',').count() {
            removed += 1;
            headers.remove(CLEAR_SITE_DATA);
            if let Ok(v) = HeaderValue::from_str(&directives.join(", "))
                && !directives.is_empty()
            {
                headers.insert(CLEAR_SITE_DATA, v);
            }
        }
    }
    removed
}

const CLEAR_SITE_DATA: http::HeaderName = http::HeaderName::from_static("clear-site-data");

/// The value of cookie `name` from every `Cookie` header. When a name appears twice the request is
/// ambiguous (a planted cookie): castellan then uses none of them.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k.trim() == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(v.trim());
            }
        }
    }
    found
}

/// Removes castellan's cookies from the `Cookie` headers, keeping the app's own byte for byte (in
/// one header).
pub fn strip_own_cookies(headers: &mut HeaderMap) {
    let mut kept: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        for pair in v.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
            if pair.is_empty() || is_own_cookie(name) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&kept)
    {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookies_are_found_and_stripped() {
        let mut h = headers(&[
            ("cookie", "a=1; castellan_session=s; b=2"),
            ("cookie", "__Host-castellan_browser=x"),
        ]);
        assert_eq!(cookie(&h, "castellan_session"), Some("s"));
        strip_own_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        let mut only_ours = headers(&[("cookie", "castellan_session=s")]);
        strip_own_cookies(&mut only_ours);
        assert!(only_ours.get("cookie").is_none());
        // The app's cookies pass unchanged, bytes that are not UTF-8 included.
        let mut raw = HeaderMap::new();
        raw.insert(
            "cookie",
            HeaderValue::from_bytes(b"pref=caf\xe9; castellan_session=s; x=\xff\xfe").unwrap(),
        );
        strip_own_cookies(&mut raw);
        assert_eq!(
            raw.get("cookie").unwrap().as_bytes(),
            b"pref=caf\xe9; x=\xff\xfe"
        );
        // A name padded with a Unicode space is still ours to an app that trims it.
        let mut padded = HeaderMap::new();
        padded.insert(
            "cookie",
            HeaderValue::from_bytes(b"\xc2\xa0castellan_session=s; a=1").unwrap(),
        );
        strip_own_cookies(&mut padded);
        assert_eq!(padded.get("cookie").unwrap(), "a=1");
    }

    #[test]
    fn apps_cannot_set_or_clear_our_cookies() {
        let mut h = HeaderMap::new();
        for c in [
            "castellan_session=attacker; Path=/",
            "__Host-castellan_session=x; Path=/; Secure",
            "__SECURE-Castellan_Browser=x",
            " castellan_session=x",
            "app=1; Path=/",
            "castellan_session",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(c));
        }
        h.insert(
            "clear-site-data",
            HeaderValue::from_static("\"cache\", \"cookies\", \"storage\""),
        );
        assert_eq!(strip_own_set_cookies(&mut h), 6);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["app=1; Path=/"]);
        assert_eq!(h["clear-site-data"], "\"cache\", \"storage\"");
        let mut star = HeaderMap::new();
        star.insert("clear-site-data", HeaderValue::from_static("\"*\""));
        strip_own_set_cookies(&mut star);
        assert!(star.get("clear-site-data").is_none());
    }

    #[test]
    fn a_duplicated_cookie_is_ambiguous() {
        let h = headers(&[("cookie", "castellan_session=a; castellan_session=b")]);
        assert_eq!(cookie(&h, "castellan_session"), None);
    }
}
