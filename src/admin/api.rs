//! The admin HTTP API under `/.castellan/api/v1/`: policies, groups, the explainer, sessions and the
//! audit trail. Documented by `openapi.json` (served at `/.castellan/api/v1/openapi.json`).
//!
//! Callers authenticate with a service account key (`Authorization: Bearer csk_…`) or a browser
//! session, and are authorized by `roles/admin` on the app concerned or on the global policy. Writes
//! from a browser session must be JSON (`Content-Type: application/json`) from castellan's own origin,
//! which a cross-site form or script cannot send without a CORS preflight castellan never grants.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::admin::ops;
use crate::clock::parse_rfc3339;
use crate::policy::condition::Context;
use crate::policy::snapshot::{Resource, Snapshot};
use crate::policy::{Document, Member, Policy, Principal, Role, valid_group};
use crate::runtime::State;
use crate::store::{Actor, AuditFilter};
use crate::web::ctx::{Ctx, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::{self};

pub const PREFIX: &str = "/.castellan/api/v1/";
const OPENAPI: &str = include_str!("openapi.json");

fn bad(msg: impl Into<String>) -> Failure {
    Failure::bad_request("invalid_argument", Why::None, msg)
}

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>, path: &str) -> Answer {
    ctx.navigation = false;
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    if rest == "openapi.json" && req.method() == Method::GET {
        let mut r = Response::new(web::full(OPENAPI));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    let write = req.method() != Method::GET;
    let r = route(state, ctx, req, rest).await?;
    if write {
        // Read-your-writes: this process applies its own change now, not at the next poll.
        state.apply_own_change().await;
    }
    Ok(r)
}

/// The caller, and whether it came with a browser session (whose writes the CSRF guard checks).
async fn authenticate(
    state: &State,
    req: &Request<Incoming>,
) -> Result<(Principal, bool), Failure> {
    if let Some(auth) = req.headers().get(http::header::AUTHORIZATION) {
        let key = auth
            .to_str()
            .ok()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Failure::unauthenticated("use Authorization: Bearer KEY with a service account key")
            })?;
        return match state.store.service_account_for_key(key).await? {
            Some(name) => Ok((Principal::ServiceAccount(name.into()), false)),
            None => Err(Failure::unauthenticated("unknown or revoked key")),
        };
    }
    match state.session(req.headers()).await? {
        Some(s) => Ok((Principal::Person(s.identity), true)),
        None => Err(Failure::unauthenticated(
            "sign in, or send Authorization: Bearer KEY with a service account key",
        )),
    }
}

/// Whether `caller` holds roles/admin on `app` (directly or globally) or, with None, globally.
fn is_admin(
    snapshot: &Snapshot,
    caller: &Principal,
    app: Option<&str>,
    ip: std::net::IpAddr,
) -> bool {
    let cx = Context {
        path: "/",
        host: "",
        method: "GET",
        time: crate::clock::now(),
        ip: Some(ip),
        destination: None,
        auth: Some(caller.auth(caller.castellan_groups(snapshot))),
        // Administration is not an app request: conditions on it meet no access level.
        access_levels: &[],
    };
    snapshot.has_role(app, Role::Admin, caller.who(), &cx)
}

fn require(
    snapshot: &Snapshot,
    caller: &Principal,
    app: Option<&str>,
    ip: std::net::IpAddr,
) -> Result<(), Failure> {
    if is_admin(snapshot, caller, app, ip) {
        return Ok(());
    }
    let on = app
        .map(|a| format!("app {a} or globally"))
        .unwrap_or_else(|| "the global policy".into());
    Err(Failure::forbidden(
        "permission_denied",
        Why::None,
        format!("{} needs roles/admin on {on}", caller.name()),
    ))
}

async fn json_body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Failure> {
    let bytes: Bytes = Limited::new(req.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("the body is not the expected JSON: {e}")))
}

fn ok(value: serde_json::Value) -> Answer {
    Ok(web::json(StatusCode::OK, &value))
}

fn resource(state: &State, name: &str) -> Result<Resource, Failure> {
    if name == "global" {
        return Ok(Resource::Global);
    }
    state
        .config
        .app(name)
        .map(|a| Resource::App(a.id.to_string()))
        .ok_or_else(|| Failure::not_found(format!("there is no app `{name}`")))
}

fn app_of(r: &Resource) -> Option<&str> {
    match r {
        Resource::App(a) => Some(a),
        Resource::Global => None,
    }
}

fn policy_json(p: &Policy) -> serde_json::Value {
    serde_json::to_value(p.to_document()).expect("a policy serialises")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingBody {
    /// Default: the role the app needs (roles/accessor, roles/tunnelAccessor for a TCP app).
    #[serde(default)]
    role: Option<String>,
    member: String,
    #[serde(default)]
    condition: Option<ConditionBody>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    confirm_public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionBody {
    #[serde(default)]
    title: Option<String>,
    expression: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    app: String,
    email: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ip: Option<std::net::IpAddr>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    role: Option<String>,
    /// How the person would have signed in: the provider (default `local`), `amr`, `acr`, and
    /// the claims kept.
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    amr: Vec<String>,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, serde_json::Value>,
    /// Whether the request would come with a verified client certificate (access levels).
    #[serde(default)]
    client_certificate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    group: String,
    email: String,
}

async fn route(state: &State, ctx: &mut Ctx, req: Request<Incoming>, rest: &str) -> Answer {
    let (caller, browser) = authenticate(state, &req).await?;
    ctx.set_user(&caller.name());
    let method = req.method().clone();
    if browser && method != Method::GET {
        guard::check(
            req.headers(),
            &state.config.public_origin(),
            None,
            &state.csrf_keys(),
            Proof::Preflighted(&method),
        )?;
    }
    let ip = ctx.client_ip;
    let actor = Actor {
        name: caller.name(),
        ip: crate::net::ip_text(ip),
    };
    if method != Method::GET {
        // Decide on the latest policies, including changes made a moment ago elsewhere.
        state.reload().await?;
    }
    let snapshot = state.snapshot();
    let query = web::query_pairs(req.uri());
    let q = |name: &str| web::param(&query, name).map(str::to_string);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();

    match (&method, segments.as_slice()) {
        (&Method::GET, ["policies", name]) => {
            let r = resource(state, name)?;
            require(&snapshot, &caller, app_of(&r), ip)?;
            ok(policy_json(&state.store.policy(&r).await?))
        }
        (&Method::PUT, ["policies", name]) => {
            let r = resource(state, name)?;
            require(&snapshot, &caller, app_of(&r), ip)?;
            let force = q("force").as_deref() == Some("true");
            let confirm = q("confirm_public").as_deref() == Some("true");
            let doc: Document = json_body(req).await?;
            let policy = Policy::from_document(&doc).map_err(|e| bad(e.to_string()))?;
            ops::fits(&state.config, &r, &policy).map_err(bad)?;
            if policy.is_public() && !confirm {
                return Err(bad(
                    "this policy makes the app public (allUsers): add ?confirm_public=true",
                ));
            }
            if doc.etag.is_empty() && !force {
                return Err(bad(
                    "the policy has no etag: GET it first so concurrent changes are not lost, or add ?force=true",
                ));
            }
            let expected = (!force).then_some(doc.etag.as_str());
            let stored = state
                .store
                .set_policy(&r, &policy, expected, &actor, "policy.set")
                .await?;
            ok(policy_json(&stored))
        }
        (&Method::POST, ["policies", name, "bindings"]) => {
            let r = resource(state, name)?;
            require(&snapshot, &caller, app_of(&r), ip)?;
            let body: BindingBody = json_body(req).await?;
            let role = ops::role_for(&state.config.apps, &r, body.role.as_deref()).map_err(bad)?;
            let member = Member::parse(&body.member).map_err(|e| bad(e.to_string()))?;
            if member.is_public() && role != Role::Admin && !body.confirm_public {
                return Err(bad(
                    "allUsers makes the app public: set \"confirm_public\": true",
                ));
            }
            let expires = body
                .expires
                .as_deref()
                .map(|e| ops::parse_expires(e, crate::clock::now()))
                .transpose()
                .map_err(bad)?;
            let (expr, title) = match &body.condition {
                Some(c) => (Some(c.expression.as_str()), c.title.as_deref()),
                None => (None, None),
            };
            let condition =
                ops::condition(&state.config.access_levels, expr, title, expires).map_err(bad)?;
            let (policy, added) =
                ops::add(&state.store, &r, role, member, condition, &actor).await?;
            let mut v = policy_json(&policy);
            v["changed"] = json!(added);
            ok(v)
        }
        (&Method::DELETE, ["policies", name, "bindings"]) => {
            let r = resource(state, name)?;
            require(&snapshot, &caller, app_of(&r), ip)?;
            let role = match q("role") {
                Some(given) => Role::parse(&given).map_err(bad)?,
                None => ops::role_for(&state.config.apps, &r, None).map_err(bad)?,
            };
            let member = Member::parse(&q("member").ok_or_else(|| bad("give ?member=…"))?)
                .map_err(|e| bad(e.to_string()))?;
            let (policy, n) = ops::remove(
                &state.store,
                &r,
                role,
                &member,
                q("condition_title").as_deref(),
                &actor,
            )
            .await?;
            if n == 0 {
                return Err(Failure::not_found(format!(
                    "{member} has no {role} binding here"
                )));
            }
            ok(policy_json(&policy))
        }
        (&Method::GET, ["groups"]) => {
            require(&snapshot, &caller, None, ip)?;
            ok(json!({ "groups": state.store.groups().await? }))
        }
        (&Method::POST, ["groups"]) => {
            require(&snapshot, &caller, None, ip)?;
            let body: GroupBody = json_body(req).await?;
            if !valid_group(&body.name) {
                return Err(bad(format!("`{}` is not a group name", body.name)));
            }
            state
                .store
                .create_group(&body.name, &body.description, &actor)
                .await?;
            Ok(web::json(
                StatusCode::CREATED,
                &json!({ "name": body.name }),
            ))
        }
        (&Method::DELETE, ["groups"]) => {
            require(&snapshot, &caller, None, ip)?;
            let name = q("name").ok_or_else(|| bad("give ?name=…"))?;
            state.store.delete_group(&name, &actor).await?;
            ok(json!({ "deleted": name }))
        }
        (&Method::POST, ["groups", "members"]) | (&Method::DELETE, ["groups", "members"]) => {
            require(&snapshot, &caller, None, ip)?;
            let add = method == Method::POST;
            let (group, email) = if add {
                let b: MemberBody = json_body(req).await?;
                (b.group, b.email)
            } else {
                (
                    q("group").ok_or_else(|| bad("give ?group=…"))?,
                    q("email").ok_or_else(|| bad("give ?email=…"))?,
                )
            };
            let email = email.trim().to_ascii_lowercase();
            if !crate::policy::is_email(&email) {
                return Err(bad(format!("`{email}` is not an email address")));
            }
            let changed = state
                .store
                .set_group_member(&group, &email, add, &actor)
                .await?;
            ok(json!({ "group": group, "email": email, "changed": changed }))
        }
        (&Method::POST, ["check"]) => {
            let body: CheckBody = json_body(req).await?;
            let r = resource(state, &body.app)?;
            require(&snapshot, &caller, app_of(&r), ip)?;
            let role = ops::role_for(&state.config.apps, &r, body.role.as_deref()).map_err(bad)?;
            let email = body.email.trim().to_ascii_lowercase();
            let path =
                crate::gate::path::normalize(body.path.as_deref().unwrap_or("/")).map_err(bad)?;
            let at = match body.at.as_deref() {
                None => crate::clock::now(),
                Some(a) => {
                    parse_rfc3339(a).ok_or_else(|| bad("`at` must be an RFC 3339 timestamp"))?
                }
            };
            let method = body.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
            let mut person = crate::policy::Identity::local(&email);
            person.provider = body.provider.clone().unwrap_or_else(|| "local".into());
            person.groups = body.groups.clone();
            person.amr = body.amr.clone();
            person.acr = body.acr.clone();
            person.claims = body.claims.clone();
            let levels = crate::policy::access_level::met(
                &state.config.access_levels,
                &crate::policy::access_level::Seen {
                    ip: body.ip,
                    client_certificate: body.client_certificate,
                    time: at,
                },
            );
            let cx = Context {
                path: &path,
                host: body.host.as_deref().unwrap_or(""),
                method: &method,
                time: at,
                ip: body.ip,
                destination: state
                    .config
                    .apps
                    .iter()
                    .find(|a| *a.id == *body.app)
                    .and_then(crate::config::App::destination),
                auth: Some(person.auth(snapshot.groups_of(&email))),
                access_levels: &levels,
            };
            let who = crate::policy::Who::User {
                email: &email,
                groups: &body.groups,
                domain: crate::policy::email_domain(&email),
            };
            let mut e = snapshot.explain(&body.app, role, who, &cx);
            if !is_admin(&snapshot, &caller, None, ip) {
                e = e.for_app_admin();
            }
            let bindings: Vec<_> = e
                .bindings
                .iter()
                .map(|b| {
                    json!({
                        "resource": b.resource.key(),
                        "index": b.index,
                        "members": b.members,
                        "matched": b.matched,
                        "condition": b.condition.as_ref().map(|(t, x, r)| json!({"title": t, "expression": x, "result": r})),
                    })
                })
                .collect();
            let step_up = ops::step_up_text(state.config.app(&body.app), &person);
            let mut explanation = ops::explain_text(&e, &body.app, &email);
            explanation.push_str(step_up.as_deref().unwrap_or_default());
            ok(json!({
                "allowed": e.decision.allowed() && step_up.is_none(),
                "step_up": step_up.as_deref().map(str::trim_end),
                "decision": e.decision.label(),
                "reason": e.decision.reason().as_str(),
                "grant": match &e.decision { crate::policy::Decision::Allow(g) => Some(g.to_string()), _ => None },
                "groups": e.groups,
                "bindings": bindings,
                "hidden_bindings": e.hidden,
                "explanation": explanation,
            }))
        }
        (&Method::GET, ["sessions"]) => {
            require(&snapshot, &caller, None, ip)?;
            let user = q("user").map(|u| u.to_ascii_lowercase());
            ok(json!({ "sessions": state.store.list_sessions(user.as_deref()).await? }))
        }
        (&Method::DELETE, ["sessions", id]) => {
            require(&snapshot, &caller, None, ip)?;
            let n = state.store.revoke_sessions(Some(id), None, &actor).await?;
            if n == 0 {
                return Err(Failure::not_found("no session with that id"));
            }
            ok(json!({ "ended": n }))
        }
        (&Method::DELETE, ["sessions"]) => {
            require(&snapshot, &caller, None, ip)?;
            let user = q("user").ok_or_else(|| bad("give ?user=EMAIL, or DELETE /sessions/ID"))?;
            let n = state
                .store
                .revoke_sessions(None, Some(&user.to_ascii_lowercase()), &actor)
                .await?;
            ok(json!({ "ended": n }))
        }
        (&Method::GET, ["audit"]) => {
            let app = q("app");
            if let Some(a) = &app {
                resource(state, a)?;
            }
            require(&snapshot, &caller, app.as_deref(), ip)?;
            let ms = |name: &str| -> Result<Option<i64>, Failure> {
                q(name)
                    .map(|v| {
                        parse_rfc3339(&v)
                            .map(|t| t * 1000)
                            .ok_or_else(|| bad(format!("`{name}` must be an RFC 3339 timestamp")))
                    })
                    .transpose()
            };
            let filter = AuditFilter {
                app,
                actor: q("user"),
                since_ms: ms("since")?,
                until_ms: ms("until")?,
                decision: q("decision"),
                kind: q("kind"),
                after_id: q("after_id").and_then(|v| v.parse().ok()),
                limit: q("limit").and_then(|v| v.parse().ok()).unwrap_or(100),
            };
            ok(json!({ "records": state.store.audit(&filter).await? }))
        }
        _ => Err(Failure::not_found(format!(
            "no API endpoint {method} {PREFIX}{rest}; see {PREFIX}openapi.json"
        ))),
    }
}
