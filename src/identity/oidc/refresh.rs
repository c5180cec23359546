//! Revalidation: a session's grant refreshed at the provider (RFC 6749 §6, OIDC Core §12), so
//! that a person disabled there, or whose consent was revoked, loses castellan's session within
//! the provider's `revalidate` interval, and a changed email, `hd` or groups claim reaches
//! decisions. The provider answers `invalid_grant` when the grant is gone; anything else (a
//! timeout, a 5xx) is not a verdict and is tried again at the next round.
//!
//! Refresh tokens are stored sealed (AES-256-GCM) under a key derived from the provider's client
//! secret, which lives in the configuration, not the store: a copy of the store alone yields no
//! usable token (and a confidential client's refresh token needs that secret anyway).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{AccessGrant, Client, Error, TokenResponse};
use crate::policy::Identity;

/// What a refresh said.
pub enum Refreshed {
    /// The grant stands: a new refresh token if the provider rotated it, and the person as the
    /// new ID token says (None when the provider sent none).
    Valid {
        refresh_token: Option<String>,
        identity: Option<Box<Identity>>,
        /// The new access token, and the new ID token as sent.
        access: Option<AccessGrant>,
        id_token: Option<String>,
    },
    /// The provider refused the grant (`invalid_grant`): the session must end.
    Revoked(String),
}

impl Client {
    /// Refreshes the grant of a session whose person has the provider subject `subject`.
    pub async fn refresh(&self, refresh_token: &str, subject: &str) -> Result<Refreshed, Error> {
        let m = self.metadata().await?;
        let (status, body) = self
            .token_request(
                &m,
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
            )
            .await?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let error = v["error"].as_str().unwrap_or("");
            let detail = format!("{error} {}", v["error_description"].as_str().unwrap_or(""));
            return if status.is_client_error() && error == "invalid_grant" {
                Ok(Refreshed::Revoked(detail.trim().to_string()))
            } else {
                Err(self.unavailable(format!("refreshing answered {status}: {}", detail.trim())))
            };
        }
        let tokens: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("the refresh answer is not JSON: {e}")))?;
        let access = tokens.access();
        let id_token = tokens.id_token.clone();
        let identity = match tokens.id_token {
            None => None,
            Some(id_token) => {
                // §12.2: the same iss, sub and aud as at sign-in; no nonce to check.
                let claims = self
                    .decode(&id_token, std::slice::from_ref(&self.config.client_id))
                    .await?;
                if claims.sub != subject {
                    return Err(self.rejected("the refreshed ID token names another subject"));
                }
                let groups = self.groups(&claims.extra);
                claims.email.clone().map(|email| {
                    let who = self.identity(
                        email.to_ascii_lowercase(),
                        claims.sub.clone(),
                        groups,
                        claims.hd.clone(),
                    );
                    Box::new(self.with_sign_in(who, &claims))
                })
            }
        };
        Ok(Refreshed::Valid {
            refresh_token: tokens.refresh_token,
            identity,
            access,
            id_token,
        })
    }

    fn sealing_key(&self) -> LessSafeKey {
        let key = crate::crypto::mac_bytes(
            self.config.client_secret.as_bytes(),
            b"castellan refresh tokens v1",
        );
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key"))
    }

    /// `token` sealed for the store.
    pub fn seal(&self, token: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        crate::crypto::fill_random(&mut nonce);
        let mut data = token.as_bytes().to_vec();
        self.sealing_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.config.id.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for a short token");
        let mut out = nonce.to_vec();
        out.extend(data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The token `sealed` holds; None if it was sealed under another client secret (or is not a
    /// sealed token at all).
    pub fn open(&self, sealed: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let mut data = data.to_vec();
        let plain = self
            .sealing_key()
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(self.config.id.as_bytes()),
                &mut data,
            )
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(secret: &str) -> Client {
        let config = crate::config::Provider {
            id: "corp".into(),
            display_name: "Corp".into(),
            issuer: "https://idp.example.com".into(),
            client_id: "castellan".into(),
            client_secret: secret.into(),
            scopes: vec!["openid".into(), "offline_access".into()],
            require_verified_email: true,
            groups_claim: None,
            programmatic_audiences: vec![],
            revalidate: std::time::Duration::from_secs(300),
            claims: vec![],
        };
        Client::new(config, "https://c/cb".into(), reqwest::Client::new())
    }

    #[test]
    fn sealed_tokens_open_only_under_the_same_client_secret() {
        let a = client("secret-one");
        let sealed = a.seal("rt-123");
        assert!(!sealed.contains("rt-123"));
        assert_ne!(sealed, a.seal("rt-123"), "a fresh nonce each time");
        assert_eq!(a.open(&sealed).as_deref(), Some("rt-123"));
        assert_eq!(client("secret-two").open(&sealed), None);
        assert_eq!(a.open("not-sealed"), None);
        let mut tampered = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(&URL_SAFE_NO_PAD.encode(tampered)), None);
    }
}
