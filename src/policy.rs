//! The access decision: a pure function of an app's bindings and the caller's identity, with a reason.
//!
//! No I/O here. The server builds the inputs, calls [`decide`] and turns the [`Decision`] into a response;
//! the reasons are stable kebab-case strings that appear in logs and on pages.

use std::fmt;

/// Who is asking. `None` at the call site means nobody is signed in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The email address, lower case.
    pub email: String,
    /// The provider's subject (`sub`), or the email for local accounts.
    pub subject: String,
    /// The provider id, or `local`.
    pub provider: String,
}

/// A principal in an access list, in the same spelling as Cloud IAM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// `user:alice@example.com` (compared case-insensitively; stored lower case).
    User(String),
    /// `domain:example.com`: everyone whose email is in that domain.
    Domain(String),
    /// `allAuthenticatedUsers`: anyone who signed in.
    AllAuthenticatedUsers,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a member: {expected}")]
pub struct MemberError {
    input: String,
    expected: &'static str,
}

impl Member {
    pub fn parse(input: &str) -> Result<Member, MemberError> {
        let err = |expected| MemberError {
            input: input.to_string(),
            expected,
        };
        let s = input.trim();
        if s == "allAuthenticatedUsers" {
            return Ok(Member::AllAuthenticatedUsers);
        }
        const FORMS: &str = "write user:EMAIL (user:alice@example.com), domain:DOMAIN (domain:example.com) or allAuthenticatedUsers";
        let Some((kind, value)) = s.split_once(':') else {
            return Err(err(FORMS));
        };
        let value = value.to_ascii_lowercase();
        match kind {
            "user" if is_email(&value) => Ok(Member::User(value)),
            "user" => Err(err(
                "after user: comes an email address, e.g. user:alice@example.com",
            )),
            "domain" if is_domain(&value) => Ok(Member::Domain(value)),
            "domain" => Err(err(
                "after domain: comes a domain name without '@', e.g. domain:example.com",
            )),
            "group" | "serviceAccount" | "allUsers" => Err(err(
                "groups, service accounts and public access come with full access policies; this version accepts user:, domain: and allAuthenticatedUsers",
            )),
            _ => Err(err(FORMS)),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::User(e) => write!(f, "user:{e}"),
            Member::Domain(d) => write!(f, "domain:{d}"),
            Member::AllAuthenticatedUsers => f.write_str("allAuthenticatedUsers"),
        }
    }
}

/// A plausible email address: one '@', a non-empty local part, a domain with a dot.
pub fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !local.contains(char::is_whitespace)
                && local.len() <= 64
                && is_domain(domain)
                && !local.contains(['<', '>', '"', ',', ';', '/', '\\'])
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

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Reason),
    /// Nobody is signed in: sign in first.
    SignIn,
    /// Signed in, but no binding admits this person.
    Deny(Reason),
}

/// Why a decision was made: stable strings for logs, pages and (later) the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UserUnauthenticated,
    UserMatch,
    DomainMatch,
    AllAuthenticatedUsers,
    NoMatchingBinding,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UserUnauthenticated => "user-unauthenticated",
            Reason::UserMatch => "user-ok",
            Reason::DomainMatch => "domain-ok",
            Reason::AllAuthenticatedUsers => "all-authenticated-users",
            Reason::NoMatchingBinding => "no-matching-binding",
        }
    }
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Allow(r) | Decision::Deny(r) => *r,
            Decision::SignIn => Reason::UserUnauthenticated,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::SignIn => "sign-in",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Decides whether `who` may open an app whose access list is `members`.
pub fn decide(members: &[Member], who: Option<&Identity>) -> Decision {
    let Some(who) = who else {
        return Decision::SignIn;
    };
    let email = who.email.to_ascii_lowercase();
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let mut best: Option<Reason> = None;
    for m in members {
        let hit = match m {
            Member::User(u) if *u == email => Some(Reason::UserMatch),
            Member::Domain(d) if d == domain => Some(Reason::DomainMatch),
            Member::AllAuthenticatedUsers => Some(Reason::AllAuthenticatedUsers),
            _ => None,
        };
        // The most specific match names the reason: user, then domain, then everyone.
        if let Some(r) = hit {
            best = Some(match (best, r) {
                (Some(Reason::UserMatch), _) | (_, Reason::UserMatch) => Reason::UserMatch,
                (Some(Reason::DomainMatch), _) | (_, Reason::DomainMatch) => Reason::DomainMatch,
                _ => r,
            });
        }
    }
    match best {
        Some(r) => Decision::Allow(r),
        None => Decision::Deny(Reason::NoMatchingBinding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(email: &str) -> Identity {
        Identity {
            email: email.into(),
            subject: "s".into(),
            provider: "corp".into(),
        }
    }

    fn members(list: &[&str]) -> Vec<Member> {
        list.iter().map(|m| Member::parse(m).unwrap()).collect()
    }

    #[test]
    fn decision_table() {
        let cases: &[(&[&str], Option<&str>, Decision)] = &[
            (&["user:alice@example.com"], None, Decision::SignIn),
            (
                &[],
                Some("alice@example.com"),
                Decision::Deny(Reason::NoMatchingBinding),
            ),
            (
                &["user:alice@example.com"],
                Some("alice@example.com"),
                Decision::Allow(Reason::UserMatch),
            ),
            (
                &["user:Alice@Example.com"],
                Some("ALICE@example.COM"),
                Decision::Allow(Reason::UserMatch),
            ),
            (
                &["user:alice@example.com"],
                Some("bob@example.com"),
                Decision::Deny(Reason::NoMatchingBinding),
            ),
            (
                &["domain:example.com"],
                Some("bob@example.com"),
                Decision::Allow(Reason::DomainMatch),
            ),
            (
                &["domain:example.com"],
                Some("bob@evil-example.com"),
                Decision::Deny(Reason::NoMatchingBinding),
            ),
            (
                &["domain:example.com"],
                Some("bob@sub.example.com"),
                Decision::Deny(Reason::NoMatchingBinding),
            ),
            (
                &["domain:example.com"],
                Some("bob@example.com.evil.net"),
                Decision::Deny(Reason::NoMatchingBinding),
            ),
            (
                &["allAuthenticatedUsers"],
                Some("x@y.org"),
                Decision::Allow(Reason::AllAuthenticatedUsers),
            ),
            (&["allAuthenticatedUsers"], None, Decision::SignIn),
            (
                &[
                    "allAuthenticatedUsers",
                    "domain:example.com",
                    "user:bob@example.com",
                ],
                Some("bob@example.com"),
                Decision::Allow(Reason::UserMatch),
            ),
        ];
        for (list, email, want) in cases {
            let id = email.map(who);
            assert_eq!(
                decide(&members(list), id.as_ref()),
                *want,
                "{list:?} {email:?}"
            );
        }
    }

    #[test]
    fn member_parsing() {
        assert_eq!(
            Member::parse("user:Alice@Example.COM").unwrap(),
            Member::User("alice@example.com".into())
        );
        assert_eq!(
            Member::parse("domain:example.com").unwrap().to_string(),
            "domain:example.com"
        );
        for bad in [
            "alice@example.com",
            "user:alice",
            "user:@example.com",
            "user:a@b",
            "domain:@example.com",
            "domain:example",
            "role:admin",
            "allusers",
            "group:admins",
            "",
        ] {
            let e = Member::parse(bad).unwrap_err().to_string();
            assert!(e.contains("is not a member"), "{bad}: {e}");
        }
    }
}
