//! A person after signing in: who they are, the groups and domain decisions see, and how they
//! signed in (the claims conditions may read).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Who, condition, email_domain};

/// Who is asking, after signing in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The email address, lower case.
    pub email: String,
    /// The provider's subject (`sub`), or the email for local accounts.
    pub subject: String,
    /// The provider id, or `local`.
    pub provider: String,
    /// Groups the provider asserted (its `groups_claim`); castellan's own groups are added at decision time.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The Google Workspace domain (`hd` claim) when the provider asserts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
    /// The domain `domain:` members match, decided at sign-in: for Google the Workspace domain
    /// (`hd`; a consumer account has none, as in Google IAP), for other providers `hd` when they
    /// assert it, else the email's domain. None when stored by an older castellan: the email's
    /// domain then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// How they signed in (RFC 8176 `amr` values): the provider's, or for local accounts `pwd`,
    /// `otp` and `mfa` (password and a one-time code), `hwk` (a passkey).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The provider's `acr` (authentication context class), when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// The ID-token claims the provider's `claims` key keeps, for conditions and apps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Identity {
    /// A local account: its subject is its email, its domain the email's.
    pub fn local(email: &str) -> Identity {
        Identity {
            email: email.to_string(),
            subject: email.to_string(),
            provider: "local".into(),
            groups: Vec::new(),
            hd: None,
            domain: email_domain(email).map(str::to_string),
            amr: Vec::new(),
            acr: None,
            claims: BTreeMap::new(),
        }
    }

    /// The same person, having signed in with these methods (RFC 8176 `amr` values).
    pub fn signed_in_with(mut self, amr: &[&str]) -> Identity {
        self.amr = amr.iter().map(|m| m.to_string()).collect();
        self
    }

    /// What `request.auth` is for this person in conditions; `castellan_groups` are the castellan
    /// groups they are in (the snapshot knows them).
    pub fn auth<'a>(&'a self, castellan_groups: &'a [String]) -> condition::Auth<'a> {
        condition::Auth {
            provider: &self.provider,
            groups: [&self.groups, castellan_groups],
            amr: &self.amr,
            acr: self.acr.as_deref(),
            claims: &self.claims,
        }
    }

    /// The domain `domain:` members match (see [`Identity::domain`]); empty means none.
    pub fn policy_domain(&self) -> Option<&str> {
        match self.domain.as_deref() {
            Some("") => None,
            Some(d) => Some(d),
            None => email_domain(&self.email),
        }
    }

    /// How decisions see this person.
    pub fn who(&self) -> Who<'_> {
        Who::User {
            email: &self.email,
            groups: &self.groups,
            domain: self.policy_domain(),
        }
    }
}
