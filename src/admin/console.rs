//! The admin console under `/.castellan/admin/`: apps and their principals, groups, access
//! requests, the audit trail, sessions and a settings summary.
//!
//! Server-rendered from askama templates (compile-checked, auto-escaped) with no JavaScript. Every
//! form carries a CSRF token bound to the browser, and every unsafe request must come from
//! castellan's own origin (`Origin`, or `Sec-Fetch-Site: same-origin`). Global admins see
//! everything; an app's admins see that app, its requests and its audit records.

use askama::Template;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::clock::parse_rfc3339;
use crate::policy::condition::Context;
use crate::policy::snapshot::{Resource, Snapshot};
use crate::policy::{Identity, Role};
use crate::runtime::State;
use crate::store::{self, AuditFilter};
use crate::web::ctx::{Ctx, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::{self, Body};

pub const PREFIX: &str = "/.castellan/admin";

use super::views::*;

pub(super) struct Admin {
    pub(super) identity: Identity,
    pub(super) global: bool,
    /// The apps this admin manages (all of them for a global admin).
    pub(super) apps: Vec<String>,
    pub(super) browser: String,
    pub(super) set_browser: Option<http::HeaderValue>,
}

impl Admin {
    pub(super) fn may(&self, app: &str) -> bool {
        self.global || self.apps.iter().any(|a| a == app)
    }
}

/// The console's decisions about its own user (are they an administrator, and of what).
fn cx_now<'a>(auth: crate::policy::condition::Auth<'a>) -> Context<'a> {
    Context {
        path: "/",
        host: "",
        method: "GET",
        time: crate::clock::now(),
        ip: None,
        destination: None,
        auth: Some(auth),
        access_levels: &[],
    }
}

fn render<T: Template>(page: &T, admin: &Admin) -> Answer {
    let html = page
        .render()
        .map_err(|e| Failure::internal("rendering a console page", &e))?;
    let mut resp = web::html(StatusCode::OK, html);
    if let Some(c) = admin.set_browser.clone() {
        resp.headers_mut().append(http::header::SET_COOKIE, c);
    }
    Ok(resp)
}

pub(super) fn forbidden(message: &str) -> Failure {
    Failure::forbidden("permission_denied", Why::None, message)
}

/// A redirect after a successful form post, with a message for the next page.
pub(super) fn done(to: &str, message: &str) -> Response<Body> {
    let sep = if to.contains('?') { '&' } else { '?' };
    let mut r = web::redirect(&format!("{to}{sep}done={}", crate::web::pages::q(message)));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

pub(super) fn failed(to: &str, message: &str) -> Response<Body> {
    let sep = if to.contains('?') { '&' } else { '?' };
    let mut r = web::redirect(&format!("{to}{sep}error={}", crate::web::pages::q(message)));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>, path: &str) -> Answer {
    let rest = path
        .strip_prefix(PREFIX)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let session = state
        .session(req.headers())
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    let Some(session) = session else {
        let rd = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        return Ok(web::redirect(&format!(
            "/.castellan/sign_in?rd={}",
            crate::web::pages::q(rd)
        )));
    };
    let who = session.identity;
    ctx.set_user(&who.email);
    if req.method() != Method::GET {
        // Decide on the latest policies, including changes made a moment ago elsewhere.
        state
            .reload()
            .await
            .map_err(|e| Failure::internal("reloading policies", &e))?;
    }
    let snapshot = state.snapshot();
    let as_who = who.who();
    let cx = cx_now(who.auth(snapshot.groups_of(&who.email)));
    let global = snapshot.has_role(None, Role::Admin, as_who, &cx);
    let apps: Vec<String> = state
        .config
        .apps
        .iter()
        .filter(|a| global || snapshot.has_role(Some(&a.id), Role::Admin, as_who, &cx))
        .map(|a| a.id.to_string())
        .collect();
    if !global && apps.is_empty() {
        return Err(forbidden(&format!(
            "{} is not an administrator. An administrator can grant roles/admin with `castellan access add --global user:{} --role roles/admin`.",
            who.email, who.email
        )));
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
    let pending = state
        .store
        .pending_requests()
        .await
        .map_err(|e| Failure::internal("reading access requests", &e))?
        .iter()
        .filter(|r| admin.may(&r.app))
        .count();
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
        let ip = crate::net::ip_text(ctx.client_ip);
        return super::actions::post(state, req, &rest, &admin, &ip).await;
    }
    if req.method() != Method::GET {
        return Err(Failure::method_not_allowed("GET, POST"));
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [] => {
            let page = AppsPage {
                apps: app_rows(state, &snapshot, &admin).await?,
                base: base("Apps", "apps"),
            };
            render(&page, &admin)
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
                        condition: b
                            .condition
                            .as_ref()
                            .map(condition_words)
                            .unwrap_or_default(),
                        title: b
                            .condition
                            .as_ref()
                            .map(|c| c.title.clone())
                            .unwrap_or_default(),
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
            render(&page, &admin)
        }
        ["apps", id, "remove"] if admin.may(id) => {
            let member = web::param(&params, "member").unwrap_or("").to_string();
            let role = web::param(&params, "role")
                .unwrap_or("roles/accessor")
                .to_string();
            let title = web::param(&params, "title").unwrap_or("").to_string();
            let page = ConfirmPage {
                base: base("Remove principal", "apps"),
                heading: format!("Remove {member}?"),
                question: format!(
                    "{member} will lose {role} on {id}{} at once; their open connections to the app close within a second.",
                    if title.is_empty() {
                        String::new()
                    } else {
                        format!(" (the binding \"{title}\")")
                    }
                ),
                action: format!("{PREFIX}/apps/{id}/remove"),
                fields: vec![
                    ("member".into(), member.clone()),
                    ("role".into(), role),
                    ("title".into(), title),
                ],
                confirm: format!("Remove {member}"),
                back: format!("{PREFIX}/apps/{id}"),
                csrf: state.csrf_token(&admin.browser),
            };
            render(&page, &admin)
        }
        ["groups"] if admin.global => {
            let now = crate::clock::now();
            let directory = state
                .store
                .directory_groups(None)
                .await?
                .into_iter()
                .map(|d| DirectoryRow {
                    groups: if d.groups.is_empty() {
                        "no groups".into()
                    } else {
                        d.groups.join(", ")
                    },
                    answered: format!(
                        "{} ({} s ago)",
                        crate::web::pages::when(d.fetched_at),
                        now - d.fetched_at
                    ),
                    email: d.email,
                    directory: d.directory,
                })
                .collect();
            let (_, provisioned) = state
                .store
                .scim_groups(
                    store::ScimFilter::All,
                    store::ScimPage {
                        start: 1,
                        count: 1000,
                    },
                )
                .await?;
            let mut scim = Vec::new();
            for g in provisioned {
                let members: Vec<String> = state
                    .store
                    .scim_group_members(&g.id)
                    .await?
                    .into_iter()
                    .map(|(_, _, email, active)| match active {
                        true => email,
                        false => format!("{email} (inactive)"),
                    })
                    .collect();
                scim.push((g.display_name, members.join(", ")));
            }
            let page = GroupsPage {
                base: base("Groups", "groups"),
                groups: state.store.groups().await?,
                scim,
                directory,
                csrf: state.csrf_token(&admin.browser),
            };
            render(&page, &admin)
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
            render(&page, &admin)
        }
        ["audit"] => audit_page(state, &params, &admin, base("Audit", "audit")).await,
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
            render(&page, &admin)
        }
        ["settings"] if admin.global => {
            let page = SettingsPage {
                base: base("Settings", "settings"),
                settings: settings(state),
            };
            render(&page, &admin)
        }
        _ => Err(forbidden(
            "There is no such console page, or it is not yours to see.",
        )),
    }
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
            // Over the app's own connections (its CA, client certificate, connect timeout).
            let pool = state.pool_for(a).clone();
            let url = a.upstream().clone();
            let tcp = (a.kind() == crate::config::AppKind::Tcp).then(|| a.upstream_authority());
            tokio::spawn(async move {
                // A TCP app is healthy when its port accepts a connection.
                if let Some(target) = tcp {
                    let connect = tokio::net::TcpStream::connect(target);
                    return match tokio::time::timeout(std::time::Duration::from_secs(2), connect)
                        .await
                    {
                        Ok(Ok(_)) => (true, "TCP port open".to_string()),
                        Ok(Err(_)) => (false, "connection refused or failed".to_string()),
                        Err(_) => (false, "no answer within 2 s".to_string()),
                    };
                }
                // Any answer means it answers (the console says which).
                let (answered, detail) = crate::runtime::balance::check(
                    &pool,
                    url.as_str(),
                    "/",
                    std::time::Duration::from_secs(2),
                )
                .await;
                (answered || detail.starts_with("HTTP "), detail)
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
        let policy = snapshot.policy(&Resource::App(a.id.to_string()));
        let principals = policy
            .map(|p| p.bindings.iter().map(|b| b.members.len()).sum())
            .unwrap_or(0);
        let last = state
            .store
            .audit(&AuditFilter {
                app: Some(a.id.to_string()),
                decision: Some("allow".into()),
                limit: 1,
                ..Default::default()
            })
            .await?;
        // A pool says what it knows of each upstream (health checks, refused connections).
        let pool: Vec<(String, bool, String)> = state
            .balancers
            .get(&*a.id)
            .map(|b| {
                b.states()
                    .into_iter()
                    .map(|t| {
                        let detail = format!("{} ({} outstanding)", t.detail, t.outstanding);
                        (t.url, t.in_pool, detail)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let healthy = if pool.is_empty() {
            healthy
        } else {
            pool.iter().any(|(_, in_pool, _)| *in_pool)
        };
        rows.push(AppRow {
            id: a.id.to_string(),
            upstream: a.upstream().as_str().trim_end_matches('/').to_string(),
            pool,
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
) -> Answer {
    let p = |n: &str| web::param(params, n).unwrap_or("").trim().to_string();
    let (f_user, f_app, f_decision, f_since, f_until) =
        (p("user"), p("app"), p("decision"), p("since"), p("until"));
    if !admin.global && (f_app.is_empty() || !admin.may(&f_app)) && admin.apps.len() != 1 {
        return Err(forbidden(
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
        return Err(forbidden("That app's audit trail is not yours to see."));
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
            let detail = if &*r.kind == "decision" {
                let mut d = format!("{} {} · {}", r.method, r.path, r.reason);
                if !r.binding.is_empty() {
                    d.push_str(&format!(" · via {}", r.binding));
                }
                d
            } else {
                let mut d = r.target.to_string();
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
                denied: &*r.action == "deny",
                actor: r.actor.to_string(),
                action: r.action.to_string(),
                app: r.app.to_string(),
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
    render(&page, admin)
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
                a.upstreams
                    .iter()
                    .map(|u| u.as_str().trim_end_matches('/'))
                    .collect::<Vec<_>>()
                    .join(", "),
                &a.host,
                a.path_prefix,
                a.audience
            ),
        ));
    }
    s
}
