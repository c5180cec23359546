//! Routing: the only place that sees the gate, castellan's own endpoints and the admin pages
//! together. Every request gets one [`Ctx`], goes to exactly one handler, and ends in one log
//! line, one metric and, for decisions about an app, one audit record.
//!
//! Where a request goes:
//! - a path under `/.castellan/` is castellan's own, on every host, never proxied (decided on the
//!   normalised path, so `/%2ecastellan/…` is castellan's too). On castellan's own host
//!   (`public_url`'s) every page is there; on an app's host only those that belong there (sign-in
//!   start, hand-off, forward-auth, tokens, back-channel logout, SCIM, public keys, health, whoami),
//!   and a browser asking for another is sent to castellan's own host;
//! - anything else on castellan's own host is its home page, never an app;
//! - anything else on an app's host goes through the gate to the app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::admin::{api, console};
use crate::config::AppKind;
use crate::endpoints::{
    access_request, account, backchannel_logout, cli_auth, forward_auth, handoff, passkey,
    password, public, scim, second_factor, sign_in, sign_out, token,
};
use crate::runtime::State;
use crate::runtime::metrics::RequestLabels;
use crate::store::AuditRecord;
use crate::web::ctx::{Ctx, Why, log_safe};
use crate::web::failure::{Answer, Failure};
use crate::web::{self, Body, pages};

/// Handles one request; never fails (every error becomes a page or a JSON answer).
/// Answers one request; `client_cert` is the subject of the client certificate its connection
/// presented, verified against `[tls] client_ca`.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    client_cert: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let host = web::request_host(req.uri(), req.headers()).unwrap_or_default();
    let client_ip = web::client_ip(peer, req.headers(), &state.config.trusted_proxies);
    let mut ctx = Ctx::new(peer, client_ip, web::is_navigation(req.headers()));
    ctx.client_cert = client_cert;
    if let Some(tracer) = &state.tracer {
        let trusted = state.config.trusts_proxy(peer.ip());
        ctx.trace = Some(tracer.begin(req.headers(), trusted, method.to_string()));
    }
    let resp = match route(&state, &mut ctx, req, &host).await {
        Ok(r) => r,
        Err(f) => f.respond(&mut ctx),
    };
    let status = resp.status().as_u16();
    let latency = start.elapsed();
    let trace_id = ctx.trace.take().map(|mut trace| {
        end_trace(&mut trace, &ctx, &method, &host, &path, status);
        let id = crate::trace::trace_id_hex(&trace.trace_id);
        if let Some(tracer) = &state.tracer {
            tracer.finish(trace);
        }
        id
    });
    state.metrics.request(
        RequestLabels {
            app: ctx.app.clone(),
            decision: ctx.outcome.as_str(),
            status,
        },
        latency.as_secs_f64(),
    );
    tracing::info!(
        target: "castellan::request",
        method = %method,
        host = %if host.is_empty() { "-" } else { &host },
        path = %log_safe(&path),
        app = %ctx.app,
        user = %ctx.user,
        decision = ctx.outcome.as_str(),
        reason = ctx.why.as_str(),
        binding = ctx.binding.as_deref().unwrap_or(""),
        status,
        latency_ms = (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        reference = ctx.reference.as_deref().unwrap_or("-"),
        peer = %peer.ip(),
        trace_id = trace_id.as_deref(),
    );
    if ctx.audited {
        state
            .audit
            .record(AuditRecord {
                at: crate::clock::now_ms(),
                kind: AuditRecord::word("decision"),
                actor: if ctx.user.is_empty() {
                    AuditRecord::word("anonymous")
                } else {
                    ctx.user
                },
                ip: crate::net::ip_text(ctx.client_ip).into(),
                app: ctx.app,
                action: AuditRecord::word(ctx.outcome.as_str()),
                method: standard_method(&method)
                    .map_or_else(|| method.as_str().into(), AuditRecord::word),
                path: path.into(),
                reason: AuditRecord::word(ctx.why.as_str()),
                binding: ctx.binding.unwrap_or_else(|| AuditRecord::word("")),
                status: Some(i64::from(status)),
                latency_us: Some(latency.as_micros() as i64),
                reference: ctx
                    .reference
                    .map_or_else(|| AuditRecord::word(""), Into::into),
                // The device certificate the connection presented, when there was one.
                after: ctx
                    .client_cert
                    .map(|subject| serde_json::json!({ "client_certificate": &*subject })),
                ..Default::default()
            })
            .await;
    }
    resp
}

/// A standard method's name as a `'static` word (None for an extension method).
fn standard_method(method: &Method) -> Option<&'static str> {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD.iter().find(|(m, _)| m == method).map(|(_, w)| *w)
}

/// The request's own span: what was asked (OpenTelemetry's HTTP server attributes) and what
/// castellan decided; ended with every span a failure left open.
fn end_trace(
    trace: &mut crate::trace::Trace,
    ctx: &Ctx,
    method: &Method,
    host: &str,
    path: &str,
    status: u16,
) {
    let root = trace.root();
    trace.set(root, "http.request.method", method.as_str());
    trace.set(root, "url.path", log_safe(path));
    trace.set(root, "server.address", host);
    trace.set(root, "client.address", crate::net::ip_text(ctx.client_ip));
    trace.set(root, "http.response.status_code", i64::from(status));
    trace.set(root, "castellan.app", &*ctx.app);
    trace.set(root, "castellan.decision", ctx.outcome.as_str());
    trace.set(root, "castellan.reason", ctx.why.as_str());
    if !ctx.user.is_empty() {
        trace.set(root, "enduser.id", &*ctx.user);
    }
    if let Some(b) = &ctx.binding {
        trace.set(root, "castellan.binding", &**b);
    }
    if let Some(r) = &ctx.reference {
        trace.set(root, "castellan.reference", r.as_str());
    }
    if status >= 500 {
        trace.fail(root, ctx.why.as_str());
    }
    trace.end_all();
}

async fn route(state: &State, ctx: &mut Ctx, req: Request<Incoming>, host: &str) -> Answer {
    let normal = crate::gate::path::normalize(req.uri().path())
        .map_err(|why| Failure::bad_request("ambiguous_path", Why::AmbiguousPath, why))?;
    if normal == "/.castellan" || normal.starts_with("/.castellan/") {
        ctx.app = "castellan".into();
        // Boxed, as every path off the proxied request's way: a future is as large as its
        // largest path, and the request's future is copied into its box.
        return Box::pin(own(state, ctx, req, &normal, host)).await;
    }
    if state.is_console_host(host) {
        return Box::pin(public::home(state, ctx, &req)).await;
    }
    match state.match_app(host, &normal) {
        Some(app) => Ok(match app.kind() {
            AppKind::Web => crate::gate::app::serve(state, ctx, req, app, host, &normal).await,
            AppKind::Tcp => {
                Box::pin(crate::gate::tunnel::serve(state, ctx, req, app, host, &normal)).await
            }
        }),
        // A host no app is on (the listen address opened instead of public_url, say): a browser
        // goes to castellan's own pages, which list the apps; a script is told where they are.
        None if ctx.navigation && !state.config.apps.iter().any(|a| a.serves_host(host)) => {
            Ok(web::redirect(&format!("{}/", state.config.public_origin())))
        }
        None => Err(Failure::not_found(format!(
            "castellan has no app at this address. Check the link, or the [[apps]] host and path_prefix in the configuration; castellan's own pages are at {}/",
            state.config.public_origin()
        ))
        .titled("No app here")),
    }
}

/// castellan's own paths.
async fn own(
    state: &State,
    ctx: &mut Ctx,
    req: Request<Incoming>,
    path: &str,
    host: &str,
) -> Answer {
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    // On every host.
    match path {
        "/.castellan/healthz" if get => return public::healthz(state).await,
        "/.castellan/jwks.json" | "/.castellan/iap/public_key-jwk" if get => {
            return Ok(public::public_keys(state.signer().jwks()));
        }
        // The `{kid: PEM}` form of Google IAP's key URL, for apps written for IAP.
        "/.castellan/iap/public_key" if get => {
            return Ok(public::public_keys(state.signer().pem_keys()));
        }
        pages::PASSKEY_SCRIPT_PATH if get => return Ok(public::passkey_script()),
        "/.castellan/whoami" if get => return public::whoami(state, ctx, &req).await,
        "/.castellan/signed_out" if get => {
            return Ok(web::html(http::StatusCode::OK, pages::signed_out()));
        }
        "/.castellan/auth" => return forward_auth::handle(state, ctx, req).await,
        "/.castellan/token" if method == Method::POST => {
            return token::handle(state, ctx, req).await;
        }
        // From the provider, server to server: whatever name it reaches castellan by.
        backchannel_logout::PATH if method == Method::POST => {
            return backchannel_logout::post(state, ctx, req).await;
        }
        backchannel_logout::PATH => return Err(Failure::method_not_allowed("POST")),
        _ if path == scim::PREFIX || path.starts_with("/.castellan/scim/v2/") => {
            return Box::pin(scim::handle(state, ctx, req, path)).await;
        }
        _ => {}
    }
    if !state.is_console_host(host) {
        return on_app_host(state, ctx, req, path, host).await;
    }
    // castellan's own host only.
    if path.starts_with(api::PREFIX) {
        return api::handle(state, ctx, req, path).await;
    }
    if path == account::PATH || path.starts_with("/.castellan/account/") {
        return account::handle(state, ctx, req, path).await;
    }
    if path.starts_with(passkey::PREFIX) {
        return passkey::handle(state, ctx, req, path).await;
    }
    if path == console::PREFIX || path.starts_with("/.castellan/admin/") {
        return console::handle(state, ctx, req, path).await;
    }
    let local = state.config.local_accounts;
    match path {
        "/.castellan/sign_in" if get => sign_in::page(state, ctx, &req).await,
        "/.castellan/sign_in" if method == Method::POST && local => {
            password::sign_in(state, ctx, req).await
        }
        "/.castellan/callback" if method == Method::GET => {
            sign_in::callback(state, ctx, &req).await
        }
        second_factor::PATH if local && (get || method == Method::POST) => {
            second_factor::handle(state, ctx, req).await
        }
        "/.castellan/request_access" if get => access_request::page(state, ctx, &req).await,
        "/.castellan/request_access" if method == Method::POST => {
            access_request::post(state, ctx, req).await
        }
        cli_auth::PATH => cli_auth::handle(state, ctx, req).await,
        "/.castellan/sign_out" if get => sign_out::page(state, &req).await,
        "/.castellan/sign_out" if method == Method::POST => sign_out::post(state, ctx, req).await,
        "/.castellan/healthz"
        | "/.castellan/jwks.json"
        | "/.castellan/whoami"
        | "/.castellan/sign_in"
        | "/.castellan/callback"
        | "/.castellan/sign_out"
        | "/.castellan/request_access" => Err(Failure::method_not_allowed("GET, POST")),
        _ => Err(Failure::not_found(
            "There is no castellan page at this address.",
        )),
    }
}

/// castellan's paths on an app's host: the start and the end of a sign-in; everything else lives
/// on castellan's own host, where a browser is sent.
async fn on_app_host(
    state: &State,
    ctx: &mut Ctx,
    req: Request<Incoming>,
    path: &str,
    host: &str,
) -> Answer {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/.castellan/sign_in" if get => sign_in::bounce(state, ctx, &req, host).await,
        "/.castellan/handoff" if get => handoff::redeem(state, ctx, &req, host).await,
        _ if get && ctx.navigation => {
            let there = format!(
                "{}{}",
                state.config.public_origin(),
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or(path)
            );
            Ok(web::redirect(&there))
        }
        _ => Err(Failure::not_found(format!(
            "this castellan page is at {}{path}, castellan's own address: apps never share it",
            state.config.public_origin()
        ))
        .marked(crate::web::ctx::Outcome::None, Why::ConsoleOrigin)),
    }
}
