//! The sessions' `auth` column: how the person signed in (`amr`, `acr`) and the provider claims
//! castellan keeps for conditions, as one JSON value.

use crate::policy::Identity;

/// The `auth` column: how the person signed in, and the claims kept.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct SignInContext {
    #[serde(default)]
    pub(super) amr: Vec<String>,
    #[serde(default)]
    pub(super) acr: Option<String>,
    #[serde(default)]
    pub(super) claims: std::collections::BTreeMap<String, serde_json::Value>,
}

impl SignInContext {
    pub(super) fn of(who: &Identity) -> SignInContext {
        SignInContext {
            amr: who.amr.clone(),
            acr: who.acr.clone(),
            claims: who.claims.clone(),
        }
    }

    /// A stored value; one this castellan cannot read (none should exist) reads as empty, which
    /// grants nothing a condition on it asks for.
    pub(super) fn parse(json: &str) -> SignInContext {
        serde_json::from_str(json).unwrap_or_default()
    }

    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings and JSON values serialise")
    }
}
