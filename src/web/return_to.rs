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
    let target = target(raw, public)?;
    (target.origin() == public.origin()).then(|| path_of(&target))?
}

/// Like [`validate`], but an absolute URL on another host castellan serves (an app's `host`, as
/// `serves` says) with `public`'s scheme and port is allowed too, and returned whole; sign-in then
/// hands the session to that host with a one-time code.
pub fn validate_any(raw: &str, public: &Url, serves: impl Fn(&str) -> bool) -> Option<String> {
    let target = target(raw, public)?;
    if target.origin() == public.origin() {
        return path_of(&target);
    }
    let host = target.host_str()?;
    let ok = target.scheme() == public.scheme()
        && target.port_or_known_default() == public.port_or_known_default()
        && serves(host);
    if !ok {
        return None;
    }
    let path = path_of(&target)?;
    Some(format!("{}{path}", target.origin().ascii_serialization()))
}

fn path_of(target: &Url) -> Option<String> {
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

/// `raw` as a URL, after every check that does not depend on which origin it names.
fn target(raw: &str, public: &Url) -> Option<Url> {
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
    if !target.username().is_empty() || target.password().is_some() {
        return None;
    }
    Some(target)
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
    fn other_hosts_castellan_serves_pass_whole_and_only_those() {
        let serves = |h: &str| h == "dash.apps.example.com" || h == "reports.example.com";
        for (raw, want) in [
            (
                "https://dash.apps.example.com/x?y=1",
                Some("https://dash.apps.example.com/x?y=1"),
            ),
            (
                "https://Reports.Example.com/",
                Some("https://reports.example.com/"),
            ),
            ("/here", Some("/here")),
            ("https://evil.com/", None),
            ("http://dash.apps.example.com/", None),
            ("https://dash.apps.example.com:8443/", None),
            ("https://user@dash.apps.example.com/", None),
            ("https://dash.apps.example.com.evil.com/", None),
            ("//dash.apps.example.com/", None),
            ("https:dash.apps.example.com/", None),
        ] {
            assert_eq!(
                validate_any(raw, &public(), serves).as_deref(),
                want,
                "{raw}"
            );
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
