//! The admin HTTP API under `/.castellan/api/v1/`: policies, groups, the explainer, sessions and the
//! audit trail. Documented by `openapi.json` (served at `/.castellan/api/v1/openapi.json`).
//!
//! Callers authenticate with a service account key (`Authorization: Bearer csk_…`) or a browser
//! session, and are authorized by `roles/admin` on the app concerned or on the global policy. Writes
//! from a browser session must be JSON (`Content-Type: application/json`) from castellan's own origin,
//! which a cross-site form or script cannot send without a CORS preflight castellan never grants.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::admin::ops;
use crate::clock::parse_rfc3339;
use crate::gate::Outcome;
use crate::policy::condition::Context;
use crate::policy::snapshot::{Resource, Snapshot, Who};
use crate::policy::{Document, Member, Policy, Role, valid_group};
use crate::runtime::State;
use crate::store::{self, Actor, AuditFilter};
use crate::web::{self, Body};

pub const PREFIX: &str = "/.castellan/api/v1/";
const OPENAPI: &str = include_str!("openapi.json");

/// An API failure: status, stable code, message for people.
struct ApiError(StatusCode, &'static str, String);

type ApiResult = Result<Response<Body>, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "invalid_argument", msg.into())
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> ApiError {
        match e {
            store::Error::StaleEtag { .. } => {
                ApiError(StatusCode::CONFLICT, "stale_etag", e.to_string())
            }
            store::Error::Exists(_) | store::Error::UserExists(_) => {
                ApiError(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            store::Error::NotFound(_) => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            other => {
                let reference = crate::crypto::reference_id();
                tracing::error!(reference, "API store error: {other}");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the store failed; reference {reference}"),
                )
            }
        }
    }
}

/// The authenticated caller.
enum Caller {
    User(crate::policy::Identity),
    ServiceAccount(String),
}

impl Caller {
    fn who(&self) -> Who<'_> {
        match self {
            Caller::User(i) => Who::User {
                email: &i.email,
                groups: &i.groups,
            },
            Caller::ServiceAccount(n) => Who::ServiceAccount(n),
        }
    }

    fn name(&self) -> String {
        match self {
            Caller::User(i) => i.email.clone(),
            Caller::ServiceAccount(n) => format!("serviceAccount:{n}"),
        }
    }
}

pub async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    if rest == "openapi.json" && req.method() == Method::GET {
        let mut r = Response::new(web::full(OPENAPI));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let write = req.method() != Method::GET;
    match route(state, peer, req, rest, outcome).await {
        Ok(r) => {
            // Read-your-writes: this process applies its own change now, not at the next poll.
            if write && state.reload().await.unwrap_or(false) {
                state.recheck_live(true).await;
            }
            r
        }
        Err(ApiError(status, code, message)) => {
            outcome.decision = if status == StatusCode::FORBIDDEN {
                "deny"
            } else {
                outcome.decision
            };
            let mut r = web::json(status, &json!({ "error": code, "message": message }));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"castellan\""),
                );
            }
            r
        }
    }
}

async fn authenticate(state: &State, req: &Request<Incoming>) -> Result<(Caller, bool), ApiError> {
    if let Some(auth) = req.headers().get(http::header::AUTHORIZATION) {
        let key = auth
            .to_str()
            .ok()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "use Authorization: Bearer KEY with a service account key".into(),
                )
            })?;
        return match state.store.service_account_for_key(key).await? {
            Some(name) => Ok((Caller::ServiceAccount(name), false)),
            None => Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "unknown or revoked key".into(),
            )),
        };
    }
    match state.authenticate(req.headers()).await? {
        Some((identity, _)) => Ok((
            Caller::User(std::sync::Arc::unwrap_or_clone(identity)),
            true,
        )),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in, or send Authorization: Bearer KEY with a service account key".into(),
        )),
    }
}

fn require(
    snapshot: &Snapshot,
    caller: &Caller,
    app: Option<&str>,
    ip: std::net::IpAddr,
) -> Result<(), ApiError> {
    let cx = Context {
        path: "/",
        host: "",
        method: "GET",
        time: crate::clock::now(),
        ip: Some(ip),
    };
    if snapshot.has_role(app, Role::Admin, caller.who(), &cx) {
        Ok(())
    } else {
        let on = app
            .map(|a| format!("app {a} or globally"))
            .unwrap_or_else(|| "the global policy".into());
        Err(ApiError(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{} needs roles/admin on {on}", caller.name()),
        ))
    }
}

async fn json_body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes: Bytes = Limited::new(req.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("the body is not the expected JSON: {e}")))
}

fn ok(value: serde_json::Value) -> ApiResult {
    Ok(web::json(StatusCode::OK, &value))
}

fn resource(state: &State, name: &str) -> Result<Resource, ApiError> {
    if name == "global" {
        return Ok(Resource::Global);
    }
    state
        .config
        .app(name)
        .map(|a| Resource::App(a.id.clone()))
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("there is no app `{name}`"),
            )
        })
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
    #[serde(default = "accessor")]
    role: String,
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

fn accessor() -> String {
    "roles/accessor".into()
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
    #[serde(default = "accessor")]
    role: String,
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

async fn route(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    rest: &str,
    outcome: &mut Outcome,
) -> ApiResult {
    let (caller, browser) = authenticate(state, &req).await?;
    outcome.user = caller.name();
    let method = req.method().clone();
    if browser && method != Method::GET {
        let json_ct = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let origin_ok = req
            .headers()
            .get(http::header::ORIGIN)
            .is_none_or(|o| o.as_bytes() == state.config.public_origin().as_bytes());
        if !(json_ct || method == Method::DELETE) || !origin_ok {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "csrf",
                "writes with a browser session must send Content-Type: application/json from castellan's own origin".into(),
            ));
        }
    }
    let ip = web::client_ip(peer, req.headers(), &state.config.trusted_proxies);
    let actor = Actor {
        name: caller.name(),
        ip: ip.to_string(),
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
            let role = Role::parse(&body.role).map_err(bad)?;
            let member = Member::parse(&body.member).map_err(|e| bad(e.to_string()))?;
            if member.is_public() && role == Role::Accessor && !body.confirm_public {
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
            let condition = ops::condition(expr, title, expires).map_err(bad)?;
            let (policy, added) =
                ops::add(&state.store, &r, role, member, condition, &actor).await?;
            let mut v = policy_json(&policy);
            v["changed"] = json!(added);
            ok(v)
        }
        (&Method::DELETE, ["policies", name, "bindings"]) => {
            let r = resource(state, name)?;
            require(&snapshot, &caller, app_of(&r), ip)?;
            let role = Role::parse(&q("role").unwrap_or_else(accessor)).map_err(bad)?;
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
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("{member} has no {role} binding here"),
                ));
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
            let role = Role::parse(&body.role).map_err(bad)?;
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
            let cx = Context {
                path: &path,
                host: body.host.as_deref().unwrap_or(""),
                method: &method,
                time: at,
                ip: body.ip,
            };
            let who = Who::User {
                email: &email,
                groups: &body.groups,
            };
            let e = snapshot.explain(&body.app, role, who, &cx);
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
            ok(json!({
                "allowed": e.decision.allowed(),
                "decision": e.decision.label(),
                "reason": e.decision.reason().as_str(),
                "grant": match &e.decision { crate::policy::Decision::Allow(g) => Some(g.to_string()), _ => None },
                "groups": e.groups,
                "bindings": bindings,
                "explanation": ops::explain_text(&e, &body.app, &email),
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
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no session with that id".into(),
                ));
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
            let ms = |name: &str| -> Result<Option<i64>, ApiError> {
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
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no API endpoint {method} {PREFIX}{rest}; see {PREFIX}openapi.json"),
        )),
    }
}
