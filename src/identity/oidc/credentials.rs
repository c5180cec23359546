//! `castellan check-config`'s question to each provider: does it accept castellan's client
//! credentials? Asked the way every token endpoint can answer without a person: a code grant with
//! a code that cannot exist. A provider that knows the client refuses the code (`invalid_grant`);
//! one that does not know it, or not with that secret, says `invalid_client` (RFC 6749 §5.2),
//! which is what people signing in would otherwise meet first.

use super::{Client, Error};

/// What the provider's token endpoint said about castellan's client credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    /// It refused only the made-up code: the client id and secret are good.
    Accepted,
    /// It refused the client, with the provider's words.
    Refused(String),
    /// It answered something else (an error this probe does not tell apart), with its words.
    Unclear(String),
}

impl Client {
    /// Tries the client id and secret at the token endpoint (see the module's comment).
    pub async fn check_credentials(&self) -> Result<Credentials, Error> {
        let m = self.metadata().await?;
        let (status, body) = self
            .token_request(
                &m,
                vec![
                    ("grant_type", "authorization_code"),
                    ("code", "castellan-check-config-probe"),
                    ("redirect_uri", self.redirect_uri.as_str()),
                    ("code_verifier", &"c".repeat(43)),
                ],
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let words = format!(
            "{} {}",
            v["error"].as_str().unwrap_or(""),
            v["error_description"].as_str().unwrap_or("")
        )
        .trim()
        .to_string();
        Ok(match v["error"].as_str() {
            Some("invalid_client" | "unauthorized_client") => Credentials::Refused(words),
            Some("invalid_grant") => Credentials::Accepted,
            _ if status.as_u16() == 401 => Credentials::Refused(words),
            _ if status.is_server_error() => {
                return Err(self.unavailable(format!("token endpoint answered {status}: {words}")));
            }
            _ => Credentials::Unclear(format!("{status} {words}")),
        })
    }
}
