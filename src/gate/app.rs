//! The proxy's front door: a request for an app, through the gate, to the app. CORS preflights
//! from an app's allowed origins are answered here; every other request (OPTIONS included) is
//! decided by [`super::admit`].

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::identity::value;
use super::{Admitted, proxy};
use crate::config::App;
use crate::policy::Principal;
use crate::runtime::State;
use crate::trace::Kind;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::Failure;
use crate::web::{self, Body};

/// Answers a request for `app` (on `host`, for the normalised `path`); never fails: a refusal is
/// answered by [`Failure::respond`], with CORS headers for an allowed origin.
pub async fn serve(
    state: &State,
    ctx: &mut Ctx,
    req: Request<Incoming>,
    app: &App,
    host: &str,
    path: &str,
) -> Response<Body> {
    let cors_origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| app.cors_origins.iter().any(|a| a == o))
        .map(str::to_string);
    if let Some(origin) = &cors_origin
        && req.method() == http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        // A preflight from an allowed origin carries no credentials: castellan answers it.
        ctx.app = app.id.clone();
        ctx.audited = true;
        ctx.mark(Outcome::CorsPreflight, Why::None);
        return preflight(&req, origin);
    }
    let mut resp = match forward(state, ctx, req, app, host, path).await {
        Ok(r) => r,
        Err(f) => f.respond(ctx),
    };
    if let Some(origin) = cors_origin {
        let h = resp.headers_mut();
        if !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value(&origin));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

async fn forward(
    state: &State,
    ctx: &mut Ctx,
    mut req: Request<Incoming>,
    app: &App,
    host: &str,
    path: &str,
) -> Result<Response<Body>, Failure> {
    let (
        Admitted {
            credential,
            principal,
            headers: mut added,
            live,
        },
        _,
    ) = super::admit_request(state, ctx, &req, app, host, path).await?;
    if app.identity_headers == crate::config::IdentityHeaders::GoogleIap
        && let Some(Principal::Person(_)) = &principal
        && let Some(resp) = Box::pin(iap_mode(state, ctx, &req, &credential)).await
    {
        return resp;
    }
    // The token was for castellan: it does not travel on to the app.
    if credential.carrier() == Some(&header::AUTHORIZATION) {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    if let Some(auth) = &app.upstream_auth {
        match Box::pin(state.metadata.id_token(&auth.audience)).await {
            Ok(token) => added.push((auth.header.clone(), value(&format!("Bearer {token}")))),
            Err(e) => {
                tracing::error!(app = %app.id, "{e}");
                state.metrics.upstream_error(&app.id, "credential");
                return Err(Failure::upstream(&app.id, false));
            }
        }
    }
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let out = proxy::Outbound {
        app,
        target: &target,
        forwarded: proxy::Forwarded {
            peer_ip: ctx.peer.ip(),
            peer_trusted: state.config.trusts_proxy(ctx.peer.ip()),
            proto: state.config.public_url.scheme(),
        },
        added,
        live,
        balancer: state.balancers.get(&*app.id),
    };
    let span = ctx.span("upstream", Kind::Client);
    if let (Some(trace), Some(open)) = (&ctx.trace, span) {
        // The app's spans continue this trace, under this span.
        crate::runtime::traces::propagate(req.headers_mut(), trace, open);
        ctx.span_set(
            span,
            "url.full",
            format!(
                "{}{}",
                app.upstream().as_str().trim_end_matches('/'),
                target
            ),
        );
    }
    let answer = proxy::forward(state.pool_for(app), app.connection.timeout, req, out).await;
    match answer {
        Ok(r) => {
            ctx.span_set(
                span,
                "http.response.status_code",
                i64::from(r.status().as_u16()),
            );
            ctx.span_end(span, None);
            Ok(r)
        }
        Err(e) => {
            ctx.span_end(span, Some(&e.to_string()));
            state.metrics.upstream_error(&app.id, e.kind());
            let trace_id = ctx
                .trace
                .as_ref()
                .map(|t| crate::trace::trace_id_hex(&t.trace_id));
            tracing::warn!(
                app = %app.id,
                upstream = %app.upstream(),
                trace_id = trace_id.as_deref(),
                "upstream error: {e}"
            );
            Err(Failure::upstream(
                &app.id,
                matches!(e, proxy::Error::Timeout(_)),
            ))
        }
    }
}

/// The answer to a CORS preflight from an allowed origin.
fn preflight(req: &Request<Incoming>, origin: &str) -> Response<Body> {
    let mut r = Response::new(web::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value(origin));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

/// Google IAP's special query parameters: `gcp-iap-mode=IDENTITY` answers who the caller is,
/// `gcp-iap-mode=CLEAR_LOGIN_COOKIE` signs them out. None for any other request.
async fn iap_mode(
    state: &State,
    ctx: &mut Ctx,
    req: &Request<Incoming>,
    credential: &super::credential::Credential,
) -> Option<Result<Response<Body>, Failure>> {
    use crate::identity::google::IAP_PREFIX;
    let params = web::query_pairs(req.uri());
    let mode = web::param(&params, "gcp-iap-mode")?;
    let Some(Principal::Person(identity)) = credential.principal() else {
        return None;
    };
    match mode {
        "IDENTITY" => Some(Ok(web::json(
            StatusCode::OK,
            &serde_json::json!({
                "email": format!("{IAP_PREFIX}{}", identity.email),
                "sub": format!("{IAP_PREFIX}{}", identity.subject),
            }),
        ))),
        "CLEAR_LOGIN_COOKIE" => {
            let super::credential::Credential::Session(session) = credential else {
                return None;
            };
            let actor = crate::store::Actor {
                name: identity.email.clone(),
                ip: crate::net::ip_text(ctx.client_ip),
            };
            state.forget_session(&session.digest);
            if let Err(e) = state.store.delete_session(&session.digest, &actor).await {
                return Some(Err(Failure::internal("ending the session", &e)));
            }
            state.apply_own_change().await;
            ctx.mark(Outcome::SignedOut, Why::None);
            let mut resp = web::redirect(req.uri().path());
            resp.headers_mut().append(
                header::SET_COOKIE,
                state.cookies.set(state.cookies.session, "", Some(0)),
            );
            Some(Ok(resp))
        }
        _ => None,
    }
}
