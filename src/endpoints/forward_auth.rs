//! Forward-auth: `/.castellan/auth` answers an existing ingress (nginx `auth_request`, Traefik
//! `forwardAuth`, Caddy `forward_auth`) whether a request may pass, without proxying it.
//!
//! The original request is read from the ingress's headers: host from `X-Forwarded-Host` (else
//! `Host`), URI from `X-Original-URI` (nginx) or `X-Forwarded-Uri` (Traefik, Caddy), method from
//! `X-Original-Method` or `X-Forwarded-Method`. Those headers are believed only from a peer in
//! `trusted_proxies`: anyone else gets 403. Answers: 200 with the identity headers to copy upstream;
//! 401 when nobody is signed in (with `?redirect=1`, a browser navigation gets a 302 to sign-in
//! instead, for ingresses that pass the answer through); 403 when the caller has no access.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::gate::Outcome;
use crate::policy::Decision;
use crate::policy::condition::Context;
use crate::policy::snapshot::Who;
use crate::runtime::State;
use crate::web::pages;
use crate::web::{self, Body};

fn header<'a>(req: &'a Request<Incoming>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| req.headers().get(*n).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    if !state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(peer.ip()))
    {
        outcome.decision = "deny";
        outcome.reason = "untrusted-ingress";
        return web::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({
                "error": "untrusted_ingress",
                "message": format!("{} is not in trusted_proxies: forward-auth answers only the ingress in front of castellan", peer.ip()),
            }),
        );
    }
    let host = header(&req, &["x-forwarded-host"])
        .map(|h| h.split(',').next().unwrap_or(h).trim().to_string())
        .or_else(|| web::request_host(req.uri(), req.headers()))
        .map(|h| {
            let auth: Option<http::uri::Authority> = h.parse().ok();
            auth.map(|a| a.host().trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or(h)
        });
    let uri = header(&req, &["x-original-uri", "x-forwarded-uri"])
        .unwrap_or("/")
        .to_string();
    let method = header(&req, &["x-original-method", "x-forwarded-method"])
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let (raw_path, query) = uri.split_once('?').unwrap_or((&uri, ""));
    let Ok(path) = crate::gate::path::normalize(raw_path) else {
        outcome.decision = "deny";
        outcome.reason = "ambiguous-path";
        return web::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": "ambiguous_path" }),
        );
    };
    let Some(app) = state.match_app(host.as_deref(), &path) else {
        outcome.decision = "deny";
        outcome.reason = "no-app";
        return web::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": "no_app", "message": "no app is configured for this host and path" }),
        );
    };
    outcome.app = app.id.clone();
    outcome.audited = true;
    let client_ip = web::client_ip(peer, req.headers(), &state.config.trusted_proxies);
    outcome.client_ip = client_ip.to_string();
    let return_to = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };

    // Who: a bearer token meant for castellan, else the session cookie.
    let bearer = crate::gate::bearer::bearer(state, req.headers());
    let mut session_digest = None;
    let principal = match &bearer {
        Some((_, token)) => match crate::gate::bearer::authenticate(state, token, app).await {
            Ok(p) => Some(p),
            Err(refused) => return refused.answer(outcome, app),
        },
        None => match state.authenticate(req.headers()).await {
            Ok(who) => who.map(|(identity, digest)| {
                session_digest = Some(digest);
                crate::gate::bearer::Principal::User(std::sync::Arc::unwrap_or_clone(identity))
            }),
            Err(e) => return crate::gate::internal_error(outcome, "reading the session", &e),
        },
    };
    let who = match &principal {
        None => Who::Anonymous,
        Some(crate::gate::bearer::Principal::ServiceAccount(n)) => Who::ServiceAccount(n),
        Some(crate::gate::bearer::Principal::User(i)) => Who::User {
            email: &i.email,
            groups: &i.groups,
        },
    };
    outcome.user = match &principal {
        None => String::new(),
        Some(crate::gate::bearer::Principal::ServiceAccount(n)) => format!("serviceAccount:{n}"),
        Some(crate::gate::bearer::Principal::User(i)) => i.email.clone(),
    };
    let cx = Context {
        path: &path,
        host: host.as_deref().unwrap_or(""),
        method: &method,
        time: crate::clock::now(),
        ip: Some(client_ip),
    };
    let decision = state.snapshot().decide(&app.id, who, &cx);
    outcome.decision = decision.label();
    outcome.reason = decision.reason().as_str();
    // The app wants a recent sign-in (reauth_max_age) and this session's is older.
    let reauth = app.reauth_max_age.filter(|max| {
        session_digest.as_deref().is_some_and(|d| {
            state
                .signed_in_at(d)
                .is_none_or(|t| crate::clock::now() - t > max.as_secs() as i64)
        })
    });
    let sign_in = format!(
        "{}/.castellan/sign_in?rd={}{}",
        state.config.public_origin(),
        pages::q(&return_to),
        reauth
            .map(|m| format!("&max_age={}", m.as_secs()))
            .unwrap_or_default()
    );
    let decision = if reauth.is_some() {
        outcome.decision = "sign-in";
        outcome.reason = "reauthentication";
        Decision::SignIn
    } else {
        decision
    };
    match decision {
        Decision::SignIn => {
            let params = web::query_pairs(req.uri());
            let navigation = web::is_navigation(req.headers());
            if web::param(&params, "redirect") == Some("1") && navigation {
                return web::redirect(&sign_in);
            }
            let mut r = web::json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({
                    "error": if reauth.is_some() { "reauthentication_required" } else { "unauthenticated" },
                    "sign_in_url": sign_in,
                }),
            );
            if let Ok(v) = HeaderValue::from_str(&sign_in) {
                r.headers_mut().insert("x-castellan-sign-in", v);
            }
            r
        }
        Decision::Deny(r) => {
            let reference = outcome.reference();
            web::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({ "error": "access_denied", "reason": r.as_str(), "reference": reference }),
            )
        }
        Decision::Allow(grant) => {
            outcome.binding = grant.to_string();
            let headers = match &principal {
                None => Ok(Vec::new()),
                Some(crate::gate::bearer::Principal::User(identity)) => {
                    state.identity_headers(app, identity)
                }
                Some(crate::gate::bearer::Principal::ServiceAccount(name)) => state
                    .signer()
                    .sign_service_account(name, &app.audience)
                    .map(|a| {
                        vec![
                            (
                                http::HeaderName::from_static(crate::gate::proxy::ASSERTION_HEADER),
                                crate::gate::proxy::value(&a),
                            ),
                            (
                                http::HeaderName::from_static(crate::gate::proxy::USER_HEADER),
                                crate::gate::proxy::value(&format!("serviceAccount:{name}")),
                            ),
                        ]
                    }),
            };
            match headers {
                Ok(list) => {
                    let mut r = web::text(StatusCode::OK, "ok\n");
                    for (name, value) in list {
                        r.headers_mut().insert(name, value);
                    }
                    r
                }
                Err(e) => {
                    crate::gate::internal_error(outcome, "signing the identity assertion", &e)
                }
            }
        }
    }
}
