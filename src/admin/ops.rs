//! Policy management shared by the command line and the HTTP API: adding and removing bindings with
//! conditions and expiries, and explaining decisions in words.

use std::fmt::Write;

use crate::clock::{format_rfc3339, parse_rfc3339};
use crate::config::{App, AppKind, Config};
use crate::policy::Explanation;
use crate::policy::access_level::AccessLevel;
use crate::policy::condition;
use crate::policy::snapshot::{Decision, Resource};
use crate::policy::{BindingCondition, Member, Policy, Role};
use crate::store::{self, Actor, Store};

/// Reads `--expires`: a duration from now (`90m`, `12h`, `7d`), a date (`2027-01-01`, midnight UTC)
/// or an RFC 3339 timestamp. Returns Unix seconds.
/// The role given, or the one `resource` needs to be used (an app's [`App::role`]; roles/accessor
/// globally). An access role that does not fit the app (roles/accessor on a TCP app, which would
/// grant nothing) is refused with the right one.
pub fn role_for(apps: &[App], resource: &Resource, given: Option<&str>) -> Result<Role, String> {
    let app = match resource {
        Resource::App(id) => apps.iter().find(|a| *a.id == **id),
        Resource::Global => None,
    };
    let Some(given) = given else {
        return Ok(app.map_or(Role::Accessor, App::role));
    };
    let role = Role::parse(given)?;
    match app {
        Some(app) if role != Role::Admin && role != app.role() => Err(format!(
            "{} is a {} app: it needs {}, and {role} on it would grant nothing; leave the role out or give {}",
            app.id,
            match app.kind() {
                AppKind::Tcp => "TCP",
                AppKind::Web => "web",
            },
            app.role(),
            app.role()
        )),
        _ => Ok(role),
    }
}

/// Refuses a whole policy for `resource` that does not fit the configuration: a binding that
/// could grant nothing there (an access role of the other kind of app), or whose condition names
/// an access level the configuration does not define, naming the binding and the fix.
pub fn fits(config: &Config, resource: &Resource, policy: &Policy) -> Result<(), String> {
    for (i, b) in policy.bindings.iter().enumerate() {
        role_for(&config.apps, resource, Some(b.role.as_str()))
            .map_err(|e| format!("bindings[{i}]: {e}"))?;
        if let Some(c) = &b.condition {
            levels_known(&config.access_levels, c).map_err(|e| format!("bindings[{i}]: {e}"))?;
        }
    }
    Ok(())
}

/// Refuses a condition that names an access level the configuration does not define (it could
/// never hold), saying which ones it has.
pub fn levels_known(levels: &[AccessLevel], condition: &BindingCondition) -> Result<(), String> {
    for name in condition.access_levels_named() {
        if !levels.iter().any(|l| l.name == name) {
            let known: Vec<&str> = levels.iter().map(|l| l.name.as_str()).collect();
            return Err(format!(
                "the condition names access level \"{name}\", which is not configured ({}): add an [[access_levels]] entry with name = \"{name}\", or name one of those",
                if known.is_empty() {
                    "there are none".to_string()
                } else {
                    format!("configured: {}", known.join(", "))
                }
            ));
        }
    }
    Ok(())
}

pub fn parse_expires(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Some(d) = crate::config::parse_duration(s) {
        return Ok(now + d.as_secs() as i64);
    }
    if s.len() == 10
        && let Some(t) = parse_rfc3339(&format!("{s}T00:00:00Z"))
    {
        return Ok(t);
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("`{s}` is not an expiry: write a duration (7d, 12h, 90m), a date (2027-01-01) or a timestamp (2027-01-01T09:00:00Z)")
    })
}

/// The condition for `--condition EXPR [--condition-title T]` and/or `--expires WHEN`.
pub fn condition(
    levels: &[AccessLevel],
    expression: Option<&str>,
    title: Option<&str>,
    expires: Option<i64>,
) -> Result<Option<BindingCondition>, String> {
    let expiry = expires.map(|t| format!("request.time < timestamp(\"{}\")", format_rfc3339(t)));
    let (expr, default_title) = match (expression, &expiry) {
        (None, None) => return Ok(None),
        (Some(e), None) => (e.to_string(), e.to_string()),
        (None, Some(x)) => (
            x.clone(),
            format!("expires {}", format_rfc3339(expires.unwrap_or(0))),
        ),
        (Some(e), Some(x)) => (
            format!("({e}) && {x}"),
            format!("{e}, until {}", format_rfc3339(expires.unwrap_or(0))),
        ),
    };
    let title = title.map(str::to_string).unwrap_or(default_title);
    let c = BindingCondition::new(&title, "", &expr).map_err(|e: condition::Error| {
        format!(
            "the condition is not valid {e}:\n  {}",
            e.pointed(&expr).replace('\n', "\n  ")
        )
    })?;
    levels_known(levels, &c)?;
    Ok(Some(c))
}

/// Adds a member to a role (with an optional condition); returns the new policy and whether it
/// changed anything.
pub async fn add(
    store: &Store,
    resource: &Resource,
    role: Role,
    member: Member,
    condition: Option<BindingCondition>,
    actor: &Actor,
) -> store::Result<(Policy, bool)> {
    store
        .update_policy(resource, actor, "policy.add-binding", |p| {
            let added = p.add(role, member, condition);
            (added, added)
        })
        .await
}

/// Removes a member from a role (only from the binding whose condition has `title`, when given);
/// returns the new policy and from how many bindings it was removed.
pub async fn remove(
    store: &Store,
    resource: &Resource,
    role: Role,
    member: &Member,
    title: Option<&str>,
    actor: &Actor,
) -> store::Result<(Policy, usize)> {
    store
        .update_policy(resource, actor, "policy.remove-binding", |p| {
            let n = p.remove(role, member, title);
            (n > 0, n)
        })
        .await
}

/// What the troubleshooter says of `app`'s step-up for a person who signed in as `who` did: None
/// when the app has none or the sign-in meets it.
pub fn step_up_text(
    app: Option<&crate::config::App>,
    who: &crate::policy::Identity,
) -> Option<String> {
    let app = app?;
    let short = app.step_up.shortfall(who)?;
    let amr = if who.amr.is_empty() {
        "none".to_string()
    } else {
        who.amr.join(" ")
    };
    Some(format!(
        "STEP-UP: {} needs {} (its {}); a sign-in with amr {amr} and acr {} lacks it, so the person is taken through that sign-in first (a script gets 401 insufficient_user_authentication).\n",
        app.id,
        app.step_up.describe(short),
        match short {
            crate::policy::Shortfall::SecondFactor => "require_second_factor",
            crate::policy::Shortfall::Passkey => "require_passkey",
            crate::policy::Shortfall::Acr => "require_acr",
        },
        who.acr.as_deref().unwrap_or("none")
    ))
}

/// The troubleshooter's answer in words.
pub fn explain_text(e: &Explanation, app: &str, who: &str) -> String {
    let mut out = String::new();
    match &e.decision {
        Decision::Allow(g) => {
            let _ = writeln!(out, "ALLOWED: {who} may open {app}, through {g}.");
        }
        Decision::SignIn => {
            let _ = writeln!(
                out,
                "DENIED: an anonymous caller must sign in to open {app}."
            );
        }
        Decision::Deny(r) => {
            let _ = writeln!(out, "DENIED: {who} may not open {app} ({}).", r.as_str());
        }
    }
    if !e.groups.is_empty() {
        let _ = writeln!(out, "Groups considered: {}.", e.groups.join(", "));
    }
    if e.bindings.is_empty() {
        let _ = writeln!(out, "No binding grants {} on {app} or globally.", e.role);
    }
    for b in &e.bindings {
        let place = match &b.resource {
            Resource::Global => "global".to_string(),
            Resource::App(a) => format!("app {a}"),
        };
        let names = if b.matched.is_empty() {
            "does not name them".to_string()
        } else {
            format!("names them as {}", b.matched.join(", "))
        };
        let cond = match &b.condition {
            None => String::new(),
            Some((title, expr, ok)) => format!(
                "; condition \"{title}\" ({expr}) is {}",
                if *ok { "true" } else { "false" }
            ),
        };
        let _ = writeln!(out, "  - {place} binding #{}: {names}{cond}", b.index);
    }
    if e.hidden > 0 {
        let _ = writeln!(
            out,
            "  ({} binding(s) of the global policy are not shown: only global admins see them.)",
            e.hidden
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_role_is_the_default_and_a_role_that_grants_nothing_is_refused() {
        let config = crate::config::Config::parse(
            "[[apps]]\nid = \"web\"\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n\
             [[apps]]\nid = \"ssh\"\nhost = \"b.example.com\"\nupstream = \"tcp://127.0.0.1:22\"\n",
            std::path::Path::new("/etc/castellan"),
            &crate::config::NoEnv,
        )
        .unwrap();
        let app = |id: &str| Resource::App(id.into());
        let role = |r: &Resource, given| role_for(&config.apps, r, given);
        assert_eq!(role(&app("web"), None), Ok(Role::Accessor));
        assert_eq!(role(&app("ssh"), None), Ok(Role::TunnelAccessor));
        assert_eq!(role(&Resource::Global, None), Ok(Role::Accessor));
        let refused = role(&app("ssh"), Some("roles/iap.httpsResourceAccessor")).unwrap_err();
        assert!(refused.contains("roles/tunnelAccessor"), "{refused}");
        assert!(role(&app("web"), Some("roles/tunnelAccessor")).is_err());
        assert_eq!(
            role(&app("ssh"), Some("roles/iap.tunnelResourceAccessor")),
            Ok(Role::TunnelAccessor)
        );
        assert_eq!(role(&app("ssh"), Some("roles/admin")), Ok(Role::Admin));
        assert_eq!(
            role(&Resource::Global, Some("roles/tunnelAccessor")),
            Ok(Role::TunnelAccessor)
        );
        // A whole document (policy set, the API's PUT) is held to the same rule.
        let mut p = Policy::default();
        p.add(
            Role::Admin,
            Member::parse("user:a@example.com").unwrap(),
            None,
        );
        p.add(
            Role::Accessor,
            Member::parse("user:b@example.com").unwrap(),
            None,
        );
        assert!(fits(&config, &app("web"), &p).is_ok());
        let err = fits(&config, &app("ssh"), &p).unwrap_err();
        assert!(
            err.starts_with("bindings[1]:") && err.contains("roles/tunnelAccessor"),
            "{err}"
        );
    }

    #[test]
    fn the_explainer_names_the_role_it_was_asked_about() {
        let snapshot = crate::policy::snapshot::Snapshot::new(Vec::new(), Vec::new());
        let cx = crate::policy::condition::Context {
            path: "/",
            host: "ssh.example.com",
            method: "GET",
            time: 0,
            ip: None,
            destination: None,
            auth: None,
            access_levels: &[],
        };
        let who = crate::policy::snapshot::Who::User {
            email: "dev@example.com",
            groups: &[],
            domain: Some("example.com"),
        };
        let e = snapshot.explain("ssh", Role::TunnelAccessor, who, &cx);
        let text = explain_text(&e, "ssh", "dev@example.com");
        assert!(
            text.contains("No binding grants roles/tunnelAccessor on ssh"),
            "{text}"
        );
    }

    #[test]
    fn expiries() {
        let now = parse_rfc3339("2026-11-28T18:00:00Z").unwrap();
        assert_eq!(
            format_rfc3339(parse_expires("7d", now).unwrap()),
            "2026-12-05T18:00:00Z"
        );
        assert_eq!(
            format_rfc3339(parse_expires("2027-01-01", now).unwrap()),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            format_rfc3339(parse_expires("2027-01-01T09:30:00+01:00", now).unwrap()),
            "2027-01-01T08:30:00Z"
        );
        assert!(
            parse_expires("next week", now)
                .unwrap_err()
                .contains("not an expiry")
        );
    }

    #[test]
    fn conditions_combine_with_expiry() {
        let c = condition(
            &[],
            Some("request.path.startsWith(\"/r\")"),
            None,
            Some(parse_rfc3339("2027-01-01T00:00:00Z").unwrap()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c.expression,
            "(request.path.startsWith(\"/r\")) && request.time < timestamp(\"2027-01-01T00:00:00Z\")"
        );
        assert_eq!(c.compiled.expiry(), parse_rfc3339("2027-01-01T00:00:00Z"));
        let err = condition(&[], Some("request.pth == \"/\""), None, None).unwrap_err();
        assert!(err.contains("column 9") && err.contains('^'), "{err}");
    }

    #[test]
    fn a_condition_may_name_only_configured_access_levels() {
        let level = AccessLevel {
            name: "accessPolicies/1/accessLevels/corp".into(),
            ip_ranges: vec![crate::net::IpNet::parse("10.0.0.0/8").unwrap()],
            client_certificate: false,
            window: None,
        };
        let named = "\"accessPolicies/1/accessLevels/corp\" in request.auth.access_levels";
        assert!(condition(std::slice::from_ref(&level), Some(named), None, None).is_ok());
        let err = condition(
            &[level],
            Some("\"corp_devices\" in request.auth.access_levels || request.path == \"/\""),
            None,
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("\"corp_devices\", which is not configured (configured: accessPolicies/1/accessLevels/corp)"),
            "{err}"
        );
        let err = condition(&[], Some(named), None, None).unwrap_err();
        assert!(err.contains("there are none"), "{err}");
    }
}
