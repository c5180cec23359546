//! Request path normalisation: the path castellan routes and decides on is the path the app receives.
//!
//! Without this, `/%61dmin`, `/x/../admin` or `//admin` could be routed to one app's rules while the
//! upstream, after its own decoding, serves `/admin`. Unreserved characters are decoded (RFC 3986 §6.2.2.2),
//! dot segments removed (§5.2.4) and repeated slashes merged. Paths that servers read differently are
//! refused outright, as Google IAP does: encoded slashes and backslashes (`%2F`, `%5C`), `..;` and `.;`
//! segments (servlet containers treat them as dot segments), control characters and NUL.

/// The normalised path, or why it is refused (shown to the client with a 400).
pub fn normalize(raw: &str) -> Result<String, &'static str> {
    normalize_inner(raw).ok_or(
        "The request path is ambiguous or invalid (encoded slashes, `..;` segments, control characters or bad percent-encoding are refused).",
    )
}

fn normalize_inner(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    if is_plain(raw) {
        return Some(raw.to_string());
    }
    normalize_slow(raw)
}

/// Whether `raw` (starting with `/`) is already normal: printable ASCII without `%` or `\`, no
/// empty segment before the last and no segment starting with a dot. Most paths are; they skip
/// the decoding and segment work.
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter()
        .all(|&c| (0x21..0x7f).contains(&c) && c != b'%' && c != b'\\')
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

fn normalize_slow(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v < 0x20 || v == 0x7f || v == b'/' || v == b'\\' {
                return None;
            }
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.extend_from_slice(hex.to_ascii_uppercase().as_bytes());
            }
            i += 3;
        } else if b < 0x20 || b == 0x7f || b == b'\\' {
            return None;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        // `..;x` is `..` to servlet containers but a plain name to others: ambiguous, refused.
        if seg.starts_with(".;") || seg.starts_with("..;") {
            return None;
        }
        match *seg {
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            "" if n != last => {}
            "" => trailing_slash = true,
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::from("/");
    path.push_str(&out.join("/"));
    if trailing_slash && !out.is_empty() {
        path.push('/');
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalisation_table() {
        for (raw, want) in [
            ("/", Some("/")),
            ("/a/b", Some("/a/b")),
            ("/a/b/", Some("/a/b/")),
            ("/%61dmin", Some("/admin")),
            ("/%2e%2e/admin", Some("/admin")),
            ("/x/%2E%2E/admin", Some("/admin")),
            ("/x/../admin", Some("/admin")),
            ("/x/./admin", Some("/x/admin")),
            ("//admin", Some("/admin")),
            ("/a//b///c", Some("/a/b/c")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/x/..;/admin", None),
            ("/x/.;/admin", None),
            ("/a%2Fb", None),
            ("/a%2fb", None),
            ("/a%5cb", None),
            ("/a%3Bb", Some("/a%3Bb")),
            ("/a%20b", Some("/a%20b")),
            ("/admin;jsessionid=1", Some("/admin;jsessionid=1")),
            ("/x/..", Some("/")),
            ("/x/.", Some("/x/")),
            ("/%", None),
            ("/%zz", None),
            ("/%0a", None),
            ("/%00", None),
            ("/a\\b", None),
            ("a", None),
            ("*", None),
        ] {
            assert_eq!(normalize(raw).ok().as_deref(), want, "{raw}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::normalize;

    /// A tiny deterministic generator (no extra dependency): xorshift over path-shaped alphabets.
    fn paths(seed: u64, n: usize) -> Vec<String> {
        const PARTS: &[&str] = &[
            "/", "a", "admin", ".", "..", "%2e", "%2E%2e", "%61", "%41", "//", ";", ";x=1", "%20",
            "~", "-", "%7e", "reports", "%", "%zz", "%00", "%2f", "\\", "..;", "?", "é",
        ];
        let mut x = seed;
        (0..n)
            .map(|_| {
                let mut s = String::from("/");
                for _ in 0..(x % 9) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    s.push_str(PARTS[(x % PARTS.len() as u64) as usize]);
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s
            })
            .collect()
    }

    #[test]
    fn the_plain_path_shortcut_agrees_with_the_full_normalisation() {
        let mut plain = 0;
        for p in paths(0x2545_f491_4f6c_dd1d, 20_000) {
            if super::is_plain(&p) {
                plain += 1;
                assert_eq!(
                    super::normalize_slow(&p).as_deref(),
                    Some(p.as_str()),
                    "{p:?}"
                );
            }
        }
        assert!(plain > 1_000, "only {plain} plain paths generated");
    }

    #[test]
    fn normalising_is_idempotent_and_leaves_no_dot_segments_or_double_slashes() {
        for p in paths(0x9e37_79b9_7f4a_7c15, 20_000) {
            let Ok(n) = normalize(&p) else { continue };
            assert_eq!(
                normalize(&n).as_deref(),
                Ok(n.as_str()),
                "not idempotent for {p:?}"
            );
            assert!(n.starts_with('/'), "{p:?} -> {n:?}");
            assert!(!n.contains("//"), "{p:?} -> {n:?}");
            for seg in n.split('/') {
                assert!(seg != "." && seg != "..", "{p:?} -> {n:?}");
            }
            assert!(
                !n.to_ascii_lowercase().contains("%2e") && !n.contains("%61"),
                "unreserved stay decoded: {p:?} -> {n:?}"
            );
        }
    }

    #[test]
    fn ambiguous_inputs_are_always_refused() {
        for p in paths(42, 20_000) {
            let lower = p.to_ascii_lowercase();
            if lower.contains("%2f")
                || lower.contains("%00")
                || p.contains('\\')
                || lower.contains("%5c")
            {
                assert!(normalize(&p).is_err(), "{p:?} must be refused");
            }
        }
    }
}
