//! `/.castellan/account`: the signed-in person's own page, on castellan's own host: who castellan
//! thinks they are, their sessions (browsers and command lines) with a revoke button each, "sign
//! out everywhere", and for local accounts their passkeys, two-step verification and password.
//!
//! Every change that could let someone back in later (adding or removing a passkey, setting up,
//! replacing or turning off TOTP, new recovery codes, a new password, removing passkeys while
//! signing out everywhere) needs a fresh proof: the password (and a code, with TOTP on) or one of
//! the account's passkeys, given in this session within the last [`PROOF_SECS`]. Signing in does
//! not count: a session cookie stolen right after a sign-in would carry it. Each change is in the
//! audit trail.

use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;

use super::password::Limits;
use super::second_factor::{check_code, enrol_intro, recovery_page};
use super::sign_in::allow_passkeys;
use super::{browser_id, see_other, with_cookie};
use crate::identity::{local, totp};
use crate::runtime::State;
use crate::runtime::sessions::SessionRef;
use crate::store::{Actor, PendingSecondFactor};
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::pages::{self, esc};
use crate::web::{self, Body};

pub const PATH: &str = "/.castellan/account";

/// How long a fresh proof lets the person change their account.
pub const PROOF_SECS: i64 = 300;

/// How long an enrolment of a new authenticator from the account page may take.
const ENROL_SECS: i64 = 600;

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>, path: &str) -> Answer {
    let session = state
        .session(req.headers())
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    let Some(session) = session else {
        let here = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(PATH);
        return Ok(web::redirect(&format!(
            "/.castellan/sign_in?rd={}",
            pages::q(here)
        )));
    };
    ctx.set_user(&session.identity.email);
    let action = path.strip_prefix(PATH).unwrap_or("");
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return match action {
            "" | "/" => page(state, &session, &req).await,
            "/confirm" => Ok(confirm_page(state, &session, &req, None)),
            "/two_step" => enrol_page(state, &session, &req, None).await,
            _ => Err(Failure::not_found("There is no such account page.")),
        };
    }
    if req.method() != Method::POST {
        return Err(Failure::method_not_allowed("GET, POST"));
    }
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    guard::check(
        &parts.headers,
        &state.config.public_origin(),
        web::cookies::cookie(&parts.headers, state.cookies.browser),
        &state.csrf_keys(),
        Proof::Token(web::param(&form, "csrf").unwrap_or("")),
    )?;
    let f = |n: &str| web::param(&form, n).unwrap_or("").to_string();
    let actor = Actor {
        name: session.identity.email.clone(),
        ip: crate::net::ip_text(ctx.client_ip),
    };
    let local = session.identity.provider == "local";
    match action {
        "/confirm" if local => confirm(state, ctx, &session, &parts.headers, &form).await,
        "/revoke" => {
            state
                .store
                .revoke_sessions(Some(&f("id")), Some(&session.identity.email), &actor)
                .await
                .map_err(|e| Failure::internal("ending a session", &e))?;
            state.forget_session(&session.digest);
            state.apply_own_change().await;
            Ok(see_other(PATH))
        }
        "/sign_out_everywhere" => {
            let remove_passkeys = local && web::param(&form, "remove_passkeys").is_some();
            if remove_passkeys {
                require_fresh_proof(&session, &parts.headers, state)?;
                let n = state
                    .store
                    .remove_passkeys(&session.identity.email, None, &actor)
                    .await
                    .map_err(|e| Failure::internal("removing passkeys", &e))?;
                tracing::info!(user = %session.identity.email, "removed {n} passkey(s) while signing out everywhere");
            }
            state
                .store
                .revoke_sessions(None, Some(&session.identity.email), &actor)
                .await
                .map_err(|e| Failure::internal("ending sessions", &e))?;
            state.forget_session(&session.digest);
            state.apply_own_change().await;
            ctx.mark(Outcome::SignedOutEverywhere, Why::None);
            let mut r = web::html(StatusCode::OK, pages::signed_out());
            r.headers_mut().append(
                header::SET_COOKIE,
                state.cookies.set(state.cookies.session, "", Some(0)),
            );
            Ok(r)
        }
        "/passkey_remove" if local => {
            require_fresh_proof(&session, &parts.headers, state)?;
            let n = state
                .store
                .remove_passkeys(&session.identity.email, Some(&f("id")), &actor)
                .await
                .map_err(|e| Failure::internal("removing the passkey", &e))?;
            if n > 0 {
                ctx.mark(Outcome::AccountChanged, Why::PasskeyRemoved);
            }
            Ok(see_other(PATH))
        }
        "/two_step" if local => {
            require_fresh_proof(&session, &parts.headers, state)?;
            let browser = web::cookies::cookie(&parts.headers, state.cookies.browser).unwrap_or("");
            let pending = PendingSecondFactor {
                email: session.identity.email.clone(),
                return_to: PATH.to_string(),
                enrol_secret: totp::new_secret(),
                created_at: crate::clock::now(),
            };
            state
                .store
                .put_second_factor_pending(&crate::crypto::digest(browser), &pending)
                .await
                .map_err(|e| Failure::internal("starting two-step set-up", &e))?;
            Ok(see_other(&format!("{PATH}/two_step")))
        }
        "/two_step/verify" if local => {
            require_fresh_proof(&session, &parts.headers, state)?;
            let browser = web::cookies::cookie(&parts.headers, state.cookies.browser).unwrap_or("");
            let pending = enrolment(state, &session, browser).await?;
            let Some(step) =
                totp::check(&pending.enrol_secret, f("code").trim(), crate::clock::now())
            else {
                let message = "That code does not match the key: check the time on your phone and enter the current code.";
                let page = enrol_page_html(state, &pending, browser, Some(message));
                return Err(
                    Failure::unauthorized("wrong_code", Why::WrongCode, message).with_page(page)
                );
            };
            let codes = totp::recovery_codes();
            let digests: Vec<String> = codes.iter().map(|c| totp::recovery_digest(c)).collect();
            state
                .store
                .enable_totp(
                    &session.identity.email,
                    &pending.enrol_secret,
                    step,
                    &digests,
                    &actor,
                )
                .await
                .map_err(|e| Failure::internal("saving two-step verification", &e))?;
            let _ = state
                .store
                .clear_second_factor_pending(&crate::crypto::digest(browser))
                .await;
            ctx.mark(Outcome::AccountChanged, Why::TotpEnabled);
            Ok(web::html(StatusCode::OK, recovery_page(&codes, PATH)))
        }
        "/two_step_off" if local => {
            require_fresh_proof(&session, &parts.headers, state)?;
            if state.config.local_accounts_mfa_required {
                return Err(Failure::forbidden(
                    "second_factor_required",
                    Why::None,
                    "This castellan requires two-step verification for every local account (local_accounts_mfa = \"required\"): it cannot be turned off. Set it up again on a new phone instead.",
                ));
            }
            state
                .store
                .disable_totp(&session.identity.email, &actor)
                .await
                .map_err(|e| Failure::internal("turning two-step verification off", &e))?;
            ctx.mark(Outcome::AccountChanged, Why::TotpDisabled);
            Ok(see_other(PATH))
        }
        "/recovery_codes" if local => {
            require_fresh_proof(&session, &parts.headers, state)?;
            let on = state
                .store
                .totp_secret(&session.identity.email)
                .await
                .map_err(|e| Failure::internal("reading the account", &e))?
                .is_some();
            if !on {
                return Err(Failure::bad_request(
                    "no_second_factor",
                    Why::None,
                    "Recovery codes go with two-step verification, which is off: set it up first.",
                ));
            }
            let codes = totp::recovery_codes();
            let digests: Vec<String> = codes.iter().map(|c| totp::recovery_digest(c)).collect();
            state
                .store
                .replace_recovery_codes(&session.identity.email, &digests, &actor)
                .await
                .map_err(|e| Failure::internal("replacing the recovery codes", &e))?;
            ctx.mark(Outcome::AccountChanged, Why::RecoveryCodes);
            Ok(web::html(StatusCode::OK, recovery_page(&codes, PATH)))
        }
        "/password" if local => {
            require_fresh_proof(&session, &parts.headers, state)?;
            let new = f("new_password");
            if new != f("new_password_again") {
                return Err(Failure::bad_request(
                    "password_mismatch",
                    Why::None,
                    "The two new passwords differ. Go back and type the same one twice.",
                ));
            }
            local::check_new_password(&new)
                .map_err(|e| Failure::bad_request("weak_password", Why::None, e))?;
            let hash = tokio::task::spawn_blocking(move || local::hash_password(&new))
                .await
                .map_err(|e| Failure::internal("hashing the password", &e))?;
            state
                .store
                .set_password(&session.identity.email, &hash, &actor)
                .await
                .map_err(|e| Failure::internal("changing the password", &e))?;
            // Anyone else signed in as this person is signed out.
            end_other_sessions(state, &session, &actor).await?;
            ctx.mark(Outcome::AccountChanged, Why::PasswordChanged);
            Ok(see_other(&format!("{PATH}?changed=password")))
        }
        _ => Err(Failure::not_found("There is no such account action.")),
    }
}

/// Refused unless the person proved who they are in this session, in this browser, within
/// [`PROOF_SECS`]: a browser goes to the confirmation page, a script gets 403
/// `confirmation_required`. (The browser counts too: a session cookie stolen after its owner
/// confirmed does not carry the proof.)
pub fn require_fresh_proof(
    session: &SessionRef,
    headers: &http::HeaderMap,
    state: &State,
) -> Result<(), Failure> {
    if fresh_proof(session, headers, state) {
        return Ok(());
    }
    Err(Failure::forbidden(
        "confirmation_required",
        Why::ConfirmationRequired,
        "Confirm it's you first (your password, or a passkey), then try again.",
    )
    .redirecting(format!("{PATH}/confirm")))
}

/// Whether `session` was proved in this browser within [`PROOF_SECS`].
fn fresh_proof(session: &SessionRef, headers: &http::HeaderMap, state: &State) -> bool {
    let browser = web::cookies::cookie(headers, state.cookies.browser).map(crate::crypto::digest);
    crate::clock::now() - session.proved_at <= PROOF_SECS
        && browser.is_some_and(|b| crate::crypto::equal(&b, &session.proved_by))
}

/// Records a fresh proof for `session`, made in the browser that sent `headers`.
pub async fn proved(
    state: &State,
    ctx: &mut Ctx,
    session: &SessionRef,
    headers: &http::HeaderMap,
) -> Result<(), Failure> {
    let actor = Actor {
        name: session.identity.email.clone(),
        ip: crate::net::ip_text(ctx.client_ip),
    };
    let browser = web::cookies::cookie(headers, state.cookies.browser)
        .map(crate::crypto::digest)
        .ok_or_else(|| {
            Failure::csrf("This browser has no castellan cookie: reload the page and try again.")
        })?;
    state
        .store
        .prove_session(&session.digest, &browser, &actor)
        .await
        .map_err(|e| Failure::internal("recording the confirmation", &e))?;
    state.forget_session(&session.digest);
    ctx.mark(Outcome::Confirmed, Why::None);
    Ok(())
}

/// `POST /.castellan/account/confirm`: the password, and a code when two-step verification is on.
async fn confirm(
    state: &State,
    ctx: &mut Ctx,
    session: &SessionRef,
    headers: &http::HeaderMap,
    form: &[(String, String)],
) -> Answer {
    let email = session.identity.email.clone();
    let then: Vec<(String, String)> =
        url::form_urlencoded::parse(web::param(form, "then").unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let carry = super::step_up::carried(state, &then);
    let again = |f: Failure, message: &str| {
        let (browser, _) = browser_id(state, headers);
        f.with_page(confirm_html(
            state,
            session,
            &browser,
            &carry,
            Some(message),
        ))
        .with_csp(super::sign_in::passkey_csp(state))
    };
    let limits = Limits::for_attempt(state, headers, &email, &crate::net::ip_text(ctx.client_ip));
    if let Some(wait) = limits.blocked(state) {
        let secs = wait.as_secs().max(1);
        let message = format!("Too many attempts. Try again in {secs} s.");
        return Err(again(Failure::too_many(secs, message.clone()), &message));
    }
    let password = web::param(form, "password").unwrap_or("").to_string();
    let stored = state
        .store
        .password_hash(&email)
        .await
        .map_err(|e| Failure::internal("reading the account", &e))?;
    let ok =
        tokio::task::spawn_blocking(move || local::verify_password(stored.as_deref(), &password))
            .await
            .unwrap_or(false);
    if !ok {
        limits.fail(state);
        let message = "Wrong password.";
        return Err(again(
            Failure::unauthorized("wrong_password", Why::WrongPassword, message),
            message,
        ));
    }
    let has_totp = state
        .store
        .totp_secret(&email)
        .await
        .map_err(|e| Failure::internal("reading the account", &e))?
        .is_some();
    if has_totp {
        let code = web::param(form, "code").unwrap_or("").trim().to_string();
        if let Err(why) = check_code(state, &email, &code, crate::clock::now()).await? {
            limits.fail(state);
            return Err(again(
                Failure::unauthorized("wrong_code", Why::WrongCode, why),
                why,
            ));
        }
    }
    limits.clear(state);
    proved(state, ctx, session, headers).await?;
    let carry = if carry.is_empty() {
        carry
    } else {
        format!("&{carry}")
    };
    Ok(see_other(&format!("{PATH}?confirmed=1{carry}")))
}

fn confirm_page(
    state: &State,
    session: &SessionRef,
    req: &Request<Incoming>,
    error: Option<&str>,
) -> http::Response<Body> {
    let (browser, set_browser) = browser_id(state, req.headers());
    let carry = super::step_up::carried(state, &web::query_pairs(req.uri()));
    let resp = web::html(
        StatusCode::OK,
        confirm_html(state, session, &browser, &carry, error),
    );
    with_cookie(allow_passkeys(state, resp), set_browser)
}

/// `carry`: the account page's step-up explanation to come back to (see [`super::step_up`]).
fn confirm_html(
    state: &State,
    session: &SessionRef,
    browser: &str,
    carry: &str,
    error: Option<&str>,
) -> String {
    let csrf = state.csrf_token(browser);
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    if session.identity.provider != "local" {
        return pages::page(
            "Confirm it's you",
            "<h1>Nothing to confirm</h1><p>Your account is managed by your sign-in provider.</p>",
        );
    }
    pages::page(
        "Confirm it's you",
        &format!(
            "<h1>Confirm it's you</h1><p>Changes to how you sign in need a fresh proof that you are <b>{}</b>: \
             they then work for five minutes.</p>{error}\
             <form method=\"post\" action=\"{PATH}/confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"then\" value=\"{}\">\
             <label for=\"password\">Password</label><input id=\"password\" type=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <label for=\"code\">Code from your authenticator app (if two-step verification is on)</label>\
             <input id=\"code\" type=\"text\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\">\
             <button type=\"submit\">Confirm</button></form>\
             <button type=\"button\" class=\"secondary\" data-passkey=\"confirm\" data-csrf=\"{csrf}\" hidden>Confirm with a passkey</button>\
             <p class=\"error\" role=\"alert\" data-passkey-status hidden></p>{}\
             <a class=\"button secondary\" href=\"{PATH}\">Back</a>",
            esc(&session.identity.email),
            esc(carry),
            pages::passkey_script_tag()
        ),
    )
}

/// The enrolment this browser started from the account page.
async fn enrolment(
    state: &State,
    session: &SessionRef,
    browser: &str,
) -> Result<PendingSecondFactor, Failure> {
    state
        .store
        .second_factor_pending(&crate::crypto::digest(browser), ENROL_SECS)
        .await
        .map_err(|e| Failure::internal("reading the set-up", &e))?
        .filter(|p| {
            p.email == session.identity.email && !p.enrol_secret.is_empty() && p.return_to == PATH
        })
        .ok_or_else(|| {
            Failure::bad_request(
                "expired",
                Why::None,
                "This set-up has expired: start it again from your account page.",
            )
        })
}

async fn enrol_page(
    state: &State,
    session: &SessionRef,
    req: &Request<Incoming>,
    error: Option<&str>,
) -> Answer {
    require_fresh_proof(session, req.headers(), state)?;
    let browser = web::cookies::cookie(req.headers(), state.cookies.browser).unwrap_or("");
    let pending = enrolment(state, session, browser).await?;
    Ok(web::html(
        StatusCode::OK,
        enrol_page_html(state, &pending, browser, error),
    ))
}

fn enrol_page_html(
    state: &State,
    pending: &PendingSecondFactor,
    browser: &str,
    error: Option<&str>,
) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    pages::page(
        "Two-step verification",
        &format!(
            "{}{error}<form method=\"post\" action=\"{PATH}/two_step/verify\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Code <input name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" autofocus required></label>\
             <button type=\"submit\">Turn it on</button></form>",
            enrol_intro(state, &pending.email, &pending.enrol_secret),
            esc(&state.csrf_token(browser))
        ),
    )
}

/// Ends the person's other sessions (after a new password).
async fn end_other_sessions(
    state: &State,
    session: &SessionRef,
    actor: &Actor,
) -> Result<(), Failure> {
    let sessions = state
        .store
        .list_sessions(Some(&session.identity.email))
        .await
        .map_err(|e| Failure::internal("listing sessions", &e))?;
    for s in sessions
        .iter()
        .filter(|s| !session.digest.starts_with(&s.id))
    {
        state
            .store
            .revoke_sessions(Some(&s.id), Some(&session.identity.email), actor)
            .await
            .map_err(|e| Failure::internal("ending sessions", &e))?;
    }
    state.apply_own_change().await;
    Ok(())
}

/// `GET /.castellan/account`.
async fn page(state: &State, session: &SessionRef, req: &Request<Incoming>) -> Answer {
    let who = &session.identity;
    let sessions = state
        .store
        .list_sessions(Some(&who.email))
        .await
        .map_err(|e| Failure::internal("listing sessions", &e))?;
    let (browser, set_browser) = browser_id(state, req.headers());
    let csrf = esc(&state.csrf_token(&browser));
    let params = web::query_pairs(req.uri());
    let proof_left = PROOF_SECS - (crate::clock::now() - session.proved_at);
    let proved_here = fresh_proof(session, req.headers(), state);
    let notice = match (web::param(&params, "changed"), proved_here) {
        (Some("password"), _) => "<p class=\"notice\" role=\"status\">Your password was changed, and your other sessions were ended.</p>".to_string(),
        (_, true) => format!(
            "<p class=\"notice\" role=\"status\">Confirmed: you can change how you sign in for {} more minute(s).</p>",
            (proof_left + 59) / 60
        ),
        _ => String::new(),
    };
    let rows: String = sessions
        .iter()
        .map(|s| {
            let this = session.digest.starts_with(&s.id);
            format!(
                "<tr><td>{}{}</td><td>{}<br><span class=\"muted\">{}</span></td><td>{}</td><td>\
                 <form method=\"post\" action=\"{PATH}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Revoke</button></form></td></tr>",
                esc(&s.provider),
                if this { " <b>(this browser)</b>" } else { "" },
                esc(&s.client_ip),
                esc(&s.user_agent.chars().take(60).collect::<String>()),
                esc(&pages::when(s.last_seen)),
                esc(&s.id)
            )
        })
        .collect();
    let groups = if who.groups.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"muted\">Groups from your provider: {}</p>",
            esc(&who.groups.join(", "))
        )
    };
    let local = who.provider == "local";
    let own = if local {
        let carry = super::step_up::carried(state, &params);
        local_sections(state, &who.email, &csrf, &carry).await?
    } else {
        String::new()
    };
    let remove_passkeys = if local {
        "<label><input type=\"checkbox\" name=\"remove_passkeys\"> Also remove all my passkeys (needs a fresh confirmation)</label>"
    } else {
        ""
    };
    let step_up = super::step_up::account_notice(state, &params);
    let body = format!(
        "<h1>Your account</h1><p>Signed in as <b>{}</b> ({}).</p>{step_up}{notice}{groups}{own}\
         <h2 style=\"font-size:1.05rem\">Your sessions</h2>\
         <table style=\"width:100%;border-collapse:collapse\"><tbody>{rows}</tbody></table>\
         <form method=\"post\" action=\"{PATH}/sign_out_everywhere\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         {remove_passkeys}<button type=\"submit\">Sign out everywhere</button></form>",
        esc(&who.email),
        esc(&who.provider),
    );
    let r = web::html(StatusCode::OK, pages::page("Your account", &body));
    Ok(with_cookie(allow_passkeys(state, r), set_browser))
}

/// Two-step verification, passkeys and the password, for a local account.
/// `carry`: the step-up explanation the confirmation link keeps (see [`super::step_up`]).
async fn local_sections(
    state: &State,
    email: &str,
    csrf: &str,
    carry: &str,
) -> Result<String, Failure> {
    let totp_on = state
        .store
        .totp_secret(email)
        .await
        .map_err(|e| Failure::internal("reading the account", &e))?
        .is_some();
    let button = |action: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"{PATH}/{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" class=\"secondary\">{label}</button></form>"
        )
    };
    let two_step = if totp_on {
        format!(
            "<p>On: signing in asks for a code from your authenticator app.</p>{}{}{}",
            button(
                "two_step",
                "Set up again on a new phone (new key, new recovery codes)"
            ),
            button("recovery_codes", "New recovery codes"),
            if state.config.local_accounts_mfa_required {
                String::new()
            } else {
                button("two_step_off", "Turn two-step verification off")
            }
        )
    } else {
        format!(
            "<p>Off: signing in asks for your password only.</p>{}",
            button("two_step", "Set up two-step verification")
        )
    };
    let keys = state
        .store
        .passkeys_of(email)
        .await
        .map_err(|e| Failure::internal("listing passkeys", &e))?;
    let rows: String = keys
        .iter()
        .map(|p| {
            format!(
                "<li><b>{}</b> <span class=\"muted\">added {}{}</span>\
                 <form method=\"post\" action=\"{PATH}/passkey_remove\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Remove</button></form></li>",
                esc(&p.name),
                esc(&pages::when(p.created_at)),
                if p.last_used_at > 0 {
                    format!(", last used {}", esc(&pages::when(p.last_used_at)))
                } else {
                    ", never used".to_string()
                },
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
        "<p class=\"muted\">Changes below ask you to <a href=\"{PATH}/confirm{}\">confirm it's you</a> first.</p>\
         <h2 style=\"font-size:1.05rem\">Two-step verification</h2>{two_step}\
         <h2 style=\"font-size:1.05rem\">Passkeys</h2>{list}\
         <label for=\"passkey_name\">Name for a new passkey</label>\
         <input id=\"passkey_name\" type=\"text\" name=\"passkey_name\" maxlength=\"60\" placeholder=\"e.g. work laptop\">\
         <button type=\"button\" data-passkey=\"register\" data-csrf=\"{csrf}\" hidden>Add a passkey</button>\
         <p class=\"error\" role=\"alert\" data-passkey-status hidden></p>{}\
         <h2 style=\"font-size:1.05rem\">Password</h2>\
         <form method=\"post\" action=\"{PATH}/password\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"new_password\">New password (12 characters or more)</label>\
         <input id=\"new_password\" type=\"password\" name=\"new_password\" autocomplete=\"new-password\" minlength=\"12\" required>\
         <label for=\"new_password_again\">The same again</label>\
         <input id=\"new_password_again\" type=\"password\" name=\"new_password_again\" autocomplete=\"new-password\" minlength=\"12\" required>\
         <button type=\"submit\" class=\"secondary\">Change the password</button></form>",
        if carry.is_empty() {
            String::new()
        } else {
            esc(&format!("?{carry}"))
        },
        pages::passkey_script_tag()
    ))
}
