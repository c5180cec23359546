//! `POST /.castellan/backchannel_logout`: OpenID Connect Back-Channel Logout 1.0. A provider that
//! ends a person's session (they signed out there, an administrator ended it, the account was
//! disabled) posts a signed logout token here, server to server; castellan ends the sign-ins it
//! names, every session handed off from them and the command-line logins made from them, and
//! closes their open connections (WebSockets, streams) at once, on every replica.
//!
//! The request is not a browser's, so the CSRF guard does not apply: the token's signature by the
//! provider's published keys is the whole proof, and each token works once (its `jti`). Answers
//! follow §2.8: 200 when the logout is done (also when no session matched: there is nothing left
//! to end), 400 with an OAuth error when the token is not acceptable, 503 when the provider's keys
//! or the store cannot be read (the provider may retry).

use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::identity::oidc::{self, logout};
use crate::runtime::State;
use crate::runtime::metrics::EndedBy;
use crate::store::{Actor, ProviderLogout};
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::{crypto, web};

pub const PATH: &str = "/.castellan/backchannel_logout";

pub async fn post(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let form = web::read_form(req.into_body()).await.ok_or_else(|| {
        Failure::oauth(
            "invalid_request",
            "the body is not a form of at most 16 KiB",
        )
    })?;
    let token = web::param(&form, "logout_token")
        .ok_or_else(|| Failure::oauth("invalid_request", "logout_token is required"))?;
    let (issuer, audiences) = logout::claimed_issuer_and_audiences(token).ok_or_else(|| {
        Failure::oauth(
            "invalid_request",
            "logout_token is not a JWT with iss and aud",
        )
    })?;
    let client = state
        .providers
        .iter()
        .find(|p| p.config.issuer == issuer && audiences.contains(&p.config.client_id))
        .ok_or_else(|| {
            Failure::oauth(
                "invalid_request",
                format!(
                    "no provider with issuer {issuer} and a client id in the token's aud is configured"
                ),
            )
        })?;
    let provider = client.config.id.as_str();
    ctx.set_user(&format!("provider:{provider}"));
    let token = client
        .verify_logout_token(token)
        .await
        .map_err(|e| match e {
            oidc::Error::Unavailable { .. } => Failure::provider_unavailable(e.to_string()),
            oidc::Error::Rejected { .. } => Failure::oauth("invalid_request", e.to_string()),
        })?;
    // The jti is the provider's; two providers could reuse one, so it is kept with the issuer.
    let once = crypto::digest(&format!("backchannel-logout\n{issuer}\n{}", token.jti));
    let first = state
        .store
        .use_token_once(&once, token.usable_until)
        .await
        .map_err(|e| Failure::internal("recording the logout token", &e))?;
    if !first {
        return Err(Failure::oauth(
            "invalid_request",
            "this logout token was already used (a replay)",
        ));
    }
    let actor = Actor {
        name: format!("provider:{provider}"),
        ip: crate::net::ip_text(ctx.client_ip),
    };
    let ended = state
        .store
        .end_provider_sessions(
            &ProviderLogout {
                provider,
                subject: token.subject.as_deref(),
                sid: token.sid.as_deref(),
            },
            &actor,
        )
        .await
        .map_err(|e| Failure::internal("ending the sessions", &e))?;
    if ended > 0 {
        // Closes their connections here now; other replicas follow the store's change feed.
        state.apply_own_change().await;
        state
            .metrics
            .sign_ins_ended(EndedBy::BackChannelLogout, ended);
    }
    tracing::info!(
        provider,
        subject = token.subject.as_deref().unwrap_or("-"),
        sid = token.sid.as_deref().unwrap_or("-"),
        ended,
        "back-channel logout"
    );
    ctx.mark(Outcome::ProviderLoggedOut, Why::None);
    Ok(web::json(
        StatusCode::OK,
        &serde_json::json!({ "ended": ended }),
    ))
}
