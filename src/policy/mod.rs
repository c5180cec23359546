//! Access policies in the shape of Cloud IAM: bindings of members to roles, with optional conditions.
//!
//! This module holds the data model and its validation; [`snapshot`] compiles policies into an index
//! and decides requests; [`condition`] is the expression language. No I/O anywhere here.
//!
//! May use: only the leaves `clock` and `net`: no async, no HTTP, no store.

pub mod access_level;
pub mod condition;
pub mod explain;
mod identity;
pub mod snapshot;
pub mod step_up;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use condition::Condition;
pub use explain::{ExplainedBinding, Explanation};
pub use identity::Identity;
pub use snapshot::{Decision, Reason, Snapshot, Who};
pub use step_up::{Shortfall, StepUp};

/// The part of an email address after the last `@`.
pub fn email_domain(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

/// Who a request is from, once a credential has been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person, signed in with a browser, the command line or a provider's ID token.
    Person(std::sync::Arc<Identity>),
    /// A programmatic caller with a castellan service account.
    ServiceAccount(std::sync::Arc<str>),
}

impl Principal {
    /// How decisions see this principal.
    pub fn who(&self) -> Who<'_> {
        match self {
            Principal::Person(i) => i.who(),
            Principal::ServiceAccount(name) => Who::ServiceAccount(name),
        }
    }

    /// What `request.auth` is for this principal in conditions; `castellan_groups` are the
    /// castellan groups the snapshot says a person is in.
    pub fn auth<'a>(&'a self, castellan_groups: &'a [String]) -> condition::Auth<'a> {
        match self {
            Principal::Person(i) => i.auth(castellan_groups),
            Principal::ServiceAccount(_) => condition::Auth::service_account(),
        }
    }

    /// The castellan groups `snapshot` says this principal is in (none for service accounts).
    pub fn castellan_groups<'s>(&self, snapshot: &'s Snapshot) -> &'s [String] {
        match self {
            Principal::Person(i) => snapshot.groups_of(&i.email),
            Principal::ServiceAccount(_) => &[],
        }
    }

    /// The principal as logs, audit records and messages name it: an email, or
    /// `serviceAccount:NAME`.
    pub fn name(&self) -> String {
        match self {
            Principal::Person(i) => i.email.clone(),
            Principal::ServiceAccount(n) => format!("serviceAccount:{n}"),
        }
    }
}

/// A principal in a binding, spelled as in Cloud IAM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// `user:alice@example.com` (stored lower case; compared case-insensitively).
    User(String),
    /// `group:NAME`: a castellan group, or a group a provider asserts in its groups claim.
    Group(String),
    /// `domain:example.com`: everyone whose email is in that domain.
    Domain(String),
    /// `serviceAccount:NAME`: a programmatic caller.
    ServiceAccount(String),
    /// `allAuthenticatedUsers`: anyone who signed in.
    AllAuthenticatedUsers,
    /// `allUsers`: anyone at all, signed in or not (a public app).
    AllUsers,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a member: {expected}")]
pub struct MemberError {
    input: String,
    expected: std::borrow::Cow<'static, str>,
}

const MEMBER_FORMS: &str = "write user:EMAIL, group:NAME, domain:DOMAIN, serviceAccount:NAME, allAuthenticatedUsers or allUsers";

impl Member {
    pub fn parse(input: &str) -> Result<Member, MemberError> {
        let err = |expected: &'static str| MemberError {
            input: input.to_string(),
            expected: expected.into(),
        };
        let s = input.trim();
        match s {
            "allAuthenticatedUsers" => return Ok(Member::AllAuthenticatedUsers),
            "allUsers" => return Ok(Member::AllUsers),
            _ => {}
        }
        let Some((kind, value)) = s.split_once(':') else {
            let lower = s.to_ascii_lowercase();
            if is_email(&lower) {
                return Err(MemberError {
                    input: input.to_string(),
                    expected: format!("a person is written user:EMAIL: did you mean user:{lower}?")
                        .into(),
                });
            }
            return Err(err(MEMBER_FORMS));
        };
        match kind {
            "user" => {
                let v = value.to_ascii_lowercase();
                if is_email(&v) {
                    Ok(Member::User(v))
                } else {
                    Err(err(
                        "after user: comes an email address, e.g. user:alice@example.com",
                    ))
                }
            }
            "domain" => {
                let v = value.to_ascii_lowercase();
                if is_domain(&v) {
                    Ok(Member::Domain(v))
                } else if v.contains('@') {
                    Err(err(
                        "after domain: comes a domain name without '@', e.g. domain:example.com (for one person write user:EMAIL)",
                    ))
                } else if !v.contains('.') {
                    Err(err(
                        "after domain: comes a whole domain name with its dot, e.g. domain:example.com",
                    ))
                } else {
                    Err(err(
                        "after domain: comes a domain name (letters, digits, '-' and dots), e.g. domain:example.com",
                    ))
                }
            }
            "group" if valid_group(value) => Ok(Member::Group(value.to_string())),
            "group" => Err(err(
                "after group: comes a group name (letters, digits, spaces and . _ @ - / :, at most 256 characters), e.g. group:analysts",
            )),
            "serviceAccount" if valid_service_account(&value.to_ascii_lowercase()) => {
                Ok(Member::ServiceAccount(value.to_ascii_lowercase()))
            }
            "serviceAccount" => Err(err(
                "after serviceAccount: comes a name of lower-case letters, digits, '-', '.', '@', e.g. serviceAccount:ci-bot",
            )),
            _ => Err(err(MEMBER_FORMS)),
        }
    }

    /// Whether this member makes an app public (no sign-in needed).
    pub fn is_public(&self) -> bool {
        *self == Member::AllUsers
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::User(e) => write!(f, "user:{e}"),
            Member::Group(g) => write!(f, "group:{g}"),
            Member::Domain(d) => write!(f, "domain:{d}"),
            Member::ServiceAccount(s) => write!(f, "serviceAccount:{s}"),
            Member::AllAuthenticatedUsers => f.write_str("allAuthenticatedUsers"),
            Member::AllUsers => f.write_str("allUsers"),
        }
    }
}

impl Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Member::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Group names: provider groups can be display names or paths (`/eng/data`), so spaces, `/` and
/// `:` are allowed; control characters are not.
pub fn valid_group(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.trim() == s
        && s.chars()
            .all(|c| c.is_alphanumeric() || " ._@-/:".contains(c))
}

fn valid_service_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.@_".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// A plausible email address: one '@', a non-empty local part, a domain with a dot.
pub fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !local.contains(char::is_whitespace)
                && local.len() <= 64
                && is_domain(domain)
                && !local.contains(['<', '>', '"', ',', ';', '/', '\\', '@'])
        }
        None => false,
    }
}

fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// What a binding grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Open the app (a web app: its pages and WebSockets).
    Accessor,
    /// Manage the app's policy and see its audit trail (on the global policy: everything).
    Admin,
    /// Open tunnels to a TCP app (SSH, a database). Separate from [`Role::Accessor`], so that
    /// sharing a web app never hands out a shell.
    TunnelAccessor,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "roles/accessor" | "roles/iap.httpsResourceAccessor" => Ok(Role::Accessor),
            "roles/admin" | "roles/iap.admin" => Ok(Role::Admin),
            "roles/tunnelAccessor" | "roles/iap.tunnelResourceAccessor" => Ok(Role::TunnelAccessor),
            _ => Err(format!(
                "`{s}` is not a role: use roles/accessor (alias roles/iap.httpsResourceAccessor), roles/tunnelAccessor (alias roles/iap.tunnelResourceAccessor, for TCP apps) or roles/admin (alias roles/iap.admin)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Accessor => "roles/accessor",
            Role::Admin => "roles/admin",
            Role::TunnelAccessor => "roles/tunnelAccessor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A binding's condition as written, with its compiled form.
#[derive(Debug, Clone)]
pub struct BindingCondition {
    pub title: String,
    pub description: String,
    pub expression: String,
    pub compiled: Condition,
}

impl PartialEq for BindingCondition {
    fn eq(&self, other: &Self) -> bool {
        self.title == other.title
            && self.expression == other.expression
            && self.description == other.description
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub role: Role,
    pub members: Vec<Member>,
    pub condition: Option<BindingCondition>,
}

/// One resource's policy: an app's, or the global one that applies to every app.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    pub etag: String,
    pub bindings: Vec<Binding>,
}

/// The JSON document, exactly the shape `gcloud iap web get-iam-policy --format=json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default = "version3")]
    pub version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    #[serde(default)]
    pub bindings: Vec<DocumentBinding>,
}

fn version3() -> u32 {
    3
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentBinding {
    pub role: String,
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<DocumentCondition>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentCondition {
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub expression: String,
}

/// Everything wrong with a policy document, each with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<String>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the policy has {} error(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl Policy {
    /// Validates and compiles a document; every problem is reported with its binding and member.
    pub fn from_document(doc: &Document) -> Result<Policy, PolicyErrors> {
        let mut errors = Vec::new();
        if doc.version != 3 && doc.version != 1 {
            errors.push(format!("version {} is not supported: use 3", doc.version));
        }
        let mut bindings = Vec::new();
        for (i, b) in doc.bindings.iter().enumerate() {
            let role = Role::parse(&b.role)
                .map_err(|e| errors.push(format!("bindings[{i}].role: {e}")))
                .ok();
            let mut members = Vec::new();
            for (j, m) in b.members.iter().enumerate() {
                match Member::parse(m) {
                    Ok(m) if !members.contains(&m) => members.push(m),
                    Ok(_) => {}
                    Err(e) => errors.push(format!("bindings[{i}].members[{j}]: {e}")),
                }
            }
            if b.members.is_empty() {
                errors.push(format!(
                    "bindings[{i}]: a binding needs at least one member"
                ));
            }
            let condition = match &b.condition {
                None => None,
                Some(c) => match Condition::compile(&c.expression) {
                    Ok(compiled) => Some(BindingCondition {
                        title: c.title.clone(),
                        description: c.description.clone(),
                        expression: c.expression.clone(),
                        compiled,
                    }),
                    Err(e) => {
                        errors.push(format!(
                            "bindings[{i}].condition.expression {e}:\n      {}",
                            e.pointed(&c.expression).replace('\n', "\n      ")
                        ));
                        None
                    }
                },
            };
            if let Some(role) = role {
                bindings.push(Binding {
                    role,
                    members,
                    condition,
                });
            }
        }
        if errors.is_empty() {
            Ok(Policy {
                etag: doc.etag.clone(),
                bindings,
            })
        } else {
            Err(PolicyErrors(errors))
        }
    }

    pub fn to_document(&self) -> Document {
        Document {
            version: 3,
            etag: self.etag.clone(),
            bindings: self
                .bindings
                .iter()
                .map(|b| DocumentBinding {
                    role: b.role.as_str().to_string(),
                    members: b.members.iter().map(Member::to_string).collect(),
                    condition: b.condition.as_ref().map(|c| DocumentCondition {
                        title: c.title.clone(),
                        description: c.description.clone(),
                        expression: c.expression.clone(),
                    }),
                })
                .collect(),
        }
    }

    /// Adds `member` to the binding with this role and condition (creating it); false if present.
    pub fn add(&mut self, role: Role, member: Member, condition: Option<BindingCondition>) -> bool {
        if let Some(b) = self
            .bindings
            .iter_mut()
            .find(|b| b.role == role && b.condition == condition)
        {
            if b.members.contains(&member) {
                return false;
            }
            b.members.push(member);
            return true;
        }
        self.bindings.push(Binding {
            role,
            members: vec![member],
            condition,
        });
        true
    }

    /// Removes `member` from the bindings with this role (only the one with `condition_title` when
    /// given); drops bindings left empty. Returns how many bindings it was removed from.
    pub fn remove(&mut self, role: Role, member: &Member, condition_title: Option<&str>) -> usize {
        let mut n = 0;
        for b in &mut self.bindings {
            let title_ok = match condition_title {
                None => true,
                Some(t) => b.condition.as_ref().is_some_and(|c| c.title == t),
            };
            if b.role == role && title_ok {
                let before = b.members.len();
                b.members.retain(|m| m != member);
                n += before - b.members.len();
            }
        }
        self.bindings.retain(|b| !b.members.is_empty());
        n
    }

    pub fn is_public(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.role == Role::Accessor && b.members.iter().any(Member::is_public))
    }
}

impl BindingCondition {
    pub fn new(
        title: &str,
        description: &str,
        expression: &str,
    ) -> Result<BindingCondition, condition::Error> {
        Ok(BindingCondition {
            title: title.to_string(),
            description: description.to_string(),
            expression: expression.to_string(),
            compiled: Condition::compile(expression)?,
        })
    }

    /// The access levels its expression names (see [`Condition::access_levels_named`]).
    pub fn access_levels_named(&self) -> Vec<&str> {
        self.compiled.access_levels_named()
    }

    /// A condition that ends access at `until` (Unix seconds): what `--expires` means.
    pub fn expiring(until: i64) -> BindingCondition {
        let ts = crate::clock::format_rfc3339(until);
        BindingCondition::new(
            &format!("expires {ts}"),
            "",
            &format!("request.time < timestamp(\"{ts}\")"),
        )
        .expect("the generated expiry condition compiles")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_parsing() {
        for (input, want) in [
            ("user:Alice@Example.COM", "user:alice@example.com"),
            ("domain:Example.com", "domain:example.com"),
            ("group:analysts", "group:analysts"),
            ("group:Data Science/EU", "group:Data Science/EU"),
            ("serviceAccount:CI-bot", "serviceAccount:ci-bot"),
            (
                "serviceAccount:bot@proj.iam.gserviceaccount.com",
                "serviceAccount:bot@proj.iam.gserviceaccount.com",
            ),
            ("allAuthenticatedUsers", "allAuthenticatedUsers"),
            ("allUsers", "allUsers"),
        ] {
            assert_eq!(Member::parse(input).unwrap().to_string(), want);
        }
        for bad in [
            "alice@example.com",
            "user:alice",
            "user:@example.com",
            "user:a@b",
            "user:a@@b.com",
            "domain:@example.com",
            "domain:example",
            "role:admin",
            "allusers",
            "group:",
            "group: padded",
            "group:bad\ncontrol",
            "serviceAccount:",
            "serviceAccount:has space",
            "",
        ] {
            let e = Member::parse(bad).unwrap_err().to_string();
            assert!(e.contains("is not a member"), "{bad}: {e}");
        }
    }

    #[test]
    fn roles_and_aliases() {
        assert_eq!(
            Role::parse("roles/iap.httpsResourceAccessor").unwrap(),
            Role::Accessor
        );
        assert_eq!(Role::parse("roles/iap.admin").unwrap(), Role::Admin);
        assert!(
            Role::parse("roles/owner")
                .unwrap_err()
                .contains("roles/accessor")
        );
    }

    #[test]
    fn documents_round_trip_and_report_every_error() {
        let json = r#"{"version":3,"etag":"abc","bindings":[
            {"role":"roles/iap.httpsResourceAccessor","members":["user:A@x.com","domain:x.com"]},
            {"role":"roles/accessor","members":["group:eng"],"condition":{"title":"reports","expression":"request.path.startsWith(\"/reports\")"}}]}"#;
        let doc: Document = serde_json::from_str(json).unwrap();
        let p = Policy::from_document(&doc).unwrap();
        assert_eq!(p.bindings.len(), 2);
        let back = serde_json::to_value(p.to_document()).unwrap();
        assert_eq!(back["bindings"][0]["role"], "roles/accessor");
        assert_eq!(back["bindings"][0]["members"][0], "user:a@x.com");
        assert_eq!(back["bindings"][1]["condition"]["title"], "reports");

        let bad: Document = serde_json::from_str(
            r#"{"bindings":[{"role":"roles/owner","members":["bob"]},{"role":"roles/accessor","members":[],"condition":{"expression":"request.pth == 1"}}]}"#,
        )
        .unwrap();
        let errs = Policy::from_document(&bad).unwrap_err().0;
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].starts_with("bindings[0].role"));
        assert!(errs[1].starts_with("bindings[0].members[0]"));
        assert!(errs[3].contains("column 9"), "{errs:#?}");
    }

    #[test]
    fn member_errors_say_what_to_write() {
        let says = |input: &str, text: &str| {
            let e = Member::parse(input).unwrap_err().to_string();
            assert!(e.contains(text), "{input}: {e}");
        };
        says("Alice@Example.com", "did you mean user:alice@example.com?");
        says("domain:example", "with its dot");
        says(
            "domain:alice@example.com",
            "for one person write user:EMAIL",
        );
        says("team:eng", "write user:EMAIL, group:NAME");
    }

    #[test]
    fn add_and_remove_keep_bindings_tidy() {
        let mut p = Policy::default();
        let alice = Member::parse("user:alice@example.com").unwrap();
        assert!(p.add(Role::Accessor, alice.clone(), None));
        assert!(!p.add(Role::Accessor, alice.clone(), None));
        assert!(p.add(Role::Accessor, Member::AllAuthenticatedUsers, None));
        assert!(p.add(
            Role::Accessor,
            alice.clone(),
            Some(BindingCondition::expiring(2_000_000_000))
        ));
        assert_eq!(p.bindings.len(), 2);
        assert_eq!(p.remove(Role::Accessor, &alice, None), 2);
        assert_eq!(
            p.bindings.len(),
            1,
            "the emptied conditional binding is dropped"
        );
        assert!(!p.is_public());
        p.add(Role::Accessor, Member::AllUsers, None);
        assert!(p.is_public());
    }
}
