//! Forward-auth: `/.castellan/auth` answers an ingress in front of an app (nginx `auth_request`,
//! Traefik `forwardAuth`, Caddy `forward_auth`) whether a request may pass, without proxying it.
//! It is a front door of the gate like the proxy: this file only reads what the ingress says
//! about the original request, and the gate decides.
//!
//! The original method, URI, host and scheme are read from exactly one set of headers, the one
//! the configured ingress (`forward_auth`) sets and overwrites, never from another set as a
//! fallback: an ingress passes the client's own headers on to castellan, so a header the ingress
//! does not set could be the client's. A missing header is an error, never a default.
//!
//! | `forward_auth` | method | URI | host | scheme |
//! | --- | --- | --- | --- | --- |
//! | `"nginx"` | `X-Original-Method` | `X-Original-URI` | `X-Forwarded-Host` | `X-Forwarded-Proto` |
//! | `"traefik"`, `"caddy"` | `X-Forwarded-Method` | `X-Forwarded-Uri` | `X-Forwarded-Host` | `X-Forwarded-Proto` |
//!
//! Those headers are believed only from a peer in `trusted_proxies`. Answers: 200 with the identity
//! headers to copy upstream; 401 when nobody is signed in (with `?redirect=1`, a browser
//! navigation gets a 302 to sign in instead, for ingresses that pass the answer on); 403 when
//! the caller has no access.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::config::ForwardAuth;
use crate::gate::{Admitted, Ask};
use crate::runtime::State;
use crate::web::ctx::{Ctx, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::{self};

/// The headers an ingress kind sets for the original request: method, URI, host, scheme.
fn header_set(kind: ForwardAuth) -> [&'static str; 4] {
    match kind {
        ForwardAuth::Nginx => [
            "x-original-method",
            "x-original-uri",
            "x-forwarded-host",
            "x-forwarded-proto",
        ],
        ForwardAuth::Traefik | ForwardAuth::Caddy => [
            "x-forwarded-method",
            "x-forwarded-uri",
            "x-forwarded-host",
            "x-forwarded-proto",
        ],
    }
}

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let Some(kind) = state.config.forward_auth else {
        return Err(Failure::not_found(
            "forward-auth is off: set forward_auth = \"nginx\", \"caddy\" or \"traefik\" (the ingress in front of castellan) in castellan.toml",
        ));
    };
    if !state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(ctx.peer.ip()))
    {
        return Err(Failure::forbidden(
            "untrusted_ingress",
            Why::UntrustedIngress,
            format!(
                "{} is not in trusted_proxies: forward-auth answers only the ingress in front of castellan",
                ctx.peer.ip()
            ),
        ));
    }
    let names = header_set(kind);
    let mut values = Vec::with_capacity(4);
    for name in names {
        // One value, from the ingress: a list would be the client's value with the ingress's
        // appended (a misconfigured ingress), and is refused like a missing one.
        let all: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match all.as_slice() {
            [one]
                if !one.trim().is_empty() && (name != "x-forwarded-host" || !one.contains(',')) =>
            {
                values.push(one.trim().to_string())
            }
            _ => {
                return Err(Failure::bad_request(
                    "ingress_headers",
                    Why::IngressHeaders,
                    format!(
                        "the ingress must send exactly one {name} header with forward_auth = \"{}\": check its configuration against deploy/forward-auth/",
                        kind.as_str()
                    ),
                ));
            }
        }
    }
    let [method, uri, host, scheme] = [&values[0], &values[1], &values[2], &values[3]];
    let method = method.to_ascii_uppercase();
    let host_only = host
        .parse::<http::uri::Authority>()
        .map(|a| a.host().trim_end_matches('.').to_ascii_lowercase())
        .map_err(|_| {
            Failure::bad_request(
                "ingress_headers",
                Why::IngressHeaders,
                "the ingress's X-Forwarded-Host is not a host",
            )
        })?;
    let (raw_path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri.as_str(), None),
    };
    let path = crate::gate::path::normalize(raw_path)
        .map_err(|why| Failure::forbidden("ambiguous_path", Why::AmbiguousPath, why))?;
    let app = state.match_app(&host_only, &path).ok_or_else(|| {
        Failure::forbidden(
            "no_app",
            Why::NoApp,
            "no app is configured for this host and path",
        )
    })?;
    // The ingress passes this answer on only with redirect=1; otherwise it expects 401.
    let params = web::query_pairs(req.uri());
    ctx.navigation = ctx.navigation && web::param(&params, "redirect") == Some("1");
    let origin = format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    );
    let ask = Ask {
        app,
        method: &method,
        origin: &origin,
        host: &host_only,
        path: &path,
        query,
        headers: req.headers(),
    };
    let Admitted { headers, .. } = crate::gate::admit(state, ctx, &ask).await?;
    let mut r = web::text(StatusCode::OK, "ok\n");
    for (name, value) in headers {
        r.headers_mut().insert(name, value);
    }
    Ok(r)
}
