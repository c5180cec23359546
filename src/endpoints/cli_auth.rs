//! Signing the command line in (`castellan login`), on castellan's own host: the browser approves,
//! a one-time code goes to the CLI's loopback listener (RFC 8252 §7.3), and the CLI redeems it
//! with its PKCE verifier at `/.castellan/token` for a refresh token of its own (a session, listed
//! and revocable like any). With `max_age` (an app's `reauth_max_age`), a browser session signed
//! in longer ago than that signs in again first, so the command line's session is as fresh; with
//! `app` (an app with a step-up), a browser session that lacks it goes through it first.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{browser_id, with_cookie};
use crate::crypto;
use crate::runtime::State;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::pages::{self, esc};
use crate::web::{self};

pub const PATH: &str = "/.castellan/cli/authorize";

struct Params {
    port: u16,
    state: String,
    challenge: String,
    max_age: Option<i64>,
    /// The app the command line is for, when it has a step-up (`app=ID`).
    app: Option<String>,
}

fn params(pairs: &[(String, String)]) -> Option<Params> {
    let port: u16 = web::param(pairs, "port")?
        .parse()
        .ok()
        .filter(|p| *p >= 1024)?;
    let token_like = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let state = web::param(pairs, "state")
        .filter(|s| token_like(s, 128))?
        .to_string();
    let challenge = web::param(pairs, "code_challenge")
        .filter(|s| s.len() == 43 && token_like(s, 43))?
        .to_string();
    let max_age = match web::param(pairs, "max_age") {
        None | Some("") => None,
        Some(m) => Some(m.parse::<i64>().ok().filter(|m| *m >= 0)?),
    };
    let app = web::param(pairs, "app").map(str::to_string);
    Some(Params {
        port,
        state,
        challenge,
        max_age,
        app,
    })
}

fn not_a_login_link() -> Failure {
    Failure::bad_request(
        "bad_request",
        Why::None,
        "This is not a castellan login link. Start again with `castellan login URL` on your computer.",
    )
    .titled("Not a castellan login link")
}

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let session = state
        .session(req.headers())
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    if req.method() == Method::GET {
        let pairs = web::query_pairs(req.uri());
        let p = params(&pairs).ok_or_else(not_a_login_link)?;
        let here = req
            .uri()
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or(PATH);
        let step_up = super::step_up::wanted(state, p.app.as_deref());
        let strong_enough = |s: &crate::runtime::sessions::SessionRef| {
            p.max_age
                .is_none_or(|m| crate::clock::now() - s.signed_in_at <= m)
                && step_up.is_none_or(|app| app.step_up.shortfall(&s.identity).is_none())
        };
        let Some(session) = session.filter(strong_enough) else {
            let max_age = p
                .max_age
                .map(|m| format!("&max_age={m}"))
                .unwrap_or_default();
            let app = step_up
                .map(|a| format!("&app={}", pages::q(&a.id)))
                .unwrap_or_default();
            return Ok(web::redirect(&format!(
                "/.castellan/sign_in?rd={}{max_age}{app}",
                pages::q(here)
            )));
        };
        ctx.set_user(&session.identity.email);
        let (browser, set_browser) = browser_id(state, req.headers());
        let body = format!(
            "<h1>Sign in the command line?</h1><p>A <code>castellan login</code> on this computer asks to act as <b>{}</b> \
             on the apps you can open. Approve only if you just started it.</p>\
             <form method=\"post\" action=\"{PATH}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"port\" value=\"{}\"><input type=\"hidden\" name=\"state\" value=\"{}\">\
             <input type=\"hidden\" name=\"code_challenge\" value=\"{}\"><button type=\"submit\">Approve</button></form>",
            esc(&session.identity.email),
            esc(&state.csrf_token(&browser)),
            p.port,
            esc(&p.state),
            esc(&p.challenge)
        );
        return Ok(with_cookie(
            web::html(
                StatusCode::OK,
                pages::page("Sign in the command line", &body),
            ),
            set_browser,
        ));
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
    )
    .map_err(|f| f.titled("Not approved"))?;
    let p = params(&form).ok_or_else(not_a_login_link)?;
    let Some(session) = session else {
        return Ok(web::redirect("/.castellan/sign_in"));
    };
    ctx.set_user(&session.identity.email);
    let code = crypto::random_token(32);
    state
        .store
        .put_cli_code(&crypto::digest(&code), &session.digest, &p.challenge)
        .await
        .map_err(|e| Failure::internal("saving the command-line code", &e))?;
    ctx.mark(Outcome::CliApproved, Why::None);
    // Only ever to this machine's loopback interface, as RFC 8252 §7.3 prescribes.
    Ok(web::redirect(&format!(
        "http://127.0.0.1:{}/callback?code={}&state={}",
        p.port,
        pages::q(&code),
        pages::q(&p.state)
    )))
}
