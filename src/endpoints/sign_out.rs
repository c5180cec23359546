//! Signing out, on castellan's own host: a page with a button (a POST with a CSRF token, so no
//! other site can sign anyone out), then the end of the session and its whole family (the
//! sessions handed to app hosts from it), and, for OpenID Connect sessions whose provider
//! publishes an `end_session_endpoint`, the provider's logout too.

use http::header;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{browser_id, with_cookie};
use crate::crypto;
use crate::runtime::State;
use crate::store::Actor;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::{self, pages};

/// `GET /.castellan/sign_out`: the page with the button.
pub async fn page(state: &State, req: &Request<Incoming>) -> Answer {
    let (browser, set_browser) = browser_id(state, req.headers());
    let email = state
        .session(req.headers())
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?
        .map(|s| s.identity.email.clone());
    Ok(with_cookie(
        web::html(
            StatusCode::OK,
            pages::sign_out(&state.csrf_token(&browser), email.as_deref()),
        ),
        set_browser,
    ))
}

/// `POST /.castellan/sign_out`.
pub async fn post(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    guard::check(
        &parts.headers,
        &state.config.public_origin(),
        web::cookies::cookie(&parts.headers, state.cookies.browser),
        &state.csrf_keys(),
        Proof::Token(web::param(&form, "csrf").unwrap_or("")),
    )
    .map_err(|f| f.titled("Sign-out failed"))?;
    let mut provider_logout = None;
    if let Some(id) = web::cookies::cookie(&parts.headers, state.cookies.session) {
        let digest = crypto::digest(id);
        let actor = Actor {
            name: "sign-out".into(),
            ip: crate::net::ip_text(ctx.client_ip),
        };
        // Read before it is gone: the provider's logout wants the ID token back.
        if let Ok(Some((provider, id_token))) = state.store.session_provider_token(&digest).await
            && let Some(client) = state.provider(&provider)
        {
            provider_logout = client
                .logout_url(
                    &id_token,
                    &format!("{}/.castellan/signed_out", state.config.public_origin()),
                )
                .await;
        }
        state.forget_session(&digest);
        state
            .store
            .delete_session(&digest, &actor)
            .await
            .map_err(|e| Failure::internal("ending the session", &e))?;
        state.apply_own_change().await;
    }
    ctx.mark(Outcome::SignedOut, Why::None);
    // RP-initiated logout: the provider ends its session too, then comes back to signed_out.
    let mut resp = match provider_logout {
        Some(url) => web::redirect(url.as_str()),
        None => web::html(StatusCode::OK, pages::signed_out()),
    };
    resp.headers_mut().append(
        header::SET_COOKIE,
        state.cookies.set(state.cookies.session, "", Some(0)),
    );
    Ok(resp)
}
