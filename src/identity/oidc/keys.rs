//! The provider's signing keys: found by `kid` and algorithm in its JWKS, which is fetched again
//! (at most every [`JWKS_REFRESH_INTERVAL`]) when a token names a key it does not hold.

use std::time::Instant;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{Client, Error, JWKS_REFRESH_INTERVAL};

impl Client {
    /// The provider's key for `kid`, refreshing the JWKS once (rate-limited) when it is unknown.
    pub(super) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, Error> {
        let m = self.metadata().await?;
        let mut keys = self.keys.lock().await;
        if keys.fetched.is_none() {
            keys.set = self.get_json(&m.jwks_uri).await?;
            keys.fetched = Some(Instant::now());
        }
        if find_key(&keys.set, kid, alg).is_none()
            && keys
                .fetched
                .is_some_and(|t| t.elapsed() >= JWKS_REFRESH_INTERVAL)
        {
            keys.set = self.get_json(&m.jwks_uri).await?;
            keys.fetched = Some(Instant::now());
        }
        if let Some(key) = find_key(&keys.set, kid, alg) {
            return DecodingKey::from_jwk(key).map_err(|e| {
                self.rejected(format!("the provider's key {kid:?} is unusable: {e}"))
            });
        }
        Err(self.rejected(format!(
            "the ID token is signed by a key the provider does not publish (kid {})",
            kid.unwrap_or("(none)")
        )))
    }
}

fn find_key<'a>(
    set: &'a JwkSet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Option<&'a jsonwebtoken::jwk::Jwk> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    let fits = |k: &&jsonwebtoken::jwk::Jwk| {
        matches!(
            (&k.algorithm, alg),
            (
                P::RSA(_),
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
                | (P::OctetKeyPair(_), Algorithm::EdDSA)
        )
    };
    match kid {
        Some(kid) => set
            .keys
            .iter()
            .filter(fits)
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => {
            let mut candidates = set.keys.iter().filter(fits);
            let first = candidates.next();
            // Without a kid, only an unambiguous key will do.
            if candidates.next().is_some() {
                None
            } else {
                first
            }
        }
    }
}
