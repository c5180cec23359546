//! Step-up on the sign-in pages. The gate names an app with a step-up (or provider scopes) on the
//! sign-in URL (`app=ID`); the sign-in then asks for what that app needs and checks that it got
//! it (a provider's sign-in also asks for the app's `provider_scopes`, which must be granted):
//! - a provider is sent the app's `acr_values`, and its ID token must meet the app's step-up
//!   (`amr` and `acr`); one that does not is asked once more for a fresh authentication
//!   (`prompt=login`, its own session may predate what the app needs), then refused with a page
//!   that says what was missing;
//! - a local account is asked for a code after its password (and set one up if it has none), or
//!   for its passkey; one without a passkey is taken to its account page to add one.
//!
//! Whether a sign-in meets an app's step-up is [`crate::policy::StepUp::shortfall`], the same
//! question the gate asks.

use crate::config::App;
use crate::policy::{Identity, Shortfall};
use crate::runtime::State;
use crate::web::failure::Failure;
use crate::web::pages::{self, esc};

/// The account page, where a local account adds what an app asks for.
const ACCOUNT: &str = super::account::PATH;

/// The app a sign-in is for (`app=ID`), when it asks for more than a plain sign-in (a step-up,
/// provider scopes).
pub fn wanted<'a>(state: &'a State, app: Option<&str>) -> Option<&'a App> {
    state.config.app(app?).filter(|a| a.asks_at_sign_in())
}

/// Whether the signed-in `session` lacks what a sign-in for `app` gives: its step-up, or (for a
/// provider's sign-in) the provider tokens the app asks for, with their scopes.
pub async fn session_lacks(
    state: &State,
    app: &App,
    session: &crate::runtime::sessions::SessionRef,
) -> Result<bool, Failure> {
    if app.step_up.shortfall(&session.identity).is_some() {
        return Ok(true);
    }
    if !app.provider_tokens.wanted() || session.identity.provider == "local" {
        return Ok(false);
    }
    let tokens = state
        .store
        .provider_tokens(&session.digest)
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    Ok(!tokens.is_some_and(|t| t.serve(&app.provider_tokens, crate::clock::now())))
}

/// The sign-in page's explanation of what `app`'s step-up asks for (None without one).
pub fn notice(app: &App) -> Option<String> {
    let s = &app.step_up;
    if s.is_empty() {
        return None;
    }
    let mut wants = Vec::new();
    if s.passkey {
        wants.push(s.describe(Shortfall::Passkey));
    } else if s.second_factor {
        wants.push(s.describe(Shortfall::SecondFactor));
    }
    if !s.acr.is_empty() {
        wants.push(s.describe(Shortfall::Acr));
    }
    let how = if s.passkey {
        " With a castellan account, use “Sign in with a passkey”."
    } else if s.second_factor {
        " With a castellan account, your password is followed by a code from your authenticator app (set up then if you have none), or use a passkey."
    } else {
        ""
    };
    Some(format!(
        "<p class=\"notice\" role=\"status\">{} needs {}.{how}</p>",
        esc(&app.id),
        esc(&wants.join(" and "))
    ))
}

/// Whether local accounts can meet `app`'s step-up at all (an `acr` is a provider's word).
pub fn local_accounts_can(app: &App) -> bool {
    app.step_up.acr.is_empty()
}

/// Where a local account that cannot give what `app` asks for yet goes to set it up: its account
/// page, for a passkey it does not have, then on to where `return_to` leads. None when it has one.
pub async fn enrolment(
    state: &State,
    email: &str,
    app: &App,
    return_to: &str,
) -> Result<Option<String>, Failure> {
    if !app.step_up.passkey {
        return Ok(None);
    }
    let keys = state
        .store
        .passkeys_of(email)
        .await
        .map_err(|e| Failure::internal("listing passkeys", &e))?;
    Ok(keys.is_empty().then(|| {
        format!(
            "{ACCOUNT}?need=passkey&app={}&rd={}",
            pages::q(&app.id),
            pages::q(&destination(return_to))
        )
    }))
}

/// Where a sign-in's `return_to` finally leads: for another host's hand-off (bound to this one
/// sign-in, used once) the page on that host it was for, which starts a new hand-off when opened.
fn destination(return_to: &str) -> String {
    let Ok(url) = url::Url::parse(return_to) else {
        return return_to.to_string();
    };
    if url.path() != "/.castellan/handoff" {
        return return_to.to_string();
    }
    let rd = url
        .query_pairs()
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned())
        .filter(|rd| rd.starts_with('/') && !rd.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    format!("{}{rd}", url.origin().ascii_serialization())
}

/// The account page's step-up parameters (`need=passkey&app=ID&rd=…`) as a query string to carry
/// through the confirmation, checked again; empty when there are none.
pub fn carried(state: &State, params: &[(String, String)]) -> String {
    let param = |k| crate::web::param(params, k);
    match (param("need"), wanted(state, param("app"))) {
        (Some("passkey"), Some(app)) => format!(
            "need=passkey&app={}&rd={}",
            pages::q(&app.id),
            pages::q(&super::safe_return(state, param("rd")))
        ),
        _ => String::new(),
    }
}

/// The account page's explanation when an app sent the person there (`need=passkey&app=ID&rd=…`),
/// with the way back once the passkey is added.
pub fn account_notice(state: &State, params: &[(String, String)]) -> String {
    let param = |k| crate::web::param(params, k);
    if param("need") != Some("passkey") {
        return String::new();
    }
    let Some(app) = wanted(state, param("app")) else {
        return String::new();
    };
    let back = super::safe_return(state, param("rd"));
    format!(
        "<p class=\"notice\" role=\"status\">{} needs a sign-in with a passkey or security key. Add a passkey below \
         (castellan first asks you to confirm it's you), then <a href=\"{}\">sign in with it and continue</a>.</p>",
        esc(&app.id),
        esc(&back)
    )
}

/// A provider's sign-in for `app` that did not grant the scopes the app's access token needs.
pub fn scopes_refused(app: &App, provider: &str, granted: &str) -> Failure {
    Failure::sign_in_failed(
        "The sign-in did not grant what the app needs",
        format!(
            "{} needs access that {provider} did not grant: {} (granted: {}). Sign in again and allow it, or ask your administrator.",
            app.id,
            app.provider_tokens.scopes.join(" "),
            if granted.is_empty() {
                "nothing"
            } else {
                granted
            }
        ),
    )
}

/// What a provider's sign-in for `app` lacks, in a page: what the app needs and what the provider
/// said.
pub fn refused(app: &App, short: Shortfall, provider: &str, who: &Identity) -> Failure {
    let amr = if who.amr.is_empty() {
        "(none)".to_string()
    } else {
        who.amr.join(" ")
    };
    let said = format!("amr {amr}, acr {}", who.acr.as_deref().unwrap_or("(none)"));
    Failure::sign_in_failed(
        "This sign-in is not strong enough for the app",
        format!(
            "{} needs {}, but {provider} did not confirm one even when asked to sign you in afresh (its ID token says {said}). \
             Sign in with a stronger method at {provider}, or ask your administrator to require it there.",
            app.id,
            app.step_up.describe(short)
        ),
    )
}
