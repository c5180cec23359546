//! Request path normalisation: the path castellan routes and decides on is the path the app receives.
//!
//! Without this, `/%61dmin`, `/x/../admin` or `//admin` could be routed to one app's rules while the
//! upstream, after its own decoding, serves `/admin`. Unreserved characters are decoded (RFC 3986 §6.2.2.2),
//! dot segments removed (§5.2.4) and repeated slashes merged; reserved encodings such as `%2F` stay
//! encoded, since decoding them changes the path's structure.

/// The normalised path, or `None` when it is not a valid origin-form path (bad or control-character
/// encodings, no leading slash).
pub fn normalize(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v < 0x20 || v == 0x7f {
                return None;
            }
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else if b < 0x20 || b == 0x7f || b == b'\\' {
            return None;
        } else {
            decoded.push(b as char);
            i += 1;
        }
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        // `..;x` is `..` to servlet containers: treat parameters on dot segments as the dot segment.
        let bare = seg.split(';').next().unwrap_or("");
        match bare {
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
            ("/x/..;/admin", Some("/admin")),
            ("/a%2Fb", Some("/a%2Fb")),
            ("/a%2fb", Some("/a%2Fb")),
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
            assert_eq!(normalize(raw).as_deref(), want, "{raw}");
        }
    }
}
