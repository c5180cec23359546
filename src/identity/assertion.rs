//! Signs the identity assertion every proxied request carries, and publishes its key as a JWKS.
//!
//! Keys (ES256, P-256) live in the store's key ring, so restarts and other replicas sign with the
//! same key. They rotate every `key_rotation`: the next key is published [`PUBLISH_AHEAD`] before
//! anyone signs with it (every replica and every verifier's cached JWKS knows it by then), and the
//! previous key stays published, so no assertion or access token breaks at rotation.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::policy::Identity;
use crate::store::{self, Store};

/// How long an assertion is valid. The issue caps it at 10 minutes; upstreams see a fresh one on
/// every request anyway.
pub const LIFETIME_SECS: i64 = 300;

/// How long an access token from `/.castellan/token` lives (the issue caps it at one hour).
pub const ACCESS_TOKEN_SECS: i64 = 3600;

/// Whom a castellan access token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSubject {
    ServiceAccount {
        name: String,
        key: String,
    },
    /// A person on the command line: the digest of the CLI's session.
    Session(String),
}

/// A castellan access token whose signature and claims held: whom it names, and until when
/// (its `exp`, Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: TokenSubject,
    pub expires_at: i64,
}

impl VerifiedToken {
    /// Whether it is still good at `now`, with the leeway verification allows.
    pub fn current(&self, now: i64) -> bool {
        now <= self.expires_at + ACCESS_TOKEN_LEEWAY_SECS as i64
    }
}

/// How far past its `exp` a token is still taken (clocks of replicas differ a little).
const ACCESS_TOKEN_LEEWAY_SECS: u64 = 30;

/// How long a new key is published before it is used.
pub const PUBLISH_AHEAD_SECS: i64 = 3600;

/// Of a key ring (oldest first), the index of the key to use at `now`: the newest key published
/// for at least [`PUBLISH_AHEAD_SECS`], or the oldest when none is (a store's very first key).
pub fn active_key(ring: &[store::RingKey], now: i64) -> usize {
    ring.iter()
        .rposition(|k| now - k.created_at >= PUBLISH_AHEAD_SECS)
        .unwrap_or(0)
}

/// A new ES256 key: a random kid and PKCS#8 material.
pub fn new_key() -> (String, Vec<u8>) {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("P-256 key generation failed");
    (crate::crypto::random_token(12), pkcs8.as_ref().to_vec())
}

pub struct Signer {
    kid: String,
    key: EncodingKey,
    /// The public halves of every published key, to check castellan's own access tokens.
    public: std::collections::HashMap<String, jsonwebtoken::DecodingKey>,
    jwks: String,
    /// `{kid: PEM}`, the form of Google IAP's `public_key` URL.
    pem_keys: String,
    issuer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the assertion signing key in the store is unusable: {0}")]
    BadKey(jsonwebtoken::errors::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("signing the identity assertion failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    email: &'a str,
    provider: &'a str,
    iat: i64,
    exp: i64,
    /// The claims the app asked for (`assertion_claims`).
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl Signer {
    /// The signer for the store's assertion key ring at `now`, rotating it when due.
    pub async fn load(
        store: &Store,
        issuer: &str,
        rotation: std::time::Duration,
        now: i64,
    ) -> Result<Signer, Error> {
        let rotate_after =
            rotation.saturating_sub(std::time::Duration::from_secs(PUBLISH_AHEAD_SECS as u64));
        let ring = store
            .key_ring("assertion", now, rotate_after, new_key)
            .await?;
        Signer::from_ring(&ring, now, issuer)
    }

    /// Signs with the ring's active key; publishes (and accepts tokens from) all of them.
    pub fn from_ring(ring: &[store::RingKey], now: i64, issuer: &str) -> Result<Signer, Error> {
        let mut jwks = Vec::new();
        let mut pems = serde_json::Map::new();
        let mut public = std::collections::HashMap::new();
        for k in ring {
            let key = EncodingKey::from_ec_der(&k.material);
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(Error::BadKey)?;
            jwk.common.key_id = Some(k.kid.clone());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
            public.insert(
                k.kid.clone(),
                jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(Error::BadKey)?,
            );
            jwks.push(jwk);
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &k.material)
                .map_err(|_| {
                    Error::BadKey(jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey.into())
                })?;
            pems.insert(
                k.kid.clone(),
                spki_pem(aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref()).into(),
            );
        }
        let active = ring.get(active_key(ring, now)).ok_or_else(|| {
            Error::BadKey(jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey.into())
        })?;
        Ok(Signer {
            kid: active.kid.clone(),
            key: EncodingKey::from_ec_der(&active.material),
            public,
            jwks: serde_json::to_string(&JwkSet { keys: jwks }).expect("a JWKS serialises"),
            pem_keys: serde_json::Value::Object(pems).to_string(),
            issuer: issuer.to_string(),
        })
    }

    /// Whether `kid` names one of the published keys.
    pub fn knows(&self, kid: &str) -> bool {
        self.public.contains_key(kid)
    }

    /// The `{kid: PEM}` document served at `/.castellan/iap/public_key`.
    pub fn pem_keys(&self) -> &str {
        &self.pem_keys
    }

    /// An assertion in Google IAP's shape (`x-goog-iap-jwt-assertion`): issuer
    /// `https://cloud.google.com/iap`, `sub` prefixed `accounts.google.com:`.
    pub fn sign_iap(
        &self,
        who: &Identity,
        audience: &str,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, Error> {
        let now = crate::clock::now();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let mut claims = serde_json::json!({
            "iss": crate::identity::google::IAP_ISSUER,
            "aud": audience,
            "sub": format!("{}{}", crate::identity::google::IAP_PREFIX, who.subject),
            "email": who.email,
            "iat": now,
            "exp": now + LIFETIME_SECS,
        });
        // As IAP does: the Workspace domain, when the provider said which.
        if let Some(hd) = &who.hd {
            claims["hd"] = hd.clone().into();
        }
        for (name, value) in extra {
            claims[name] = value.clone();
        }
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(Error::Sign)
    }

    /// An access token for service account `name` (minted with key `key_id`) to call the app whose
    /// audience is `audience`; valid for [`ACCESS_TOKEN_SECS`].
    pub fn sign_access_token(
        &self,
        name: &str,
        key_id: &str,
        audience: &str,
    ) -> Result<String, Error> {
        let now = crate::clock::now();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": format!("serviceAccount:{name}"),
            "client_id": name,
            "ckid": key_id,
            "iat": now,
            "exp": now + ACCESS_TOKEN_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(Error::Sign)
    }

    /// An access token for a person signed in on the command line: tied to the CLI's session
    /// (`sid`, the session's digest), so revoking that session ends it, and carrying when the
    /// person signed in (`auth_time`), as re-authentication rules need.
    pub fn sign_user_access_token(
        &self,
        who: &Identity,
        session_digest: &str,
        audience: &str,
        not_after: i64,
        auth_time: i64,
    ) -> Result<(String, i64), Error> {
        let now = crate::clock::now();
        let exp = (now + ACCESS_TOKEN_SECS).min(not_after);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": who.subject,
            "email": who.email,
            "sid": session_digest,
            "auth_time": auth_time,
            "iat": now,
            "exp": exp,
        });
        Ok((
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(Error::Sign)?,
            exp - now,
        ))
    }

    /// Checks one of castellan's access tokens for `audience`.
    pub fn verify_access_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<VerifiedToken, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let public = match header.kid.as_deref().and_then(|k| self.public.get(k)) {
            Some(p)
                if header.alg == Algorithm::ES256 && header.typ.as_deref() == Some("at+jwt") =>
            {
                p
            }
            _ => return Err("not a castellan access token".into()),
        };
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = ACCESS_TOKEN_LEEWAY_SECS;
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, public, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                        "the token is for another app".to_string()
                    }
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "the token has expired".to_string()
                    }
                    _ => format!("the token is not valid: {e}"),
                }
            })?;
        let c = data.claims;
        let subject = match (
            c["client_id"].as_str(),
            c["ckid"].as_str(),
            c["sid"].as_str(),
        ) {
            (Some(n), Some(k), None) => TokenSubject::ServiceAccount {
                name: n.to_string(),
                key: k.to_string(),
            },
            (None, None, Some(sid)) => TokenSubject::Session(sid.to_string()),
            _ => return Err("the token names neither a service account nor a session".into()),
        };
        let expires_at = c["exp"].as_i64().ok_or("the token's exp is not a number")?;
        Ok(VerifiedToken {
            subject,
            expires_at,
        })
    }

    /// The assertion for a service account (no email).
    pub fn sign_service_account(&self, name: &str, audience: &str) -> Result<String, Error> {
        let now = crate::clock::now();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": format!("serviceAccount:{name}"),
            "provider": "serviceAccount",
            "iat": now,
            "exp": now + LIFETIME_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(Error::Sign)
    }

    /// The JWKS document served at `/.castellan/jwks.json`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A fresh assertion of `who` for the app whose audience is `audience`.
    pub fn sign(
        &self,
        who: &Identity,
        audience: &str,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, Error> {
        let now = crate::clock::now();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: &self.issuer,
            aud: audience,
            sub: &who.subject,
            email: &who.email,
            provider: &who.provider,
            iat: now,
            exp: now + LIFETIME_SECS,
            extra,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(Error::Sign)
    }
}

/// A P-256 public key (65-byte uncompressed point) as a PEM SubjectPublicKeyInfo.
fn spki_pem(point: &[u8]) -> String {
    use base64::Engine;
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { point } }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(point);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[tokio::test]
    async fn keys_rotate_with_the_next_one_published_first_and_old_tokens_still_valid() {
        let (_d, store) = crate::store::temp_store().await;
        let day = std::time::Duration::from_secs(86_400);
        let issuer = "https://apps.example.com";
        let t0 = crate::clock::now();
        let first = Signer::load(&store, issuer, day, t0).await.unwrap();
        let token = first
            .sign_access_token("etl", "key1", "castellan:demo")
            .unwrap();
        let jwks = |s: &Signer| -> Vec<String> {
            let set: JwkSet = serde_json::from_str(s.jwks()).unwrap();
            set.keys
                .iter()
                .map(|k| k.common.key_id.clone().unwrap())
                .collect()
        };
        assert_eq!(jwks(&first), vec![first.kid().to_string()]);
        // An hour before the period ends the next key is made and published, but not used.
        let ahead = Signer::load(&store, issuer, day, t0 + 86_400 - 3_600)
            .await
            .unwrap();
        assert_eq!(ahead.kid(), first.kid());
        assert_eq!(jwks(&ahead).len(), 2);
        let next = jwks(&ahead)[1].clone();
        // At the end of the period it signs, and a verifier holding the earlier JWKS knows it.
        let rotated = Signer::load(&store, issuer, day, t0 + 86_400)
            .await
            .unwrap();
        assert_eq!(rotated.kid(), next);
        // Tokens signed with the previous key still verify.
        assert!(matches!(
            rotated.verify_access_token(&token, "castellan:demo"),
            Ok(VerifiedToken {
                subject: TokenSubject::ServiceAccount { .. },
                ..
            })
        ));
        let pems: serde_json::Value = serde_json::from_str(rotated.pem_keys()).unwrap();
        assert!(pems[first.kid()].is_string() && pems[&next].is_string());
    }

    #[tokio::test]
    async fn assertions_verify_against_the_published_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::config::StoreLocation::Sqlite(
            dir.path().join("t.db"),
        ))
        .await
        .unwrap();
        let month = std::time::Duration::from_secs(30 * 86400);
        let now = crate::clock::now();
        let signer = Signer::load(&store, "https://apps.example.com", month, now)
            .await
            .unwrap();
        let again = Signer::load(&store, "https://apps.example.com", month, now)
            .await
            .unwrap();
        assert_eq!(signer.kid(), again.kid(), "the key is kept in the store");
        let who = Identity {
            email: "alice@example.com".into(),
            subject: "123".into(),
            provider: "corp".into(),
            groups: vec![],
            hd: None,
            domain: None,
            amr: Vec::new(),
            acr: None,
            claims: Default::default(),
        };
        let token = signer
            .sign(&who, "castellan:demo", &serde_json::Map::new())
            .unwrap();
        let set: JwkSet = serde_json::from_str(signer.jwks()).unwrap();
        let jwk = set.find(signer.kid()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["castellan:demo"]);
        v.set_issuer(&["https://apps.example.com"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["email"], "alice@example.com");
        // The PEM form verifies the same token (what Google's libraries use for IAP).
        let pems: serde_json::Value = serde_json::from_str(signer.pem_keys()).unwrap();
        let pem = pems[signer.kid()].as_str().unwrap();
        jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            &v,
        )
        .unwrap();
        v.set_audience(&["castellan:other"]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &DecodingKey::from_jwk(jwk).unwrap(),
                &v
            )
            .is_err()
        );
    }
}
