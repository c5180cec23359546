//! The second step of a local-account sign-in: a TOTP code (or a one-time recovery code), and
//! setting TOTP up at the first sign-in when `local_accounts_mfa = "required"`. The pending
//! sign-in is bound to the browser that passed the password and lasts five minutes; wrong codes
//! count against the account's attempt limit (the device's, for a browser that signed in before);
//! a code works once. Changing two-step verification later happens on the account page, after a
//! fresh proof ([`super::account`]).

use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;

use super::password::Limits;
use super::sign_in::{NewSession, start_session};
use crate::crypto;
use crate::identity::totp;
use crate::policy::Identity;
use crate::runtime::State;
use crate::store::PendingSecondFactor;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::pages::{self, esc};
use crate::web::{self};

pub const PATH: &str = "/.castellan/sign_in/code";

/// How long a password sign-in waits for its code.
const PENDING_SECS: i64 = 300;

/// After the password: remember the sign-in for this browser and ask for the second factor.
pub async fn begin(
    state: &State,
    ctx: &mut Ctx,
    browser: &str,
    email: &str,
    return_to: &str,
    enrol: bool,
) -> Answer {
    let pending = PendingSecondFactor {
        email: email.to_string(),
        return_to: return_to.to_string(),
        enrol_secret: if enrol {
            totp::new_secret()
        } else {
            String::new()
        },
        created_at: crate::clock::now(),
    };
    state
        .store
        .put_second_factor_pending(&crypto::digest(browser), &pending)
        .await
        .map_err(|e| Failure::internal("saving the sign-in", &e))?;
    ctx.mark(Outcome::SecondFactor, Why::None);
    Ok(super::see_other(PATH))
}

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let Some(browser) =
        web::cookies::cookie(req.headers(), state.cookies.browser).map(str::to_string)
    else {
        return Ok(web::redirect("/.castellan/sign_in"));
    };
    let pending = state
        .store
        .second_factor_pending(&crypto::digest(&browser), PENDING_SECS)
        .await
        .map_err(|e| Failure::internal("reading the sign-in", &e))?;
    let Some(pending) = pending else {
        return Ok(web::redirect("/.castellan/sign_in"));
    };
    ctx.set_user(&pending.email);
    if req.method() != Method::POST {
        return Ok(web::html(
            StatusCode::OK,
            form(state, &browser, &pending, None),
        ));
    }
    let (parts, body) = req.into_parts();
    let posted = web::read_form(body).await.unwrap_or_default();
    let again =
        |f: Failure, message: &str| f.with_page(form(state, &browser, &pending, Some(message)));
    if let Err(f) = guard::check(
        &parts.headers,
        &state.config.public_origin(),
        Some(&browser),
        &state.csrf_keys(),
        Proof::Token(web::param(&posted, "csrf").unwrap_or("")),
    ) {
        return Err(again(
            f,
            "This form has expired or did not come from this site. Try again.",
        ));
    }
    let email = pending.email.clone();
    let limits = Limits::for_attempt(
        state,
        &parts.headers,
        &email,
        &crate::net::ip_text(ctx.client_ip),
    );
    if let Some(wait) = limits.blocked(state) {
        let secs = wait.as_secs().max(1);
        let msg = format!("Too many wrong codes. Try again in {secs} s.");
        return Err(again(Failure::too_many(secs, msg.clone()), &msg));
    }
    let entered = web::param(&posted, "code").unwrap_or("").trim().to_string();
    let now = crate::clock::now();
    let verdict: Result<Option<Vec<String>>, &str> = if !pending.enrol_secret.is_empty() {
        // Setting up: the code proves the app holds the new key.
        match totp::check(&pending.enrol_secret, &entered, now) {
            Some(step) => {
                let codes = totp::recovery_codes();
                let digests: Vec<String> = codes.iter().map(|c| totp::recovery_digest(c)).collect();
                let actor = crate::store::Actor {
                    name: email.clone(),
                    ip: crate::net::ip_text(ctx.client_ip),
                };
                state
                    .store
                    .enable_totp(&email, &pending.enrol_secret, step, &digests, &actor)
                    .await
                    .map_err(|e| Failure::internal("saving two-step verification", &e))?;
                Ok(Some(codes))
            }
            None => Err(
                "That code does not match the key: check the time on your phone and enter the current code.",
            ),
        }
    } else {
        check_code(state, &email, &entered, now).await?
    };
    let recovery = match verdict {
        Ok(r) => r,
        Err(why) => {
            limits.fail(state);
            state.metrics.sign_in("local", "wrong-code");
            return Err(again(
                Failure::unauthorized("wrong_code", Why::WrongCode, why),
                why,
            ));
        }
    };
    limits.clear(state);
    state
        .store
        .clear_second_factor_pending(&crypto::digest(&browser))
        .await
        .map_err(|e| Failure::internal("finishing the sign-in", &e))?;
    state.metrics.sign_in("local", "ok");
    let resp = start_session(
        state,
        ctx,
        &parts.headers,
        NewSession {
            // A password and a one-time code (an authenticator's, or a recovery code).
            identity: Identity::local(&email).signed_in_with(&["pwd", "otp", "mfa"]),
            auth_time: None,
            provider_session: None,
        },
        &pending.return_to,
    )
    .await?;
    let Some(codes) = recovery else {
        return Ok(resp);
    };
    // Set up just now: show the recovery codes, once, with the way on.
    let next = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_string();
    let mut page = web::html(StatusCode::OK, recovery_page(&codes, &next));
    for c in resp.headers().get_all(header::SET_COOKIE) {
        page.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    Ok(page)
}

/// Checks a TOTP code or a recovery code of `email`'s account, using it up. `Ok(Err(why))` for a
/// wrong one.
pub async fn check_code(
    state: &State,
    email: &str,
    entered: &str,
    now: i64,
) -> Result<Result<Option<Vec<String>>, &'static str>, Failure> {
    let secret = state
        .store
        .totp_secret(email)
        .await
        .map_err(|e| Failure::internal("reading the account", &e))?
        .unwrap_or_default();
    if entered.contains('-') {
        let ok = state
            .store
            .use_recovery_code(email, &totp::recovery_digest(entered))
            .await
            .map_err(|e| Failure::internal("checking the recovery code", &e))?;
        return Ok(if ok {
            Ok(None)
        } else {
            Err("That recovery code is not valid (each works once).")
        });
    }
    Ok(match totp::check(&secret, entered, now) {
        Some(step) => {
            let fresh = state
                .store
                .use_totp_step(email, step)
                .await
                .map_err(|e| Failure::internal("checking the code", &e))?;
            if fresh {
                Ok(None)
            } else {
                Err("That code was used already: wait for the next one.")
            }
        }
        None => Err("Wrong code."),
    })
}

/// Ten new recovery codes, shown once.
pub fn recovery_page(codes: &[String], next: &str) -> String {
    let list: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", esc(c)))
        .collect();
    pages::page(
        "Recovery codes",
        &format!(
            "<h1>Your recovery codes</h1><p>Keep these recovery codes somewhere safe. Each one signs you in once \
             if you lose your phone. They are shown only now; any earlier ones no longer work.</p><ul class=\"recovery\">{list}</ul>\
             <a class=\"button\" href=\"{}\">Continue</a>",
            esc(next)
        ),
    )
}

fn form(
    state: &State,
    browser: &str,
    pending: &PendingSecondFactor,
    error: Option<&str>,
) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let intro = if pending.enrol_secret.is_empty() {
        "<h1>Enter your code</h1><p>Open your authenticator app and enter the 6-digit code for castellan, \
         or one of your recovery codes.</p>"
            .to_string()
    } else {
        enrol_intro(state, &pending.email, &pending.enrol_secret)
    };
    let body = format!(
        "{intro}{error}<form method=\"post\" action=\"{PATH}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Code <input name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" autofocus required></label>\
         <button type=\"submit\">Continue</button></form>",
        esc(&state.csrf_token(browser))
    );
    pages::page("Two-step verification", &body)
}

/// The key of a new authenticator, as text and as an `otpauth://` link.
pub fn enrol_intro(state: &State, email: &str, secret: &str) -> String {
    let issuer = state.config.public_url.host_str().unwrap_or("castellan");
    let uri = totp::uri(&format!("castellan {issuer}"), email, secret);
    format!(
        "<h1>Set up two-step verification</h1><p>Add this key to an authenticator app (Google Authenticator, \
         1Password, Bitwarden, …), then enter the 6-digit code it shows.</p>\
         <p>Key: <code data-secret=\"{0}\">{0}</code></p><p><a href=\"{1}\">Open in an authenticator app</a></p>",
        esc(secret),
        esc(&uri)
    )
}
