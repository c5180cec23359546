//! Passkeys for local accounts (WebAuthn, checked by [`crate::identity::webauthn`]): sign-in from
//! the sign-in page, a fresh proof before a change to the account (the account page's "confirm
//! it's you"), and registration from the account page, which itself needs a fresh proof: a
//! stolen session cookie alone cannot add a passkey. A passkey sign-in is a full sign-in: the
//! authenticator verified the person (PIN or biometrics).
//!
//! The browser side is `/.castellan/passkey.js`, the only script castellan serves. Every ceremony
//! is bound to the browser cookie, its challenge lasts five minutes and is used once; the JSON
//! endpoints go through the one CSRF guard (the token in `x-castellan-csrf`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::account;
use super::sign_in::{NewSession, start_session};
use crate::crypto;
use crate::identity::webauthn;
use crate::policy::Identity;
use crate::runtime::State;
use crate::runtime::sessions::SessionRef;
use crate::store::{Actor, Ceremony, Passkey};
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::{self, Body};

pub const PREFIX: &str = "/.castellan/passkey/";

/// How long a ceremony may take, in seconds (also the browser's timeout).
const CHALLENGE_SECS: i64 = 300;

/// The relying party id: the public host (castellan only asks on the public host).
fn rp_id(state: &State) -> String {
    state.config.public_url.host_str().unwrap_or("").to_string()
}

/// The opaque WebAuthn user id of an account: stable, so an authenticator keeps one passkey per
/// account and site, and not the address itself.
fn user_handle(email: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, email.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..16])
}

/// The JSON endpoints under `/.castellan/passkey/`.
pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>, path: &str) -> Answer {
    ctx.navigation = false;
    if !state.config.local_accounts {
        return Err(Failure::not_found(
            "local accounts are off, so there are no passkeys",
        ));
    }
    if req.method() != http::Method::POST {
        return Err(Failure::method_not_allowed("POST"));
    }
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let browser = web::cookies::cookie(&headers, state.cookies.browser).unwrap_or("");
    let csrf = headers
        .get("x-castellan-csrf")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    guard::check(
        &headers,
        &state.config.public_origin(),
        Some(browser).filter(|b| !b.is_empty()),
        &state.csrf_keys(),
        Proof::Token(csrf),
    )
    .map_err(|f| f.marked(Outcome::Deny, Why::Csrf))?;
    let body: Value = match Limited::new(body, 64 * 1024).collect().await {
        Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    if !body.is_object() {
        return Err(Failure::bad_request(
            "bad_request",
            Why::None,
            "the request body must be a JSON object (at most 64 KiB)",
        ));
    }
    let browser_digest = crypto::digest(browser);
    match path.strip_prefix(PREFIX).unwrap_or("") {
        "sign_in/options" => {
            let challenge = crypto::random_token(32);
            state
                .store
                .put_passkey_challenge(&browser_digest, Ceremony::SignIn, "", &challenge)
                .await
                .map_err(|e| Failure::internal("starting a passkey sign-in", &e))?;
            Ok(web::json(
                StatusCode::OK,
                &json!({ "challenge": challenge, "rpId": rp_id(state), "timeout": CHALLENGE_SECS * 1000 }),
            ))
        }
        "sign_in" => sign_in(state, ctx, &headers, &browser_digest, &body).await,
        "confirm/options" | "confirm" => {
            let session = local_session(state, ctx, &headers).await?;
            if path.ends_with("/options") {
                confirm_options(state, &session, &browser_digest).await
            } else {
                confirm(state, ctx, &session, &headers, &browser_digest, &body).await
            }
        }
        "register/options" | "register" => {
            let session = local_session(state, ctx, &headers).await?;
            account::require_fresh_proof(&session, &headers, state)?;
            if path.ends_with("/options") {
                register_options(state, &session.identity, &browser_digest).await
            } else {
                register(state, ctx, &session.identity, &browser_digest, &body).await
            }
        }
        _ => Err(Failure::not_found("there is no such passkey endpoint")),
    }
}

/// The signed-in local account's session, or a 401.
async fn local_session(
    state: &State,
    ctx: &mut Ctx,
    headers: &http::HeaderMap,
) -> Result<SessionRef, Failure> {
    let session = state
        .session(headers)
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?
        .filter(|s| s.identity.provider == "local")
        .ok_or_else(|| {
            Failure::unauthorized(
                "unauthenticated",
                Why::None,
                "sign in with a castellan account first",
            )
        })?;
    ctx.set_user(&session.identity.email);
    Ok(session)
}

async fn register_options(state: &State, who: &Identity, browser_digest: &str) -> Answer {
    let existing = state
        .store
        .passkeys_of(&who.email)
        .await
        .map_err(|e| Failure::internal("reading passkeys", &e))?;
    let challenge = crypto::random_token(32);
    state
        .store
        .put_passkey_challenge(browser_digest, Ceremony::Register, &who.email, &challenge)
        .await
        .map_err(|e| Failure::internal("starting passkey registration", &e))?;
    let site = state.config.public_url.host_str().unwrap_or("castellan");
    Ok(web::json(
        StatusCode::OK,
        &json!({
            "challenge": challenge,
            "rp": { "id": rp_id(state), "name": format!("castellan {site}") },
            "user": { "id": user_handle(&who.email), "name": who.email, "displayName": who.email },
            "algorithms": webauthn::ALGORITHMS,
            "exclude": existing.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "timeout": CHALLENGE_SECS * 1000,
        }),
    ))
}

fn field(body: &Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(body[name].as_str()?.trim_end_matches('='))
        .ok()
}

async fn register(
    state: &State,
    ctx: &mut Ctx,
    who: &Identity,
    browser_digest: &str,
    body: &Value,
) -> Answer {
    let challenge = state
        .store
        .take_passkey_challenge(browser_digest, Ceremony::Register, CHALLENGE_SECS)
        .await
        .map_err(|e| Failure::internal("reading the registration", &e))?
        .filter(|(email, _)| *email == who.email)
        .map(|(_, c)| c)
        .ok_or_else(|| {
            Failure::bad_request(
                "expired",
                Why::Passkey,
                "this registration has expired or was already used: try again",
            )
        })?;
    let (Some(client_data), Some(attestation)) = (
        field(body, "clientDataJSON"),
        field(body, "attestationObject"),
    ) else {
        return Err(Failure::bad_request(
            "bad_request",
            Why::Passkey,
            "clientDataJSON and attestationObject (base64url) are required",
        ));
    };
    let origin = state.config.public_origin();
    let rp = rp_id(state);
    let expected = webauthn::Expected {
        challenge: &challenge,
        origin: &origin,
        rp_id: &rp,
    };
    let registered =
        webauthn::verify_registration(&expected, &client_data, &attestation).map_err(|why| {
            tracing::warn!(user = %who.email, "passkey registration refused: {why}");
            Failure::bad_request(
                "invalid",
                Why::Passkey,
                format!("the passkey was not accepted: {why}"),
            )
        })?;
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
        return Err(Failure::conflict(
            "exists",
            "this passkey is registered already",
        ));
    }
    let actor = Actor {
        name: who.email.clone(),
        ip: crate::net::ip_text(ctx.client_ip),
    };
    state
        .store
        .add_passkey(&passkey, &actor)
        .await
        .map_err(|e| Failure::internal("saving the passkey", &e))?;
    tracing::info!(user = %who.email, name = %passkey.name, "passkey registered");
    ctx.mark(Outcome::AccountChanged, Why::PasskeyAdded);
    Ok(web::json(
        StatusCode::OK,
        &json!({ "id": passkey.id, "name": passkey.name }),
    ))
}

/// Checks an assertion against the browser's challenge for `ceremony`. `Ok(Err(why))` when the
/// passkey was not accepted.
async fn verify(
    state: &State,
    browser_digest: &str,
    ceremony: Ceremony,
    body: &Value,
) -> Result<Result<Passkey, String>, Failure> {
    let challenge = state
        .store
        .take_passkey_challenge(browser_digest, ceremony, CHALLENGE_SECS)
        .await
        .map_err(|e| Failure::internal("reading the passkey challenge", &e))?
        .map(|(_, c)| c)
        .ok_or_else(|| {
            Failure::bad_request(
                "expired",
                Why::Passkey,
                "this passkey request has expired or was already used: try again",
            )
        })?;
    let id = body["id"].as_str().unwrap_or("");
    let Some(stored) = state
        .store
        .passkey(id)
        .await
        .map_err(|e| Failure::internal("reading the passkey", &e))?
    else {
        return Ok(Err(
            "castellan does not know this passkey (it may have been removed)".into(),
        ));
    };
    let (Some(client_data), Some(auth_data), Some(signature)) = (
        field(body, "clientDataJSON"),
        field(body, "authenticatorData"),
        field(body, "signature"),
    ) else {
        return Ok(Err("the response is incomplete".into()));
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
        Err(why) => return Ok(Err(why)),
    };
    // The account must still exist (a removed account's passkeys are removed with it, but a
    // sign-in racing the removal must not win).
    match state.store.password_hash(&stored.email).await {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(Err("the account no longer exists".into())),
        Err(e) => return Err(Failure::internal("reading the account", &e)),
    }
    let fresh = state
        .store
        .use_passkey(&stored.id, stored.sign_count, count)
        .await
        .map_err(|e| Failure::internal("recording the passkey's use", &e))?;
    if !fresh {
        return Ok(Err(
            "the passkey was used at the same moment elsewhere".into()
        ));
    }
    Ok(Ok(stored))
}

async fn sign_in(
    state: &State,
    ctx: &mut Ctx,
    headers: &http::HeaderMap,
    browser_digest: &str,
    body: &Value,
) -> Answer {
    let ip = crate::net::ip_text(ctx.client_ip);
    if let Some(wait) = state.ip_limiter.blocked(&ip) {
        let secs = wait.as_secs().max(1);
        return Err(Failure::too_many(
            secs,
            format!("too many attempts: try again in {secs} s"),
        ));
    }
    let stored = match verify(state, browser_digest, Ceremony::SignIn, body).await? {
        Ok(p) => p,
        Err(why) => {
            state.ip_limiter.fail(&ip);
            state.metrics.sign_in("passkey", "refused");
            tracing::warn!("passkey sign-in refused: {why}");
            return Err(Failure::unauthorized(
                "invalid",
                Why::Passkey,
                format!("the passkey was not accepted: {why}"),
            ));
        }
    };
    state.metrics.sign_in("passkey", "ok");
    let return_to = super::safe_return(state, body["rd"].as_str());
    let resp = start_session(
        state,
        ctx,
        headers,
        NewSession {
            // A passkey with user verification: a key held in hardware, and the person's PIN or
            // biometric (RFC 8176's hwk, user and mfa).
            identity: Identity::local(&stored.email).signed_in_with(&["hwk", "user", "mfa"]),
            auth_time: None,
            provider_session: None,
        },
        &return_to,
    )
    .await?;
    Ok(follow_yourself(resp))
}

async fn confirm_options(state: &State, session: &SessionRef, browser_digest: &str) -> Answer {
    let mine = state
        .store
        .passkeys_of(&session.identity.email)
        .await
        .map_err(|e| Failure::internal("reading passkeys", &e))?;
    let challenge = crypto::random_token(32);
    state
        .store
        .put_passkey_challenge(
            browser_digest,
            Ceremony::Confirm,
            &session.identity.email,
            &challenge,
        )
        .await
        .map_err(|e| Failure::internal("starting a passkey confirmation", &e))?;
    Ok(web::json(
        StatusCode::OK,
        &json!({
            "challenge": challenge,
            "rpId": rp_id(state),
            "timeout": CHALLENGE_SECS * 1000,
            "allow": mine.iter().map(|p| &p.id).collect::<Vec<_>>(),
        }),
    ))
}

/// A fresh proof with one of the account's own passkeys.
async fn confirm(
    state: &State,
    ctx: &mut Ctx,
    session: &SessionRef,
    headers: &http::HeaderMap,
    browser_digest: &str,
    body: &Value,
) -> Answer {
    let stored = match verify(state, browser_digest, Ceremony::Confirm, body).await? {
        Ok(p) if p.email == session.identity.email => p,
        Ok(_) => {
            return Err(Failure::unauthorized(
                "invalid",
                Why::Passkey,
                "that passkey belongs to another account",
            ));
        }
        Err(why) => {
            return Err(Failure::unauthorized(
                "invalid",
                Why::Passkey,
                format!("the passkey was not accepted: {why}"),
            ));
        }
    };
    account::proved(state, ctx, session, headers).await?;
    tracing::info!(user = %stored.email, passkey = %stored.name, "confirmed with a passkey");
    Ok(web::json(
        StatusCode::OK,
        &json!({ "location": account::PATH }),
    ))
}

/// The script follows the redirect itself: answer JSON with where to go, keeping the cookies.
fn follow_yourself(resp: Response<Body>) -> Response<Body> {
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
