//! `/.castellan/account`: the signed-in person's own page: who castellan thinks they are, their
//! sessions (browsers and command lines) with a revoke button each, and "sign out everywhere".

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::crypto;
use crate::gate::{Outcome, internal_error};
use crate::runtime::State;
use crate::store::Actor;
use crate::web::pages::{self, esc};
use crate::web::{self, Body};

pub const PATH: &str = "/.castellan/account";

pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (who, digest) = match state.authenticate(req.headers()).await {
        Ok(Some(w)) => w,
        Ok(None) => return web::redirect(&format!("/.castellan/sign_in?rd={}", pages::q(PATH))),
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    outcome.user = who.email.clone();
    let actor = Actor {
        name: who.email.clone(),
        ip: web::client_ip(peer, req.headers(), &state.config.trusted_proxies).to_string(),
    };
    if req.method() == Method::POST {
        let (parts, body) = req.into_parts();
        let form = web::read_form(body).await.unwrap_or_default();
        let csrf_ok = web::cookie(&parts.headers, state.cookies.browser)
            .is_some_and(|b| state.csrf_valid(b, web::param(&form, "csrf").unwrap_or("")));
        let same_origin = parts
            .headers
            .get(header::ORIGIN)
            .is_none_or(|o| o.as_bytes() == state.config.public_origin().as_bytes());
        if !csrf_ok || !same_origin {
            outcome.decision = "deny";
            outcome.reason = "csrf";
            return web::html(
                StatusCode::FORBIDDEN,
                pages::error(
                    "Not done",
                    "This form has expired or did not come from this site.",
                    &crypto::reference_id(),
                ),
            );
        }
        if path == format!("{PATH}/two_step") && who.provider == "local" {
            // Set up (or replace) TOTP: the second-factor page walks through it.
            let browser = web::cookie(&parts.headers, state.cookies.browser).unwrap_or("");
            let pending = crate::store::PendingSecondFactor {
                email: who.email.clone(),
                return_to: PATH.to_string(),
                enrol_secret: crate::identity::totp::new_secret(),
                created_at: crate::clock::now(),
            };
            if let Err(e) = state
                .store
                .put_second_factor_pending(&crypto::digest(browser), &pending)
                .await
            {
                return internal_error(outcome, "starting two-step set-up", &e);
            }
            let mut r = web::redirect(crate::endpoints::second_factor::PATH);
            *r.status_mut() = StatusCode::SEE_OTHER;
            return r;
        }
        if path == format!("{PATH}/passkey_remove") {
            let id = web::param(&form, "id").unwrap_or("");
            match state.store.remove_passkey(&who.email, id).await {
                Ok(removed) => {
                    if removed {
                        tracing::info!(user = %who.email, "passkey removed");
                        outcome.decision = "passkey-removed";
                    }
                }
                Err(e) => return internal_error(outcome, "removing the passkey", &e),
            }
            let mut r = web::redirect(PATH);
            *r.status_mut() = StatusCode::SEE_OTHER;
            return r;
        }
        let everywhere = path == format!("{PATH}/sign_out_everywhere");
        let result = if everywhere {
            state
                .store
                .revoke_sessions(None, Some(&who.email), &actor)
                .await
        } else {
            let id = web::param(&form, "id").unwrap_or("");
            state
                .store
                .revoke_sessions(Some(id), Some(&who.email), &actor)
                .await
        };
        if let Err(e) = result {
            return internal_error(outcome, "ending sessions", &e);
        }
        // Apply it in this process now; other processes follow within a poll interval.
        state.forget_session(&digest);
        if state.reload().await.unwrap_or(false) {
            state.recheck_live(true).await;
        }
        if everywhere {
            outcome.decision = "signed-out-everywhere";
            let mut r = web::html(StatusCode::OK, pages::signed_out());
            r.headers_mut().append(
                header::SET_COOKIE,
                state.cookies.set(state.cookies.session, "", Some(0)),
            );
            return r;
        }
        let mut r = web::redirect(PATH);
        *r.status_mut() = StatusCode::SEE_OTHER;
        return r;
    }
    let sessions = match state.store.list_sessions(Some(&who.email)).await {
        Ok(s) => s,
        Err(e) => return internal_error(outcome, "listing sessions", &e),
    };
    let (browser, set_browser) = crate::endpoints::browser_id(state, req.headers());
    let csrf = state.csrf_token(&browser);
    let when = pages::when;
    let rows: String = sessions
        .iter()
        .map(|s| {
            let this = digest.starts_with(&s.id);
            format!(
                "<tr><td>{}{}</td><td>{}<br><span class=\"muted\">{}</span></td><td>{}</td><td>\
                 <form method=\"post\" action=\"{PATH}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Revoke</button></form></td></tr>",
                esc(&s.provider),
                if this { " <b>(this browser)</b>" } else { "" },
                esc(&s.client_ip),
                esc(&s.user_agent.chars().take(60).collect::<String>()),
                esc(&when(s.last_seen)),
                esc(&csrf),
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
    let passkeys = if who.provider != "local" {
        String::new()
    } else {
        match crate::endpoints::passkey::account_section(state, &who.email, &csrf).await {
            Ok(html) => html,
            Err(e) => return internal_error(outcome, "listing passkeys", &e),
        }
    };
    let two_step = if who.provider != "local" {
        String::new()
    } else {
        let on = matches!(state.store.totp_secret(&who.email).await, Ok(Some(_)));
        format!(
            "<h2 style=\"font-size:1.05rem\">Two-step verification</h2><p>{}</p>\
             <form method=\"post\" action=\"{PATH}/two_step\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"secondary\">{}</button></form>",
            if on {
                "On: signing in asks for a code from your authenticator app."
            } else {
                "Off: signing in asks for your password only."
            },
            esc(&csrf),
            if on {
                "Set up again (new key, new recovery codes)"
            } else {
                "Set up two-step verification"
            }
        )
    };
    let body = format!(
        "<h1>Your account</h1><p>Signed in as <b>{}</b> ({}).</p>{groups}{two_step}{passkeys}\
         <h2 style=\"font-size:1.05rem\">Your sessions</h2>\
         <table style=\"width:100%;border-collapse:collapse\"><tbody>{rows}</tbody></table>\
         <form method=\"post\" action=\"{PATH}/sign_out_everywhere\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Sign out everywhere</button></form>",
        esc(&who.email),
        esc(&who.provider),
        esc(&csrf)
    );
    let mut r = web::html(StatusCode::OK, pages::page("Your account", &body));
    if who.provider == "local" {
        crate::endpoints::passkey::allow_script(state, &mut r);
    }
    if let Some(c) = set_browser {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}
