//! The per-request context: what one request's log line, metrics and audit record say about it,
//! filled in as the request moves through castellan, and what every step needs to know about the
//! client. One value per request, passed by `&mut` instead of long argument lists.
//!
//! Outcomes and reasons are enums with one spelling each (`as_str`), so a typo cannot invent a
//! Prometheus series or an audit value.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::policy::Reason;
use crate::trace::{Kind, Open, Trace, Value};

/// What happened to a request: the `decision` of its log line, metric and audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// castellan's own page, nothing decided.
    None,
    Allow,
    Deny,
    SignIn,
    Error,
    BadRequest,
    CorsPreflight,
    SignedIn,
    SignedOut,
    SignedOutEverywhere,
    SignInFailed,
    SecondFactor,
    /// The person proved who they are again before a change to their account.
    Confirmed,
    /// A change to the person's own account (which one: the reason).
    AccountChanged,
    AccessRequested,
    TokenIssued,
    CliSignedIn,
    CliApproved,
    /// The provider said a person's sign-in there ended (back-channel logout).
    ProviderLoggedOut,
    /// A SCIM client created, changed or removed a person or group.
    Provisioned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "-",
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::SignIn => "sign-in",
            Outcome::Error => "error",
            Outcome::BadRequest => "bad-request",
            Outcome::CorsPreflight => "cors-preflight",
            Outcome::SignedIn => "signed-in",
            Outcome::SignedOut => "signed-out",
            Outcome::SignedOutEverywhere => "signed-out-everywhere",
            Outcome::SignInFailed => "sign-in-failed",
            Outcome::SecondFactor => "second-factor",
            Outcome::Confirmed => "confirmed",
            Outcome::AccountChanged => "account-changed",
            Outcome::AccessRequested => "access-requested",
            Outcome::TokenIssued => "token-issued",
            Outcome::CliSignedIn => "cli-signed-in",
            Outcome::CliApproved => "cli-approved",
            Outcome::ProviderLoggedOut => "provider-logged-out",
            Outcome::Provisioned => "provisioned",
        }
    }
}

/// Why: the `reason` of the log line and the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    None,
    /// What the policy said.
    Policy(Reason),
    AmbiguousPath,
    Reauthentication,
    /// The sign-in lacks what the app's step-up asks for.
    StepUp(crate::policy::Shortfall),
    /// The sign-in lacks the provider tokens the app asks for.
    ProviderTokens,
    CrossOriginWebsocket,
    InternalError,
    StoreUnavailable,
    InvalidToken,
    ProviderUnavailable,
    UntrustedIngress,
    IngressHeaders,
    NoApp,
    BadHandoff,
    Csrf,
    RateLimited,
    WrongPassword,
    WrongCode,
    Passkey,
    NotFound,
    ConfirmationRequired,
    PasskeyAdded,
    PasskeyRemoved,
    TotpEnabled,
    TotpDisabled,
    RecoveryCodes,
    PasswordChanged,
    UpstreamUnreachable,
    ConsoleOrigin,
    /// A TCP app asked for with something other than a tunnel.
    TunnelOnly,
    /// The person already holds as many tunnels as `max_tunnels_per_person` allows.
    TunnelLimit,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::None => "-",
            Why::Policy(r) => r.as_str(),
            Why::AmbiguousPath => "ambiguous-path",
            Why::Reauthentication => "reauthentication",
            Why::StepUp(crate::policy::Shortfall::SecondFactor) => "step-up-second-factor",
            Why::StepUp(crate::policy::Shortfall::Passkey) => "step-up-passkey",
            Why::StepUp(crate::policy::Shortfall::Acr) => "step-up-acr",
            Why::ProviderTokens => "provider-tokens",
            Why::CrossOriginWebsocket => "cross-origin-websocket",
            Why::InternalError => "internal-error",
            Why::StoreUnavailable => "store-unavailable",
            Why::InvalidToken => "invalid-token",
            Why::ProviderUnavailable => "provider-unavailable",
            Why::UntrustedIngress => "untrusted-ingress",
            Why::IngressHeaders => "ingress-headers",
            Why::NoApp => "no-app",
            Why::BadHandoff => "bad-handoff",
            Why::Csrf => "csrf",
            Why::RateLimited => "rate-limited",
            Why::WrongPassword => "wrong-password",
            Why::WrongCode => "wrong-code",
            Why::Passkey => "passkey",
            Why::NotFound => "not-found",
            Why::ConfirmationRequired => "confirmation-required",
            Why::PasskeyAdded => "passkey-added",
            Why::PasskeyRemoved => "passkey-removed",
            Why::TotpEnabled => "totp-enabled",
            Why::TotpDisabled => "totp-disabled",
            Why::RecoveryCodes => "recovery-codes-regenerated",
            Why::PasswordChanged => "password-changed",
            Why::UpstreamUnreachable => "upstream-unreachable",
            Why::ConsoleOrigin => "console-origin",
            Why::TunnelOnly => "tunnel-only",
            Why::TunnelLimit => "tunnel-limit",
        }
    }
}

/// One request as castellan saw it.
#[derive(Debug)]
pub struct Ctx {
    /// The socket peer.
    pub peer: SocketAddr,
    /// The client: the peer, or the address a trusted proxy forwarded for.
    pub client_ip: IpAddr,
    /// A browser navigation (may be redirected, gets HTML) rather than a script, API or
    /// WebSocket request (gets JSON it can act on).
    pub navigation: bool,
    /// The app the request is for, or `castellan` for castellan's own pages.
    pub app: Arc<str>,
    /// Who: an email, `serviceAccount:NAME`, or empty for nobody (shared with the audit record).
    pub user: Arc<str>,
    pub outcome: Outcome,
    pub why: Why,
    /// The binding that let the request through.
    pub binding: Option<Arc<str>>,
    /// The reference id people see on error pages; also in the log line and the audit record.
    pub reference: Option<String>,
    /// Whether the request is a decision about an app, recorded in the audit trail.
    pub audited: bool,
    /// The subject of the client certificate the connection presented, verified against
    /// `[tls] client_ca` (a device certificate); in the audit record.
    pub client_cert: Option<Arc<str>>,
    /// The request's trace, when `[tracing]` is on (None otherwise: nothing is recorded).
    pub trace: Option<Box<Trace>>,
}

impl Ctx {
    pub fn new(peer: SocketAddr, client_ip: IpAddr, navigation: bool) -> Ctx {
        Ctx {
            peer,
            client_ip,
            navigation,
            app: crate::store::AuditRecord::word("-"),
            user: crate::store::AuditRecord::word(""),
            outcome: Outcome::None,
            why: Why::None,
            binding: None,
            reference: None,
            audited: false,
            client_cert: None,
            trace: None,
        }
    }

    /// Starts a span of the request's trace; None when it is not traced.
    pub fn span(&mut self, name: &'static str, kind: Kind) -> Option<Open> {
        self.trace.as_mut().map(|t| t.start(name, kind))
    }

    /// Sets an attribute of `span` (given a `&str`, nothing is made for an untraced request).
    pub fn span_set(&mut self, span: Option<Open>, key: &'static str, value: impl Into<Value>) {
        if let (Some(t), Some(s)) = (self.trace.as_mut(), span) {
            t.set(s, key, value);
        }
    }

    /// Ends `span`; `error` marks it failed.
    pub fn span_end(&mut self, span: Option<Open>, error: Option<&str>) {
        if let (Some(t), Some(s)) = (self.trace.as_mut(), span) {
            if let Some(e) = error {
                t.fail(s, e);
            }
            t.end(s);
        }
    }

    /// The request's reference id, made on first use, so the page, the log line and the audit
    /// record carry the same one.
    pub fn reference(&mut self) -> String {
        self.reference
            .get_or_insert_with(crate::crypto::reference_id)
            .clone()
    }

    /// Records what happened.
    pub fn mark(&mut self, outcome: Outcome, why: Why) {
        self.outcome = outcome;
        self.why = why;
    }

    /// Names the person, escaped for the log: a control character in a submitted email cannot
    /// forge a log line.
    pub fn set_user(&mut self, who: &str) {
        self.user = if who.chars().any(char::is_control) {
            log_safe(who).into()
        } else {
            who.into()
        };
    }

    /// Names the caller the gate let through or turned away (a person's email is not copied
    /// twice).
    pub fn set_principal(&mut self, who: &crate::policy::Principal) {
        match who {
            crate::policy::Principal::Person(identity) => self.set_user(&identity.email),
            other => self.set_user(&other.name()),
        }
    }
}

/// `s` with control characters written as escapes (`\n`, `\u{1b}`), for text that reaches a log
/// line from a request.
pub fn log_safe(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(log_safe("alice@example.com"), "alice@example.com");
        assert_eq!(
            log_safe("a@x.com\n2026-12-04 INFO signed in user=admin"),
            "a@x.com\\n2026-12-04 INFO signed in user=admin"
        );
        assert_eq!(log_safe("x\u{1b}[31m\r"), "x\\u{1b}[31m\\r");
    }
}
