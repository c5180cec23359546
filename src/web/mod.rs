//! HTTP plumbing shared by castellan's own pages and the proxy: the body type, response builders with
//! security headers, cookies, forms, and the client's address and host.

pub mod pages;
pub mod return_to;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};

use crate::net::IpNet;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Headers every page castellan itself serves carries: no caching, no framing, no scripts.
fn own_headers(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under no-referrer browsers send `Origin: null` with form
    // posts, which the same-origin check on castellan's forms must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'"),
    );
}

pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut resp = Response::new(full(page));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    own_headers(&mut resp);
    resp
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    own_headers(&mut resp);
    resp
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    own_headers(&mut resp);
    resp
}

/// A 302 to `location`, which must already be safe (validated or built by castellan).
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    own_headers(&mut resp);
    resp
}

// ---- cookies ---------------------------------------------------------------------------------------

/// The names of castellan's cookies. With an https `public_url` they carry the `__Host-` prefix, which
/// browsers only accept with `Secure`, `Path=/` and no `Domain`, so no sibling host can plant them.
#[derive(Debug, Clone)]
pub struct CookieNames {
    pub session: &'static str,
    pub browser: &'static str,
    pub secure: bool,
}

impl CookieNames {
    pub fn new(secure: bool) -> CookieNames {
        if secure {
            CookieNames {
                session: "__Host-castellan_session",
                browser: "__Host-castellan_browser",
                secure,
            }
        } else {
            CookieNames {
                session: "castellan_session",
                browser: "castellan_browser",
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
    let own = |n: &[u8]| {
        n.strip_prefix(b"__Host-")
            .unwrap_or(n)
            .starts_with(b"castellan_")
    };
    let ascii = name.trim_ascii();
    // Bytes outside ASCII around a name: also judge it as an app that decodes it and trims
    // Unicode spaces (U+00A0, U+0085) would see it.
    own(ascii) || (!ascii.is_ascii() && own(String::from_utf8_lossy(ascii).trim().as_bytes()))
}

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

// ---- requests -------------------------------------------------------------------------------------

/// Reads a form body of at most 16 KiB.
pub async fn read_form(body: hyper::body::Incoming) -> Option<Vec<(String, String)>> {
    let bytes = Limited::new(body, 16 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut ip = peer.ip();
    if !is_trusted(ip) {
        return ip;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for hop in hops.into_iter().rev() {
        ip = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    ip
}

/// The request's host, lower case, without port or trailing dot: `:authority` for HTTP/2, else `Host`.
pub fn request_host(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    let lower = |host: &str| host.trim_end_matches('.').to_ascii_lowercase();
    match uri.authority() {
        Some(a) => Some(lower(a.host())),
        None => {
            let h = headers.get(header::HOST)?.to_str().ok()?;
            Some(lower(h.parse::<http::uri::Authority>().ok()?.host()))
        }
    }
}

/// True when the request is a browser navigation (which may be redirected to sign in) rather than
/// a script, API or WebSocket request (which gets a 401 it can act on).
pub fn is_navigation(headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    if headers.contains_key("x-requested-with") || headers.contains_key(header::UPGRADE) {
        return false;
    }
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
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
    fn a_duplicated_cookie_is_ambiguous() {
        let h = headers(&[("cookie", "castellan_session=a; castellan_session=b")]);
        assert_eq!(cookie(&h, "castellan_session"), None);
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let trusted = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.9")]);
        let untrusted_peer: SocketAddr = "5.5.5.5:1".parse().unwrap();
        let trusted_peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(
            client_ip(untrusted_peer, &h, &trusted),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(trusted_peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn navigation_detection() {
        assert!(is_navigation(&headers(&[("accept", "text/html,*/*")])));
        assert!(is_navigation(&headers(&[
            ("sec-fetch-mode", "navigate"),
            ("accept", "*/*")
        ])));
        assert!(!is_navigation(&headers(&[
            ("sec-fetch-mode", "cors"),
            ("accept", "text/html")
        ])));
        assert!(!is_navigation(&headers(&[("accept", "application/json")])));
        assert!(!is_navigation(&headers(&[
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest")
        ])));
        assert!(!is_navigation(&headers(&[("accept", "*/*")])));
    }
}
