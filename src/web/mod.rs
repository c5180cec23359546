//! HTTP plumbing shared by castellan's own pages and the proxy: the body type, response builders with
//! security headers, cookies, forms, and the client's address and host.
//!
//! May use: identity, store, policy, config and the leaves (it knows requests and responses, not
//! what castellan decides with them).

pub mod cookies;
pub mod ctx;
pub mod failure;
pub mod guard;
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
/// Headers castellan adds to a request or answer (identity headers, an upstream credential).
pub type HeaderList = Vec<(http::HeaderName, HeaderValue)>;
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
    // Named once: a lookup by `&str` parses and checks the name on every request.
    const SEC_FETCH_MODE: header::HeaderName = header::HeaderName::from_static("sec-fetch-mode");
    const X_REQUESTED_WITH: header::HeaderName =
        header::HeaderName::from_static("x-requested-with");
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    if headers.contains_key(X_REQUESTED_WITH) || headers.contains_key(header::UPGRADE) {
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
