//! The last step of the gate: the headers that tell the app who is calling. A signed assertion
//! (castellan's, or Google IAP's in `identity_headers = "google-iap"` mode) and the plain email
//! and user id; for service accounts the assertion and `X-Castellan-User` only. Any client-sent
//! header that looks like one of these is removed before the request goes on
//! ([`super::proxy::strip_identity_headers`]).

use http::HeaderName;

use crate::config::{App, IdentityHeaders};
use crate::identity::google::IAP_PREFIX;
use crate::policy::Principal;
use crate::runtime::State;
use crate::runtime::keys::IdentityCache;
use crate::web::HeaderList;
use crate::web::failure::Failure;

/// Names of the identity headers castellan sets. Any client-sent header that reads as one of these
/// (or as Google IAP's `x-goog-iap-*` / `x-goog-authenticated-*`), in any case and with `_` for `-`
/// (as CGI, WSGI and PHP see them), is removed.
pub const ASSERTION_HEADER: &str = "x-castellan-jwt-assertion";
pub const EMAIL_HEADER: &str = "x-castellan-email";
pub const USER_HEADER: &str = "x-castellan-user";

/// The identity headers for `principal` calling `app`, from the cache while their assertion is
/// fresh. Failing to sign fails the request: an app never gets a request without them.
pub fn headers(state: &State, app: &App, principal: &Principal) -> Result<HeaderList, Failure> {
    let style = match app.identity_headers {
        IdentityHeaders::Castellan => "c",
        IdentityHeaders::GoogleIap => "g",
    };
    let key = match principal {
        Principal::Person(who) => IdentityCache::key(&[
            style,
            &who.provider,
            &who.subject,
            &who.email,
            who.hd.as_deref().unwrap_or(""),
            &app.audience,
        ]),
        Principal::ServiceAccount(name) => IdentityCache::key(&["s", name, &app.audience]),
    };
    let now = crate::clock::now();
    if let Some(key) = &key
        && let Some(h) = state.identity_cache().get(key, now)
    {
        return Ok(h);
    }
    let signer = state.signer();
    let signed = match (principal, app.identity_headers) {
        (Principal::Person(who), IdentityHeaders::Castellan) => {
            signer.sign(who, &app.audience).map(|jwt| {
                vec![
                    (HeaderName::from_static(ASSERTION_HEADER), value(&jwt)),
                    (HeaderName::from_static(EMAIL_HEADER), value(&who.email)),
                    (
                        HeaderName::from_static(USER_HEADER),
                        value(&format!("{}:{}", who.provider, who.subject)),
                    ),
                ]
            })
        }
        (Principal::Person(who), IdentityHeaders::GoogleIap) => {
            signer.sign_iap(who, &app.audience).map(|jwt| {
                vec![
                    (
                        HeaderName::from_static("x-goog-iap-jwt-assertion"),
                        value(&jwt),
                    ),
                    (
                        HeaderName::from_static("x-goog-authenticated-user-email"),
                        value(&format!("{IAP_PREFIX}{}", who.email)),
                    ),
                    (
                        HeaderName::from_static("x-goog-authenticated-user-id"),
                        value(&format!("{IAP_PREFIX}{}", who.subject)),
                    ),
                ]
            })
        }
        (Principal::ServiceAccount(name), _) => {
            signer.sign_service_account(name, &app.audience).map(|jwt| {
                vec![
                    (HeaderName::from_static(ASSERTION_HEADER), value(&jwt)),
                    (
                        HeaderName::from_static(USER_HEADER),
                        value(&format!("serviceAccount:{name}")),
                    ),
                ]
            })
        }
    };
    let headers = signed.map_err(|e| Failure::internal("signing the identity assertion", &e))?;
    if let Some(key) = key {
        state.identity_cache().put(key, headers.clone(), now);
    }
    Ok(headers)
}

/// A header value from text castellan made or checked; a value a header cannot carry becomes
/// empty rather than failing.
pub fn value(s: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(s).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}
