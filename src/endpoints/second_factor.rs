//! The second step of a local-account sign-in: a TOTP code (or a one-time recovery code), and
//! setting TOTP up (at the first sign-in when `local_accounts_mfa = "required"`, or from the
//! account page). The pending sign-in is bound to the browser that passed the password and lasts
//! five minutes; wrong codes count against the account's attempt limit; a code works once.

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::crypto;
use crate::gate::{Outcome, internal_error};
use crate::policy::Identity;
use crate::runtime::State;
use crate::store::PendingSecondFactor;
use crate::web::pages::{self, esc};
use crate::web::{self, Body};

pub const PATH: &str = "/.castellan/sign_in/code";

/// How long a password sign-in waits for its code.
const PENDING_SECS: i64 = 300;

/// After the password: remember the sign-in for this browser and ask for the second factor.
pub async fn begin(
    state: &State,
    browser: &str,
    email: &str,
    return_to: &str,
    enrol: bool,
    outcome: &mut Outcome,
) -> Response<Body> {
    let pending = PendingSecondFactor {
        email: email.to_string(),
        return_to: return_to.to_string(),
        enrol_secret: if enrol {
            crate::identity::totp::new_secret()
        } else {
            String::new()
        },
        created_at: crate::clock::now(),
    };
    if let Err(e) = state
        .store
        .put_second_factor_pending(&crypto::digest(browser), &pending)
        .await
    {
        return internal_error(outcome, "saving the sign-in", &e);
    }
    outcome.decision = "second-factor";
    let mut r = web::redirect(PATH);
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let Some(browser) = web::cookie(req.headers(), state.cookies.browser).map(str::to_string)
    else {
        return web::redirect("/.castellan/sign_in");
    };
    let pending = match state
        .store
        .second_factor_pending(&crypto::digest(&browser), PENDING_SECS)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => return web::redirect("/.castellan/sign_in"),
        Err(e) => return internal_error(outcome, "reading the sign-in", &e),
    };
    outcome.user = pending.email.clone();
    if req.method() != Method::POST {
        return form(state, &browser, &pending, StatusCode::OK, None);
    }
    let (parts, body) = req.into_parts();
    let posted = web::read_form(body).await.unwrap_or_default();
    let origin_ok = parts
        .headers
        .get(header::ORIGIN)
        .is_none_or(|o| o.as_bytes() == state.config.public_origin().as_bytes());
    if !state.csrf_valid(&browser, web::param(&posted, "csrf").unwrap_or("")) || !origin_ok {
        return form(
            state,
            &browser,
            &pending,
            StatusCode::FORBIDDEN,
            Some("This form has expired or did not come from this site. Try again."),
        );
    }
    let email = pending.email.clone();
    if let Some(wait) = state.account_limiter.blocked(&email) {
        outcome.decision = "sign-in-failed";
        outcome.reason = "rate-limited";
        let msg = format!(
            "Too many wrong codes. Try again in {} s.",
            wait.as_secs().max(1)
        );
        return form(
            state,
            &browser,
            &pending,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&msg),
        );
    }
    let entered = web::param(&posted, "code").unwrap_or("").trim().to_string();
    let now = crate::clock::now();
    let verdict: Result<Option<Vec<String>>, &str> = if !pending.enrol_secret.is_empty() {
        // Setting up: the code proves the app holds the new key.
        match crate::identity::totp::check(&pending.enrol_secret, &entered, now) {
            Some(step) => {
                let codes = crate::identity::totp::recovery_codes();
                let digests: Vec<String> = codes
                    .iter()
                    .map(|c| crate::identity::totp::recovery_digest(c))
                    .collect();
                match state
                    .store
                    .enable_totp(&email, &pending.enrol_secret, step, &digests)
                    .await
                {
                    Ok(()) => Ok(Some(codes)),
                    Err(e) => return internal_error(outcome, "saving two-step verification", &e),
                }
            }
            None => Err(
                "That code does not match the key: check the time on your phone and enter the current code.",
            ),
        }
    } else {
        let secret = match state.store.totp_secret(&email).await {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => return internal_error(outcome, "reading the account", &e),
        };
        if entered.contains('-') {
            match state
                .store
                .use_recovery_code(&email, &crate::identity::totp::recovery_digest(&entered))
                .await
            {
                Ok(true) => Ok(None),
                Ok(false) => Err("That recovery code is not valid (each works once)."),
                Err(e) => return internal_error(outcome, "checking the recovery code", &e),
            }
        } else {
            match crate::identity::totp::check(&secret, &entered, now) {
                Some(step) => match state.store.use_totp_step(&email, step).await {
                    Ok(true) => Ok(None),
                    Ok(false) => Err("That code was used already: wait for the next one."),
                    Err(e) => return internal_error(outcome, "checking the code", &e),
                },
                None => Err("Wrong code."),
            }
        }
    };
    let recovery = match verdict {
        Ok(r) => r,
        Err(why) => {
            state.account_limiter.fail(&email);
            state.metrics.sign_in("local", "wrong-code");
            outcome.decision = "sign-in-failed";
            outcome.reason = "wrong-code";
            return form(
                state,
                &browser,
                &pending,
                StatusCode::UNAUTHORIZED,
                Some(why),
            );
        }
    };
    state.account_limiter.clear(&email);
    if let Err(e) = state
        .store
        .clear_second_factor_pending(&crypto::digest(&browser))
        .await
    {
        return internal_error(outcome, "finishing the sign-in", &e);
    }
    state.metrics.sign_in("local", "ok");
    let who = Identity {
        groups: Vec::new(),
        subject: email.clone(),
        email,
        provider: "local".into(),
        hd: None,
    };
    let resp = crate::endpoints::start_session(
        state,
        peer,
        &parts.headers,
        who,
        None,
        None,
        &pending.return_to,
        outcome,
    )
    .await;
    let Some(codes) = recovery else {
        return resp;
    };
    // Set up just now: show the recovery codes, once, with the way on.
    let next = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_string();
    let list: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", esc(c)))
        .collect();
    let mut page = web::html(
        StatusCode::OK,
        pages::page(
            "Recovery codes",
            &format!(
                "<h1>Two-step verification is on</h1><p>Keep these recovery codes somewhere safe. Each one signs you in once \
                 if you lose your phone. They are shown only now.</p><ul class=\"recovery\">{list}</ul>\
                 <a class=\"button\" href=\"{}\">Continue</a>",
                esc(&next)
            ),
        ),
    );
    for c in resp.headers().get_all(header::SET_COOKIE) {
        page.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    page
}

fn form(
    state: &State,
    browser: &str,
    pending: &PendingSecondFactor,
    status: StatusCode,
    error: Option<&str>,
) -> Response<Body> {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let intro = if pending.enrol_secret.is_empty() {
        "<h1>Enter your code</h1><p>Open your authenticator app and enter the 6-digit code for castellan, \
         or one of your recovery codes.</p>"
            .to_string()
    } else {
        let issuer = state.config.public_url.host_str().unwrap_or("castellan");
        let uri = crate::identity::totp::uri(
            &format!("castellan {issuer}"),
            &pending.email,
            &pending.enrol_secret,
        );
        format!(
            "<h1>Set up two-step verification</h1><p>Add this key to an authenticator app (Google Authenticator, \
             1Password, Bitwarden, …), then enter the 6-digit code it shows.</p>\
             <p>Key: <code data-secret=\"{0}\">{0}</code></p><p><a href=\"{1}\">Open in an authenticator app</a></p>",
            esc(&pending.enrol_secret),
            esc(&uri)
        )
    };
    let body = format!(
        "{intro}{error}<form method=\"post\" action=\"{PATH}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Code <input name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" autofocus required></label>\
         <button type=\"submit\">Continue</button></form>",
        esc(&state.csrf_token(browser))
    );
    web::html(status, pages::page("Two-step verification", &body))
}
