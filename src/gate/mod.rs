//! The request path: reserved paths → app match → authenticate → decide → answer or proxy, with one
//! log line, metrics and (for app requests) one audit record per request.

pub mod bearer;
pub mod path;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::IdentityHeaders;
use crate::policy::condition::Context;
use crate::policy::snapshot::Who;
use crate::policy::{Decision, Identity};
use crate::runtime::State;
use crate::runtime::live::Grounds;
use crate::runtime::metrics::{AppLabel, RequestLabels};
use crate::store::{self, AuditRecord};
use crate::web::pages;
use crate::web::{self, Body};

/// What the log line, metrics and audit trail say about one request.
pub struct Outcome {
    pub app: String,
    pub user: String,
    pub decision: &'static str,
    pub reason: &'static str,
    pub binding: String,
    pub reference: Option<String>,
    /// Whether this was a decision about an app (audited) rather than castellan's own page.
    pub audited: bool,
    pub client_ip: String,
}

impl Outcome {
    pub fn new(app: &str) -> Outcome {
        Outcome {
            app: app.to_string(),
            user: String::new(),
            decision: "-",
            reason: "-",
            binding: String::new(),
            reference: None,
            audited: false,
            client_ip: String::new(),
        }
    }

    /// A fresh reference id, recorded so the log line and audit record carry it too.
    pub fn reference(&mut self) -> String {
        let reference = crate::crypto::reference_id();
        self.reference = Some(reference.clone());
        reference
    }
}

/// Handles one request; never fails (every error becomes a page).
pub async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let host = web::request_host(req.uri(), req.headers());
    let mut outcome = Outcome::new("-");
    let resp = match crate::gate::path::normalize(req.uri().path()) {
        Err(why) => {
            outcome.decision = "bad-request";
            outcome.reason = "ambiguous-path";
            let reference = outcome.reference();
            web::html(
                StatusCode::BAD_REQUEST,
                pages::error("Bad request", why, &reference),
            )
        }
        // Decided on the normalised path, so `/%2ecastellan/…` is castellan's too and never proxied.
        Ok(normal) if normal == "/.castellan" || normal.starts_with("/.castellan/") => {
            outcome.app = "castellan".into();
            // Boxed, as every path off the proxied request's way (pages, tokens, IAP mode): a
            // future is as large as its largest path, and the request's future is copied into
            // its box.
            Box::pin(crate::endpoints::handle(
                &state,
                peer,
                req,
                &normal,
                &mut outcome,
            ))
            .await
        }
        Ok(normal) => protected(&state, peer, req, host.as_deref(), &normal, &mut outcome).await,
    };
    let status = resp.status().as_u16();
    let latency = start.elapsed();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            app: outcome.app.clone(),
            decision: outcome.decision,
            status,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&AppLabel {
            app: outcome.app.clone(),
        })
        .observe(latency.as_secs_f64());
    tracing::info!(
        target: "castellan::gate",
        method = %method,
        host = host.as_deref().unwrap_or("-"),
        path = %path,
        app = %outcome.app,
        user = %outcome.user,
        decision = outcome.decision,
        reason = outcome.reason,
        binding = %outcome.binding,
        status,
        latency_ms = (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        reference = outcome.reference.as_deref().unwrap_or("-"),
        peer = %peer.ip(),
    );
    if outcome.audited {
        state
            .audit
            .record(AuditRecord {
                at: crate::clock::now_ms(),
                kind: "decision".into(),
                actor: if outcome.user.is_empty() {
                    "anonymous".into()
                } else {
                    outcome.user
                },
                ip: outcome.client_ip,
                app: outcome.app,
                action: outcome.decision.into(),
                method: method.to_string(),
                path,
                reason: outcome.reason.into(),
                binding: outcome.binding,
                status: Some(i64::from(status)),
                latency_us: Some(latency.as_micros() as i64),
                reference: outcome.reference.unwrap_or_default(),
                ..Default::default()
            })
            .await;
    }
    resp
}

async fn protected(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    host: Option<&str>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let Some(app) = state.match_app(host, path) else {
        let reference = outcome.reference();
        return web::html(
            StatusCode::NOT_FOUND,
            pages::error(
                "No app here",
                "castellan has no app configured for this address. Check the link, or the [[apps]] host and path_prefix in the configuration.",
                &reference,
            ),
        );
    };
    outcome.app = app.id.clone();
    outcome.audited = true;
    let cors_origin = req
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| app.cors_origins.iter().any(|a| a == o))
        .map(str::to_string);
    if let Some(origin) = &cors_origin
        && req.method() == http::Method::OPTIONS
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        // A preflight from an allowed origin carries no credentials: castellan answers it.
        // Other OPTIONS requests are decided like any other request.
        outcome.decision = "cors-preflight";
        return preflight(&req, origin);
    }
    let mut resp = decide_and_answer(state, peer, req, app, host, path, outcome).await;
    if let Some(origin) = cors_origin {
        let h = resp.headers_mut();
        if !h.contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            h.insert(
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                proxy::value(&origin),
            );
            h.insert(
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                http::HeaderValue::from_static("true"),
            );
        }
        h.append(http::header::VARY, http::HeaderValue::from_static("Origin"));
    }
    resp
}

/// The answer to a CORS preflight from an allowed origin.
fn preflight(req: &Request<Incoming>, origin: &str) -> Response<Body> {
    let mut r = Response::new(web::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        proxy::value(origin),
    );
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        http::HeaderValue::from_static("true"),
    );
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_METHODS,
        http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(asked) = req
        .headers()
        .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
    {
        h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        http::header::ACCESS_CONTROL_MAX_AGE,
        http::HeaderValue::from_static("600"),
    );
    h.insert(http::header::VARY, http::HeaderValue::from_static("Origin"));
    r
}

#[allow(clippy::too_many_arguments)]
async fn decide_and_answer(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    app: &crate::config::App,
    host: Option<&str>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let client_ip = web::client_ip(peer, req.headers(), &state.config.trusted_proxies);
    outcome.client_ip = crate::net::ip_text(client_ip);

    if !state.store_usable() {
        return store_unavailable(outcome);
    }
    if let Some(bearer) = crate::gate::bearer::bearer(state, req.headers()) {
        return Box::pin(protected_by_bearer(
            state, peer, req, app, host, path, client_ip, bearer, outcome,
        ))
        .await;
    }
    let who = match state.authenticate(req.headers()).await {
        Ok(who) => who,
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    if let Some((identity, digest)) = &who {
        outcome.user = identity.email.clone();
        // The app wants a recent sign-in: an older one is repeated first (OIDC max_age).
        if let Some(max) = app.reauth_max_age
            && state
                .signed_in_at(digest)
                .is_none_or(|t| crate::clock::now() - t > max.as_secs() as i64)
        {
            outcome.decision = "sign-in";
            outcome.reason = "reauthentication";
            return sign_in_required(state, &req, Some(max.as_secs()));
        }
    }
    let snapshot = state.snapshot();
    let method = req.method().as_str().to_string();
    let cx = Context {
        path,
        host: host.unwrap_or(""),
        method: &method,
        time: crate::clock::now(),
        ip: Some(client_ip),
    };
    let caller = match &who {
        Some((i, _)) => Who::User {
            email: &i.email,
            groups: &i.groups,
        },
        None => Who::Anonymous,
    };
    let decision = snapshot.decide(&app.id, caller, &cx);
    outcome.decision = decision.label();
    outcome.reason = decision.reason().as_str();

    match decision {
        Decision::SignIn => sign_in_required(state, &req, None),
        Decision::Deny(_) => {
            let reference = outcome.reference();
            let email = who.as_ref().map(|(i, _)| i.email.as_str()).unwrap_or("");
            if web::is_navigation(req.headers()) {
                let switch_href = format!(
                    "/.castellan/sign_in?switch=1&rd={}",
                    pages::q(&return_path(&req))
                );
                let (browser, set_browser) = crate::endpoints::browser_id(state, req.headers());
                // The page still says "denied" without the request's state if the store is down.
                let latest = Box::pin(state.store.latest_request(&app.id, email))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!("reading access requests for the denied page: {e}");
                        None
                    });
                let request = latest.as_ref().map(|r| {
                    (
                        r.status.as_str(),
                        pages::when(r.updated_at),
                        r.decided_by.as_str(),
                    )
                });
                let mut resp = web::html(
                    StatusCode::FORBIDDEN,
                    pages::denied(&pages::Denied {
                        email,
                        app: &app.id,
                        reference: &reference,
                        switch_href,
                        csrf: &state.csrf_token(&browser),
                        return_to: &return_path(&req),
                        request,
                    }),
                );
                if let Some(c) = set_browser {
                    resp.headers_mut().append(http::header::SET_COOKIE, c);
                }
                resp
            } else {
                web::json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({
                        "error": "access_denied",
                        "message": format!("{email} has no access to app {}", app.id),
                        "reason": decision.reason().as_str(),
                        "reference": reference,
                    }),
                )
            }
        }
        Decision::Allow(_) if !same_origin_upgrade(&req, host) => {
            outcome.decision = "deny";
            outcome.reason = "cross-origin-websocket";
            let reference = outcome.reference();
            web::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({
                    "error": "cross_origin_websocket",
                    "message": "a WebSocket from another origin is refused (cross-site WebSocket hijacking)",
                    "reference": reference,
                }),
            )
        }
        Decision::Allow(grant) => {
            outcome.binding = grant.to_string();
            let added = match &who {
                None => Vec::new(),
                Some((identity, _)) => match state.identity_headers(app, identity) {
                    Ok(h) => h,
                    Err(e) => return internal_error(outcome, "signing the identity assertion", &e),
                },
            };
            if app.identity_headers == IdentityHeaders::GoogleIap
                && let Some(resp) = Box::pin(iap_mode(state, &req, who.as_ref(), outcome)).await
            {
                return resp;
            }
            // What this connection was allowed on, so a later change can close it if it lives on.
            let live = who.map(|(identity, session)| crate::runtime::live::Pending {
                registry: state.live.clone(),
                grounds: Grounds {
                    app: app.id.clone(),
                    identity,
                    session,
                    host: host.unwrap_or("").to_string(),
                    path: path.to_string(),
                    method: method.clone(),
                    ip: Some(client_ip),
                },
            });
            forward(state, peer, app, req, path, added, live, outcome).await
        }
    }
}

/// Adds the upstream credential (if the app needs one) and forwards the allowed request.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &State,
    peer: SocketAddr,
    app: &crate::config::App,
    req: Request<Incoming>,
    path: &str,
    mut added: proxy::AddedHeaders,
    live: Option<crate::runtime::live::Pending>,
    outcome: &mut Outcome,
) -> Response<Body> {
    if let Some(auth) = &app.upstream_auth {
        match Box::pin(state.metadata.id_token(&auth.audience)).await {
            Ok(token) => added.push((
                auth.header.clone(),
                proxy::value(&format!("Bearer {token}")),
            )),
            Err(e) => {
                let reference = outcome.reference();
                tracing::error!(app = %app.id, reference, "{e}");
                state
                    .metrics
                    .upstream_errors
                    .get_or_create(&crate::runtime::metrics::UpstreamErrorLabels {
                        app: app.id.clone(),
                        kind: "credential",
                    })
                    .inc();
                return web::html(
                    StatusCode::BAD_GATEWAY,
                    pages::error(
                        "The app is not reachable",
                        "castellan could not obtain the credential the app requires. Its operators can find this reference in castellan's log.",
                        &reference,
                    ),
                );
            }
        }
    }
    let forwarded = proxy::Forwarded {
        peer_ip: peer.ip(),
        peer_trusted: state
            .config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(peer.ip())),
        proto: state.config.public_url.scheme(),
    };
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    match state
        .upstream
        .forward(app, req, &target, &forwarded, added, live)
        .await
    {
        Ok(resp) => resp,
        Err(e) => upstream_error(state, app, outcome, e),
    }
}

/// A request that carries a bearer token: decided on the token alone (a cookie beside it is
/// ignored), answered with JSON, never redirected.
#[allow(clippy::too_many_arguments)]
async fn protected_by_bearer(
    state: &State,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    app: &crate::config::App,
    host: Option<&str>,
    path: &str,
    client_ip: std::net::IpAddr,
    (carrier, token): (http::HeaderName, String),
    outcome: &mut Outcome,
) -> Response<Body> {
    use crate::gate::bearer::Principal;
    let principal = match crate::gate::bearer::authenticate(state, &token, app).await {
        Ok(p) => p,
        // A bad token is a 401; a store or provider that did not answer is a 503, never a 401
        // that says the token is bad, and never an open door.
        Err(refused) => return refused.answer(outcome, app),
    };
    let method = req.method().as_str().to_string();
    let cx = Context {
        path,
        host: host.unwrap_or(""),
        method: &method,
        time: crate::clock::now(),
        ip: Some(client_ip),
    };
    let who = match &principal {
        Principal::ServiceAccount(name) => Who::ServiceAccount(name),
        Principal::User(i) => Who::User {
            email: &i.email,
            groups: &i.groups,
        },
    };
    outcome.user = match &principal {
        Principal::ServiceAccount(name) => format!("serviceAccount:{name}"),
        Principal::User(i) => i.email.clone(),
    };
    let decision = state.snapshot().decide(&app.id, who, &cx);
    outcome.decision = decision.label();
    outcome.reason = decision.reason().as_str();
    let Decision::Allow(grant) = decision else {
        let reference = outcome.reference();
        let mut r = web::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({
                "error": "insufficient_scope",
                "message": format!("{} has no access to app {}", outcome.user, app.id),
                "reason": outcome.reason,
                "reference": reference,
            }),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                "Bearer realm=\"castellan\", error=\"insufficient_scope\"",
            ),
        );
        return r;
    };
    outcome.binding = grant.to_string();
    let added = match &principal {
        Principal::ServiceAccount(name) => {
            match state.signer().sign_service_account(name, &app.audience) {
                Ok(a) => vec![
                    (
                        http::HeaderName::from_static(proxy::ASSERTION_HEADER),
                        proxy::value(&a),
                    ),
                    (
                        http::HeaderName::from_static(proxy::USER_HEADER),
                        proxy::value(&format!("serviceAccount:{name}")),
                    ),
                ],
                Err(e) => return internal_error(outcome, "signing the identity assertion", &e),
            }
        }
        Principal::User(identity) => match state.identity_headers(app, identity) {
            Ok(h) => h,
            Err(e) => return internal_error(outcome, "signing the identity assertion", &e),
        },
    };
    // The token was for castellan: it does not travel on to the app.
    if carrier == http::header::AUTHORIZATION {
        req.headers_mut().remove(http::header::AUTHORIZATION);
    }
    forward(state, peer, app, req, path, added, None, outcome).await
}

fn upstream_error(
    state: &State,
    app: &crate::config::App,
    outcome: &mut Outcome,
    e: proxy::Error,
) -> Response<Body> {
    let reference = outcome.reference();
    state
        .metrics
        .upstream_errors
        .get_or_create(&crate::runtime::metrics::UpstreamErrorLabels {
            app: app.id.clone(),
            kind: e.kind(),
        })
        .inc();
    tracing::warn!(app = %app.id, upstream = %app.upstream, reference, "upstream error: {e}");
    let (status, title) = match e {
        proxy::Error::Timeout(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "The app took too long to answer",
        ),
        _ => (StatusCode::BAD_GATEWAY, "The app is not reachable"),
    };
    web::html(
        status,
        pages::error(
            title,
            &format!(
                "castellan could not get an answer from {}. Try again in a moment; if it persists, the app's operators can find this reference in castellan's log.",
                app.id
            ),
            &reference,
        ),
    )
}

/// Google IAP's special query parameters: `gcp-iap-mode=IDENTITY` answers who the caller is,
/// `gcp-iap-mode=CLEAR_LOGIN_COOKIE` signs them out. None for any other request.
async fn iap_mode(
    state: &State,
    req: &Request<Incoming>,
    who: Option<&(Arc<Identity>, String)>,
    outcome: &mut Outcome,
) -> Option<Response<Body>> {
    use crate::identity::google::IAP_PREFIX;
    let params = web::query_pairs(req.uri());
    let mode = web::param(&params, "gcp-iap-mode")?;
    let (identity, session) = who?;
    match mode {
        "IDENTITY" => Some(web::json(
            StatusCode::OK,
            &serde_json::json!({
                "email": format!("{IAP_PREFIX}{}", identity.email),
                "sub": format!("{IAP_PREFIX}{}", identity.subject),
            }),
        )),
        "CLEAR_LOGIN_COOKIE" => {
            let actor = crate::store::Actor {
                name: identity.email.clone(),
                ip: outcome.client_ip.clone(),
            };
            state.forget_session(session);
            if let Err(e) = state.store.delete_session(session, &actor).await {
                return Some(internal_error(outcome, "ending the session", &e));
            }
            outcome.decision = "signed-out";
            let mut resp = web::redirect(req.uri().path());
            resp.headers_mut().append(
                http::header::SET_COOKIE,
                state.cookies.set(state.cookies.session, "", Some(0)),
            );
            Some(resp)
        }
        _ => None,
    }
}

/// The path and query of the request, where the browser returns after signing in.
fn return_path(req: &Request<Incoming>) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into())
}

fn sign_in_required(
    state: &State,
    req: &Request<Incoming>,
    max_age: Option<u64>,
) -> Response<Body> {
    let public = &state.config.public_url;
    let host = web::request_host(req.uri(), req.headers());
    // An app on another host: sign in on the public host, which hands the session back here.
    let other_host = host.filter(|h| {
        Some(h.as_str()) != public.host_str() && state.config.apps.iter().any(|a| a.serves_host(h))
    });
    let sign_in = match other_host {
        Some(h) => {
            let mut here = public.clone();
            let _ = here.set_host(Some(&h));
            format!(
                "{}/.castellan/sign_in?rd={}",
                state.config.public_origin(),
                pages::q(&format!(
                    "{}{}",
                    here.origin().ascii_serialization(),
                    return_path(req)
                ))
            )
        }
        None => format!("/.castellan/sign_in?rd={}", pages::q(&return_path(req))),
    };
    let sign_in = match max_age {
        Some(m) => format!("{sign_in}&max_age={m}"),
        None => sign_in,
    };
    if web::is_navigation(req.headers()) {
        web::redirect(&sign_in)
    } else {
        let mut resp = web::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({
                "error": if max_age.is_some() { "reauthentication_required" } else { "unauthenticated" },
                "message": if max_age.is_some() { "this app needs a recent sign-in: sign in again" } else { "sign in first" },
                "sign_in_url": if sign_in.starts_with('/') {
                    format!("{}{sign_in}", state.config.public_origin())
                } else {
                    sign_in.clone()
                },
            }),
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"castellan\""),
        );
        resp
    }
}

/// Fails closed: a 503 page when the store cannot be reached, else a 500 page; both with a
/// reference that matches the log line; nothing is proxied.
pub fn internal_error(
    outcome: &mut Outcome,
    doing: &str,
    err: &(dyn std::error::Error + 'static),
) -> Response<Body> {
    if err
        .downcast_ref::<store::Error>()
        .is_some_and(store::Error::is_unavailable)
    {
        tracing::error!("{doing}: {err}");
        return store_unavailable(outcome);
    }
    let reference = outcome.reference();
    tracing::error!(reference, "internal error while {doing}: {err}");
    outcome.decision = "error";
    outcome.reason = "internal-error";
    web::html(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error(
            "Something went wrong",
            "castellan could not check your access, so it did not let the request through. Try again in a moment.",
            &reference,
        ),
    )
}

/// The store cannot be reached and the answer needs it (a sign-in, a session not seen before the
/// outage), or the outage outlasted `store_outage_grace`: refused, with a page that says so.
pub fn store_unavailable(outcome: &mut Outcome) -> Response<Body> {
    let reference = outcome.reference();
    outcome.decision = "error";
    outcome.reason = "store-unavailable";
    let mut resp = web::html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::error(
            "Temporarily unavailable",
            "castellan cannot reach its database right now, so it cannot check your access or sign you in. \
             Nothing was let through. Try again in a minute; if this lasts, tell the people who run this site.",
            &reference,
        ),
    );
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("10"),
    );
    resp
}

/// False for a WebSocket (or other upgrade) whose `Origin` is not the host it connects to: a page on
/// another site must not ride the person's session into the app (cross-site WebSocket hijacking).
fn same_origin_upgrade(req: &Request<Incoming>, host: Option<&str>) -> bool {
    if !req.headers().contains_key(http::header::UPGRADE) {
        return true;
    }
    let Some(origin) = req.headers().get(http::header::ORIGIN) else {
        return true; // not a browser: there is no ambient page to defend against
    };
    let Some(origin) = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()) else {
        return false;
    };
    let host_port = req
        .uri()
        .authority()
        .and_then(|a| a.port_u16())
        .or_else(|| {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            h.parse::<http::uri::Authority>().ok()?.port_u16()
        })
        .or(match origin.scheme() {
            "https" | "wss" => Some(443),
            _ => Some(80),
        });
    origin
        .host_str()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .as_deref()
        == host
        && origin.port_or_known_default() == host_port
}

/// How decisions see a signed-in person (also used to re-decide live connections).
pub fn caller(identity: &Identity) -> Who<'_> {
    Who::User {
        email: &identity.email,
        groups: &identity.groups,
    }
}
