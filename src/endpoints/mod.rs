//! castellan's own endpoints under `/.castellan/`, answered on every host and never proxied:
//! `sign_in`, `callback`, `sign_out`, `whoami`, `jwks.json`, `healthz`.

pub mod account;
pub mod cli_auth;
pub mod forward_auth;
pub mod passkey;
pub mod second_factor;

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::crypto;
use crate::gate::{Outcome, internal_error};
use crate::identity::oidc;
use crate::policy::Identity;
use crate::runtime::State;
use crate::store::Actor;
use crate::store::Flow;
use crate::web::pages::{self, ProviderChoice};
use crate::web::{self, Body};

/// How long a sign-in at a provider may take, from the redirect to the callback.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);

/// Answers a request whose normalised path is `path` (under `/.castellan/`).
pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    if path.starts_with(crate::admin::api::PREFIX) {
        return crate::admin::api::handle(state, peer, req, path, outcome).await;
    }
    if path == crate::endpoints::account::PATH || path.starts_with("/.castellan/account/") {
        return crate::endpoints::account::handle(state, peer, req, path, outcome).await;
    }
    if path.starts_with(crate::endpoints::passkey::PREFIX) {
        return crate::endpoints::passkey::handle(state, peer, req, path, outcome).await;
    }
    if path == crate::admin::console::PREFIX || path.starts_with("/.castellan/admin/") {
        return crate::admin::console::handle(state, peer, req, path, outcome).await;
    }
    let method = req.method().clone();
    match (method, path) {
        // Healthy while decisions can be made: a replica serving from its last snapshot during a
        // short store outage stays in rotation (restarting it would only lose that snapshot).
        (Method::GET | Method::HEAD, "/.castellan/healthz") => match state.store.ping().await {
            Ok(()) => web::text(StatusCode::OK, "ok\n"),
            Err(e) if state.store_usable() => {
                tracing::warn!("health check: {e}");
                web::text(
                    StatusCode::OK,
                    "degraded: the store cannot be reached; serving from the last policies\n",
                )
            }
            Err(e) => {
                tracing::error!("health check: {e}");
                web::text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        },
        (
            Method::GET | Method::HEAD,
            "/.castellan/jwks.json" | "/.castellan/iap/public_key-jwk",
        ) => public_keys(state.signer().jwks()),
        // The `{kid: PEM}` form of Google IAP's key URL, for apps written for IAP.
        (Method::GET | Method::HEAD, "/.castellan/iap/public_key") => {
            public_keys(state.signer().pem_keys())
        }
        (Method::GET | Method::HEAD, crate::endpoints::passkey::SCRIPT_PATH) => {
            crate::endpoints::passkey::script()
        }
        (Method::GET | Method::HEAD, "/.castellan/whoami") => whoami(state, &req, outcome).await,
        (Method::GET | Method::HEAD, "/.castellan/sign_in") => {
            sign_in_page(state, &req, None, outcome).await
        }
        (Method::POST, "/.castellan/sign_in") if state.config.local_accounts => {
            local_sign_in(state, peer, req, outcome).await
        }
        (Method::GET, "/.castellan/callback") => callback(state, peer, &req, outcome).await,
        (Method::GET, "/.castellan/handoff") => handoff(state, peer, &req, outcome).await,
        (Method::GET | Method::HEAD | Method::POST, crate::endpoints::second_factor::PATH)
            if state.config.local_accounts =>
        {
            crate::endpoints::second_factor::handle(state, peer, req, outcome).await
        }
        (Method::GET | Method::HEAD, "/.castellan/signed_out") => {
            web::html(StatusCode::OK, pages::signed_out())
        }
        (Method::POST, "/.castellan/request_access") => {
            request_access(state, peer, req, outcome).await
        }
        (_, "/.castellan/auth") => {
            crate::endpoints::forward_auth::handle(state, peer, req, outcome).await
        }
        (_, crate::endpoints::cli_auth::PATH) => {
            crate::endpoints::cli_auth::handle(state, req, outcome).await
        }
        (Method::POST, "/.castellan/token") => {
            crate::gate::bearer::token_endpoint(state, peer, req, outcome).await
        }
        (Method::GET | Method::HEAD, "/.castellan/sign_out") => {
            sign_out_page(state, &req, outcome).await
        }
        (Method::POST, "/.castellan/sign_out") => sign_out(state, req, outcome).await,
        (
            _,
            "/.castellan/healthz"
            | "/.castellan/jwks.json"
            | "/.castellan/whoami"
            | "/.castellan/sign_in"
            | "/.castellan/callback"
            | "/.castellan/sign_out",
        ) => {
            let mut r = web::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            r
        }
        _ => web::html(
            StatusCode::NOT_FOUND,
            pages::error(
                "Not found",
                "There is no castellan page at this address.",
                &crypto::reference_id(),
            ),
        ),
    }
}

/// Public keys for verifiers anywhere: cacheable for five minutes, readable cross-origin.
fn public_keys(body: &str) -> Response<Body> {
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

async fn whoami(state: &State, req: &Request<Incoming>, outcome: &mut Outcome) -> Response<Body> {
    match state.authenticate(req.headers()).await {
        Ok(Some((who, digest))) => {
            outcome.user = who.email.clone();
            let session = state
                .store
                .session(&digest, state.config.session_idle_timeout)
                .await
                .ok()
                .flatten();
            web::json(
                StatusCode::OK,
                &serde_json::json!({
                    "email": who.email,
                    "subject": who.subject,
                    "provider": who.provider,
                    "groups": who.groups,
                    "session": session.map(|s| serde_json::json!({
                        "created_at": s.created_at,
                        "expires_at": s.expires_at,
                    })),
                }),
            )
        }
        Ok(None) => web::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({
                "error": "unauthenticated",
                "sign_in_url": format!("{}/.castellan/sign_in", state.config.public_origin()),
            }),
        ),
        Err(e) => internal_error(outcome, "reading the session", &e),
    }
}

/// The browser's id cookie: reused when present and well-formed, otherwise a new one to set.
pub fn browser_id(state: &State, headers: &http::HeaderMap) -> (String, Option<HeaderValue>) {
    match web::cookie(headers, state.cookies.browser) {
        Some(v)
            if v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            (v.to_string(), None)
        }
        _ => {
            let id = crypto::random_token(32);
            let cookie = state.cookies.set(state.cookies.browser, &id, None);
            (id, Some(cookie))
        }
    }
}

fn with_cookie(mut resp: Response<Body>, cookie: Option<HeaderValue>) -> Response<Body> {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Where to go after sign-in: a path here, or an absolute URL on another host castellan serves.
pub(crate) fn safe_return(state: &State, raw: Option<&str>) -> String {
    raw.and_then(|r| {
        crate::web::return_to::validate_any(r, &state.config.public_url, |h| {
            state.config.serves_host(h)
        })
    })
    .unwrap_or_else(|| "/".into())
}

/// How long a handoff code may wait to be redeemed.
const HANDOFF_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends a signed-in browser on to `return_to`. A path stays here; an absolute URL is another host
/// castellan serves, whose cookies this host cannot set: the browser goes to that host's
/// `/.castellan/handoff` with a one-time code (never a session id) bound to that host.
async fn continue_to(
    state: &State,
    session_digest: &str,
    return_to: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    if return_to.starts_with('/') {
        return web::redirect(return_to);
    }
    let Ok(target) = url::Url::parse(return_to) else {
        return web::redirect("/");
    };
    let Some(host) = target.host_str() else {
        return web::redirect("/");
    };
    let code = crypto::random_token(32);
    if let Err(e) = state
        .store
        .put_handoff_code(&crypto::digest(&code), session_digest, host)
        .await
    {
        return internal_error(outcome, "handing the session to another host", &e);
    }
    let path = &return_to[target.origin().ascii_serialization().len()..];
    web::redirect(&format!(
        "{}/.castellan/handoff?code={}&rd={}",
        target.origin().ascii_serialization(),
        pages::q(&code),
        pages::q(if path.is_empty() { "/" } else { path })
    ))
}

/// The other host's end of a handoff: redeems the code (once, within a minute, on the host it was
/// made for), gives this host a session cookie of its own linked to the public host's session,
/// and goes on to `rd` on this host.
async fn handoff(
    state: &State,
    peer: SocketAddr,
    req: &Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let params = web::query_pairs(req.uri());
    let host = web::request_host(req.uri(), req.headers()).unwrap_or_default();
    let here = {
        let mut u = state.config.public_url.clone();
        let _ = u.set_host(Some(&host));
        u
    };
    let rd = web::param(&params, "rd")
        .and_then(|r| crate::web::return_to::validate(r, &here))
        .unwrap_or_else(|| "/".into());
    let code = web::param(&params, "code").unwrap_or("");
    let id = crypto::random_token(32);
    let ip = web::client_ip(peer, req.headers(), &state.config.trusted_proxies).to_string();
    let agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect::<String>();
    let made = if code.is_empty() || host.is_empty() || !state.config.serves_host(&host) {
        Ok(None)
    } else {
        state
            .store
            .redeem_handoff_code(
                &crypto::digest(code),
                &host,
                HANDOFF_MAX_AGE,
                &crypto::digest(&id),
                &ip,
                &agent,
            )
            .await
    };
    match made {
        Ok(Some(session)) => {
            outcome.user = session.identity.email.clone();
            outcome.decision = "signed-in";
            let mut resp = web::redirect(&rd);
            let lifetime = (session.expires_at - crate::clock::now()).max(0) as u64;
            resp.headers_mut().append(
                header::SET_COOKIE,
                state
                    .cookies
                    .set(state.cookies.session, &id, Some(lifetime)),
            );
            resp
        }
        Ok(None) => {
            outcome.decision = "deny";
            outcome.reason = "bad-handoff";
            let again = format!(
                "{}/.castellan/sign_in?rd={}",
                state.config.public_origin(),
                pages::q(&format!("{}{rd}", here.origin().ascii_serialization()))
            );
            web::html(
                StatusCode::BAD_REQUEST,
                pages::error(
                    "This sign-in link has expired",
                    &format!(
                        "Sign-in links between castellan's hosts work once, within a minute. Open {again} to sign in again."
                    ),
                    &outcome.reference(),
                ),
            )
        }
        Err(e) => internal_error(outcome, "redeeming a handoff code", &e),
    }
}

async fn sign_in_page(
    state: &State,
    req: &Request<Incoming>,
    error: Option<(StatusCode, &str)>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let params = web::query_pairs(req.uri());
    let return_to = safe_return(state, web::param(&params, "rd"));
    let switching = web::param(&params, "switch") == Some("1");
    // An app asks for a fresh sign-in (its reauth_max_age): OIDC max_age, checked on return.
    let max_age = web::param(&params, "max_age")
        .and_then(|m| m.parse::<i64>().ok())
        .filter(|m| *m >= 0);
    let (browser, set_browser) = browser_id(state, req.headers());
    // Already signed in here and on the way to another host castellan serves: hand over at once.
    if !return_to.starts_with('/') && !switching && max_age.is_none() && error.is_none() {
        match state.authenticate(req.headers()).await {
            Ok(Some((_, digest))) => return continue_to(state, &digest, &return_to, outcome).await,
            Ok(None) => {}
            Err(e) => return internal_error(outcome, "reading the session", &e),
        }
    }

    if let Some(id) = web::param(&params, "provider") {
        let Some(client) = state.provider(id) else {
            return web::html(
                StatusCode::NOT_FOUND,
                pages::error(
                    "Unknown sign-in provider",
                    &format!("castellan has no provider called \"{id}\"."),
                    &crypto::reference_id(),
                ),
            );
        };
        let resp = start_flow(
            state, client, &browser, &return_to, switching, max_age, outcome,
        )
        .await;
        return with_cookie(resp, set_browser);
    }
    // Exactly one way to sign in, and the person is not asking to switch accounts: go straight there.
    if !state.config.local_accounts && state.providers.len() == 1 && !switching && error.is_none() {
        let resp = start_flow(
            state,
            &state.providers[0],
            &browser,
            &return_to,
            false,
            max_age,
            outcome,
        )
        .await;
        return with_cookie(resp, set_browser);
    }
    let (status, message) = error.map_or((StatusCode::OK, None), |(s, m)| (s, Some(m)));
    let _ = outcome;
    render_sign_in(
        state,
        &browser,
        set_browser,
        &return_to,
        switching,
        max_age,
        status,
        message,
    )
}

/// The chooser (providers, then the local-account form), with an optional error.
#[allow(clippy::too_many_arguments)]
fn render_sign_in(
    state: &State,
    browser: &str,
    set_browser: Option<HeaderValue>,
    return_to: &str,
    switching: bool,
    max_age: Option<i64>,
    status: StatusCode,
    message: Option<&str>,
) -> Response<Body> {
    let providers = state
        .providers
        .iter()
        .map(|p| ProviderChoice {
            display_name: &p.config.display_name,
            href: format!(
                "/.castellan/sign_in?provider={}&rd={}{}{}",
                pages::q(&p.config.id),
                pages::q(return_to),
                if switching { "&switch=1" } else { "" },
                max_age.map(|m| format!("&max_age={m}")).unwrap_or_default()
            ),
        })
        .collect();
    let html = pages::sign_in(&pages::SignIn {
        providers,
        local: state
            .config
            .local_accounts
            .then(|| (state.csrf_token(browser), "")),
        return_to,
        error: message,
    });
    let mut resp = web::html(status, html);
    if state.config.local_accounts {
        crate::endpoints::passkey::allow_script(state, &mut resp);
    }
    with_cookie(resp, set_browser)
}

async fn start_flow(
    state: &State,
    client: &oidc::Client,
    browser: &str,
    return_to: &str,
    switching: bool,
    max_age: Option<i64>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let st = crypto::random_token(32);
    let flow = Flow {
        browser_digest: crypto::digest(browser),
        provider: client.config.id.clone(),
        nonce: crypto::random_token(32),
        pkce_verifier: crypto::random_token(48),
        return_to: return_to.to_string(),
        created_at: crate::clock::now(),
        max_age: max_age.unwrap_or(0),
    };
    let prompt = switching.then_some("select_account");
    let url = match client
        .authorization_url(&st, &flow.nonce, &flow.pkce_verifier, prompt, max_age)
        .await
    {
        Ok(u) => u,
        Err(e) => return provider_unavailable(state, &client.config.display_name, &e, outcome),
    };
    if let Err(e) = state.store.put_flow(&crypto::digest(&st), &flow).await {
        return internal_error(outcome, "saving the sign-in state", &e);
    }
    web::redirect(url.as_str())
}

fn provider_unavailable(
    state: &State,
    name: &str,
    err: &oidc::Error,
    outcome: &mut Outcome,
) -> Response<Body> {
    let reference = crypto::reference_id();
    tracing::error!(reference, "{err}");
    outcome.reference = Some(reference.clone());
    state.metrics.sign_in(name, "provider-unavailable");
    web::html(
        StatusCode::BAD_GATEWAY,
        pages::error(
            "Sign-in is unavailable",
            &format!("castellan could not reach {name} to sign you in. Try again in a moment."),
            &reference,
        ),
    )
}

fn bad_sign_in(title: &str, message: &str, outcome: &mut Outcome) -> Response<Body> {
    let reference = crypto::reference_id();
    outcome.reference = Some(reference.clone());
    outcome.decision = "sign-in-failed";
    tracing::warn!(reference, "sign-in failed: {message}");
    web::html(
        StatusCode::BAD_REQUEST,
        pages::page(
            title,
            &format!(
                "<h1>{}</h1><p>{}</p><a class=\"button\" href=\"/.castellan/sign_in\">Start again</a><p class=\"muted\">Reference: <code>{}</code></p>",
                pages::esc(title),
                pages::esc(message),
                pages::esc(&reference)
            ),
        ),
    )
}

async fn callback(
    state: &State,
    peer: SocketAddr,
    req: &Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let params = web::query_pairs(req.uri());
    let Some(st) = web::param(&params, "state") else {
        return bad_sign_in(
            "Sign-in failed",
            "The provider's answer has no state: start the sign-in from castellan.",
            outcome,
        );
    };
    let flow = match state.store.take_flow(&crypto::digest(st)).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return bad_sign_in(
                "This sign-in link has expired",
                "It was already used, or it is not from this castellan. Start the sign-in again.",
                outcome,
            );
        }
        Err(e) => return internal_error(outcome, "reading the sign-in state", &e),
    };
    let browser_matches = web::cookie(req.headers(), state.cookies.browser)
        .is_some_and(|b| crypto::equal(&crypto::digest(b), &flow.browser_digest));
    if !browser_matches {
        return bad_sign_in(
            "Sign-in failed",
            "This sign-in was started in another browser (or its cookies were cleared). Start again here.",
            outcome,
        );
    }
    if crate::clock::now() - flow.created_at > FLOW_LIFETIME.as_secs() as i64 {
        return bad_sign_in(
            "This sign-in link has expired",
            "The sign-in took too long. Start again.",
            outcome,
        );
    }
    let Some(client) = state.provider(&flow.provider) else {
        return bad_sign_in(
            "Sign-in failed",
            "The provider of this sign-in is no longer configured.",
            outcome,
        );
    };
    if let Some(err) = web::param(&params, "error") {
        state.metrics.sign_in(&client.config.id, "refused");
        let detail = web::param(&params, "error_description").unwrap_or("");
        return bad_sign_in(
            "Sign-in was not completed",
            &format!("{} answered: {err} {detail}", client.config.display_name),
            outcome,
        );
    }
    if let Err(e) = client.check_response_issuer(web::param(&params, "iss")) {
        state.metrics.sign_in(&client.config.id, "rejected");
        return bad_sign_in("Sign-in failed", &e.to_string(), outcome);
    }
    let Some(code) = web::param(&params, "code") else {
        return bad_sign_in(
            "Sign-in failed",
            "The provider's answer has no code.",
            outcome,
        );
    };
    let signed_in = match client
        .exchange(code, &flow.pkce_verifier, &flow.nonce)
        .await
    {
        Ok(who) => who,
        Err(e @ oidc::Error::Unavailable { .. }) => {
            return provider_unavailable(state, &client.config.display_name, &e, outcome);
        }
        Err(e) => {
            state.metrics.sign_in(&client.config.id, "rejected");
            return bad_sign_in("Sign-in failed", &e.to_string(), outcome);
        }
    };
    // A re-authentication must be one: the provider says when it authenticated the person.
    if flow.max_age > 0 {
        let fresh = signed_in
            .auth_time
            .is_some_and(|t| crate::clock::now() - t <= flow.max_age + 30);
        if !fresh {
            state.metrics.sign_in(&client.config.id, "rejected");
            return bad_sign_in(
                "Sign-in failed",
                &format!(
                    "This app asks you to sign in again, but {} did not confirm a fresh sign-in (its ID token's auth_time is missing or too old). Try again; if it keeps happening, the provider may not support max_age.",
                    client.config.display_name
                ),
                outcome,
            );
        }
    }
    state.metrics.sign_in(&client.config.id, "ok");
    start_session(
        state,
        peer,
        req.headers(),
        signed_in.identity,
        signed_in.auth_time,
        Some(&signed_in.id_token),
        &flow.return_to,
        outcome,
    )
    .await
}

/// Creates a new session (never reusing an id the browser brought: no fixation) and sends the
/// browser on to `return_to`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_session(
    state: &State,
    peer: SocketAddr,
    headers: &http::HeaderMap,
    who: Identity,
    auth_time: Option<i64>,
    id_token: Option<&str>,
    return_to: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    if let Some(old) = web::cookie(headers, state.cookies.session) {
        let actor = Actor {
            name: who.email.clone(),
            ip: web::client_ip(peer, headers, &state.config.trusted_proxies).to_string(),
        };
        state.forget_session(&crypto::digest(old));
        let _ = state
            .store
            .delete_session(&crypto::digest(old), &actor)
            .await;
    }
    let id = crypto::random_token(32);
    let ip = web::client_ip(peer, headers, &state.config.trusted_proxies).to_string();
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect::<String>();
    let lifetime = state.config.session_lifetime;
    if let Err(e) = state
        .store
        .create_session(&crypto::digest(&id), &who, lifetime, &ip, &agent, auth_time)
        .await
    {
        return internal_error(outcome, "creating the session", &e);
    }
    if let Some(t) = id_token
        && let Err(e) = state
            .store
            .set_session_id_token(&crypto::digest(&id), t)
            .await
    {
        return internal_error(outcome, "creating the session", &e);
    }
    tracing::info!(user = %who.email, provider = %who.provider, "signed in");
    outcome.user = who.email;
    outcome.decision = "signed-in";
    let mut resp = continue_to(state, &crypto::digest(&id), return_to, outcome).await;
    resp.headers_mut().append(
        header::SET_COOKIE,
        state
            .cookies
            .set(state.cookies.session, &id, Some(lifetime.as_secs())),
    );
    resp
}

/// Same-origin check for form posts: a browser sends `Origin` on POST; when it does, it must be ours.
fn origin_ok(state: &State, headers: &http::HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => origin == state.config.public_origin(),
        None => true,
    }
}

async fn local_sign_in(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let Some(form) = web::read_form(body).await else {
        return bad_sign_in("Sign-in failed", "The form could not be read.", outcome);
    };
    let browser = web::cookie(&headers, state.cookies.browser);
    let csrf_ok =
        browser.is_some_and(|b| state.csrf_valid(b, web::param(&form, "csrf").unwrap_or("")));
    let return_to = safe_return(state, web::param(&form, "rd"));
    if !csrf_ok || !origin_ok(state, &headers) {
        outcome.decision = "sign-in-failed";
        outcome.reason = "csrf";
        return again(
            state,
            &headers,
            &return_to,
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site. Please sign in again.",
        );
    }
    let email = web::param(&form, "email")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let password = web::param(&form, "password").unwrap_or("").to_string();
    let ip = web::client_ip(peer, &headers, &state.config.trusted_proxies).to_string();
    outcome.user = email.clone();

    let wait = state
        .ip_limiter
        .blocked(&ip)
        .max(state.account_limiter.blocked(&email));
    if let Some(wait) = wait {
        state.metrics.sign_in("local", "rate-limited");
        outcome.decision = "sign-in-failed";
        outcome.reason = "rate-limited";
        let secs = wait.as_secs().max(1);
        let mut resp = again(
            state,
            &headers,
            &return_to,
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many attempts. Try again in {secs} s."),
        );
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs.to_string()).expect("digits"),
        );
        return resp;
    }
    let stored = match state.store.password_hash(&email).await {
        Ok(h) => h,
        Err(e) => return internal_error(outcome, "reading the account", &e),
    };
    let ok = tokio::task::spawn_blocking(move || {
        crate::identity::local::verify_password(stored.as_deref(), &password)
    })
    .await
    .unwrap_or(false);
    if !ok {
        state.ip_limiter.fail(&ip);
        state.account_limiter.fail(&email);
        state.metrics.sign_in("local", "wrong-password");
        outcome.decision = "sign-in-failed";
        outcome.reason = "wrong-password";
        return again(
            state,
            &headers,
            &return_to,
            StatusCode::UNAUTHORIZED,
            "Wrong email or password.",
        );
    }
    // A second factor: asked for when the account has TOTP, set up when the configuration
    // requires one and it has none.
    let has_totp = match state.store.totp_secret(&email).await {
        Ok(s) => s.is_some(),
        Err(e) => return internal_error(outcome, "reading the account", &e),
    };
    if has_totp || state.config.local_accounts_mfa_required {
        let browser = browser.unwrap_or("");
        return crate::endpoints::second_factor::begin(
            state, browser, &email, &return_to, !has_totp, outcome,
        )
        .await;
    }
    state.account_limiter.clear(&email);
    state.metrics.sign_in("local", "ok");
    let who = Identity {
        groups: Vec::new(),
        subject: email.clone(),
        email,
        provider: "local".into(),
        hd: None,
    };
    start_session(state, peer, &headers, who, None, None, &return_to, outcome).await
}

/// The sign-in page again, with an error message; the return URL is kept.
fn again(
    state: &State,
    headers: &http::HeaderMap,
    return_to: &str,
    status: StatusCode,
    message: &str,
) -> Response<Body> {
    let (browser, set_browser) = browser_id(state, headers);
    render_sign_in(
        state,
        &browser,
        set_browser,
        return_to,
        false,
        None,
        status,
        Some(message),
    )
}

async fn sign_out_page(
    state: &State,
    req: &Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (browser, set_browser) = browser_id(state, req.headers());
    let email = match state.authenticate(req.headers()).await {
        Ok(who) => who.map(|(i, _)| i.email.clone()),
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    with_cookie(
        web::html(
            StatusCode::OK,
            pages::sign_out(&state.csrf_token(&browser), email.as_deref()),
        ),
        set_browser,
    )
}

async fn sign_out(state: &State, req: Request<Incoming>, outcome: &mut Outcome) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    let csrf_ok = web::cookie(&parts.headers, state.cookies.browser)
        .is_some_and(|b| state.csrf_valid(b, web::param(&form, "csrf").unwrap_or("")));
    if !csrf_ok || !origin_ok(state, &parts.headers) {
        return bad_sign_in(
            "Sign-out failed",
            "This form has expired or did not come from this site. Open /.castellan/sign_out and try again.",
            outcome,
        );
    }
    let mut provider_logout = None;
    if let Some(id) = web::cookie(&parts.headers, state.cookies.session) {
        let actor = Actor {
            name: "sign-out".into(),
            ip: String::new(),
        };
        // Read before it is gone: the provider's logout wants the ID token back.
        if let Ok(Some((provider, id_token))) = state
            .store
            .session_provider_token(&crypto::digest(id))
            .await
            && let Some(client) = state.provider(&provider)
        {
            provider_logout = client
                .logout_url(
                    &id_token,
                    &format!("{}/.castellan/signed_out", state.config.public_origin()),
                )
                .await;
        }
        state.forget_session(&crypto::digest(id));
        if let Err(e) = state
            .store
            .delete_session(&crypto::digest(id), &actor)
            .await
        {
            return internal_error(outcome, "ending the session", &e);
        }
    }
    outcome.decision = "signed-out";
    // RP-initiated logout: the provider ends its session too, then comes back to signed_out.
    let mut resp = match provider_logout {
        Some(url) => web::redirect(url.as_str()),
        None => web::html(StatusCode::OK, pages::signed_out()),
    };
    resp.headers_mut().append(
        header::SET_COOKIE,
        state.cookies.set(state.cookies.session, "", Some(0)),
    );
    resp
}

/// The "Request access" button of the access-denied page.
async fn request_access(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    let csrf_ok = web::cookie(&parts.headers, state.cookies.browser)
        .is_some_and(|b| state.csrf_valid(b, web::param(&form, "csrf").unwrap_or("")));
    if !csrf_ok || !origin_ok(state, &parts.headers) {
        return bad_sign_in(
            "Request not sent",
            "This form has expired or did not come from this site. Go back, reload the page and try again.",
            outcome,
        );
    }
    let who = match state.authenticate(&parts.headers).await {
        Ok(Some((who, _))) => who,
        Ok(None) => return web::redirect("/.castellan/sign_in"),
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    outcome.user = who.email.clone();
    let Some(app) = web::param(&form, "app").and_then(|a| state.config.app(a)) else {
        return bad_sign_in("Request not sent", "There is no such app.", outcome);
    };
    let reason: String = web::param(&form, "reason")
        .unwrap_or("")
        .trim()
        .chars()
        .take(500)
        .collect();
    let return_to = safe_return(state, web::param(&form, "rd"));
    let ip = web::client_ip(peer, &parts.headers, &state.config.trusted_proxies).to_string();
    let (request, new) = match state
        .store
        .request_access(&app.id, &who.email, &reason, &ip)
        .await
    {
        Ok(r) => r,
        Err(e) => return internal_error(outcome, "saving the access request", &e),
    };
    outcome.app = app.id.clone();
    outcome.decision = "access-requested";
    if new && let Some(hook) = state.config.access_request_webhook.clone() {
        let http = state.webhook_client.clone();
        let console = format!("{}/.castellan/admin/requests", state.config.public_origin());
        tokio::spawn(notify(http, hook, request, console));
    }
    web::html(
        StatusCode::OK,
        pages::request_sent(&app.id, new, &return_to),
    )
}

/// Tells admins about a new request: a JSON POST whose `text` field Slack (and compatible chat
/// webhooks) show as the message, with the details as fields beside it.
async fn notify(
    http: reqwest::Client,
    url: url::Url,
    r: crate::store::AccessRequest,
    console: String,
) {
    let text = format!(
        "{} asks for access to {}{}. Review: {console}",
        r.email,
        r.app,
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(" (\"{}\")", r.reason)
        }
    );
    let body = serde_json::json!({
        "text": text,
        "app": r.app,
        "email": r.email,
        "reason": r.reason,
        "request_id": r.id,
        "console_url": console,
    });
    match http.post(url.as_str()).json(&body).send().await {
        Ok(resp) if resp.status().is_success() => {
            tracing::info!(request = r.id, "access request webhook delivered")
        }
        Ok(resp) => {
            tracing::warn!(request = r.id, status = %resp.status(), "the access request webhook refused the notification")
        }
        Err(e) => tracing::warn!(request = r.id, "the access request webhook failed: {e}"),
    }
}
