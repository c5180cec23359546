//! The console's pages: askama templates (templates/admin/*.html, compile-checked and
//! auto-escaped) and the rows they show.

use askama::Template;

use crate::clock::format_rfc3339;
use crate::policy::BindingCondition;

/// What every page's header needs.
pub(super) struct Base {
    pub(super) title: String,
    pub(super) section: &'static str,
    pub(super) user: String,
    pub(super) global: bool,
    pub(super) pending: usize,
    pub(super) flash: String,
    pub(super) flash_error: bool,
}

#[derive(Template)]
#[template(path = "admin/apps.html")]
pub(super) struct AppsPage {
    pub(super) base: Base,
    pub(super) apps: Vec<AppRow>,
}

pub(super) struct AppRow {
    pub(super) id: String,
    pub(super) upstream: String,
    /// For an app with a pool of upstreams: each one, whether it is in the pool, and what its
    /// last health check said (or why it is out).
    pub(super) pool: Vec<(String, bool, String)>,
    pub(super) healthy: bool,
    pub(super) health_detail: String,
    pub(super) principals: usize,
    pub(super) last_access: String,
    pub(super) public: bool,
}

#[derive(Template)]
#[template(path = "admin/app.html")]
pub(super) struct AppPage {
    pub(super) base: Base,
    pub(super) app: String,
    pub(super) public: bool,
    pub(super) rows: Vec<PrincipalRow>,
    pub(super) csrf: String,
}

pub(super) struct PrincipalRow {
    pub(super) member: String,
    pub(super) role: String,
    pub(super) condition: String,
    pub(super) title: String,
}

#[derive(Template)]
#[template(path = "admin/confirm.html")]
pub(super) struct ConfirmPage {
    pub(super) base: Base,
    pub(super) heading: String,
    pub(super) question: String,
    pub(super) action: String,
    pub(super) fields: Vec<(String, String)>,
    pub(super) confirm: String,
    pub(super) back: String,
    pub(super) csrf: String,
}

#[derive(Template)]
#[template(path = "admin/groups.html")]
pub(super) struct GroupsPage {
    pub(super) base: Base,
    pub(super) groups: Vec<crate::store::Group>,
    /// Groups an identity provider provisions over SCIM: (name, members).
    pub(super) scim: Vec<(String, String)>,
    /// What the directories last said about each signed-in person.
    pub(super) directory: Vec<DirectoryRow>,
    pub(super) csrf: String,
}

pub(super) struct DirectoryRow {
    pub(super) email: String,
    pub(super) directory: String,
    pub(super) groups: String,
    pub(super) answered: String,
}

#[derive(Template)]
#[template(path = "admin/requests.html")]
pub(super) struct RequestsPage {
    pub(super) base: Base,
    pub(super) requests: Vec<RequestRow>,
    pub(super) csrf: String,
}

pub(super) struct RequestRow {
    pub(super) id: i64,
    pub(super) email: String,
    pub(super) app: String,
    pub(super) reason: String,
    pub(super) when: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
pub(super) struct AuditPage {
    pub(super) base: Base,
    pub(super) rows: Vec<AuditRow>,
    pub(super) f_user: String,
    pub(super) f_app: String,
    pub(super) f_decision: String,
    pub(super) f_since: String,
    pub(super) f_until: String,
    pub(super) older: String,
}

pub(super) struct AuditRow {
    pub(super) when: String,
    pub(super) actor: String,
    pub(super) action: String,
    pub(super) denied: bool,
    pub(super) app: String,
    pub(super) detail: String,
}

#[derive(Template)]
#[template(path = "admin/sessions.html")]
pub(super) struct SessionsPage {
    pub(super) base: Base,
    pub(super) sessions: Vec<SessionRow>,
    pub(super) csrf: String,
}

pub(super) struct SessionRow {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) provider: String,
    pub(super) ip: String,
    pub(super) agent: String,
    pub(super) since: String,
    pub(super) seen: String,
}

#[derive(Template)]
#[template(path = "admin/settings.html")]
pub(super) struct SettingsPage {
    pub(super) base: Base,
    pub(super) settings: Vec<(String, String)>,
}

pub(super) fn when(secs: i64) -> String {
    format_rfc3339(secs)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// The condition as people say it: "until 2027-01-01 00:00", "only /reports", or its title.
pub fn condition_words(c: &BindingCondition) -> String {
    let mut parts = Vec::new();
    let expr = &c.expression;
    if let Some(rest) = expr.split("request.path.startsWith(\"").nth(1)
        && let Some(prefix) = rest.split('"').next()
    {
        parts.push(format!("only {prefix}"));
    }
    if let Some(t) = c.compiled.expiry() {
        parts.push(format!("until {}", when(t)));
    }
    if parts.is_empty() {
        if c.title.is_empty() {
            expr.clone()
        } else {
            format!("{} ({expr})", c.title)
        }
    } else {
        parts.join(", ")
    }
}
