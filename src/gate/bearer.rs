//! Programmatic access: the client-credentials token endpoint (RFC 6749 §4.4) and bearer tokens.
//!
//! Which token counts, when a request carries one:
//! - `Proxy-Authorization: Bearer …` is always for castellan (the app keeps its own `Authorization`).
//! - `Authorization: Bearer …` is for castellan when it is one of castellan's access tokens or comes
//!   from a provider with `programmatic_audiences`; any other bearer token is the app's own and
//!   passes through untouched, the request being decided by the session cookie as usual.
//!
//! A request with a token for castellan is decided on that token alone: a session cookie beside it
//! is ignored, and a bad token is a 401 (JSON, `WWW-Authenticate: Bearer error=…`) even if the
//! cookie is good. Accepted tokens: castellan's access tokens for the app's audience, and ID tokens
//! from a configured provider whose audience is on its `programmatic_audiences`.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::App;
use crate::gate::Outcome;
use crate::identity::assertion::{ACCESS_TOKEN_SECS, TokenSubject};
use crate::policy::Identity;
use crate::runtime::State;
use crate::web::{self, Body};

/// Who a bearer token says is calling.
pub enum Principal {
    ServiceAccount(String),
    User(Identity),
}

/// The bearer token meant for castellan, and the header it came in (see the module docs).
pub fn bearer(state: &State, headers: &HeaderMap) -> Option<(HeaderName, String)> {
    let token = |name: &HeaderName| {
        let v = headers.get(name)?.to_str().ok()?;
        let t = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))?;
        Some(t.trim().to_string())
    };
    if let Some(t) = token(&header::PROXY_AUTHORIZATION) {
        return Some((header::PROXY_AUTHORIZATION, t));
    }
    let t = token(&header::AUTHORIZATION)?;
    let ours = jsonwebtoken::decode_header(&t)
        .is_ok_and(|h| h.kid.as_deref().is_some_and(|k| state.signer().knows(k)))
        || unverified_issuer(&t).is_some_and(|iss| {
            state
                .providers
                .iter()
                .any(|p| p.config.issuer == iss && !p.config.programmatic_audiences.is_empty())
        });
    ours.then_some((header::AUTHORIZATION, t))
}

/// Why a bearer token was not accepted.
pub enum Refused {
    /// The token is not good: a 401 that says why.
    Invalid(String),
    /// Checking it needs the store, which did not answer: fail closed with the store's error.
    Store(crate::store::Error),
    /// Checking it needs its provider's keys, and the provider could not be reached: a 503, not a
    /// 401 that would tell the program its token is bad.
    Provider(String),
}

impl Refused {
    /// The answer to a request whose token was refused; never a redirect, never the app.
    pub fn answer(self, outcome: &mut Outcome, app: &App) -> Response<Body> {
        match self {
            Refused::Store(e) => {
                crate::gate::internal_error(outcome, "checking a bearer token", &e)
            }
            Refused::Invalid(why) => {
                outcome.decision = "deny";
                outcome.reason = "invalid-token";
                tracing::info!(app = %app.id, "bearer token refused: {why}");
                unauthorized("invalid_token", &why)
            }
            Refused::Provider(why) => {
                let reference = outcome.reference();
                outcome.decision = "error";
                outcome.reason = "provider-unavailable";
                tracing::warn!(app = %app.id, reference, "cannot check a bearer token: {why}");
                let mut r = web::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({
                        "error": "temporarily_unavailable",
                        "error_description": format!("{why}; the token was not checked and nothing was let through: try again in a minute"),
                        "reference": reference,
                    }),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                r
            }
        }
    }
}

impl From<String> for Refused {
    fn from(why: String) -> Refused {
        Refused::Invalid(why)
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Refused {
        Refused::Invalid(why.to_string())
    }
}

/// Verifies a bearer token for `app`.
pub async fn authenticate(state: &State, token: &str, app: &App) -> Result<Principal, Refused> {
    if token.len() > 16 * 1024 {
        return Err("the token is too large".into());
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| "the token is not a JWT".to_string())?;
    if header
        .kid
        .as_deref()
        .is_some_and(|k| state.signer().knows(k))
    {
        return match state.signer().verify_access_token(token, &app.audience)? {
            TokenSubject::ServiceAccount { name, key } => {
                match state.store.key_active(&key).await {
                    Ok(true) => Ok(Principal::ServiceAccount(name)),
                    Ok(false) => Err("the key this token was minted with has been revoked".into()),
                    Err(e) => Err(Refused::Store(e)),
                }
            }
            TokenSubject::Session(sid) => match state
                .store
                .session(&sid, state.config.session_idle_timeout)
                .await
            {
                Ok(Some(session)) => Ok(Principal::User(session.identity)),
                Ok(None) => Err(
                    "the session this token belongs to has ended: run `castellan login` again"
                        .into(),
                ),
                Err(e) => Err(Refused::Store(e)),
            },
        };
    }
    // Otherwise it must be an ID token from a provider that accepts programmatic audiences.
    let issuer = unverified_issuer(token).ok_or("the token has no issuer")?;
    let provider = state
        .providers
        .iter()
        .find(|p| p.config.issuer == issuer && !p.config.programmatic_audiences.is_empty())
        .ok_or_else(|| format!("tokens from {issuer} are not accepted here"))?;
    provider
        .verify_programmatic(token)
        .await
        .map(Principal::User)
        .map_err(|e| match e {
            crate::identity::oidc::Error::Unavailable { .. } => Refused::Provider(e.to_string()),
            crate::identity::oidc::Error::Rejected { .. } => Refused::Invalid(e.to_string()),
        })
}

pub(crate) fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    claims["iss"].as_str().map(str::to_string)
}

/// The 401 for a bad or missing bearer token (RFC 6750 §3): never a redirect.
pub fn unauthorized(error: &str, description: &str) -> Response<Body> {
    let mut r = web::json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": error, "error_description": description }),
    );
    let challenge = format!(
        "Bearer realm=\"castellan\", error=\"{error}\", error_description=\"{}\"",
        description.replace(['"', '\\'], "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let mut r = web::json(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"castellan\""),
        );
    }
    r
}

/// `POST /.castellan/token`: `grant_type=client_credentials` with the service account's name and
/// key as client id and secret (HTTP Basic or form fields), and `audience` naming the app (its id
/// or its audience). Answers `{"access_token", "token_type": "Bearer", "expires_in"}`.
pub async fn token_endpoint(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Some(form) = web::read_form(body).await else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    };
    let f = |n: &str| web::param(&form, n).map(str::to_string);
    match f("grant_type").as_deref() {
        Some("client_credentials") => {}
        Some("authorization_code") => return cli_code_grant(state, &form, outcome).await,
        Some("refresh_token") => return cli_refresh_grant(state, &form, outcome).await,
        _ => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use grant_type=client_credentials (service accounts), or authorization_code / refresh_token (castellan login)",
            );
        }
    }
    let basic = parts
        .headers
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
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "authenticate with the service account's name and key",
        );
    };
    let owner = match state.store.key_owner(&secret).await {
        Ok(o) => o,
        Err(e) => {
            return crate::gate::internal_error(outcome, "checking a service account key", &e);
        }
    };
    let Some((name, key_id)) = owner.filter(|(name, _)| *name == client_id) else {
        tracing::warn!(client = %client_id, peer = %peer.ip(), "token request with a wrong or revoked key");
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown service account or wrong, revoked key",
        );
    };
    outcome.user = format!("serviceAccount:{name}");
    let wanted = f("audience").or_else(|| f("resource")).unwrap_or_default();
    let Some(app) = target_app(state, &wanted) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            &format!(
                "`audience` must name an app (its id, its audience or a URL it serves); `{wanted}` does not"
            ),
        );
    };
    match state
        .signer()
        .sign_access_token(&name, &key_id, &app.audience)
    {
        Ok(token) => {
            outcome.decision = "token-issued";
            web::json(
                StatusCode::OK,
                &serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_SECS }),
            )
        }
        Err(e) => crate::gate::internal_error(outcome, "signing an access token", &e),
    }
}

/// The app an `audience` names: its id, its audience, or a URL on castellan that it serves.
fn target_app<'a>(state: &'a State, wanted: &str) -> Option<&'a App> {
    if let Some(a) = state
        .config
        .apps
        .iter()
        .find(|a| a.id == wanted || a.audience == wanted)
    {
        return Some(a);
    }
    let url = url::Url::parse(wanted).ok()?;
    let path = crate::gate::path::normalize(url.path()).ok()?;
    state.match_app(
        url.host_str().map(str::to_ascii_lowercase).as_deref(),
        &path,
    )
}

/// How long a code from the browser may wait for the command line to redeem it.
const CLI_CODE_SECS: i64 = 120;

/// `grant_type=authorization_code`: the command line redeems the one-time code its loopback
/// listener received (with its PKCE verifier) for a refresh token: a session of its own.
async fn cli_code_grant(
    state: &State,
    form: &[(String, String)],
    outcome: &mut Outcome,
) -> Response<Body> {
    let (Some(code), Some(verifier)) =
        (web::param(form, "code"), web::param(form, "code_verifier"))
    else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code and code_verifier are required",
        );
    };
    let taken = match state
        .store
        .take_cli_code(&crate::crypto::digest(code))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return crate::gate::internal_error(outcome, "redeeming a command-line code", &e);
        }
    };
    let Some((browser_session, challenge, created)) = taken else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or already used code",
        );
    };
    if crate::clock::now() - created > CLI_CODE_SECS
        || !crate::crypto::equal(&crate::crypto::pkce_challenge(verifier), &challenge)
    {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the code expired or the verifier does not match",
        );
    }
    let session = match state
        .store
        .session(&browser_session, state.config.session_idle_timeout)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the browser session that approved this has ended",
            );
        }
        Err(e) => return crate::gate::internal_error(outcome, "reading the session", &e),
    };
    let refresh = crate::crypto::random_token(32);
    let lifetime =
        std::time::Duration::from_secs((session.expires_at - crate::clock::now()).max(60) as u64);
    if let Err(e) = state
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
    {
        return crate::gate::internal_error(outcome, "creating the command-line session", &e);
    }
    outcome.user = session.identity.email.clone();
    outcome.decision = "cli-signed-in";
    web::json(
        StatusCode::OK,
        &serde_json::json!({
            "refresh_token": refresh,
            "token_type": "Bearer",
            "email": session.identity.email,
            "expires_at": crate::clock::now() + lifetime.as_secs() as i64,
        }),
    )
}

/// `grant_type=refresh_token`: an access token for one app for the person signed in on the
/// command line, valid for an hour at most and never beyond the session.
async fn cli_refresh_grant(
    state: &State,
    form: &[(String, String)],
    outcome: &mut Outcome,
) -> Response<Body> {
    let Some(refresh) = web::param(form, "refresh_token") else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let digest = crate::crypto::digest(refresh);
    let session = match state
        .store
        .session(&digest, state.config.session_idle_timeout)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "this sign-in has ended or was revoked: run `castellan login` again",
            );
        }
        Err(e) => return crate::gate::internal_error(outcome, "reading the session", &e),
    };
    let _ = state.store.touch_session(&digest).await;
    let wanted = web::param(form, "audience").unwrap_or_default();
    let Some(app) = target_app(state, wanted) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            &format!("`{wanted}` names no app"),
        );
    };
    outcome.user = session.identity.email.clone();
    match state.signer().sign_user_access_token(
        &session.identity,
        &digest,
        &app.audience,
        session.expires_at,
    ) {
        Ok((token, expires_in)) => web::json(
            StatusCode::OK,
            &serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": expires_in, "app": app.id }),
        ),
        Err(e) => crate::gate::internal_error(outcome, "signing an access token", &e),
    }
}
