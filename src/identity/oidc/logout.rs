//! OpenID Connect Back-Channel Logout 1.0, §2.6: checking a logout token the provider posts to
//! `/.castellan/backchannel_logout`. The token is a JWT signed like the provider's ID tokens and
//! checked the same way (allowed algorithms, the provider's published keys, `iss`, `aud`, `azp`),
//! plus what makes it a logout token and nothing else: the back-channel logout event, a `jti`,
//! `sub` and/or `sid`, no `nonce`, and `typ` `logout+jwt` when the provider sets one. That the
//! `jti` is used only once is the caller's to record (it needs the store).

use jsonwebtoken::Validation;
use serde::Deserialize;

use super::{Client, Error, LEEWAY_SECS};

/// The event a logout token carries (§2.4).
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token issued longer ago than this (by `iat`) is refused: the provider sends it at once.
pub const MAX_AGE_SECS: i64 = 600;

/// What a valid logout token ends: the provider's session `sid`, its user `sub`, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    pub subject: Option<String>,
    pub sid: Option<String>,
    /// The token's id: a second token with the same id is a replay.
    pub jti: String,
    /// After this no copy of the token could be accepted anyway (so its `jti` need not be kept).
    pub usable_until: i64,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
    aud: serde_json::Value,
    azp: Option<String>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    nonce: Option<serde_json::Value>,
}

/// The `iss` and `aud` a token claims, read without checking its signature: only to pick the
/// provider whose keys then check it.
pub fn claimed_issuer_and_audiences(token: &str) -> Option<(String, Vec<String>)> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let iss = v.get("iss")?.as_str()?.to_string();
    let aud = match v.get("aud")? {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => return None,
    };
    Some((iss, aud))
}

impl Client {
    /// Checks a logout token from this provider (§2.6) and says what it ends.
    pub async fn verify_logout_token(&self, token: &str) -> Result<LogoutToken, Error> {
        let header = self.checked_header(token, "the logout token")?;
        // §2.4: `logout+jwt` keeps other JWTs (an ID token above all) from passing for one;
        // providers that predate it send `JWT` or nothing, and the claims below tell those apart.
        if let Some(typ) = header.typ.as_deref() {
            let typ = typ.to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            if typ != "logout+jwt" && typ != "jwt" {
                return Err(self.rejected(format!("the token's typ is {typ}, not logout+jwt")));
            }
        }
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.client_id]);
        // `exp` is optional in a logout token (checked when present), `iat` required.
        v.set_required_spec_claims(&["iss", "aud"]);
        v.leeway = LEEWAY_SECS as u64;
        v.validate_nbf = true;
        let c = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| self.rejected(format!("the logout token failed validation: {e}")))?
            .claims;
        let now = crate::clock::now();
        let iat = match c.iat {
            None => return Err(self.rejected("the logout token has no iat")),
            Some(iat) if iat > now + LEEWAY_SECS => {
                return Err(self.rejected("the logout token was issued in the future"));
            }
            Some(iat) if iat < now - MAX_AGE_SECS - LEEWAY_SECS => {
                return Err(self.rejected("the logout token was issued too long ago"));
            }
            Some(iat) => iat,
        };
        let several_audiences = c.aud.as_array().is_some_and(|a| a.len() > 1);
        match &c.azp {
            Some(azp) if *azp != self.config.client_id => {
                return Err(self.rejected("the logout token's azp names another client"));
            }
            None if several_audiences => {
                return Err(self.rejected("the logout token has several audiences and no azp"));
            }
            _ => {}
        }
        if !c
            .events
            .as_ref()
            .and_then(|e| e.get(EVENT))
            .is_some_and(serde_json::Value::is_object)
        {
            return Err(self.rejected(format!(
                "the token's events claim has no {EVENT} member: it is not a logout token"
            )));
        }
        if c.nonce.is_some() {
            return Err(self.rejected("the logout token carries a nonce, which it must not"));
        }
        let jti = c
            .jti
            .filter(|j| !j.is_empty())
            .ok_or_else(|| self.rejected("the logout token has no jti"))?;
        let named = |v: Option<String>| v.filter(|s| !s.is_empty() && s.len() <= 256);
        let (subject, sid) = (named(c.sub), named(c.sid));
        if subject.is_none() && sid.is_none() {
            return Err(self.rejected("the logout token names neither sub nor sid"));
        }
        let until = iat + MAX_AGE_SECS + LEEWAY_SECS;
        Ok(LogoutToken {
            subject,
            sid,
            jti,
            usable_until: c.exp.map_or(until, |exp| until.min(exp + LEEWAY_SECS)),
        })
    }
}
