//! The admin console under `/.castellan/admin/`: apps and their principals, groups, access
//! requests, the audit trail, sessions and a settings summary.
//!
//! Server-rendered from askama templates (compile-checked, auto-escaped) with no JavaScript. Every
//! form carries a CSRF token bound to the browser, and every unsafe request must come from
//! castellan's own origin (`Origin`, or `Sec-Fetch-Site: same-origin`). Global admins see
//! everything; an app's admins see that app, its requests and its audit records.

use std::net::SocketAddr;

use askama::Template;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::admin::ops;
use crate::clock::{format_rfc3339, parse_rfc3339};
use crate::crypto;
use crate::gate::{Outcome, internal_error};
use crate::policy::condition::Context;
use crate::policy::snapshot::{Resource, Snapshot, Who};
use crate::policy::{BindingCondition, Identity, Member, Role};
use crate::runtime::State;
use crate::store::{self, Actor, AuditFilter};
use crate::web::{self, Body};

pub const PREFIX: &str = "/.castellan/admin";

/// What every page's header needs.
struct Base {
    title: String,
    section: &'static str,
    user: String,
    global: bool,
    pending: usize,
    flash: String,
    flash_error: bool,
}

#[derive(Template)]
#[template(path = "admin/apps.html")]
struct AppsPage {
    base: Base,
    apps: Vec<AppRow>,
}

struct AppRow {
    id: String,
    upstream: String,
    healthy: bool,
    health_detail: String,
    principals: usize,
    last_access: String,
    public: bool,
}

#[derive(Template)]
#[template(path = "admin/app.html")]
struct AppPage {
    base: Base,
    app: String,
    public: bool,
    rows: Vec<PrincipalRow>,
    csrf: String,
}

struct PrincipalRow {
    member: String,
    role: String,
    condition: String,
    title: String,
}

#[derive(Template)]
#[template(path = "admin/confirm.html")]
struct ConfirmPage {
    base: Base,
    heading: String,
    question: String,
    action: String,
    fields: Vec<(String, String)>,
    confirm: String,
    back: String,
    csrf: String,
}

#[derive(Template)]
#[template(path = "admin/groups.html")]
struct GroupsPage {
    base: Base,
    groups: Vec<crate::store::Group>,
    csrf: String,
}

#[derive(Template)]
#[template(path = "admin/requests.html")]
struct RequestsPage {
    base: Base,
    requests: Vec<RequestRow>,
    csrf: String,
}

struct RequestRow {
    id: i64,
    email: String,
    app: String,
    reason: String,
    when: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
struct AuditPage {
    base: Base,
    rows: Vec<AuditRow>,
    f_user: String,
    f_app: String,
    f_decision: String,
    f_since: String,
    f_until: String,
    older: String,
}

struct AuditRow {
    when: String,
    actor: String,
    action: String,
    denied: bool,
    app: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "admin/sessions.html")]
struct SessionsPage {
    base: Base,
    sessions: Vec<SessionRow>,
    csrf: String,
}

struct SessionRow {
    id: String,
    email: String,
    provider: String,
    ip: String,
    agent: String,
    since: String,
    seen: String,
}

#[derive(Template)]
#[template(path = "admin/settings.html")]
struct SettingsPage {
    base: Base,
    settings: Vec<(String, String)>,
}

fn when(secs: i64) -> String {
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

struct Admin {
    identity: Identity,
    global: bool,
    /// The apps this admin manages (all of them for a global admin).
    apps: Vec<String>,
    browser: String,
    set_browser: Option<http::HeaderValue>,
}

impl Admin {
    fn may(&self, app: &str) -> bool {
        self.global || self.apps.iter().any(|a| a == app)
    }
}

fn cx_now() -> Context<'static> {
    Context {
        path: "/",
        host: "",
        method: "GET",
        time: crate::clock::now(),
        ip: None,
    }
}

fn render<T: Template>(page: &T, outcome: &mut Outcome, admin: &Admin) -> Response<Body> {
    let mut resp = match page.render() {
        Ok(html) => web::html(StatusCode::OK, html),
        Err(e) => internal_error(outcome, "rendering a console page", &e),
    };
    if let Some(c) = admin.set_browser.clone() {
        resp.headers_mut().append(http::header::SET_COOKIE, c);
    }
    resp
}

fn forbidden(message: &str) -> Response<Body> {
    web::html(
        StatusCode::FORBIDDEN,
        crate::web::pages::error("Not allowed", message, &crypto::reference_id()),
    )
}

/// A redirect after a successful form post, with a message for the next page.
fn done(to: &str, message: &str) -> Response<Body> {
    let sep = if to.contains('?') { '&' } else { '?' };
    let mut r = web::redirect(&format!("{to}{sep}done={}", crate::web::pages::q(message)));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

fn failed(to: &str, message: &str) -> Response<Body> {
    let sep = if to.contains('?') { '&' } else { '?' };
    let mut r = web::redirect(&format!("{to}{sep}error={}", crate::web::pages::q(message)));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let rest = path
        .strip_prefix(PREFIX)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let who = match state.authenticate(req.headers()).await {
        Ok(Some((who, _))) => who,
        Ok(None) => {
            let rd = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            return web::redirect(&format!(
                "/.castellan/sign_in?rd={}",
                crate::web::pages::q(rd)
            ));
        }
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    outcome.user = who.email.clone();
    if req.method() != Method::GET {
        // Decide on the latest policies, including changes made a moment ago elsewhere.
        if let Err(e) = state.reload().await {
            return internal_error(outcome, "reloading policies", &e);
        }
    }
    let snapshot = state.snapshot();
    let as_who = Who::User {
        email: &who.email,
        groups: &who.groups,
    };
    let global = snapshot.has_role(None, Role::Admin, as_who, &cx_now());
    let apps: Vec<String> = state
        .config
        .apps
        .iter()
        .filter(|a| global || snapshot.has_role(Some(&a.id), Role::Admin, as_who, &cx_now()))
        .map(|a| a.id.clone())
        .collect();
    if !global && apps.is_empty() {
        outcome.decision = "deny";
        return forbidden(&format!(
            "{} is not an administrator. An administrator can grant roles/admin with `castellan access add --global user:{} --role roles/admin`.",
            who.email, who.email
        ));
    }
    let (browser, set_browser) = crate::endpoints::browser_id(state, req.headers());
    let admin = Admin {
        identity: std::sync::Arc::unwrap_or_clone(who),
        global,
        apps,
        browser,
        set_browser,
    };
    let params = web::query_pairs(req.uri());
    let flash = web::param(&params, "done")
        .or(web::param(&params, "error"))
        .unwrap_or("")
        .to_string();
    let flash_error = web::param(&params, "error").is_some();
    let pending = match state.store.pending_requests().await {
        Ok(r) => r.iter().filter(|r| admin.may(&r.app)).count(),
        Err(e) => return internal_error(outcome, "reading access requests", &e),
    };
    let base = |title: &str, section: &'static str| Base {
        title: title.to_string(),
        section,
        user: admin.identity.email.clone(),
        global: admin.global,
        pending,
        flash: flash.clone(),
        flash_error,
    };

    if req.method() == Method::POST {
        let ip = web::client_ip(peer, req.headers(), &state.config.trusted_proxies).to_string();
        return post(state, req, &rest, &admin, &ip, outcome).await;
    }
    if req.method() != Method::GET {
        return web::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result: Result<Response<Body>, store::Error> = async {
        Ok(match segments.as_slice() {
            [] => {
                let page = AppsPage {
                    apps: app_rows(state, &snapshot, &admin).await?,
                    base: base("Apps", "apps"),
                };
                render(&page, outcome, &admin)
            }
            ["apps", id] if admin.may(id) => {
                let policy = state.store.policy(&Resource::App(id.to_string())).await?;
                let rows = policy
                    .bindings
                    .iter()
                    .flat_map(|b| {
                        b.members.iter().map(move |m| PrincipalRow {
                            member: m.to_string(),
                            role: b.role.to_string(),
                            condition: b.condition.as_ref().map(condition_words).unwrap_or_default(),
                            title: b.condition.as_ref().map(|c| c.title.clone()).unwrap_or_default(),
                        })
                    })
                    .collect();
                let page = AppPage {
                    base: base(id, "apps"),
                    app: id.to_string(),
                    public: policy.is_public(),
                    rows,
                    csrf: state.csrf_token(&admin.browser),
                };
                render(&page, outcome, &admin)
            }
            ["apps", id, "remove"] if admin.may(id) => {
                let member = web::param(&params, "member").unwrap_or("").to_string();
                let role = web::param(&params, "role").unwrap_or("roles/accessor").to_string();
                let title = web::param(&params, "title").unwrap_or("").to_string();
                let page = ConfirmPage {
                    base: base("Remove principal", "apps"),
                    heading: format!("Remove {member}?"),
                    question: format!(
                        "{member} will lose {role} on {id}{} at once; their open connections to the app close within a second.",
                        if title.is_empty() { String::new() } else { format!(" (the binding \"{title}\")") }
                    ),
                    action: format!("{PREFIX}/apps/{id}/remove"),
                    fields: vec![("member".into(), member.clone()), ("role".into(), role), ("title".into(), title)],
                    confirm: format!("Remove {member}"),
                    back: format!("{PREFIX}/apps/{id}"),
                    csrf: state.csrf_token(&admin.browser),
                };
                render(&page, outcome, &admin)
            }
            ["groups"] if admin.global => {
                let page = GroupsPage {
                    base: base("Groups", "groups"),
                    groups: state.store.groups().await?,
                    csrf: state.csrf_token(&admin.browser),
                };
                render(&page, outcome, &admin)
            }
            ["requests"] => {
                let requests = state
                    .store
                    .pending_requests()
                    .await?
                    .into_iter()
                    .filter(|r| admin.may(&r.app))
                    .map(|r| RequestRow {
                        id: r.id,
                        email: r.email,
                        app: r.app,
                        reason: r.reason,
                        when: when(r.updated_at),
                    })
                    .collect();
                let page = RequestsPage {
                    base: base("Access requests", "requests"),
                    requests,
                    csrf: state.csrf_token(&admin.browser),
                };
                render(&page, outcome, &admin)
            }
            ["audit"] => audit_page(state, &params, &admin, base("Audit", "audit"), outcome).await?,
            ["sessions"] if admin.global => {
                let sessions = state
                    .store
                    .list_sessions(None)
                    .await?
                    .into_iter()
                    .map(|s| SessionRow {
                        id: s.id,
                        email: s.email,
                        provider: s.provider,
                        ip: s.client_ip,
                        agent: s.user_agent.chars().take(80).collect(),
                        since: when(s.created_at),
                        seen: when(s.last_seen),
                    })
                    .collect();
                let page = SessionsPage {
                    base: base("Sessions", "sessions"),
                    sessions,
                    csrf: state.csrf_token(&admin.browser),
                };
                render(&page, outcome, &admin)
            }
            ["settings"] if admin.global => {
                let page = SettingsPage {
                    base: base("Settings", "settings"),
                    settings: settings(state),
                };
                render(&page, outcome, &admin)
            }
            _ => forbidden("There is no such console page, or it is not yours to see."),
        })
    }
    .await;
    result.unwrap_or_else(|e| internal_error(outcome, "reading the store for the console", &e))
}

async fn app_rows(
    state: &State,
    snapshot: &Snapshot,
    admin: &Admin,
) -> Result<Vec<AppRow>, store::Error> {
    let probes: Vec<_> = state
        .config
        .apps
        .iter()
        .filter(|a| admin.may(&a.id))
        .map(|a| {
            let http = state.webhook_client.clone();
            let url = a.upstream.clone();
            tokio::spawn(async move {
                match http
                    .get(url.as_str())
                    .timeout(std::time::Duration::from_secs(2))
                    .send()
                    .await
                {
                    Ok(r) => (true, format!("HTTP {}", r.status().as_u16())),
                    Err(e) if e.is_timeout() => (false, "no answer within 2 s".to_string()),
                    Err(_) => (false, "connection refused or failed".to_string()),
                }
            })
        })
        .collect();
    let mut rows = Vec::new();
    let apps: Vec<_> = state
        .config
        .apps
        .iter()
        .filter(|a| admin.may(&a.id))
        .collect();
    for (a, probe) in apps.into_iter().zip(probes) {
        let (healthy, detail) = probe.await.unwrap_or((false, "probe failed".into()));
        let policy = snapshot.policy(&Resource::App(a.id.clone()));
        let principals = policy
            .map(|p| p.bindings.iter().map(|b| b.members.len()).sum())
            .unwrap_or(0);
        let last = state
            .store
            .audit(&AuditFilter {
                app: Some(a.id.clone()),
                decision: Some("allow".into()),
                limit: 1,
                ..Default::default()
            })
            .await?;
        rows.push(AppRow {
            id: a.id.clone(),
            upstream: a.upstream.as_str().trim_end_matches('/').to_string(),
            healthy,
            health_detail: if healthy { String::new() } else { detail },
            principals,
            last_access: last
                .first()
                .map(|r| format!("{} by {}", when(r.at / 1000), r.actor))
                .unwrap_or_else(|| "never".into()),
            public: policy.is_some_and(|p| p.is_public()),
        });
    }
    Ok(rows)
}

async fn audit_page(
    state: &State,
    params: &[(String, String)],
    admin: &Admin,
    base: Base,
    outcome: &mut Outcome,
) -> Result<Response<Body>, store::Error> {
    let p = |n: &str| web::param(params, n).unwrap_or("").trim().to_string();
    let (f_user, f_app, f_decision, f_since, f_until) =
        (p("user"), p("app"), p("decision"), p("since"), p("until"));
    if !admin.global && (f_app.is_empty() || !admin.may(&f_app)) && admin.apps.len() != 1 {
        return Ok(forbidden(
            "Choose one of your apps in the App filter: only global admins see every app's records.",
        ));
    }
    let app = if !admin.global && f_app.is_empty() {
        admin.apps.first().cloned()
    } else {
        (!f_app.is_empty()).then(|| f_app.clone())
    };
    if let Some(a) = &app
        && !admin.may(a)
    {
        return Ok(forbidden("That app's audit trail is not yours to see."));
    }
    let day = |d: &str, end: bool| -> Option<i64> {
        parse_rfc3339(&format!("{d}T00:00:00Z")).map(|t| (t + if end { 86_399 } else { 0 }) * 1000)
    };
    const PAGE: i64 = 50;
    let before: Option<i64> = web::param(params, "before").and_then(|b| b.parse().ok());
    let (decision, kind) = match f_decision.as_str() {
        "allow" | "deny" | "sign-in" => (Some(f_decision.clone()), None),
        "change" => (None, Some("change".to_string())),
        _ => (None, None),
    };
    let filter = AuditFilter {
        app,
        actor: (!f_user.is_empty()).then(|| f_user.to_ascii_lowercase()),
        since_ms: day(&f_since, false),
        until_ms: day(&f_until, true),
        decision,
        kind,
        after_id: None,
        limit: 10_000,
    };
    // Newest first, one page at a time, paging by id.
    let mut records = state.store.audit(&filter).await?;
    records.reverse();
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| before.is_none_or(|b| r.id < b))
        .collect();
    let more = records.len() as i64 > PAGE;
    let records: Vec<_> = records.into_iter().take(PAGE as usize).collect();
    let older = match (more, records.last()) {
        (true, Some(last)) => format!(
            "{PREFIX}/audit?user={}&app={}&decision={}&since={}&until={}&before={}",
            crate::web::pages::q(&f_user),
            crate::web::pages::q(&f_app),
            crate::web::pages::q(&f_decision),
            crate::web::pages::q(&f_since),
            crate::web::pages::q(&f_until),
            last.id
        ),
        _ => String::new(),
    };
    let rows = records
        .into_iter()
        .map(|r| {
            let detail = if r.kind == "decision" {
                let mut d = format!("{} {} · {}", r.method, r.path, r.reason);
                if !r.binding.is_empty() {
                    d.push_str(&format!(" · via {}", r.binding));
                }
                d
            } else {
                let mut d = r.target.clone();
                if let Some(a) = &r.after {
                    let text = a.to_string();
                    d.push_str(&format!(
                        " · {}",
                        text.chars().take(160).collect::<String>()
                    ));
                }
                d
            };
            AuditRow {
                when: when(r.at / 1000),
                denied: r.action == "deny",
                actor: r.actor,
                action: r.action,
                app: r.app,
                detail,
            }
        })
        .collect();
    let page = AuditPage {
        base,
        rows,
        f_user,
        f_app,
        f_decision,
        f_since,
        f_until,
        older,
    };
    Ok(render(&page, outcome, admin))
}

fn settings(state: &State) -> Vec<(String, String)> {
    let c = &state.config;
    let mut s = vec![
        ("listen".to_string(), c.listen.to_string()),
        ("public_url".into(), c.public_url.to_string()),
        ("store".into(), c.store.to_string()),
        ("local_accounts".into(), c.local_accounts.to_string()),
        (
            "trusted_proxies".into(),
            format!("{} network(s)", c.trusted_proxies.len()),
        ),
        (
            "session_lifetime".into(),
            format!("{} s", c.session_lifetime.as_secs()),
        ),
        (
            "session_idle_timeout".into(),
            format!("{} s", c.session_idle_timeout.as_secs()),
        ),
        (
            "audit_retention".into(),
            format!("{} days", c.audit_retention.as_secs() / 86_400),
        ),
        (
            "access_request_webhook".into(),
            c.access_request_webhook
                .as_ref()
                .map(|u| {
                    format!(
                        "{}://{}/… (path redacted)",
                        u.scheme(),
                        u.host_str().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "assertion signing key id".into(),
            state.signer().kid().to_string(),
        ),
    ];
    for p in &c.providers {
        s.push((
            format!("provider {}", p.id),
            format!("{} · client {} · secret redacted", p.issuer, p.client_id),
        ));
    }
    for a in &c.apps {
        s.push((
            format!("app {}", a.id),
            format!(
                "{} · host {} · path {} · audience {}",
                a.upstream.as_str().trim_end_matches('/'),
                a.host.as_deref().unwrap_or("any"),
                a.path_prefix,
                a.audience
            ),
        ));
    }
    s
}

/// Same-origin check for unsafe requests: `Sec-Fetch-Site` when the browser sends it, else `Origin`.
fn same_origin(state: &State, headers: &http::HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match headers.get(http::header::ORIGIN) {
        Some(o) => o.as_bytes() == state.config.public_origin().as_bytes(),
        None => true,
    }
}

async fn post(
    state: &State,
    req: Request<Incoming>,
    rest: &str,
    admin: &Admin,
    ip: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    let token_ok = web::cookie(&parts.headers, state.cookies.browser)
        .is_some_and(|b| state.csrf_valid(b, web::param(&form, "csrf").unwrap_or("")));
    if !token_ok || !same_origin(state, &parts.headers) {
        outcome.decision = "deny";
        outcome.reason = "csrf";
        return forbidden(
            "This form has expired or did not come from this console. Go back, reload the page and try again.",
        );
    }
    let f = |n: &str| web::param(&form, n).unwrap_or("").trim().to_string();
    let actor = Actor {
        name: admin.identity.email.clone(),
        ip: ip.to_string(),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result: Result<Response<Body>, String> = async {
        match segments.as_slice() {
            ["apps", id, "add"] if admin.may(id) => {
                let back = format!("{PREFIX}/apps/{id}");
                let member = match f("kind").as_str() {
                    "group" => format!("group:{}", f("value")),
                    "domain" => format!("domain:{}", f("value").trim_start_matches('@')),
                    _ => format!("user:{}", f("value")),
                };
                let member = match Member::parse(&member) {
                    Ok(m) => m,
                    Err(e) => return Ok(failed(&back, &e.to_string())),
                };
                let role = Role::parse(&f("role")).map_err(|e| e.to_string())?;
                let expires = match f("expires").as_str() {
                    "" => None,
                    d => Some(ops::parse_expires(d, crate::clock::now())?),
                };
                let condition = ops::condition(None, None, expires)?;
                let (_, added) = ops::add(
                    &state.store,
                    &Resource::App(id.to_string()),
                    role,
                    member.clone(),
                    condition,
                    &actor,
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok(done(
                    &back,
                    &if added {
                        format!("Added {member} ({role}).")
                    } else {
                        format!("{member} already had {role}.")
                    },
                ))
            }
            ["apps", id, "remove"] if admin.may(id) => {
                let back = format!("{PREFIX}/apps/{id}");
                let member = Member::parse(&f("member")).map_err(|e| e.to_string())?;
                let role = Role::parse(&f("role")).map_err(|e| e.to_string())?;
                let title = f("title");
                let title = (!title.is_empty()).then_some(title.as_str());
                let (_, n) = ops::remove(
                    &state.store,
                    &Resource::App(id.to_string()),
                    role,
                    &member,
                    title,
                    &actor,
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok(done(
                    &back,
                    &format!("Removed {member} from {n} binding(s)."),
                ))
            }
            ["groups", "create"] if admin.global => {
                let name = f("name");
                if !crate::policy::valid_group(&name) {
                    return Ok(failed(
                        &format!("{PREFIX}/groups"),
                        &format!("`{name}` is not a group name"),
                    ));
                }
                state
                    .store
                    .create_group(&name, &f("description"), &actor)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(done(
                    &format!("{PREFIX}/groups"),
                    &format!("Created group {name}."),
                ))
            }
            ["groups", op @ ("add-member" | "remove-member")] if admin.global => {
                let email = f("email").to_ascii_lowercase();
                if !crate::policy::is_email(&email) {
                    return Ok(failed(
                        &format!("{PREFIX}/groups"),
                        &format!("`{email}` is not an email address"),
                    ));
                }
                let add = *op == "add-member";
                state
                    .store
                    .set_group_member(&f("group"), &email, add, &actor)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(done(
                    &format!("{PREFIX}/groups"),
                    &if add {
                        format!("Added {email} to {}.", f("group"))
                    } else {
                        format!("Removed {email} from {}.", f("group"))
                    },
                ))
            }
            ["requests", id, verdict @ ("approve" | "deny")] => {
                let back = format!("{PREFIX}/requests");
                let id: i64 = id.parse().map_err(|_| "bad request id".to_string())?;
                let request = state
                    .store
                    .access_request(id)
                    .await
                    .map_err(|e| e.to_string())?;
                if !admin.may(&request.app) {
                    return Ok(forbidden("That request is for an app you do not manage."));
                }
                if *verdict == "deny" {
                    state
                        .store
                        .decide_request(id, false, None, &actor)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(done(
                        &back,
                        &format!("Denied {} access to {}.", request.email, request.app),
                    ));
                }
                let expires = match f("expires").as_str() {
                    "" => None,
                    d => Some(ops::parse_expires(d, crate::clock::now())?),
                };
                let member =
                    Member::parse(&format!("user:{}", request.email)).map_err(|e| e.to_string())?;
                let condition = ops::condition(None, None, expires)?;
                ops::add(
                    &state.store,
                    &Resource::App(request.app.clone()),
                    Role::Accessor,
                    member,
                    condition,
                    &actor,
                )
                .await
                .map_err(|e| e.to_string())?;
                state
                    .store
                    .decide_request(id, true, expires, &actor)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(done(
                    &back,
                    &format!(
                        "Approved: {} can open {}{}.",
                        request.email,
                        request.app,
                        expires
                            .map(|t| format!(" until {}", when(t)))
                            .unwrap_or_default()
                    ),
                ))
            }
            ["sessions", "revoke"] if admin.global => {
                let n = state
                    .store
                    .revoke_sessions(Some(&f("id")), None, &actor)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(done(
                    &format!("{PREFIX}/sessions"),
                    &format!("Ended {n} session(s)."),
                ))
            }
            _ => Ok(forbidden(
                "There is no such console action, or it is not yours to take.",
            )),
        }
    }
    .await;
    match result {
        Ok(r) => {
            // Apply this process's own change now, not at the next poll.
            if state.reload().await.unwrap_or(false) {
                state.recheck_live(true).await;
            }
            r
        }
        Err(message) => failed(&format!("{PREFIX}/"), &message),
    }
}
