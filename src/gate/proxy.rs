//! Forwards an allowed request to its app: hop-by-hop headers per RFC 9110 §7.6.1, `X-Forwarded-*`,
//! the identity headers (client copies stripped), streamed bodies and WebSocket upgrades.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::splice;
use crate::config::App;
use crate::runtime::live::{Pending, RevocableBody};
use std::sync::Arc;

use crate::runtime::balance::{Balancer, InFlight};
use crate::runtime::upstream::{Driven, Failed, Pool};
use crate::web::{Body, BoxError, HeaderList};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the legacy ones).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

// Parsed once: removing or inserting by `&str` parses and validates the name every time.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the app's upstream: {0}")]
    Connect(#[source] BoxError),
    #[error("the app's upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the app's upstream failed: {0}")]
    Upstream(#[source] hyper::Error),
}

impl From<crate::runtime::upstream::Error> for Error {
    fn from(e: crate::runtime::upstream::Error) -> Error {
        match e {
            crate::runtime::upstream::Error::Connect(e) => Error::Connect(e),
            crate::runtime::upstream::Error::Http(e) => Error::Upstream(e),
        }
    }
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Connect(_) => "connect",
            Error::Timeout(_) => "timeout",
            Error::Upstream(_) => "protocol",
        }
    }
}

/// What the upstream learns about the request's origin.
pub struct Forwarded<'a> {
    pub peer_ip: IpAddr,
    /// True when the socket peer is a trusted proxy whose `X-Forwarded-*` are kept and extended.
    pub peer_trusted: bool,
    pub proto: &'a str,
}

/// Where and how a request goes on to its app.
pub struct Outbound<'a> {
    pub app: &'a App,
    /// The normalised path and query castellan decided on.
    pub target: &'a str,
    pub forwarded: Forwarded<'a>,
    /// Headers castellan adds (identity, upstream credential), after every client-sent look-alike
    /// was removed.
    pub added: HeaderList,
    /// What to register if the answer outlives the request.
    pub live: Option<Pending>,
    /// The app's pool, when it has several upstreams or a health check.
    pub balancer: Option<&'a Arc<Balancer>>,
}

/// Sends `req` to `app` as `target` (the normalised path and query castellan decided on) and
/// returns the app's response, with upgrades spliced through. `live` (None only for public apps
/// and anonymous callers) is registered when the response outlives the request (a WebSocket, a
/// stream, a long body): revoking it then ends the stream or the WebSocket. An app's response
/// never sets or clears castellan's own cookies. The app's header rules apply both ways.
pub async fn forward(
    pool: &Pool,
    timeout: Duration,
    mut req: Request<Incoming>,
    out: Outbound<'_>,
) -> Result<Response<Body>, Error> {
    let Outbound {
        app,
        target,
        forwarded,
        added,
        live,
        balancer,
    } = out;
    let upgrade = wants_upgrade(req.headers(), req.version());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let bodiless = hyper::body::Body::is_end_stream(&body);

    // HTTP/2 names the host in the URI (`:authority`), HTTP/1.1 in `Host` (kept as it came: a
    // clone shares its bytes).
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts
            .headers
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    };
    // The request line carries the origin form (an upstream URL has no path of its own: the
    // configuration refuses one).
    parts.uri = target
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    strip_identity_headers(headers);
    // The app's claim and provider-token headers come from castellan only: a client's copy never
    // reaches the app, also when the person has no such claim or token.
    for name in app
        .claims
        .headers
        .iter()
        .map(|(n, _)| n)
        .chain(app.provider_tokens.headers())
    {
        headers.remove(name);
    }
    crate::web::cookies::strip_own_cookies(headers);
    // The app's own rules, before castellan's identity and forwarding headers (which they
    // cannot name) go on.
    app.headers.to_request(headers);
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    // The original Host goes through: apps such as Streamlit compare Origin with Host. A
    // request without one (HTTP/1.0) names the upstream.
    match &host {
        Some(h) => {
            headers.insert(header::HOST, h.clone());
        }
        None => {
            if let Some(a) = app
                .upstream()
                .as_str()
                .parse::<Uri>()
                .ok()
                .and_then(|u| HeaderValue::from_str(u.authority()?.as_str()).ok())
            {
                headers.insert(header::HOST, a);
            }
        }
    }
    set_forwarded(headers, &forwarded, host);
    for (name, v) in added {
        headers.insert(name, v);
    }

    // Trailers can carry headers too: identity look-alikes are dropped there as well.
    let body = body
        .map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                strip_identity_headers(&mut trailers);
                hyper::body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        })
        .map_err(|e| Box::new(e) as BoxError)
        .boxed_unsync();
    // A request that may go again to another upstream after it reached one that failed: an
    // idempotent method without a body (a request that never reached one always may).
    let replay = (balancer.is_some()
        && bodiless
        && client_upgrade.is_none()
        && matches!(
            parts.method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        ))
    .then(|| Replay {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    let upstream_req = Request::from_parts(parts, body);
    let upgrading = client_upgrade.is_some();
    let (mut resp, in_flight) = match balancer {
        None => {
            // Boxed: the exchange's state is large, and the request's future is copied into
            // its box.
            let sent = Box::pin(pool.send(app.upstream().as_str(), upstream_req, upgrading));
            match tokio::time::timeout(timeout, sent).await {
                Err(_) => return Err(Error::Timeout(timeout)),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(resp)) => (resp, None),
            }
        }
        Some(b) => {
            let sent = Box::pin(send_pooled(
                pool,
                b,
                upstream_req,
                replay,
                upgrading,
                timeout,
            ));
            let (resp, in_flight) = sent.await?;
            (resp, Some(in_flight))
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let live = live.map(Pending::register);
        let websocket = upgrade
            .as_ref()
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
        tokio::spawn(async move {
            // The WebSocket counts as outstanding on its upstream while it is open.
            let _in_flight = in_flight;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    match live {
                        Some((_guard, revoked)) => {
                            splice::splice_until(client, upstream, websocket, revoked).await;
                        }
                        None => splice::splice(&mut client, &mut upstream).await,
                    }
                }
                Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        remove_hop_by_hop(&mut parts.headers);
        own_cookies_stay_ours(app, &mut parts.headers);
        app.headers.to_response(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            parts.headers.insert(header::UPGRADE, p);
        }
        return Ok(Response::from_parts(parts, crate::web::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    own_cookies_stay_ours(app, &mut parts.headers);
    app.headers.to_response(&mut parts.headers);
    let short = hyper::body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n <= crate::runtime::live::SHORT_BODY);
    let body = body.map_err(|e| Box::new(e) as BoxError);
    let body = match in_flight {
        // Counted on its upstream until the body ends (or is dropped).
        Some(in_flight) => body
            .map_frame(move |f| {
                let _ = &in_flight;
                f
            })
            .boxed_unsync(),
        None => body.boxed_unsync(),
    };
    let body = match live {
        Some(pending) if !short => {
            let (guard, revoked) = pending.register();
            RevocableBody::new(body, guard, revoked).boxed_unsync()
        }
        _ => body,
    };
    Ok(Response::from_parts(parts, body))
}

/// What a request is made of, to send it again to another upstream.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn request(&self) -> Request<Body> {
        let mut r = Request::new(crate::web::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = Version::HTTP_11;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Sends `req` to the least loaded of `balancer`'s upstreams; one that cannot be reached leaves
/// the pool and the request goes to the next (when it never left, or `replay` can make it again),
/// all within `timeout`. Returns the response and what counts it on its upstream.
async fn send_pooled(
    pool: &Pool,
    balancer: &Arc<Balancer>,
    mut req: Request<Body>,
    replay: Option<Replay>,
    upgrade: bool,
    timeout: Duration,
) -> Result<(Response<Driven>, InFlight), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tried = 0u64;
    loop {
        let i = balancer
            .pick(tried)
            .expect("an untried upstream: the loop stops when none is left");
        tried |= 1 << i;
        let in_flight = balancer.begin(i);
        match tokio::time::timeout_at(deadline, pool.try_send(balancer.url(i), req, upgrade)).await
        {
            Err(_) => return Err(Error::Timeout(timeout)),
            Ok(Ok(resp)) => return Ok((resp, in_flight)),
            Ok(Err(Failed { error, request })) => {
                if matches!(error, crate::runtime::upstream::Error::Connect(_)) {
                    balancer.refused(i);
                    tracing::warn!(upstream = %balancer.url(i), "upstream cannot be reached ({error}): out of the pool for a while");
                }
                let again = request.or_else(|| replay.as_ref().map(Replay::request));
                match again {
                    Some(r) if balancer.pick(tried).is_some() => req = r,
                    _ => return Err(error.into()),
                }
            }
        }
    }
}

/// Removes what in an app's response would set or clear castellan's cookies.
fn own_cookies_stay_ours(app: &App, headers: &mut HeaderMap) {
    let n = crate::web::cookies::strip_own_set_cookies(headers);
    if n > 0 {
        tracing::warn!(app = %app.id, "removed {n} attempt(s) of the app to set or clear castellan's cookies");
    }
}

/// The protocol the client asks to upgrade to (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
fn wants_upgrade(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers, including every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (usually none of them is hop-by-hop) instead of a lookup
    // per possible name.
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    doomed.extend(
        headers
            .keys()
            .filter(|name| HOP_BY_HOP.contains(name))
            .cloned(),
    );
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes every client-sent header that an app could read as one of castellan's identity headers.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            // `_` counts as `-`: some servers and frameworks read one as the other.
            let starts = |prefix: &str| {
                name.as_str().len() >= prefix.len()
                    && name
                        .as_str()
                        .bytes()
                        .zip(prefix.bytes())
                        .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
            };
            starts("x-castellan-") || starts("x-goog-iap-") || starts("x-goog-authenticated-")
        })
        .cloned()
        .collect();
    for name in forged {
        tracing::debug!(header = %name, "stripped a client-sent identity header");
        headers.remove(name);
    }
}

fn set_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>, host: Option<HeaderValue>) {
    let xff = if f.peer_trusted {
        let prior: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut chain = prior.join(", ");
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(&crate::net::ip_text(f.peer_ip));
        chain
    } else {
        crate::net::ip_text(f.peer_ip)
    };
    let trusted_proto = f
        .peer_trusted
        .then(|| headers.get(X_FORWARDED_PROTO).cloned())
        .flatten();
    let trusted_host = f
        .peer_trusted
        .then(|| headers.get(X_FORWARDED_HOST).cloned())
        .flatten();
    headers.remove(header::FORWARDED);
    headers.insert(X_FORWARDED_FOR, super::identity::value(&xff));
    headers.insert(
        X_FORWARDED_PROTO,
        trusted_proto.unwrap_or_else(|| match f.proto {
            "https" => HeaderValue::from_static("https"),
            "http" => HeaderValue::from_static("http"),
            other => super::identity::value(other),
        }),
    );
    match trusted_host.or(host) {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_identity_headers_are_stripped_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-castellan-email",
            "X-CASTELLAN-USER",
            "x_castellan_email",
            "X-Castellan_Jwt-Assertion",
            "x-castellan-anything",
            "x-goog-iap-jwt-assertion",
            "X_Goog_Authenticated_User_Email",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
        }
        h.insert("x-castellanx", HeaderValue::from_static("kept"));
        h.insert("x-goog-api-client", HeaderValue::from_static("kept"));
        strip_identity_headers(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let f = Forwarded {
            peer_ip: "1.2.3.4".parse().unwrap(),
            peer_trusted: false,
            proto: "http",
        };
        set_forwarded(
            &mut h,
            &f,
            Some(HeaderValue::from_static("app.example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        let mut h2 = HeaderMap::new();
        h2.insert("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        let f = Forwarded {
            peer_ip: "10.0.0.1".parse().unwrap(),
            peer_trusted: true,
            proto: "http",
        };
        set_forwarded(&mut h2, &f, None);
        assert_eq!(h2["x-forwarded-for"], "9.9.9.9, 10.0.0.1");
    }
}
