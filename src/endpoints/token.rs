//! `POST /.castellan/token`, the OAuth token endpoint (answered on every host; it takes no
//! cookies):
//! - `grant_type=client_credentials` (RFC 6749 §4.4): a service account's name and key as client
//!   id and secret (HTTP Basic or form fields), and `audience` naming the app: an access token for
//!   that app, valid an hour.
//! - `grant_type=authorization_code`: the command line redeems the one-time code its loopback
//!   listener received (with its PKCE verifier) for a refresh token: a session of its own.
//! - `grant_type=refresh_token`: an access token for one app for the person signed in on the
//!   command line, valid an hour at most and never beyond the session. An app with
//!   `reauth_max_age` gets no token for a sign-in older than that, one with a step-up none for a
//!   sign-in that lacks it: `castellan login` again.

use http::header::{self, HeaderMap};
use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::config::App;
use crate::identity::assertion::ACCESS_TOKEN_SECS;
use crate::runtime::State;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::{self};

/// How long a code from the browser may wait for the command line to redeem it.
const CLI_CODE_SECS: i64 = 120;

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    ctx.navigation = false;
    let (parts, body) = req.into_parts();
    let Some(form) = web::read_form(body).await else {
        return Err(Failure::oauth(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    };
    match web::param(&form, "grant_type") {
        Some("client_credentials") => client_credentials(state, ctx, &parts.headers, &form).await,
        Some("authorization_code") => cli_code(state, ctx, &form).await,
        Some("refresh_token") => cli_refresh(state, ctx, &form).await,
        _ => Err(Failure::oauth(
            "unsupported_grant_type",
            "use grant_type=client_credentials (service accounts), or authorization_code / refresh_token (castellan login)",
        )),
    }
}

async fn client_credentials(
    state: &State,
    ctx: &mut Ctx,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Answer {
    let f = |n: &str| web::param(form, n).map(str::to_string);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (id, secret) = text.split_once(':')?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((dec(id)?, dec(secret)?))
        });
    let Some((client_id, secret)) = basic.or_else(|| Some((f("client_id")?, f("client_secret")?)))
    else {
        return Err(Failure::oauth(
            "invalid_client",
            "authenticate with the service account's name and key",
        ));
    };
    let owner = state
        .store
        .key_owner(&secret)
        .await
        .map_err(|e| Failure::internal("checking a service account key", &e))?;
    let Some((name, key_id)) = owner.filter(|(name, _)| *name == client_id) else {
        tracing::warn!(client = %crate::web::ctx::log_safe(&client_id), peer = %ctx.peer.ip(), "token request with a wrong or revoked key");
        return Err(Failure::oauth(
            "invalid_client",
            "unknown service account or wrong, revoked key",
        ));
    };
    ctx.set_user(&format!("serviceAccount:{name}"));
    let wanted = f("audience").or_else(|| f("resource")).unwrap_or_default();
    let app = target_app(state, &wanted).ok_or_else(|| {
        Failure::oauth(
            "invalid_target",
            format!(
                "`audience` must name an app (its id, its audience or a URL it serves); `{wanted}` does not"
            ),
        )
    })?;
    let token = state
        .signer()
        .sign_access_token(&name, &key_id, &app.audience)
        .map_err(|e| Failure::internal("signing an access token", &e))?;
    ctx.mark(Outcome::TokenIssued, Why::None);
    Ok(web::json(
        StatusCode::OK,
        &serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_SECS }),
    ))
}

/// The app an `audience` names: its id, its audience, or a URL on castellan that it serves.
fn target_app<'a>(state: &'a State, wanted: &str) -> Option<&'a App> {
    if let Some(a) = state
        .config
        .apps
        .iter()
        .find(|a| &*a.id == wanted || a.audience == wanted)
    {
        return Some(a);
    }
    let url = url::Url::parse(wanted).ok()?;
    let path = crate::gate::path::normalize(url.path()).ok()?;
    state.match_app(&url.host_str()?.to_ascii_lowercase(), &path)
}

async fn cli_code(state: &State, ctx: &mut Ctx, form: &[(String, String)]) -> Answer {
    let (Some(code), Some(verifier)) =
        (web::param(form, "code"), web::param(form, "code_verifier"))
    else {
        return Err(Failure::oauth(
            "invalid_request",
            "code and code_verifier are required",
        ));
    };
    let taken = state
        .store
        .take_cli_code(&crate::crypto::digest(code))
        .await
        .map_err(|e| Failure::internal("redeeming a command-line code", &e))?;
    let Some((browser_session, challenge, created)) = taken else {
        return Err(Failure::oauth(
            "invalid_grant",
            "unknown or already used code",
        ));
    };
    if crate::clock::now() - created > CLI_CODE_SECS
        || !crate::crypto::equal(&crate::crypto::pkce_challenge(verifier), &challenge)
    {
        return Err(Failure::oauth(
            "invalid_grant",
            "the code expired or the verifier does not match",
        ));
    }
    let session = state
        .store
        .session(&browser_session, state.config.session_idle_timeout)
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?
        .ok_or_else(|| {
            Failure::oauth(
                "invalid_grant",
                "the browser session that approved this has ended",
            )
        })?;
    let refresh = crate::crypto::random_token(32);
    let lifetime =
        std::time::Duration::from_secs((session.expires_at - crate::clock::now()).max(60) as u64);
    state
        .store
        .create_session(
            &crate::crypto::digest(&refresh),
            &session.identity,
            lifetime,
            "command line",
            "castellan command line",
            Some(session.created_at),
        )
        .await
        .map_err(|e| Failure::internal("creating the command-line session", &e))?;
    // The provider's back-channel logout of the browser's sign-in ends this one too.
    state
        .store
        .inherit_provider_session(&crate::crypto::digest(&refresh), &browser_session)
        .await
        .map_err(|e| Failure::internal("creating the command-line session", &e))?;
    ctx.set_user(&session.identity.email);
    ctx.mark(Outcome::CliSignedIn, Why::None);
    Ok(web::json(
        StatusCode::OK,
        &serde_json::json!({
            "refresh_token": refresh,
            "token_type": "Bearer",
            "email": session.identity.email,
            "expires_at": crate::clock::now() + lifetime.as_secs() as i64,
        }),
    ))
}

async fn cli_refresh(state: &State, ctx: &mut Ctx, form: &[(String, String)]) -> Answer {
    let Some(refresh) = web::param(form, "refresh_token") else {
        return Err(Failure::oauth(
            "invalid_request",
            "refresh_token is required",
        ));
    };
    let digest = crate::crypto::digest(refresh);
    let session = state
        .store
        .session(&digest, state.config.session_idle_timeout)
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?
        .ok_or_else(|| {
            Failure::oauth(
                "invalid_grant",
                "this sign-in has ended or was revoked: run `castellan login` again",
            )
        })?;
    let _ = state.store.touch_session(&digest).await;
    let wanted = web::param(form, "audience").unwrap_or_default();
    let app = target_app(state, wanted)
        .ok_or_else(|| Failure::oauth("invalid_target", format!("`{wanted}` names no app")))?;
    ctx.set_user(&session.identity.email);
    if let Some(max) = app.reauth_max_age
        && crate::clock::now() - session.created_at > max.as_secs() as i64
    {
        return Err(Failure::oauth(
            "invalid_grant",
            format!(
                "{} needs a sign-in within the last {} s and this one is older: run `castellan login` again",
                app.id,
                max.as_secs()
            ),
        )
        .with("reauthentication_required", serde_json::json!(true))
        .with("max_age", serde_json::json!(max.as_secs())));
    }
    if let Some(short) = app.step_up.shortfall(&session.identity) {
        return Err(Failure::oauth(
            "invalid_grant",
            format!(
                "{} needs {} and this one is not: run `castellan login` again and sign in that way",
                app.id,
                app.step_up.describe(short)
            ),
        )
        .with("insufficient_user_authentication", serde_json::json!(true))
        .with("requirement", serde_json::json!(short.as_str()))
        .with("app", serde_json::json!(app.id)));
    }
    let (token, expires_in) = state
        .signer()
        .sign_user_access_token(
            &session.identity,
            &digest,
            &app.audience,
            session.expires_at,
            session.created_at,
        )
        .map_err(|e| Failure::internal("signing an access token", &e))?;
    Ok(web::json(
        StatusCode::OK,
        &serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": expires_in, "app": app.id }),
    ))
}
