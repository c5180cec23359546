//! Validates where to send a browser after sign-in: only back to castellan's own origin.
//!
//! Open redirects are the classic bug of sign-in proxies (oauth2-proxy's CVE-2020-5233, -4037, -11053…).
//! Anything that a browser could read as another origin is refused: `//evil.com`, `/\evil.com`,
//! `https:evil.com`, encoded slashes and backslashes, control characters and whitespace anywhere,
//! userinfo, other schemes. What passes is re-serialised as a path, so the `Location` castellan sends
//! is always same-origin.

use url::Url;

/// Returns the path (with query) to send the browser to, or `None` if `raw` is not a safe
/// destination on `public`'s origin.
pub fn validate(raw: &str, public: &Url) -> Option<String> {
    if raw.is_empty() || raw.len() > 4096 {
        return None;
    }
    // Control characters, spaces and backslashes have no business in a return URL; browsers strip
    // or reinterpret them (`/\t/evil.com` is `//evil.com` to a browser, `\` is `/`).
    if raw
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    // Decode a few rounds, so `%2f%2fevil.com`, `%5cevil.com` and double encodings are judged as a
    // browser or the next hop might finally see them.
    let mut decoded = raw.to_string();
    for _ in 0..3 {
        let next = percent_decode(&decoded);
        if next
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return None;
        }
        if next.starts_with("//") || next.starts_with("/\\") {
            return None;
        }
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let target = if raw.starts_with('/') {
        if raw.starts_with("//") {
            return None;
        }
        public.join(raw).ok()?
    } else {
        // Absolute form only, and only to our own origin. `https:evil.com` parses as
        // https://evil.com/ and fails the origin check.
        let u = Url::parse(raw).ok()?;
        if !raw
            .to_ascii_lowercase()
            .starts_with(&format!("{}://", u.scheme()))
        {
            return None;
        }
        u
    };
    if target.origin() != public.origin()
        || !target.username().is_empty()
        || target.password().is_some()
    {
        return None;
    }
    let mut path = target.path().to_string();
    if path.starts_with("//") {
        return None;
    }
    if let Some(q) = target.query() {
        path.push('?');
        path.push_str(q);
    }
    Some(path)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> Url {
        Url::parse("https://apps.example.com").unwrap()
    }

    #[test]
    fn same_origin_destinations_pass() {
        for (raw, want) in [
            ("/", "/"),
            ("/reports?q=1&x=%2F", "/reports?q=1&x=%2F"),
            ("/a/b/../c", "/a/c"),
            ("https://apps.example.com/x?y", "/x?y"),
            ("https://APPS.example.com:443/x", "/x"),
            ("/_stcore/health", "/_stcore/health"),
        ] {
            assert_eq!(validate(raw, &public()).as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn open_redirect_patterns_are_refused() {
        for raw in [
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/\\/evil.com",
            "https:evil.com",
            "https:/evil.com",
            "http://evil.com",
            "https://evil.com/",
            "https://apps.example.com.evil.com/",
            "https://apps.example.com@evil.com/",
            "https://user:pw@apps.example.com/",
            "http://apps.example.com/",
            "https://apps.example.com:8443/",
            "/%2f%2fevil.com",
            "%2f%2fevil.com",
            "/%5cevil.com",
            "%5c%5cevil.com",
            "/%252f%252fevil.com",
            "/%09/evil.com",
            "/\t/evil.com",
            "/\n/evil.com",
            "/\r\n/evil.com",
            " /evil",
            "/ /evil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "evil.com",
            "evil。com",
            "https://evil。com/",
            "/\u{0}//evil.com",
            "",
            "/..//evil.com",
            "/a/..//evil.com",
            "https://apps.example.com//evil.com",
        ] {
            assert_eq!(validate(raw, &public()), None, "{raw:?} must be refused");
        }
    }
}
