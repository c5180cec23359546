//! castellan's own pages and endpoints under `/.castellan/`, never proxied.
//!
//! Most of them live only on castellan's own host (`public_url`'s), an origin no app shares, so an
//! app's script can neither read nor drive them: sign-in ([`sign_in`], [`second_factor`],
//! [`passkey`]), sign-out, the account page ([`account`]), access requests, and the command
//! line's approval ([`cli_auth`]), the providers' back-channel logout
//! ([`backchannel_logout`]) and SCIM provisioning ([`scim`]). On an app's host castellan answers only what belongs there: the
//! start of a sign-in (which binds it to the browser) and the hand-off that ends it
//! ([`handoff`]), forward-auth ([`forward_auth`]), the token endpoint ([`token`]) and the public
//! endpoints ([`public`]). Which path goes where is decided in `server::routes`.
//!
//! May use: the gate (forward-auth is a front door), runtime, web, identity, store, policy, config.

pub mod access_request;
pub mod account;
pub mod backchannel_logout;
pub mod cli_auth;
pub mod forward_auth;
pub mod handoff;
pub mod passkey;
pub mod password;
pub mod public;
pub mod scim;
pub mod second_factor;
pub mod sign_in;
pub mod sign_out;
pub mod step_up;
pub mod token;

use std::time::Duration;

use http::HeaderValue;
use http::header;

use crate::crypto;
use crate::runtime::State;
use crate::web::{self, Body};

/// How long a sign-in at a provider may take, from the redirect to the callback.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);

/// The browser's id cookie: reused when present and well-formed, otherwise a new one to set.
pub fn browser_id(state: &State, headers: &http::HeaderMap) -> (String, Option<HeaderValue>) {
    match web::cookies::cookie(headers, state.cookies.browser) {
        Some(v)
            if v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            (v.to_string(), None)
        }
        _ => {
            let id = crypto::random_token(32);
            let cookie = state.cookies.set(state.cookies.browser, &id, None);
            (id, Some(cookie))
        }
    }
}

/// `resp` with `cookie` set, if any.
pub fn with_cookie(
    mut resp: http::Response<Body>,
    cookie: Option<HeaderValue>,
) -> http::Response<Body> {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Where to go after sign-in: a path here, or an absolute URL on another host castellan serves.
pub fn safe_return(state: &State, raw: Option<&str>) -> String {
    raw.and_then(|r| {
        crate::web::return_to::validate_any(r, &state.config.public_url, |h| {
            state.config.serves_host(h)
        })
    })
    .unwrap_or_else(|| "/".into())
}

/// A `303 See Other` to `location`: where a form post goes on.
pub fn see_other(location: &str) -> http::Response<Body> {
    let mut r = web::redirect(location);
    *r.status_mut() = http::StatusCode::SEE_OTHER;
    r
}
