//! The first step of the gate: which credential a request carries, and whom it names.
//!
//! Which token counts, when a request carries one:
//! - `Proxy-Authorization: Bearer …` is always for castellan (the app keeps its own `Authorization`).
//! - `Authorization: Bearer …` is for castellan when it is one of castellan's access tokens or comes
//!   from a provider with `programmatic_audiences`; any other bearer token is the app's own and
//!   passes through untouched, the request being decided by the session cookie as usual.
//!
//! A request with a token for castellan is decided on that token alone: a session cookie beside it
//! is ignored, and a bad token is a 401 even if the cookie is good. Accepted tokens: castellan's
//! access tokens for the app's audience (a service account's, or a person's from the command
//! line), and ID tokens from a configured provider whose audience is on its
//! `programmatic_audiences`.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};

use crate::config::App;
use crate::identity::assertion::TokenSubject;
use crate::policy::Principal;
use crate::runtime::State;
use crate::runtime::live::Revocation;
use crate::runtime::sessions::SessionRef;
use crate::web::failure::Failure;

/// What a request proved about who sends it.
#[derive(Debug)]
pub enum Credential {
    /// Nothing: no cookie, no token for castellan.
    None,
    /// A browser's session cookie.
    Session(SessionRef),
    /// A bearer token for castellan, carried in `carrier`.
    Token {
        principal: Principal,
        /// When the person behind it signed in (None for service accounts).
        auth_time: Option<i64>,
        revocation: Revocation,
        carrier: HeaderName,
    },
}

impl Credential {
    /// What kind it is, as traces name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::None => "none",
            Credential::Session(_) => "session-cookie",
            Credential::Token { .. } => "bearer-token",
        }
    }

    /// Whom the credential names.
    pub fn principal(&self) -> Option<Principal> {
        match self {
            Credential::None => None,
            Credential::Session(s) => Some(Principal::Person(s.identity.clone())),
            Credential::Token { principal, .. } => Some(principal.clone()),
        }
    }

    /// When the person behind it last signed in: None for nobody and for service accounts (no
    /// re-authentication applies to them).
    pub fn auth_time(&self) -> Option<i64> {
        match self {
            Credential::None => None,
            Credential::Session(s) => Some(s.signed_in_at),
            Credential::Token { auth_time, .. } => *auth_time,
        }
    }

    /// Whether this is a person (whose sign-in can be too old).
    pub fn is_person(&self) -> bool {
        match self {
            Credential::None => false,
            Credential::Session(_) => true,
            Credential::Token { principal, .. } => matches!(principal, Principal::Person(_)),
        }
    }

    /// What ends this credential, for connections that outlive their request.
    pub fn revocation(&self) -> Revocation {
        match self {
            Credential::None => Revocation::Never,
            Credential::Session(s) => Revocation::Session(s.digest.clone()),
            Credential::Token { revocation, .. } => revocation.clone(),
        }
    }

    /// The header that carried a bearer token for castellan (it does not travel to the app).
    pub fn carrier(&self) -> Option<&HeaderName> {
        match self {
            Credential::Token { carrier, .. } => Some(carrier),
            _ => None,
        }
    }
}

/// Reads the request's credential for `app`: a bearer token meant for castellan, else the session
/// cookie. A bad token is a 401; a store or provider that did not answer is a 503, never a 401
/// that says the token is bad, and never an open door.
pub async fn read(state: &State, headers: &HeaderMap, app: &App) -> Result<Credential, Failure> {
    if let Some(token) = bearer(state, headers) {
        // Boxed: its future is three times a session lookup's, and unboxed it would be part of
        // every request's future, which is copied into its box.
        return Box::pin(token_credential(state, token, app)).await;
    }
    match state.session(headers).await {
        Ok(Some(s)) => Ok(Credential::Session(s)),
        Ok(None) => Ok(Credential::None),
        Err(e) => Err(Failure::internal("reading the session", &e)),
    }
}

/// A bearer token meant for castellan: the header it came in, and who it says signed it (read
/// from the token once, not verified).
pub struct Bearer {
    pub carrier: HeaderName,
    pub token: String,
    pub signer: Signer,
}

/// Who a bearer token says signed it.
pub enum Signer {
    /// castellan: its `kid` is one of castellan's keys.
    Castellan,
    /// A provider that accepts programmatic audiences (its index in `State::providers`).
    Provider(usize),
    /// Neither: why not, for the 401.
    Unknown(String),
}

impl Signer {
    fn of(state: &State, token: &str) -> Signer {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Signer::Unknown("the token is not a JWT".into());
        };
        if header
            .kid
            .as_deref()
            .is_some_and(|k| state.signer().knows(k))
        {
            return Signer::Castellan;
        }
        let Some(issuer) = unverified_issuer(token) else {
            return Signer::Unknown("the token has no issuer".into());
        };
        match state
            .providers
            .iter()
            .position(|p| p.config.issuer == issuer && !p.config.programmatic_audiences.is_empty())
        {
            Some(i) => Signer::Provider(i),
            None => Signer::Unknown(format!("tokens from {issuer} are not accepted here")),
        }
    }
}

/// The bearer token meant for castellan (see the module docs).
pub fn bearer(state: &State, headers: &HeaderMap) -> Option<Bearer> {
    let token = |name: &HeaderName| {
        let v = headers.get(name)?.to_str().ok()?;
        let t = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))?;
        Some(t.trim().to_string())
    };
    if let Some(token) = token(&header::PROXY_AUTHORIZATION) {
        let signer = Signer::of(state, &token);
        return Some(Bearer {
            carrier: header::PROXY_AUTHORIZATION,
            token,
            signer,
        });
    }
    let token = token(&header::AUTHORIZATION)?;
    match Signer::of(state, &token) {
        // Anyone else's token is the app's own.
        Signer::Unknown(_) => None,
        signer => Some(Bearer {
            carrier: header::AUTHORIZATION,
            token,
            signer,
        }),
    }
}

async fn token_credential(state: &State, bearer: Bearer, app: &App) -> Result<Credential, Failure> {
    let Bearer {
        carrier,
        token,
        signer,
    } = bearer;
    if token.len() > 16 * 1024 {
        return Err(Failure::invalid_token("the token is too large"));
    }
    let provider = match signer {
        Signer::Castellan => {
            let subject = state
                .verify_access_token(&token, &app.audience)
                .map_err(Failure::invalid_token)?;
            return match subject {
                TokenSubject::ServiceAccount { name, key } => {
                    match state.store.key_active(&key).await {
                        Ok(true) => Ok(Credential::Token {
                            principal: Principal::ServiceAccount(Arc::from(name)),
                            auth_time: None,
                            revocation: Revocation::Key(key),
                            carrier,
                        }),
                        Ok(false) => Err(Failure::invalid_token(
                            "the key this token was minted with has been revoked",
                        )),
                        Err(e) => Err(Failure::internal("checking a bearer token", &e)),
                    }
                }
                // A person on the command line: the token stands while its session does, and
                // the session says when they signed in.
                TokenSubject::Session(sid) => match state.session_by_digest(&sid).await {
                    Ok(Some(s)) => Ok(Credential::Token {
                        principal: Principal::Person(s.identity),
                        auth_time: Some(s.signed_in_at),
                        revocation: Revocation::Session(s.digest),
                        carrier,
                    }),
                    Ok(None) => Err(Failure::invalid_token(
                        "the session this token belongs to has ended: run `castellan login` again",
                    )),
                    Err(e) => Err(Failure::internal("checking a bearer token", &e)),
                },
            };
        }
        // An ID token from a provider that accepts programmatic audiences.
        Signer::Provider(i) => &state.providers[i],
        Signer::Unknown(why) => return Err(Failure::invalid_token(why)),
    };
    match provider.verify_programmatic(&token).await {
        // A provider's token says nothing of SCIM: a person provisioned as inactive is refused
        // here as at sign-in.
        Ok((identity, _)) if state.deactivated(&identity.email) => {
            Err(Failure::invalid_token(format!(
                "{} is deactivated in the organisation's directory (SCIM)",
                identity.email
            )))
        }
        Ok((identity, auth_time)) => Ok(Credential::Token {
            principal: Principal::Person(Arc::new(identity)),
            auth_time,
            revocation: Revocation::Never,
            carrier,
        }),
        Err(e @ crate::identity::oidc::Error::Unavailable { .. }) => {
            Err(Failure::provider_unavailable(format!(
                "{e}; the token was not checked and nothing was let through: try again in a minute"
            )))
        }
        Err(e) => Err(Failure::invalid_token(e.to_string())),
    }
}

/// The `iss` claim of a JWT, read without verifying it (to find which provider must verify it).
pub fn unverified_issuer(token: &str) -> Option<String> {
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
