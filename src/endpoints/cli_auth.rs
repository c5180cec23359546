//! Signing the command line in (`castellan login`): the browser approves, a one-time code goes to
//! the CLI's loopback listener (RFC 8252 §7.3), and the CLI redeems it with its PKCE verifier at
//! `/.castellan/token` for a refresh token of its own (a session, listed and revocable like any).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::crypto;
use crate::gate::{Outcome, internal_error};
use crate::runtime::State;
use crate::web::pages::{self, esc};
use crate::web::{self, Body};

pub const PATH: &str = "/.castellan/cli/authorize";

struct Params {
    port: u16,
    state: String,
    challenge: String,
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
    Some(Params {
        port,
        state,
        challenge,
    })
}

fn bad() -> Response<Body> {
    web::html(
        StatusCode::BAD_REQUEST,
        pages::error(
            "Not a castellan login link",
            "Start again with `castellan login URL` on your computer.",
            &crypto::reference_id(),
        ),
    )
}

pub async fn handle(
    state: &State,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let who = match state.authenticate(req.headers()).await {
        Ok(w) => w,
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    if req.method() == Method::GET {
        let pairs = web::query_pairs(req.uri());
        let Some(p) = params(&pairs) else {
            return bad();
        };
        let Some((identity, _)) = who else {
            let here = req
                .uri()
                .path_and_query()
                .map(|x| x.as_str())
                .unwrap_or(PATH);
            return web::redirect(&format!("/.castellan/sign_in?rd={}", pages::q(here)));
        };
        outcome.user = identity.email.clone();
        let (browser, set_browser) = crate::endpoints::browser_id(state, req.headers());
        let body = format!(
            "<h1>Sign in the command line?</h1><p>A <code>castellan login</code> on this computer asks to act as <b>{}</b> \
             on the apps you can open. Approve only if you just started it.</p>\
             <form method=\"post\" action=\"{PATH}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"port\" value=\"{}\"><input type=\"hidden\" name=\"state\" value=\"{}\">\
             <input type=\"hidden\" name=\"code_challenge\" value=\"{}\"><button type=\"submit\">Approve</button></form>",
            esc(&identity.email),
            esc(&state.csrf_token(&browser)),
            p.port,
            esc(&p.state),
            esc(&p.challenge)
        );
        let mut r = web::html(
            StatusCode::OK,
            pages::page("Sign in the command line", &body),
        );
        if let Some(c) = set_browser {
            r.headers_mut().append(http::header::SET_COOKIE, c);
        }
        return r;
    }
    if req.method() != Method::POST {
        return web::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    let csrf_ok = web::cookie(&parts.headers, state.cookies.browser)
        .is_some_and(|b| state.csrf_valid(b, web::param(&form, "csrf").unwrap_or("")));
    let same_origin = parts
        .headers
        .get(http::header::ORIGIN)
        .is_none_or(|o| o.as_bytes() == state.config.public_origin().as_bytes());
    if !csrf_ok || !same_origin {
        return web::html(
            StatusCode::FORBIDDEN,
            pages::error(
                "Not approved",
                "This form has expired or did not come from this site.",
                &crypto::reference_id(),
            ),
        );
    }
    let Some(p) = params(&form) else { return bad() };
    let Some(session_digest) =
        web::cookie(&parts.headers, state.cookies.session).map(crypto::digest)
    else {
        return web::redirect("/.castellan/sign_in");
    };
    if who.is_none() {
        return web::redirect("/.castellan/sign_in");
    }
    let code = crypto::random_token(32);
    if let Err(e) = state
        .store
        .put_cli_code(&crypto::digest(&code), &session_digest, &p.challenge)
        .await
    {
        return internal_error(outcome, "saving the command-line code", &e);
    }
    outcome.decision = "cli-approved";
    // Only ever to this machine's loopback interface, as RFC 8252 §7.3 prescribes.
    web::redirect(&format!(
        "http://127.0.0.1:{}/callback?code={}&state={}",
        p.port,
        pages::q(&code),
        pages::q(&p.state)
    ))
}
