//! `GET /.castellan/handoff` on an app's host: the end of a sign-in that began there. Redeems the
//! one-time code castellan's own host minted (once, within a minute, for this host, and only in
//! the browser whose hand-off cookie it was bound to), gives this host a session cookie of its
//! own linked to the signed-in session, and goes on to `rd` on this host.

use http::Request;
use http::header;
use hyper::body::Incoming;

use crate::crypto;
use crate::runtime::State;
use crate::store::Redemption;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::{self, pages};

/// How long a hand-off code may wait to be redeemed.
const HANDOFF_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn redeem(state: &State, ctx: &mut Ctx, req: &Request<Incoming>, host: &str) -> Answer {
    let params = web::query_pairs(req.uri());
    let origin =
        crate::gate::request_origin(state.config.public_url.scheme(), req.uri(), req.headers());
    let here = url::Url::parse(&origin).map_err(|_| {
        Failure::bad_request("bad_host", Why::None, "the request's Host is not valid")
    })?;
    let rd = web::param(&params, "rd")
        .and_then(|r| crate::web::return_to::validate(r, &here))
        .unwrap_or_else(|| "/".into());
    let code = web::param(&params, "code").unwrap_or("");
    let bound_to = web::cookies::cookie(req.headers(), state.cookies.handoff)
        .map(crypto::digest)
        .unwrap_or_default();
    let id = crypto::random_token(32);
    let ip = crate::net::ip_text(ctx.client_ip);
    let agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect::<String>();
    // A code presented without this browser's hand-off cookie is spent all the same.
    let made = if code.is_empty() || !state.config.serves_host(host) {
        None
    } else {
        state
            .store
            .redeem_handoff_code(
                &Redemption {
                    code_digest: &crypto::digest(code),
                    host,
                    browser_digest: &bound_to,
                    max_age: HANDOFF_MAX_AGE,
                },
                &crypto::digest(&id),
                &ip,
                &agent,
            )
            .await
            .map_err(|e| Failure::internal("redeeming a handoff code", &e))?
    };
    let Some(session) = made else {
        let again = format!("{origin}/.castellan/sign_in?rd={}", pages::q(&rd));
        return Err(Failure::sign_in_failed(
            "This sign-in link has expired",
            format!(
                "Sign-in links between castellan's hosts work once, within a minute, in the browser that started the sign-in. Open {again} to sign in again."
            ),
        )
        .marked(Outcome::Deny, Why::BadHandoff));
    };
    ctx.set_user(&session.identity.email);
    ctx.mark(Outcome::SignedIn, Why::None);
    let mut resp = web::redirect(&rd);
    let lifetime = (session.expires_at - crate::clock::now()).max(0) as u64;
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        state
            .cookies
            .set(state.cookies.session, &id, Some(lifetime)),
    );
    h.append(
        header::SET_COOKIE,
        state.cookies.set(state.cookies.handoff, "", Some(0)),
    );
    Ok(resp)
}
