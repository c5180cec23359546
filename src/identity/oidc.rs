//! OpenID Connect relying party: discovery, the authorization code flow with PKCE, and ID token validation.
//!
//! Written on jsonwebtoken rather than a full OIDC crate so that every check is visible here:
//! the algorithms allowed (asymmetric only: no `none`, no HMAC), `iss`, `aud`, `azp`, `exp`, `iat`,
//! `nonce`, and `email_verified`. The provider's JWKS is refreshed when a token names an unknown
//! `kid`, at most once per [`JWKS_REFRESH_INTERVAL`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use crate::config;
use crate::policy::Identity;

mod authorize;
mod claims;
mod credentials;
mod keys;
pub mod logout;

pub use authorize::Asking;
pub use credentials::Credentials;
pub mod refresh;

/// How often a token with an unknown `kid` may trigger a JWKS download: short enough that a
/// provider's key rotation is picked up at once, long enough that forged `kid`s cannot make
/// castellan hammer the provider.
/// Google's issuer: its accounts carry the Workspace domain in `hd`.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// How long discovery results are reused before being fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(5);
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// An ID token older than this (by `iat`) is not accepted, even if it has not expired.
const MAX_ID_TOKEN_AGE_SECS: i64 = 600;

const ALLOWED_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider could not be reached or answered nonsense: not the user's fault.
    #[error("provider {provider} is unavailable: {detail}")]
    Unavailable { provider: String, detail: String },
    /// The provider refused or the response failed validation: the sign-in must not proceed.
    #[error("sign-in with {provider} was rejected: {detail}")]
    Rejected { provider: String, detail: String },
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    end_session_endpoint: Option<String>,
}

struct Metadata {
    authorization_endpoint: Url,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    /// RP-initiated logout, when the provider offers it.
    end_session_endpoint: Option<Url>,
    /// `client_secret_basic` unless the provider only offers `client_secret_post`.
    secret_in_body: bool,
    fetched: Instant,
}

struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
}

pub struct Client {
    pub config: config::Provider,
    redirect_uri: String,
    http: reqwest::Client,
    metadata: Mutex<Option<Arc<Metadata>>>,
    keys: Mutex<Keys>,
}

/// The result of the code exchange: who signed in.
/// Who signed in, and when they last authenticated at the provider (`auth_time`), if it says.
pub struct SignedIn {
    pub identity: Identity,
    pub auth_time: Option<i64>,
    /// The raw ID token, kept for `id_token_hint` at sign-out.
    pub id_token: String,
    /// The provider's session id (`sid`), which its back-channel logout names.
    pub sid: Option<String>,
    /// The ID token left the groups out because there are too many (Microsoft Entra ID's
    /// "overage": `_claim_names` names `groups`); only a directory can tell them.
    pub groups_overage: bool,
    /// The provider's refresh token, when it granted offline access (for revalidation).
    pub refresh_token: Option<String>,
    /// The provider's access token.
    pub access: Option<AccessGrant>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    /// Seconds (a number, or a string from some providers).
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

impl TokenResponse {
    /// The access token it carries, with when it expires (an hour when the provider does not
    /// say, as is usual) and the scopes it says were granted.
    fn access(&self) -> Option<AccessGrant> {
        let lifetime = match &self.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600);
        Some(AccessGrant {
            token: self.access_token.clone()?,
            expires_at: crate::clock::now() + lifetime,
            scope: self.scope.clone(),
        })
    }
}

/// The provider's access token from a sign-in or a refresh.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub token: String,
    pub expires_at: i64,
    /// The scopes granted, when the provider says (RFC 6749 §5.1: else those asked for).
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    /// Everything else, for the configured groups claim.
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
    /// A string or a list; its membership is checked by jsonwebtoken, its size here.
    aud: serde_json::Value,
    azp: Option<String>,
    iat: Option<i64>,
    auth_time: Option<i64>,
    /// Google's hosted (Workspace) domain.
    hd: Option<String>,
    nonce: Option<String>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    sid: Option<String>,
    /// How the person authenticated (RFC 8176), and the authentication context class.
    #[serde(default)]
    amr: Option<serde_json::Value>,
    #[serde(default)]
    acr: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
}

impl Client {
    pub fn new(config: config::Provider, redirect_uri: String, http: reqwest::Client) -> Client {
        Client {
            config,
            redirect_uri,
            http,
            metadata: Mutex::new(None),
            keys: Mutex::new(Keys {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
            }),
        }
    }

    fn unavailable(&self, detail: impl Into<String>) -> Error {
        Error::Unavailable {
            provider: self.config.id.clone(),
            detail: detail.into(),
        }
    }

    fn rejected(&self, detail: impl Into<String>) -> Error {
        Error::Rejected {
            provider: self.config.id.clone(),
            detail: detail.into(),
        }
    }

    async fn metadata(&self) -> Result<Arc<Metadata>, Error> {
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot
            .as_ref()
            .filter(|m| m.fetched.elapsed() < DISCOVERY_TTL)
        {
            return Ok(m.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let d: Discovery = self.get_json(&url).await?;
        if d.issuer != self.config.issuer {
            return Err(self.unavailable(format!(
                "its discovery document says issuer \"{}\" but the config says \"{}\": set `issuer` to exactly the provider's value",
                d.issuer, self.config.issuer
            )));
        }
        let authorization_endpoint = Url::parse(&d.authorization_endpoint)
            .map_err(|e| self.unavailable(format!("bad authorization_endpoint: {e}")))?;
        let methods = d.token_endpoint_auth_methods_supported.unwrap_or_default();
        let secret_in_body = !methods.is_empty()
            && !methods.iter().any(|m| m == "client_secret_basic")
            && methods.iter().any(|m| m == "client_secret_post");
        let m = Arc::new(Metadata {
            authorization_endpoint,
            token_endpoint: d.token_endpoint,
            jwks_uri: d.jwks_uri,
            userinfo_endpoint: d.userinfo_endpoint,
            end_session_endpoint: d
                .end_session_endpoint
                .and_then(|u| Url::parse(&u).ok())
                .filter(|u| matches!(u.scheme(), "https" | "http")),
            secret_in_body,
            fetched: Instant::now(),
        });
        *slot = Some(m.clone());
        drop(slot);
        // A new discovery may come with new keys.
        self.keys.lock().await.fetched = None;
        Ok(m)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| self.unavailable(format!("GET {url} failed: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.unavailable(format!("GET {url} answered {}", resp.status())));
        }
        resp.json()
            .await
            .map_err(|e| self.unavailable(format!("GET {url} returned unreadable JSON: {e}")))
    }

    /// Fetches discovery and keys now, so a misconfigured provider shows up in the log at start
    /// rather than at the first sign-in.
    pub async fn check(&self) -> Result<(), Error> {
        let m = self.metadata().await?;
        let set: JwkSet = self.get_json(&m.jwks_uri).await?;
        let mut keys = self.keys.lock().await;
        keys.set = set;
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    /// Checks the `iss` authorization response parameter (RFC 9207) when the provider sends one.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), Error> {
        match iss {
            Some(iss) if iss != self.config.issuer => Err(self.rejected(format!(
                "the authorization response came from issuer \"{iss}\", not \"{}\"",
                self.config.issuer
            ))),
            _ => Ok(()),
        }
    }

    /// Exchanges the authorization code and validates the ID token against `nonce`.
    pub async fn exchange(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, Error> {
        let m = self.metadata().await?;
        let (status, body) = self
            .token_request(
                &m,
                vec![
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", self.redirect_uri.as_str()),
                    ("code_verifier", pkce_verifier),
                ],
            )
            .await?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .map(|v| {
                    format!(
                        "{} {}",
                        v["error"].as_str().unwrap_or(""),
                        v["error_description"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            return Err(if status.is_server_error() {
                self.unavailable(format!(
                    "token endpoint answered {status}: {}",
                    detail.trim()
                ))
            } else if detail.trim_start().starts_with("invalid_client") {
                // Not the person's fault, and not theirs to fix: say who must do what.
                self.rejected(format!(
                    "the provider does not accept castellan's client credentials ({}). An administrator should check client_id and client_secret of provider {} against the app registered at the provider",
                    detail.trim(),
                    self.config.id
                ))
            } else {
                self.rejected(format!(
                    "token endpoint refused the code ({status}): {}",
                    detail.trim()
                ))
            });
        }
        let tokens: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.rejected(format!("token response is not valid JSON: {e}")))?;
        let access = tokens.access();
        let id_token = tokens.id_token.ok_or_else(|| {
            self.rejected("the token response has no id_token (is the `openid` scope requested?)")
        })?;
        let claims = self.verify_id_token(&id_token, nonce).await?;

        let mut groups = self.groups(&claims.extra);
        let (email, verified) = match claims.email.clone() {
            Some(email) => (email, claims.email_verified.clone()),
            None => {
                let info = self
                    .userinfo(&m, tokens.access_token.as_deref(), &claims.sub)
                    .await?;
                if groups.is_empty() {
                    groups = self.groups(&info.extra);
                }
                (
                    info.email.ok_or_else(|| {
                        self.rejected("neither the ID token nor userinfo carries an email: request the `email` scope")
                    })?,
                    info.email_verified,
                )
            }
        };
        let verified = matches!(verified, Some(serde_json::Value::Bool(true)))
            || matches!(&verified, Some(serde_json::Value::String(s)) if s == "true");
        if self.config.require_verified_email && !verified {
            return Err(self.rejected(format!(
                "the provider does not say that {email} is verified (email_verified); set require_verified_email = false for this provider only if it verifies every address"
            )));
        }
        if !crate::policy::is_email(&email.to_ascii_lowercase()) {
            return Err(self.rejected(format!("`{email}` is not an email address")));
        }
        Ok(SignedIn {
            identity: self.with_sign_in(
                self.identity(
                    email.to_ascii_lowercase(),
                    claims.sub.clone(),
                    groups,
                    claims.hd.clone(),
                ),
                &claims,
            ),
            auth_time: claims.auth_time,
            id_token,
            sid: claims.sid.filter(|s| !s.is_empty() && s.len() <= 256),
            groups_overage: claims
                .extra
                .get("_claim_names")
                .is_some_and(|n| n.get("groups").is_some()),
            access,
            refresh_token: tokens.refresh_token,
        })
    }

    /// POSTs `form` to the token endpoint with the client's credentials (HTTP Basic, or in the
    /// body when the provider only takes `client_secret_post`).
    async fn token_request(
        &self,
        m: &Metadata,
        mut form: Vec<(&str, &str)>,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), Error> {
        let mut req = self
            .http
            .post(&m.token_endpoint)
            .header("accept", "application/json");
        if m.secret_in_body {
            form.push(("client_id", &self.config.client_id));
            form.push(("client_secret", &self.config.client_secret));
        } else {
            // RFC 6749 §2.3.1: both parts are form-encoded before the Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(
                enc(&self.config.client_id),
                Some(enc(&self.config.client_secret)),
            );
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("token request failed: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("token response unreadable: {e}")))?;
        Ok((status, body))
    }

    /// The groups named by the configured `groups_claim` (a list of strings, or one string); names
    /// that could not be written as a `group:` member are skipped.
    fn groups(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
        let Some(name) = &self.config.groups_claim else {
            return Vec::new();
        };
        let values: Vec<&str> = match claims.get(name) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter(|g| crate::policy::valid_group(g))
            .take(256)
            .map(str::to_string)
            .collect()
    }

    async fn userinfo(
        &self,
        m: &Metadata,
        access_token: Option<&str>,
        sub: &str,
    ) -> Result<UserInfo, Error> {
        let (Some(endpoint), Some(token)) = (&m.userinfo_endpoint, access_token) else {
            return Err(self.rejected(
                "the ID token carries no email and the provider offers no userinfo endpoint",
            ));
        };
        let resp = self
            .http
            .get(endpoint)
            .bearer_auth(token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| self.unavailable(format!("userinfo request failed: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.unavailable(format!("userinfo answered {}", resp.status())));
        }
        let info: UserInfo = resp.json().await.map_err(|e| {
            self.rejected(format!(
                "userinfo is not JSON (signed userinfo is not supported): {e}"
            ))
        })?;
        if info.sub != sub {
            return Err(self.rejected("userinfo is about another subject than the ID token"));
        }
        Ok(info)
    }

    /// Accepts an ID token a program presents as a bearer token: signed by this provider, for an
    /// audience on `programmatic_audiences`, unexpired, with a (verified) email. Returns the person
    /// and when they authenticated (`auth_time`, else the token's `iat`).
    pub async fn verify_programmatic(&self, token: &str) -> Result<(Identity, Option<i64>), Error> {
        if self.config.programmatic_audiences.is_empty() {
            return Err(self.rejected("this provider accepts no programmatic audiences"));
        }
        let claims = self
            .decode(token, &self.config.programmatic_audiences)
            .await?;
        let groups = self.groups(&claims.extra);
        let email = claims
            .email
            .clone()
            .ok_or_else(|| {
                self.rejected(
                    "the token carries no email claim (request the email scope when minting it)",
                )
            })?
            .to_ascii_lowercase();
        let verified = matches!(claims.email_verified, Some(serde_json::Value::Bool(true)))
            || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s == "true");
        if self.config.require_verified_email && !verified {
            return Err(self.rejected(format!(
                "the provider does not say that {email} is verified"
            )));
        }
        if !crate::policy::is_email(&email) {
            return Err(self.rejected(format!("`{email}` is not an email address")));
        }
        let auth_time = claims.auth_time.or(claims.iat);
        Ok((
            self.with_sign_in(
                self.identity(email, claims.sub.clone(), groups, claims.hd.clone()),
                &claims,
            ),
            auth_time,
        ))
    }

    /// The person an ID token names. `domain:` members match Google accounts on their Workspace
    /// domain (`hd`) only, as Google IAP does (a consumer account, which has none, matches no
    /// `domain:` member whatever its email); other providers' people on `hd` when the provider
    /// asserts one, else on their email's domain.
    fn identity(
        &self,
        email: String,
        subject: String,
        groups: Vec<String>,
        hd: Option<String>,
    ) -> Identity {
        let hd = hd.filter(|h| !h.is_empty() && h.len() <= 253 && !h.contains('@'));
        let domain = match &hd {
            Some(hd) => hd.to_ascii_lowercase(),
            None if self.config.issuer == GOOGLE_ISSUER => String::new(),
            None => crate::policy::email_domain(&email)
                .unwrap_or("")
                .to_string(),
        };
        Identity {
            email,
            subject,
            provider: self.config.id.clone(),
            groups,
            hd,
            domain: Some(domain),
            amr: Vec::new(),
            acr: None,
            claims: Default::default(),
        }
    }

    /// The token's header, if it parses and names an allowed (asymmetric) algorithm; `what`
    /// names the token in the error.
    fn checked_header(&self, token: &str, what: &str) -> Result<jsonwebtoken::Header, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            self.rejected(format!(
                "{what} is malformed or uses a forbidden algorithm: {e}"
            ))
        })?;
        if !ALLOWED_ALGS.contains(&header.alg) {
            return Err(self.rejected(format!(
                "{what} is signed with {:?}, which is not accepted",
                header.alg
            )));
        }
        Ok(header)
    }

    /// Checks signature (allowed asymmetric algorithms only), `iss`, `aud` (one of `audiences`),
    /// `exp`, `nbf` and the presence of `iat`.
    async fn decode(&self, token: &str, audiences: &[String]) -> Result<IdClaims, Error> {
        let header = self.checked_header(token, "the token")?;
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY_SECS as u64;
        v.validate_nbf = true;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &v)
            .map_err(|e| self.rejected(format!("the token failed validation: {e}")))?
            .claims;
        match claims.iat {
            None => Err(self.rejected("the token has no iat")),
            Some(iat) if iat > crate::clock::now() + LEEWAY_SECS => {
                Err(self.rejected("the token was issued in the future"))
            }
            Some(_) => Ok(claims),
        }
    }

    async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<IdClaims, Error> {
        let header = self.checked_header(token, "the ID token")?;
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY_SECS as u64;
        v.validate_nbf = true;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &v)
            .map_err(|e| self.rejected(format!("the ID token failed validation: {e}")))?
            .claims;
        let now = crate::clock::now();
        match claims.iat {
            None => return Err(self.rejected("the ID token has no iat")),
            Some(iat) if iat > now + LEEWAY_SECS => {
                return Err(self.rejected("the ID token was issued in the future"));
            }
            Some(iat) if iat < now - MAX_ID_TOKEN_AGE_SECS - LEEWAY_SECS => {
                return Err(self.rejected("the ID token was issued too long ago"));
            }
            Some(_) => {}
        }
        let several_audiences = claims.aud.as_array().is_some_and(|a| a.len() > 1);
        match &claims.azp {
            Some(azp) if *azp != self.config.client_id => {
                return Err(self.rejected("the ID token's azp names another client"));
            }
            None if several_audiences => {
                return Err(self.rejected("the ID token has several audiences and no azp"));
            }
            _ => {}
        }
        match &claims.nonce {
            Some(n) if crate::crypto::equal(n, nonce) => {}
            _ => {
                return Err(self.rejected(
                    "the ID token's nonce does not match this sign-in (replayed or injected token)",
                ));
            }
        }
        Ok(claims)
    }
}
