//! What an ID token says about how the person signed in (`amr`, `acr`), and the claims the
//! provider's `claims` key keeps with the session for conditions.

use super::{Client, IdClaims};
use crate::policy::Identity;

/// The most of one claim castellan keeps (its JSON), and the most `amr` values.
const CLAIM_MAX_BYTES: usize = 4096;
const AMR_MAX: usize = 16;

impl Client {
    /// Adds how the person signed in (`amr`, `acr`) and the claims the provider's `claims` key
    /// keeps. Values of the wrong shape are left out; a claim larger than 4 KiB too, with a warning.
    pub(super) fn with_sign_in(&self, mut who: Identity, claims: &IdClaims) -> Identity {
        who.amr = match &claims.amr {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|m| m.as_str())
                .filter(|m| !m.is_empty() && m.len() <= 64)
                .take(AMR_MAX)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        who.acr = match &claims.acr {
            Some(serde_json::Value::String(a)) if !a.is_empty() && a.len() <= 256 => {
                Some(a.clone())
            }
            _ => None,
        };
        for name in &self.config.claims {
            let Some(value) = claims.extra.get(name) else {
                continue;
            };
            if serde_json::to_string(value).map_or(usize::MAX, |s| s.len()) > CLAIM_MAX_BYTES {
                tracing::warn!(provider = %self.config.id, claim = %name, "a claim larger than 4 KiB was not kept");
                continue;
            }
            who.claims.insert(name.clone(), value.clone());
        }
        who
    }
}
