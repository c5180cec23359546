//! Passkeys for local accounts: registration from the account page and sign-in from the sign-in
//! page (WebAuthn, checked by [`crate::identity::webauthn`]). A passkey sign-in is a full sign-in: the
//! authenticator verified the person (PIN or biometrics), so no password or code is asked for.
//!
//! The browser side is `/.castellan/passkey.js`, the only script castellan serves; the pages that
//! load it allow exactly that file in their CSP. Every ceremony is bound to the browser cookie,
//! its challenge lasts five minutes and is used once; the JSON endpoints check the CSRF token
//! (header `x-castellan-csrf`) and the `Origin`.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::crypto;
use crate::gate::{Outcome, internal_error};
use crate::identity::webauthn;
use crate::policy::Identity;
use crate::runtime::State;
use crate::store::{Ceremony, Passkey};
use crate::web::{self, Body};

pub const SCRIPT_PATH: &str = "/.castellan/passkey.js";
pub const PREFIX: &str = "/.castellan/passkey/";
const SCRIPT: &str = include_str!("../../assets/passkey.js");

/// How long a ceremony may take, in seconds (also the browser's timeout).
const CHALLENGE_SECS: i64 = 300;

/// `/.castellan/passkey.js`.
pub fn script() -> Response<Body> {
    let mut r = Response::new(web::full(SCRIPT));
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

/// The markup that loads the script on a page; the page must be served with [`allow_script`].
pub fn script_tag() -> String {
    format!("<script src=\"{SCRIPT_PATH}\" defer></script>")
}

/// Lets the page run castellan's passkey script (that file only) and call castellan's JSON
/// endpoints; everything else stays as strict as every castellan page.
pub fn allow_script(state: &State, resp: &mut Response<Body>) {
    let csp = format!(
        "default-src 'none'; script-src {}{SCRIPT_PATH}; connect-src 'self'; style-src 'unsafe-inline'; \
         form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'",
        state.config.public_origin()
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

/// The relying party id: the public host (a passkey works on it and its subdomains' pages that
/// ask for it; castellan only asks on the public host).
fn rp_id(state: &State) -> String {
    state.config.public_url.host_str().unwrap_or("").to_string()
}

/// The opaque WebAuthn user id of an account: stable, so an authenticator keeps one passkey per
/// account and site, and not the address itself.
fn user_handle(email: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, email.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..16])
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    web::json(status, &json!({ "error": code, "message": message }))
}

/// The JSON endpoints under `/.castellan/passkey/`.
pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    if !state.config.local_accounts {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "local accounts are off, so there are no passkeys",
        );
    }
    if req.method() != http::Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
    }
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let browser = web::cookie(&headers, state.cookies.browser).unwrap_or("");
    let csrf = headers
        .get("x-castellan-csrf")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let same_origin = headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes() == state.config.public_origin().as_bytes());
    if browser.is_empty() || !state.csrf_valid(browser, csrf) || !same_origin {
        outcome.decision = "deny";
        outcome.reason = "csrf";
        return error(
            StatusCode::FORBIDDEN,
            "csrf",
            "this page has expired or did not come from this site: reload it and try again",
        );
    }
    let body: Value = match Limited::new(body, 64 * 1024).collect().await {
        Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    if !body.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request body must be a JSON object (at most 64 KiB)",
        );
    }
    let browser_digest = crypto::digest(browser);
    match path.strip_prefix(PREFIX).unwrap_or("") {
        "sign_in/options" => {
            let challenge = crypto::random_token(32);
            if let Err(e) = state
                .store
                .put_passkey_challenge(&browser_digest, Ceremony::SignIn, "", &challenge)
                .await
            {
                return internal_error(outcome, "starting a passkey sign-in", &e);
            }
            web::json(
                StatusCode::OK,
                &json!({ "challenge": challenge, "rpId": rp_id(state), "timeout": CHALLENGE_SECS * 1000 }),
            )
        }
        "sign_in" => sign_in(state, peer, &headers, &browser_digest, &body, outcome).await,
        "register/options" | "register" => {
            let who = match state.authenticate(&headers).await {
                Ok(Some((who, _))) if who.provider == "local" => who,
                Ok(_) => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "sign in with a castellan account first",
                    );
                }
                Err(e) => return internal_error(outcome, "reading the session", &e),
            };
            outcome.user = who.email.clone();
            if path.ends_with("/options") {
                register_options(state, &who, &browser_digest, outcome).await
            } else {
                register(state, &who, &browser_digest, &body, outcome).await
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "there is no such passkey endpoint",
        ),
    }
}

async fn register_options(
    state: &State,
    who: &Identity,
    browser_digest: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let existing = match state.store.passkeys_of(&who.email).await {
        Ok(p) => p,
        Err(e) => return internal_error(outcome, "reading passkeys", &e),
    };
    let challenge = crypto::random_token(32);
    if let Err(e) = state
        .store
        .put_passkey_challenge(browser_digest, Ceremony::Register, &who.email, &challenge)
        .await
    {
        return internal_error(outcome, "starting passkey registration", &e);
    }
    let site = state.config.public_url.host_str().unwrap_or("castellan");
    web::json(
        StatusCode::OK,
        &json!({
            "challenge": challenge,
            "rp": { "id": rp_id(state), "name": format!("castellan {site}") },
            "user": { "id": user_handle(&who.email), "name": who.email, "displayName": who.email },
            "algorithms": webauthn::ALGORITHMS,
            "exclude": existing.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "timeout": CHALLENGE_SECS * 1000,
        }),
    )
}

fn field(body: &Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(body[name].as_str()?.trim_end_matches('='))
        .ok()
}

async fn register(
    state: &State,
    who: &Identity,
    browser_digest: &str,
    body: &Value,
    outcome: &mut Outcome,
) -> Response<Body> {
    let challenge = match state
        .store
        .take_passkey_challenge(browser_digest, Ceremony::Register, CHALLENGE_SECS)
        .await
    {
        Ok(Some((email, challenge))) if email == who.email => challenge,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "expired",
                "this registration has expired or was already used: try again",
            );
        }
        Err(e) => return internal_error(outcome, "reading the registration", &e),
    };
    let (Some(client_data), Some(attestation)) = (
        field(body, "clientDataJSON"),
        field(body, "attestationObject"),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "clientDataJSON and attestationObject (base64url) are required",
        );
    };
    let origin = state.config.public_origin();
    let rp = rp_id(state);
    let expected = webauthn::Expected {
        challenge: &challenge,
        origin: &origin,
        rp_id: &rp,
    };
    let registered = match webauthn::verify_registration(&expected, &client_data, &attestation) {
        Ok(r) => r,
        Err(why) => {
            outcome.decision = "passkey-refused";
            outcome.reason = "invalid";
            tracing::warn!(user = %who.email, "passkey registration refused: {why}");
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("the passkey was not accepted: {why}"),
            );
        }
    };
    let name: String = body["name"]
        .as_str()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(60)
        .collect();
    let passkey = Passkey {
        id: registered.id,
        email: who.email.clone(),
        user_handle: user_handle(&who.email),
        public_key: registered.public_key,
        sign_count: registered.sign_count,
        name: if name.is_empty() {
            "Passkey".into()
        } else {
            name
        },
        created_at: crate::clock::now(),
        last_used_at: 0,
    };
    if state
        .store
        .passkey(&passkey.id)
        .await
        .ok()
        .flatten()
        .is_some()
    {
        return error(
            StatusCode::CONFLICT,
            "exists",
            "this passkey is registered already",
        );
    }
    if let Err(e) = state.store.add_passkey(&passkey).await {
        return internal_error(outcome, "saving the passkey", &e);
    }
    tracing::info!(user = %who.email, name = %passkey.name, "passkey registered");
    outcome.decision = "passkey-registered";
    web::json(
        StatusCode::OK,
        &json!({ "id": passkey.id, "name": passkey.name }),
    )
}

async fn sign_in(
    state: &State,
    peer: SocketAddr,
    headers: &http::HeaderMap,
    browser_digest: &str,
    body: &Value,
    outcome: &mut Outcome,
) -> Response<Body> {
    let ip = web::client_ip(peer, headers, &state.config.trusted_proxies).to_string();
    if let Some(wait) = state.ip_limiter.blocked(&ip) {
        outcome.decision = "sign-in-failed";
        outcome.reason = "rate-limited";
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "too many attempts: try again in {} s",
                wait.as_secs().max(1)
            ),
        );
    }
    let challenge = match state
        .store
        .take_passkey_challenge(browser_digest, Ceremony::SignIn, CHALLENGE_SECS)
        .await
    {
        Ok(Some((_, challenge))) => challenge,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "expired",
                "this sign-in has expired or was already used: try again",
            );
        }
        Err(e) => return internal_error(outcome, "reading the sign-in", &e),
    };
    let id = body["id"].as_str().unwrap_or("");
    let stored = match state.store.passkey(id).await {
        Ok(p) => p,
        Err(e) => return internal_error(outcome, "reading the passkey", &e),
    };
    let refuse = |outcome: &mut Outcome, why: &str| {
        state.ip_limiter.fail(&ip);
        state.metrics.sign_in("passkey", "refused");
        outcome.decision = "sign-in-failed";
        outcome.reason = "passkey";
        tracing::warn!("passkey sign-in refused: {why}");
        error(
            StatusCode::UNAUTHORIZED,
            "invalid",
            &format!("the passkey was not accepted: {why}"),
        )
    };
    let Some(stored) = stored else {
        return refuse(
            outcome,
            "castellan does not know this passkey (it may have been removed)",
        );
    };
    outcome.user = stored.email.clone();
    let (Some(client_data), Some(auth_data), Some(signature)) = (
        field(body, "clientDataJSON"),
        field(body, "authenticatorData"),
        field(body, "signature"),
    ) else {
        return refuse(outcome, "the response is incomplete");
    };
    let origin = state.config.public_origin();
    let rp = rp_id(state);
    let expected = webauthn::Expected {
        challenge: &challenge,
        origin: &origin,
        rp_id: &rp,
    };
    let count = match webauthn::verify_assertion(
        &expected,
        &stored.public_key,
        stored.sign_count,
        &client_data,
        &auth_data,
        &signature,
    ) {
        Ok(c) => c,
        Err(why) => return refuse(outcome, &why),
    };
    // The account must still exist (a removed account's passkeys are removed with it, but a
    // sign-in racing the removal must not win).
    match state.store.password_hash(&stored.email).await {
        Ok(Some(_)) => {}
        Ok(None) => return refuse(outcome, "the account no longer exists"),
        Err(e) => return internal_error(outcome, "reading the account", &e),
    }
    match state
        .store
        .use_passkey(&stored.id, stored.sign_count, count)
        .await
    {
        Ok(true) => {}
        Ok(false) => return refuse(outcome, "the passkey was used at the same moment elsewhere"),
        Err(e) => return internal_error(outcome, "recording the sign-in", &e),
    }
    state.metrics.sign_in("passkey", "ok");
    let return_to = crate::endpoints::safe_return(state, body["rd"].as_str());
    let who = Identity {
        groups: Vec::new(),
        subject: stored.email.clone(),
        email: stored.email,
        provider: "local".into(),
        hd: None,
    };
    let resp =
        crate::endpoints::start_session(state, peer, headers, who, None, None, &return_to, outcome)
            .await;
    // The script follows the redirect itself: answer JSON with where to go, keeping the cookies.
    let Some(location) = resp.headers().get(header::LOCATION).cloned() else {
        return resp;
    };
    let mut out = web::json(
        StatusCode::OK,
        &json!({ "location": location.to_str().unwrap_or("/") }),
    );
    for c in resp.headers().get_all(header::SET_COOKIE) {
        out.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    out
}

/// Passkey list rows and the "add a passkey" control for the account page.
pub async fn account_section(
    state: &State,
    email: &str,
    csrf: &str,
) -> Result<String, crate::store::Error> {
    use crate::web::pages::esc;
    let keys = state.store.passkeys_of(email).await?;
    let when = crate::web::pages::when;
    let rows: String = keys
        .iter()
        .map(|p| {
            format!(
                "<li><b>{}</b> <span class=\"muted\">added {}{}</span>\
                 <form method=\"post\" action=\"{}/passkey_remove\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Remove</button></form></li>",
                esc(&p.name),
                esc(&when(p.created_at)),
                if p.last_used_at > 0 {
                    format!(", last used {}", esc(&when(p.last_used_at)))
                } else {
                    String::new()
                },
                crate::endpoints::account::PATH,
                esc(csrf),
                esc(&p.id)
            )
        })
        .collect();
    let list = if keys.is_empty() {
        "<p>None yet. A passkey signs you in with your device's screen lock instead of a password.</p>"
            .to_string()
    } else {
        format!("<ul class=\"passkeys\">{rows}</ul>")
    };
    Ok(format!(
        "<h2 style=\"font-size:1.05rem\">Passkeys</h2>{list}\
         <label for=\"passkey_name\">Name for a new passkey</label>\
         <input id=\"passkey_name\" type=\"text\" name=\"passkey_name\" maxlength=\"60\" placeholder=\"e.g. work laptop\">\
         <button type=\"button\" data-passkey=\"register\" data-csrf=\"{}\" hidden>Add a passkey</button>\
         <p class=\"error\" role=\"alert\" data-passkey-status hidden></p>{}",
        esc(csrf),
        script_tag()
    ))
}
