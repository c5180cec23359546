//! The endpoints anyone may read, on every host: health, the public keys that verify castellan's
//! assertions, who is signed in (`whoami`), the passkey script, the signed-out page; and on
//! castellan's own host its home page.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::runtime::State;
use crate::web::ctx::Ctx;
use crate::web::failure::{Answer, Failure};
use crate::web::{self, Body, pages};

/// `/.castellan/healthz`: healthy while decisions can be made. A replica serving from its last
/// snapshot during a short store outage stays in rotation (restarting it would only lose that
/// snapshot).
pub async fn healthz(state: &State) -> Answer {
    match state.store.ping().await {
        Ok(()) => Ok(web::text(StatusCode::OK, "ok\n")),
        Err(e) if state.store_usable() => {
            tracing::warn!("health check: {e}");
            Ok(web::text(
                StatusCode::OK,
                "degraded: the store cannot be reached; serving from the last policies\n",
            ))
        }
        Err(e) => {
            tracing::error!("health check: {e}");
            Err(Failure::store_unavailable())
        }
    }
}

/// Public keys for verifiers anywhere: cacheable for five minutes, readable cross-origin.
pub fn public_keys(body: &str) -> Response<Body> {
    let mut resp = Response::new(web::full(body.to_string()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// `/.castellan/passkey.js`, the only script castellan serves.
pub fn passkey_script() -> Response<Body> {
    let mut r = Response::new(web::full(pages::PASSKEY_SCRIPT));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `/.castellan/whoami`: the signed-in person on this host, as JSON.
pub async fn whoami(state: &State, ctx: &mut Ctx, req: &Request<Incoming>) -> Answer {
    ctx.navigation = false;
    let session = state
        .session(req.headers())
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    let Some(s) = session else {
        return Err(Failure::sign_in(
            format!("{}/.castellan/sign_in", state.config.public_origin()),
            None,
        ));
    };
    ctx.set_user(&s.identity.email);
    let stored = state
        .store
        .session(&s.digest, state.config.session_idle_timeout)
        .await
        .ok()
        .flatten();
    Ok(web::json(
        StatusCode::OK,
        &serde_json::json!({
            "email": s.identity.email,
            "subject": s.identity.subject,
            "provider": s.identity.provider,
            "groups": s.identity.groups,
            "session": stored.map(|s| serde_json::json!({
                "created_at": s.created_at,
                "expires_at": s.expires_at,
            })),
        }),
    ))
}

/// castellan's home on its own host: who is signed in, and the way to the account page and the
/// console. No app is served on this host.
pub async fn home(state: &State, ctx: &mut Ctx, req: &Request<Incoming>) -> Answer {
    ctx.app = "castellan".into();
    if req.uri().path() != "/" {
        return Err(Failure::not_found(format!(
            "{} is castellan's own address (sign-in, your account, the admin console); no app is served here. Apps are at their own addresses: {}.",
            state.config.public_origin(),
            app_hosts(state)
        )));
    }
    let who = state
        .session(req.headers())
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    let body = match who {
        Some(s) => {
            ctx.set_user(&s.identity.email);
            format!(
                "<h1>castellan</h1><p>You are signed in as <b>{}</b>.</p>\
                 <p class=\"muted\">Apps: {}</p>\
                 <a class=\"button\" href=\"/.castellan/account\">Your account and sessions</a>\
                 <a class=\"button secondary\" href=\"/.castellan/admin/\">Admin console</a>\
                 <a class=\"button secondary\" href=\"/.castellan/sign_out\">Sign out</a>",
                pages::esc(&s.identity.email),
                pages::esc(&app_hosts(state))
            )
        }
        None => format!(
            "<h1>castellan</h1><p>This is castellan's own address: sign-in, your account and the admin console. Apps are at their own addresses: {}.</p>\
             <a class=\"button\" href=\"/.castellan/sign_in\">Sign in</a>",
            pages::esc(&app_hosts(state))
        ),
    };
    Ok(web::html(StatusCode::OK, pages::page("castellan", &body)))
}

/// The apps' addresses, as people type them.
fn app_hosts(state: &State) -> String {
    let scheme = state.config.public_url.scheme();
    let port = state
        .config
        .public_url
        .port()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let mut hosts: Vec<String> = state
        .config
        .apps
        .iter()
        .map(|a| format!("{scheme}://{}{port}/", a.host))
        .collect();
    hosts.dedup();
    hosts.join(", ")
}
