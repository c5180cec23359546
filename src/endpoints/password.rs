//! `POST /.castellan/sign_in`: a local account's email and password, and the limits on attempts
//! that it, the second step and the account page's confirmation count against.

use http::Request;
use hyper::body::Incoming;

use super::sign_in::{NewSession, Start, again, start_session};
use super::{safe_return, step_up};
use crate::policy::{Identity, Shortfall};
use crate::runtime::State;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::{self};

/// `POST /.castellan/sign_in`: a local account's email and password.
pub async fn sign_in(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let form = web::read_form(body)
        .await
        .ok_or_else(|| Failure::sign_in_failed("Sign-in failed", "The form could not be read."))?;
    let browser = web::cookies::cookie(&headers, state.cookies.browser);
    let return_to = safe_return(state, web::param(&form, "rd"));
    let step_up = step_up::wanted(state, web::param(&form, "app"));
    let start = Start {
        return_to: &return_to,
        switching: false,
        max_age: None,
        step_up,
        fresh: false,
    };
    if let Err(f) = guard::check(
        &headers,
        &state.config.public_origin(),
        browser,
        &state.csrf_keys(),
        Proof::Token(web::param(&form, "csrf").unwrap_or("")),
    ) {
        return Err(again(
            state,
            &headers,
            &start,
            f.marked(Outcome::SignInFailed, Why::Csrf),
            "This form has expired or did not come from this site. Please sign in again.",
        ));
    }
    let email = web::param(&form, "email")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let password = web::param(&form, "password").unwrap_or("").to_string();
    let ip = crate::net::ip_text(ctx.client_ip);
    ctx.set_user(&email);
    let limits = Limits::for_attempt(state, &headers, &email, &ip);
    if let Some(wait) = limits.blocked(state) {
        state.metrics.sign_in("local", "rate-limited");
        let secs = wait.as_secs().max(1);
        let message = format!("Too many attempts. Try again in {secs} s.");
        return Err(again(
            state,
            &headers,
            &start,
            Failure::too_many(secs, message.clone()),
            &message,
        ));
    }
    let stored = state
        .store
        .password_hash(&email)
        .await
        .map_err(|e| Failure::internal("reading the account", &e))?;
    let span = ctx.span("password.verify", crate::trace::Kind::Internal);
    let ok = tokio::task::spawn_blocking(move || {
        crate::identity::local::verify_password(stored.as_deref(), &password)
    })
    .await
    .unwrap_or(false);
    ctx.span_end(span, (!ok).then_some("wrong email or password"));
    if !ok {
        limits.fail(state);
        state.metrics.sign_in("local", "wrong-password");
        let message = "Wrong email or password.";
        return Err(again(
            state,
            &headers,
            &start,
            Failure::unauthorized("wrong_password", Why::WrongPassword, message),
            message,
        ));
    }
    // A second factor: asked for when the account has TOTP, set up when the configuration
    // requires one and it has none.
    let has_totp = state
        .store
        .totp_secret(&email)
        .await
        .map_err(|e| Failure::internal("reading the account", &e))?
        .is_some();
    // An app that needs a passkey: a password never gives one. An account with a passkey is
    // asked to use it; one without goes on to its account page to add one.
    let mut return_to = return_to.clone();
    if let Some(app) = step_up.filter(|a| a.step_up.passkey) {
        match step_up::enrolment(state, &email, app, &return_to).await? {
            Some(account) => return_to = account,
            None => {
                limits.clear(state);
                let message = format!(
                    "{} needs a sign-in with your passkey: use “Sign in with a passkey”.",
                    app.id
                );
                return Err(again(
                    state,
                    &headers,
                    &start,
                    Failure::unauthorized(
                        "passkey_required",
                        Why::StepUp(Shortfall::Passkey),
                        &message,
                    ),
                    &message,
                ));
            }
        }
    }
    let app_wants_code = step_up.is_some_and(|a| a.step_up.second_factor);
    if has_totp || state.config.local_accounts_mfa_required || app_wants_code {
        let browser = browser.unwrap_or("");
        return super::second_factor::begin(state, ctx, browser, &email, &return_to, !has_totp)
            .await;
    }
    limits.clear(state);
    state.metrics.sign_in("local", "ok");
    start_session(
        state,
        ctx,
        &headers,
        NewSession {
            identity: Identity::local(&email).signed_in_with(&["pwd"]),
            auth_time: None,
            provider_session: None,
        },
        &return_to,
    )
    .await
}

/// What a password or code attempt counts against. From a browser that signed in to the account
/// before (a valid device cookie), failures count against that device only, so nobody elsewhere
/// can lock the owner out; from anywhere else, against the account and the client address
/// (OWASP's "device cookie" pattern).
pub struct Limits {
    account_key: String,
    ip: Option<String>,
}

impl Limits {
    pub fn for_attempt(state: &State, headers: &http::HeaderMap, email: &str, ip: &str) -> Limits {
        match state.trusted_device(headers, email) {
            Some(device) => Limits {
                account_key: format!("device:{device}"),
                ip: None,
            },
            None => Limits {
                account_key: email.to_string(),
                ip: Some(ip.to_string()),
            },
        }
    }

    /// How long until another attempt may be made, if it may not now.
    pub fn blocked(&self, state: &State) -> Option<std::time::Duration> {
        let ip = self
            .ip
            .as_deref()
            .and_then(|ip| state.ip_limiter.blocked(ip));
        ip.max(state.account_limiter.blocked(&self.account_key))
    }

    pub fn fail(&self, state: &State) {
        if let Some(ip) = &self.ip {
            state.ip_limiter.fail(ip);
        }
        state.account_limiter.fail(&self.account_key);
    }

    pub fn clear(&self, state: &State) {
        state.account_limiter.clear(&self.account_key);
    }
}
