//! The last step of the gate: the headers that tell the app who is calling. A signed assertion
//! (castellan's, or Google IAP's in `identity_headers = "google-iap"` mode) and the plain email
//! and user id; for service accounts the assertion and `X-Castellan-User` only. Any client-sent
//! header that looks like one of these is removed before the request goes on
//! ([`super::proxy::strip_identity_headers`]).

use http::HeaderName;

use crate::config::{App, IdentityHeaders};
use crate::identity::google::IAP_PREFIX;
use crate::policy::{Identity, Principal};
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

/// The most groups an assertion or a header carries: past it the sorted list is cut, and the
/// assertion says `"groups_truncated": true`.
pub const MAX_GROUPS: usize = 100;

/// The claims `app` asks for (`assertion_claims`, `claim_headers`) that `who` has: `groups` (every
/// group: the provider's, a directory's and castellan's), `amr`, `acr`, or a claim a provider
/// keeps. A claim the person does not have is left out.
fn requested_claims(
    state: &State,
    app: &App,
    who: &Identity,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for name in app.claims.names() {
        let value = match name {
            "groups" => {
                let snapshot = state.snapshot();
                let mut groups: Vec<&str> = who
                    .groups
                    .iter()
                    .chain(snapshot.groups_of(&who.email))
                    .map(String::as_str)
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                if groups.len() > MAX_GROUPS {
                    groups.truncate(MAX_GROUPS);
                    out.insert("groups_truncated".into(), true.into());
                }
                serde_json::json!(groups)
            }
            "amr" if !who.amr.is_empty() => serde_json::json!(who.amr),
            "acr" => match &who.acr {
                Some(acr) => acr.as_str().into(),
                None => continue,
            },
            other => match who.claims.get(other) {
                Some(v) => v.clone(),
                None => continue,
            },
        };
        out.insert(name.to_string(), value);
    }
    out
}

/// A claim as a header value: a string as it is, a list as its items joined with ", ", anything
/// else as JSON; `None` when it cannot be a header value (a line break, say).
fn claim_header_value(v: &serde_json::Value) -> Option<http::HeaderValue> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    http::HeaderValue::from_str(&text).ok()
}

/// The identity headers for `principal` calling `app`, from the cache while their assertion is
/// fresh. Failing to sign fails the request: an app never gets a request without them.
pub fn headers(state: &State, app: &App, principal: &Principal) -> Result<HeaderList, Failure> {
    let style = match app.identity_headers {
        IdentityHeaders::Castellan => "c",
        IdentityHeaders::GoogleIap => "g",
    };
    let claims = match principal {
        Principal::Person(who) if !app.claims.is_empty() => requested_claims(state, app, who),
        _ => serde_json::Map::new(),
    };
    // The claims' values are part of the key: a changed group or department is a new assertion.
    let claims_key = if claims.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&claims).expect("JSON values serialise")
    };
    let key = match principal {
        Principal::Person(who) => IdentityCache::key(&[
            style,
            &who.provider,
            &who.subject,
            &who.email,
            who.hd.as_deref().unwrap_or(""),
            &app.audience,
            &claims_key,
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
    let in_assertion: serde_json::Map<String, serde_json::Value> = claims
        .iter()
        .filter(|(name, _)| {
            app.claims.assertion.iter().any(|a| a == *name)
                || (*name == "groups_truncated"
                    && app.claims.assertion.iter().any(|a| a == "groups"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let signed = match (principal, app.identity_headers) {
        (Principal::Person(who), IdentityHeaders::Castellan) => {
            signer.sign(who, &app.audience, &in_assertion).map(|jwt| {
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
        (Principal::Person(who), IdentityHeaders::GoogleIap) => signer
            .sign_iap(who, &app.audience, &in_assertion)
            .map(|jwt| {
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
            }),
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
    let mut headers =
        signed.map_err(|e| Failure::internal("signing the identity assertion", &e))?;
    for (header, name) in &app.claims.headers {
        if let Some(v) = claims.get(name).and_then(claim_header_value) {
            headers.push((header.clone(), v));
        }
    }
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
