//! Entry points for the fuzzers in `fuzz/` (cargo fuzz): each takes arbitrary bytes, runs one parser
//! that faces attacker or operator input, and panics when a property castellan relies on breaks.
//! The committed seed corpora (`fuzz/corpus/<target>/`) also run as a unit test, so every finding
//! that became a seed stays fixed.

use std::path::Path;

use http::{HeaderMap, HeaderValue, header};

/// A fuzz target: bytes in, a panic when a property breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("path", path),
    ("return_to", return_to),
    ("cookie", cookie),
    ("bearer", bearer),
    ("condition", condition),
    ("config", config),
    ("webauthn", webauthn),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Path normalisation: what passes is absolute, has no empty, `.` or `..` segment, no backslash or
/// control character, and is a fixed point (normalising it again changes nothing).
pub fn path(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let Ok(p) = crate::gate::path::normalize(raw) else {
        return;
    };
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}");
    assert!(
        !p.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {p:?}"
    );
    assert!(
        !p.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'),
        "{raw:?} -> {p:?}"
    );
    assert_eq!(
        crate::gate::path::normalize(&p).as_deref(),
        Ok(p.as_str()),
        "not idempotent for {raw:?}"
    );
}

/// Return URLs: what passes is a path that a browser resolves against castellan's origin to
/// castellan's origin (no open redirect), with nothing a browser would strip or reinterpret.
pub fn return_to(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let public = url::Url::parse("https://login.example.com/").expect("a valid URL");
    let Some(p) = crate::web::return_to::validate(raw, &public) else {
        return;
    };
    assert!(
        p.starts_with('/') && !p.starts_with("//") && !p.starts_with("/\\"),
        "{raw:?} -> {p:?}"
    );
    assert!(
        !p.chars().any(|c| c.is_control() || c.is_whitespace()),
        "{raw:?} -> {p:?}"
    );
    let resolved = public.join(&p).expect("a path joins");
    assert_eq!(resolved.origin(), public.origin(), "{raw:?} -> {p:?}");
    // Allowing other served hosts never lets a stranger's host through.
    if let Some(any) = crate::web::return_to::validate_any(raw, &public, |h| h == "app.example.com")
    {
        let u = public.join(&any).expect("joins");
        assert!(
            u.origin() == public.origin() || u.host_str() == Some("app.example.com"),
            "{raw:?} -> {any:?}"
        );
    }
}

/// Cookie headers: a value castellan reads never spans pairs, and after stripping castellan's
/// cookies none is left to reach the app.
pub fn cookie(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(header::COOKIE, v);
        }
    }
    for name in ["castellan_session", "__Host-castellan_session"] {
        if let Some(v) = crate::web::cookies::cookie(&headers, name) {
            assert!(!v.contains(';'), "{v:?}");
        }
    }
    crate::web::cookies::strip_own_cookies(&mut headers);
    for v in headers.get_all(header::COOKIE) {
        let s = String::from_utf8_lossy(v.as_bytes());
        for pair in s.split(';') {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
            assert!(
                !crate::web::cookies::is_own_cookie(name.as_bytes()),
                "{name:?} survived in {s:?}"
            );
        }
    }
}

/// Bearer tokens: reading the header and the unverified issuer of any string never panics.
pub fn bearer(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = jsonwebtoken::decode_header(t);
    let _ = crate::gate::credential::unverified_issuer(t);
}

/// Conditions: compiling never panics; an error points inside the source; a compiled condition
/// evaluates without panicking.
pub fn condition(data: &[u8]) {
    let Some(src) = text(data) else { return };
    match crate::policy::condition::Condition::compile(src) {
        Ok(c) => {
            let claims: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_str(r#"{"dept": "eng", "level": 3, "teams": ["a", 1, true]}"#)
                    .expect("a JSON object");
            let groups = vec!["staff".to_string()];
            let cx = crate::policy::condition::Context {
                path: "/admin/x",
                host: "app.example.com",
                method: "GET",
                time: 1_790_000_000,
                ip: Some("10.1.2.3".parse().expect("an address")),
                destination: Some(crate::policy::condition::Destination {
                    host: "10.0.0.5",
                    port: 22,
                }),
                auth: Some(crate::policy::condition::Auth {
                    provider: "corp",
                    groups: [&groups, &[]],
                    amr: &groups,
                    acr: Some("urn:x"),
                    claims: &claims,
                }),
                access_levels: &["accessPolicies/1/accessLevels/corp"],
            };
            let _ = c.eval(&cx);
            let _ = c.access_levels_named();
            let _ = c.expiry();
        }
        Err(e) => {
            let _ = e.pointed(src);
        }
    }
}

/// Configuration files: any text is either a configuration or a list of problems, never a panic.
pub fn config(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Err(problems) =
        crate::config::Config::parse(t, Path::new("/etc/castellan"), &crate::config::NoEnv)
    {
        assert!(!problems.is_empty());
    }
}

/// WebAuthn responses: CBOR and authenticator data from the network are refused, never panicked on.
pub fn webauthn(data: &[u8]) {
    let _ = crate::identity::webauthn::Cbor::decode(data);
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    let (a, b) = rest.split_at(cut);
    let expected = crate::identity::webauthn::Expected {
        challenge: "c",
        origin: "https://login.example.com",
        rp_id: "login.example.com",
    };
    let _ = crate::identity::webauthn::verify_registration(&expected, a, b);
    let _ = crate::identity::webauthn::verify_assertion(&expected, b, 0, a, b, a);
}

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// The committed seeds (and past findings) pass every target.
    #[test]
    fn the_seed_corpora_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, run) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
                n += 1;
            }
            assert!(n > 0, "no seeds for {name}");
        }
    }
}
