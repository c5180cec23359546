//! Google Cloud integration: ID tokens from the metadata server for private upstreams (Cloud Run
//! `--no-allow-unauthenticated`), and the conventions of Google IAP's identity headers.
//!
//! The metadata server's wire format (documented by Google): `GET
//! {base}/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD&format=full`
//! with `Metadata-Flavor: Google` answers a signed JWT as plain text. Tokens are cached until five
//! minutes before they expire.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::Mutex;

/// Renew a cached token this long before it expires.
const RENEW_BEFORE_SECS: i64 = 300;

/// Google IAP's issuer, and the prefix IAP puts on subjects and emails in its plain headers.
pub const IAP_ISSUER: &str = "https://cloud.google.com/iap";
pub const IAP_PREFIX: &str = "accounts.google.com:";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot get an ID token for audience {audience} from the metadata server at {base}: {detail}. \
     castellan must run on Google Cloud with a service account (Cloud Run, GKE, Compute Engine), and that \
     service account needs roles/run.invoker on the upstream; set google_metadata_url (or GCE_METADATA_HOST) \
     if the metadata server is elsewhere"
)]
pub struct TokenError {
    audience: String,
    base: String,
    detail: String,
}

pub struct Metadata {
    http: reqwest::Client,
    base: String,
    cache: Mutex<HashMap<String, (String, i64)>>,
}

impl Metadata {
    /// `base` is `http://host[:port]` (the configuration's `google_metadata_url`).
    pub fn new(base: &str) -> Metadata {
        let base = base.to_string();
        Metadata {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("the metadata client builds"),
            base,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// An ID token for `audience`, from the cache while it has more than five minutes left.
    pub async fn id_token(&self, audience: &str) -> Result<String, TokenError> {
        let now = crate::clock::now();
        if let Some((token, exp)) = self.cache.lock().await.get(audience)
            && *exp - RENEW_BEFORE_SECS > now
        {
            return Ok(token.clone());
        }
        let err = |detail: String| TokenError {
            audience: audience.to_string(),
            base: self.base.clone(),
            detail,
        };
        let mut url = url::Url::parse(&format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/identity",
            self.base
        ))
        .map_err(|e| err(format!("the metadata URL is not valid ({e})")))?;
        url.query_pairs_mut()
            .append_pair("audience", audience)
            .append_pair("format", "full");
        let resp = self
            .http
            .get(url.as_str())
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| err(format!("the request failed ({e})")))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| err(format!("the answer was unreadable ({e})")))?;
        if !status.is_success() {
            return Err(err(format!(
                "it answered {status}: {}",
                body.trim().chars().take(200).collect::<String>()
            )));
        }
        let token = body.trim().to_string();
        let exp = expiry(&token)
            .ok_or_else(|| err("it answered something that is not a JWT with an exp".into()))?;
        if exp <= now {
            return Err(err("it answered an expired token".into()));
        }
        self.cache
            .lock()
            .await
            .insert(audience.to_string(), (token.clone(), exp));
        Ok(token)
    }
}

impl Metadata {
    /// An OAuth access token for `scope` of the instance's service account, and how many seconds
    /// it lives (`GET …/service-accounts/default/token?scopes=SCOPE`, answered as
    /// `{"access_token", "expires_in", "token_type"}`).
    pub async fn access_token(&self, scope: &str) -> Result<(String, i64), String> {
        let err = |detail: String| {
            format!(
                "cannot get an access token for {scope} from the metadata server at {}: {detail}. \
                 Without a credentials file castellan must run on Google Cloud with a service account; \
                 elsewhere give the directory a service account key file (credentials)",
                self.base
            )
        };
        let mut url = url::Url::parse(&format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/token",
            self.base
        ))
        .map_err(|e| err(format!("the metadata URL is not valid ({e})")))?;
        url.query_pairs_mut().append_pair("scopes", scope);
        let resp = self
            .http
            .get(url.as_str())
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| err(format!("the request failed ({e})")))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| err(format!("the answer was not JSON ({e})")))?;
        match (status.is_success(), body["access_token"].as_str()) {
            (true, Some(token)) => Ok((
                token.to_string(),
                body["expires_in"].as_i64().unwrap_or(300),
            )),
            _ => Err(err(format!("it answered {status}: {body}"))),
        }
    }
}

/// The `exp` of a JWT, read without verifying (the token comes from the metadata server).
fn expiry(jwt: &str) -> Option<i64> {
    let mut parts = jwt.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["exp"].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1900000000,"aud":"x"}"#);
        assert_eq!(expiry(&format!("e30.{payload}.sig")), Some(1_900_000_000));
        assert_eq!(expiry("not a jwt"), None);
    }
}
