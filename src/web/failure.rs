//! The one way a request fails: every refusal and error in castellan is a [`Failure`], and this
//! file alone turns one into a response. Browsers navigating get an HTML page (or a redirect to
//! sign in); scripts, APIs and WebSockets get JSON in one shape:
//!
//! ```json
//! {"error": "access_denied", "message": "…", "reference": "…", …}
//! ```
//!
//! with extra fields where a caller can act on them (`sign_in_url`, `reason`). Failures of the
//! OAuth endpoints also carry `error_description` (RFC 6749 §5.2, RFC 6750 §3), the same text as
//! `message`. `WWW-Authenticate` is set here and nowhere else.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::ctx::{Ctx, Outcome, Why};
use super::{Body, pages};
use crate::policy::{Reason, Shortfall, StepUp};

/// Why a request was not answered as asked. Built by its constructors, answered by
/// [`Failure::respond`]. Boxed: it is the rare path, and the common one should not carry its size.
#[derive(Debug)]
pub struct Failure(Box<Parts>);

#[derive(Debug)]
struct Parts {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    message: String,
    outcome: Outcome,
    why: Why,
    extra: Map<String, Value>,
    challenge: Option<Challenge>,
    retry_after: Option<u64>,
    /// Where a browser navigation goes instead of seeing a page (sign-in).
    redirect: Option<String>,
    /// A page of its own for browsers (the denied page, a form shown again with its error).
    page: Option<String>,
    cookies: Vec<HeaderValue>,
    /// The page's own `Content-Security-Policy` (a sign-in page that runs the passkey script).
    csp: Option<HeaderValue>,
    oauth: bool,
    /// Answered in SCIM's error shape (RFC 7644 §3.12), with this `scimType` if any.
    scim: Option<Option<&'static str>>,
    allow: Option<&'static str>,
}

/// What `WWW-Authenticate` says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    /// `Bearer realm="castellan"`: credentials are needed.
    Bearer,
    /// RFC 6750 §3: `Bearer realm="castellan", error="…", error_description="…"`.
    BearerError(&'static str),
    /// RFC 9470 §3: `error="insufficient_user_authentication"`, with the `acr_values` to ask for.
    StepUp(Option<String>),
    /// RFC 6749 §5.2: the token endpoint's client authentication.
    Basic,
}

impl Failure {
    fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        message: impl Into<String>,
        outcome: Outcome,
        why: Why,
    ) -> Failure {
        Failure(Box::new(Parts {
            status,
            code,
            title,
            message: message.into(),
            outcome,
            why,
            extra: Map::new(),
            challenge: None,
            retry_after: None,
            redirect: None,
            page: None,
            cookies: Vec::new(),
            csp: None,
            oauth: false,
            scim: None,
            allow: None,
        }))
    }

    /// Nobody is signed in (or not recently enough, with `max_age`): browsers go to `sign_in_url`,
    /// everything else gets 401 with that URL.
    pub fn sign_in(sign_in_url: String, max_age: Option<u64>) -> Failure {
        let (code, message, why) = match max_age {
            Some(_) => (
                "reauthentication_required",
                "this app needs a recent sign-in: sign in again",
                Why::Reauthentication,
            ),
            None => (
                "unauthenticated",
                "sign in first",
                Why::Policy(Reason::UserUnauthenticated),
            ),
        };
        let mut f = Failure::new(
            StatusCode::UNAUTHORIZED,
            code,
            "Sign in",
            message,
            Outcome::SignIn,
            why,
        )
        .with("sign_in_url", json!(sign_in_url));
        if let Some(m) = max_age {
            f = f.with("max_age", json!(m));
        }
        f.0.challenge = Some(Challenge::Bearer);
        f.0.redirect = Some(sign_in_url);
        f
    }

    /// Signed in, but not the way `app` asks (its step-up): a browser goes through the sign-in
    /// that gives it; a script gets RFC 9470's `insufficient_user_authentication`, with the
    /// `acr_values` to ask for.
    pub fn step_up(sign_in_url: String, app: &str, step_up: &StepUp, short: Shortfall) -> Failure {
        let mut f = Failure::new(
            StatusCode::UNAUTHORIZED,
            "insufficient_user_authentication",
            "Sign in again",
            format!(
                "{app} needs {}: sign in again that way",
                step_up.describe(short)
            ),
            Outcome::SignIn,
            Why::StepUp(short),
        )
        .with("requirement", json!(short.as_str()))
        .with("app", json!(app))
        .with("sign_in_url", json!(sign_in_url));
        if let Some(v) = step_up.acr_values() {
            f = f.with("acr_values", json!(v));
        }
        f.0.challenge = Some(Challenge::StepUp(step_up.acr_values()));
        f.0.oauth = true;
        f.0.redirect = Some(sign_in_url);
        f
    }

    /// Signed in, but the sign-in does not hold the provider tokens `app` asks for (or the
    /// access its token needs): a sign-in for the app gets them.
    pub fn provider_tokens_required(sign_in_url: String, app: &str) -> Failure {
        let mut f = Failure::new(
            StatusCode::UNAUTHORIZED,
            "provider_tokens_required",
            "Sign in again",
            format!(
                "{app} works with your sign-in provider's tokens, which this sign-in does not hold (or not with the access {app} needs): sign in again"
            ),
            Outcome::SignIn,
            Why::ProviderTokens,
        )
        .with("app", json!(app))
        .with("sign_in_url", json!(sign_in_url));
        f.0.challenge = Some(Challenge::Bearer);
        f.0.redirect = Some(sign_in_url);
        f
    }

    /// Signed in, but the policy does not let `who` into `app`.
    pub fn denied(who: &str, app: &str, reason: Reason) -> Failure {
        Failure::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "Access denied",
            format!("{who} has no access to app {app}"),
            Outcome::Deny,
            Why::Policy(reason),
        )
        .with("reason", json!(reason.as_str()))
    }

    /// A bearer token was accepted but does not let its holder into `app` (RFC 6750 §3.1).
    pub fn insufficient_scope(who: &str, app: &str, reason: Reason) -> Failure {
        let mut f = Failure::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Access denied",
            format!("{who} has no access to app {app}"),
            Outcome::Deny,
            Why::Policy(reason),
        )
        .with("reason", json!(reason.as_str()));
        f.0.challenge = Some(Challenge::BearerError("insufficient_scope"));
        f.0.oauth = true;
        f
    }

    /// No credentials for an API that needs them (the admin API): 401 with a Bearer challenge,
    /// never a redirect.
    pub fn unauthenticated(message: impl Into<String>) -> Failure {
        let mut f = Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Not signed in",
            message,
            Outcome::Deny,
            Why::None,
        );
        f.0.challenge = Some(Challenge::Bearer);
        f
    }

    /// A bearer token castellan does not accept (RFC 6750 §3.1): never a redirect.
    pub fn invalid_token(why: impl Into<String>) -> Failure {
        let mut f = Failure::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Not signed in",
            why,
            Outcome::Deny,
            Why::InvalidToken,
        );
        f.0.challenge = Some(Challenge::BearerError("invalid_token"));
        f.0.oauth = true;
        f
    }

    /// An error of the OAuth token endpoint (RFC 6749 §5.2); `invalid_client` asks for HTTP Basic.
    pub fn oauth(code: &'static str, description: impl Into<String>) -> Failure {
        let status = if code == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut f = Failure::new(
            status,
            code,
            "Token request refused",
            description,
            Outcome::Deny,
            Why::InvalidToken,
        );
        if code == "invalid_client" {
            f.0.challenge = Some(Challenge::Basic);
        }
        f.0.oauth = true;
        f
    }

    /// A state-changing request that did not come from castellan's own page (CSRF and
    /// same-origin, see [`super::guard`]).
    pub fn csrf(message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "Not done",
            message,
            Outcome::Deny,
            Why::Csrf,
        )
    }

    /// Refused for a reason other than the policy (not an administrator, an ingress not in
    /// `trusted_proxies`, a cross-site WebSocket).
    pub fn forbidden(code: &'static str, why: Why, message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::FORBIDDEN,
            code,
            "Not allowed",
            message,
            Outcome::Deny,
            why,
        )
    }

    /// The request itself is wrong.
    pub fn bad_request(code: &'static str, why: Why, message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::BAD_REQUEST,
            code,
            "Bad request",
            message,
            Outcome::BadRequest,
            why,
        )
    }

    /// A sign-in step that cannot go on (an expired link, a provider's refusal).
    pub fn sign_in_failed(title: &'static str, message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "sign_in_failed",
            title,
            message,
            Outcome::SignInFailed,
            Why::None,
        )
    }

    /// A credential that did not check out (a wrong password or code).
    pub fn unauthorized(code: &'static str, why: Why, message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            code,
            "Not signed in",
            message,
            Outcome::SignInFailed,
            why,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            message,
            Outcome::None,
            Why::NotFound,
        )
    }

    /// A write that lost a race or names something that exists (the admin API).
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::CONFLICT,
            code,
            "Conflict",
            message,
            Outcome::Deny,
            Why::None,
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> Failure {
        let mut f = Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            format!("use {allow}"),
            Outcome::BadRequest,
            Why::None,
        );
        f.0.allow = Some(allow);
        f
    }

    /// Too many attempts: try again in `seconds`.
    pub fn too_many(seconds: u64, message: impl Into<String>) -> Failure {
        let mut f = Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "Too many attempts",
            message,
            Outcome::SignInFailed,
            Why::RateLimited,
        );
        f.0.retry_after = Some(seconds.max(1));
        f
    }

    /// The store cannot be reached and the answer needs it: refused, with a page that says so.
    pub fn store_unavailable() -> Failure {
        let mut f = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "Temporarily unavailable",
            "castellan cannot reach its database right now, so it cannot check your access or sign you in. \
             Nothing was let through. Try again in a minute; if this lasts, tell the people who run this site.",
            Outcome::Error,
            Why::StoreUnavailable,
        );
        f.0.retry_after = Some(10);
        f
    }

    /// A provider castellan must ask (for its keys, to sign someone in) could not be reached.
    pub fn provider_unavailable(message: impl Into<String>) -> Failure {
        let mut f = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "Sign-in is unavailable",
            message,
            Outcome::Error,
            Why::ProviderUnavailable,
        );
        f.0.retry_after = Some(10);
        f.0.oauth = true;
        f
    }

    /// A sign-in needs its provider, which could not be reached: a 502 page that says so.
    pub fn sign_in_unavailable(message: impl Into<String>) -> Failure {
        let mut f = Failure::new(
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            "Sign-in is unavailable",
            message,
            Outcome::Error,
            Why::ProviderUnavailable,
        );
        f.0.retry_after = Some(10);
        f
    }

    /// The app did not answer (in time, with `timeout`).
    pub fn upstream(app: &str, timeout: bool) -> Failure {
        let (status, code, title) = if timeout {
            (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "The app took too long to answer",
            )
        } else {
            (
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "The app is not reachable",
            )
        };
        Failure::new(
            status,
            code,
            title,
            format!(
                "castellan could not get an answer from {app}. Try again in a moment; if it persists, the app's operators can find this reference in castellan's log."
            ),
            Outcome::Error,
            Why::UpstreamUnreachable,
        )
    }

    /// A TCP app reached with a plain request (a browser, curl): 426, with the commands to use.
    pub fn tunnel_only(app: &str, url: &str) -> Failure {
        let message = format!(
            "{app} is a TCP service (SSH, a database), not a web page. Open a tunnel to it from your computer: \
             `castellan login {url}` once, then `castellan tunnel {url} --local-port 2222` \
             and connect to 127.0.0.1:2222 (or use --stdio as SSH's ProxyCommand)."
        );
        let title = "This app is reached with a tunnel";
        let why = Why::TunnelOnly;
        Failure::new(
            StatusCode::UPGRADE_REQUIRED,
            "tunnel_only",
            title,
            message,
            Outcome::BadRequest,
            why,
        )
    }

    /// The caller already holds `max` tunnels on this replica.
    pub fn tunnel_limit(who: &str, max: usize) -> Failure {
        let message = format!(
            "{who} already has {max} tunnels open through castellan, the most allowed (max_tunnels_per_person). \
             Close one (an idle `castellan tunnel`, a forgotten SSH session) and try again."
        );
        let (status, why) = (StatusCode::TOO_MANY_REQUESTS, Why::TunnelLimit);
        Failure::new(
            status,
            "too_many_tunnels",
            "Too many tunnels",
            message,
            Outcome::Deny,
            why,
        )
    }

    /// Something went wrong inside castellan while `doing`: logged with the reference, and
    /// nothing let through. A store that cannot be reached is a 503, anything else a 500.
    pub fn internal(doing: &str, err: &(dyn std::error::Error + 'static)) -> Failure {
        if err
            .downcast_ref::<crate::store::Error>()
            .is_some_and(crate::store::Error::is_unavailable)
        {
            tracing::error!("{doing}: {err}");
            return Failure::store_unavailable();
        }
        tracing::error!("internal error while {doing}: {err}");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Something went wrong",
            "castellan could not complete this, so it did not let the request through. Try again in a moment.",
            Outcome::Error,
            Why::InternalError,
        )
    }

    /// An extra JSON field for callers that can act on it.
    pub fn with(mut self, key: &str, value: Value) -> Failure {
        self.0.extra.insert(key.to_string(), value);
        self
    }

    /// The page browsers see instead of the plain error page.
    pub fn with_page(mut self, html: String) -> Failure {
        self.0.page = Some(html);
        self
    }

    /// The page's own `Content-Security-Policy`, in place of castellan's strictest.
    pub fn with_csp(mut self, csp: Option<HeaderValue>) -> Failure {
        self.0.csp = csp;
        self
    }

    /// The heading of the plain error page.
    pub fn titled(mut self, title: &'static str) -> Failure {
        self.0.title = title;
        self
    }

    /// A cookie set with the answer.
    pub fn with_cookie(mut self, cookie: HeaderValue) -> Failure {
        self.0.cookies.push(cookie);
        self
    }

    /// What the log line and the audit record say, when it is not the constructor's.
    pub fn marked(mut self, outcome: Outcome, why: Why) -> Failure {
        self.0.outcome = outcome;
        self.0.why = why;
        self
    }

    /// Where a browser goes instead of seeing a page.
    pub fn redirecting(mut self, location: String) -> Failure {
        self.0.redirect = Some(location);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// A request body larger than castellan takes (413).
    pub fn too_large(message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "Request too large",
            message,
            Outcome::BadRequest,
            Why::None,
        )
    }

    /// The same failure in SCIM's error shape (RFC 7644 §3.12):
    /// `{"schemas": [Error], "status": "409", "scimType": "uniqueness", "detail": "…"}`, always
    /// JSON (`application/scim+json`): SCIM clients are programs.
    pub fn scim(mut self, scim_type: Option<&'static str>) -> Failure {
        self.0.scim = Some(scim_type);
        self
    }

    /// The response, recorded in `ctx` (outcome, reason, reference).
    pub fn respond(self, ctx: &mut Ctx) -> Response<Body> {
        ctx.mark(self.0.outcome, self.0.why);
        let reference = ctx.reference();
        if matches!(self.0.why, Why::InternalError | Why::UpstreamUnreachable) {
            tracing::warn!(reference, app = %ctx.app, "{}: {}", self.0.code, self.0.message);
        }
        self.render(ctx.navigation, &reference)
    }

    /// The response outside a request castellan logs (the metrics listener, the ACME challenge
    /// listener): JSON, with a reference of its own.
    pub fn plain(self) -> Response<Body> {
        self.render(false, &crate::crypto::reference_id())
    }

    fn render(self, navigation: bool, reference: &str) -> Response<Body> {
        let reference = reference.to_string();
        if let Some(scim_type) = self.0.scim {
            let mut body = json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": self.0.status.as_u16().to_string(),
                "detail": self.0.message,
            });
            if let Some(t) = scim_type {
                body["scimType"] = json!(t);
            }
            let mut resp = super::json(self.0.status, &body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/scim+json"),
            );
            if self.0.challenge.is_some() {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"castellan\""),
                );
            }
            return resp;
        }
        let mut resp = match (navigation, self.0.redirect, self.0.page) {
            (true, Some(location), _) => super::redirect(&location),
            (true, None, Some(page)) => super::html(self.0.status, page),
            (true, None, None) => super::html(
                self.0.status,
                pages::error(self.0.title, &self.0.message, &reference),
            ),
            (false, ..) => {
                let mut body = Map::new();
                body.insert("error".into(), json!(self.0.code));
                body.insert("message".into(), json!(self.0.message));
                if self.0.oauth {
                    body.insert("error_description".into(), json!(self.0.message));
                }
                body.insert("reference".into(), json!(reference));
                body.extend(self.0.extra);
                super::json(self.0.status, &Value::Object(body))
            }
        };
        let h = resp.headers_mut();
        match self.0.challenge {
            None => {}
            Some(Challenge::Bearer) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"castellan\""),
                );
            }
            Some(Challenge::BearerError(error)) => {
                let challenge = format!(
                    "Bearer realm=\"castellan\", error=\"{error}\", error_description=\"{}\"",
                    self.0.message.replace(['"', '\\'], "'")
                );
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Some(Challenge::StepUp(acr_values)) => {
                let mut challenge = format!(
                    "Bearer realm=\"castellan\", error=\"insufficient_user_authentication\", error_description=\"{}\"",
                    self.0.message.replace(['"', '\\'], "'")
                );
                if let Some(v) = acr_values {
                    challenge.push_str(&format!(", acr_values=\"{}\"", v.replace(['"', '\\'], "")));
                }
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Some(Challenge::Basic) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"castellan\""),
                );
            }
        }
        if let Some(s) = self.0.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(allow) = self.0.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        for c in self.0.cookies {
            h.append(header::SET_COOKIE, c);
        }
        if let Some(csp) = self.0.csp {
            h.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        resp
    }
}

/// The store's refusals as callers see them: a lost race or a duplicate is a 409, something
/// missing a 404, and anything else an internal error (a 503 when the store cannot be reached).
impl From<crate::store::Error> for Failure {
    fn from(e: crate::store::Error) -> Failure {
        use crate::store::Error;
        match e {
            Error::StaleEtag { .. } => Failure::conflict("stale_etag", e.to_string()),
            Error::Exists(_) | Error::UserExists(_) => {
                Failure::conflict("already_exists", e.to_string())
            }
            Error::NotFound(_) => Failure::not_found(e.to_string()),
            other => Failure::internal("using the store", &other),
        }
    }
}

/// What handlers return: castellan's answer, or why there is none.
pub type Answer = Result<Response<Body>, Failure>;

#[cfg(test)]
mod tests;
