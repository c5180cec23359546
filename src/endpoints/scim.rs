//! SCIM 2.0 provisioning (RFC 7643, RFC 7644) at `/.castellan/scim/v2/`, for identity providers
//! that push people and groups (Okta, Microsoft Entra ID): `Users` and `Groups` with create,
//! read, list (`filter=userName eq "…"`, `externalId eq`, `displayName eq`; `startIndex`,
//! `count`), replace (PUT), PATCH ([`patch`]) and delete, and the discovery resources
//! (`ServiceProviderConfig`, `ResourceTypes`, `Schemas`).
//!
//! Server to server: the bearer token `scim_token` is the whole proof (compared in constant
//! time), so the browser CSRF guard does not apply. Errors are SCIM's shape. What provisioning
//! does to access lives in the store: a person made inactive or deleted loses every session at
//! once (their connections close through the usual change path) and cannot sign in while
//! inactive; a group's active members match `group:DISPLAY-NAME`.

mod patch;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::runtime::State;
use crate::store::{ScimFilter, ScimGroup, ScimPage, ScimUser};
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::{self, Body};

pub const PREFIX: &str = "/.castellan/scim/v2";
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// The largest body taken: a group of ~10,000 members.
const MAX_BODY: usize = 1024 * 1024;
const MAX_COUNT: i64 = 1000;

fn bad(scim_type: &'static str, detail: impl Into<String>) -> Failure {
    Failure::bad_request("invalid_scim_request", Why::None, detail).scim(Some(scim_type))
}

fn not_found(what: &str) -> Failure {
    Failure::not_found(format!("there is no {what}")).scim(None)
}

fn from_store(e: crate::store::Error) -> Failure {
    let uniqueness = matches!(e, crate::store::Error::Exists(_));
    let missing_member = matches!(&e, crate::store::Error::NotFound(w) if w.starts_with("member"));
    if missing_member {
        return bad("invalidValue", e.to_string());
    }
    let f = Failure::from(e);
    f.scim(uniqueness.then_some("uniqueness"))
}

fn answer(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = web::json(status, value);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/scim+json"),
    );
    resp
}

pub async fn handle(state: &State, ctx: &mut Ctx, req: Request<Incoming>, path: &str) -> Answer {
    ctx.navigation = false;
    let Some(token) = &state.config.scim_token else {
        return Err(Failure::not_found(
            "SCIM provisioning is off: set scim_token in the configuration to turn it on",
        )
        .scim(None));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !crate::crypto::equal(presented.trim(), &token.0) {
        return Err(Failure::unauthenticated(
            "SCIM requests need the bearer token configured as scim_token",
        )
        .scim(None));
    }
    ctx.set_user("scim");
    let base = format!("{}{PREFIX}", state.config.public_origin());
    let method = req.method().clone();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let query = web::query_pairs(req.uri());
    let resp = match (method, segments.as_slice()) {
        (Method::GET, ["ServiceProviderConfig"]) => answer(StatusCode::OK, &provider_config(&base)),
        (Method::GET, ["ResourceTypes"]) => answer(StatusCode::OK, &list(resource_types(&base), 1)),
        (Method::GET, ["Schemas"]) => answer(StatusCode::OK, &list(schemas(), 1)),
        (Method::GET, ["Users"]) => list_users(state, &base, &query).await?,
        (Method::POST, ["Users"]) => {
            let body = read(req).await?;
            let now = crate::clock::now();
            let user = user_from(crate::crypto::random_token(16), body, now, now)?;
            state
                .store
                .scim_put_user(&user, true)
                .await
                .map_err(from_store)?;
            changed(state, ctx, &user.email, !user.active).await;
            answer(StatusCode::CREATED, &user_json(&base, &user))
        }
        (Method::GET, ["Users", id]) => {
            let user = state
                .store
                .scim_user(id)
                .await?
                .ok_or_else(|| not_found("such user"))?;
            answer(StatusCode::OK, &user_json(&base, &user))
        }
        (Method::PUT, ["Users", id]) => {
            let old = state
                .store
                .scim_user(id)
                .await?
                .ok_or_else(|| not_found("such user"))?;
            let body = read(req).await?;
            let user = user_from(old.id.clone(), body, old.created, crate::clock::now())?;
            put_user(state, ctx, &old, user, &base).await?
        }
        (Method::PATCH, ["Users", id]) => {
            let old = state
                .store
                .scim_user(id)
                .await?
                .ok_or_else(|| not_found("such user"))?;
            let body = read(req).await?;
            let mut resource = user_json(&base, &old)
                .as_object()
                .cloned()
                .unwrap_or_default();
            patch::apply(&mut resource, &body).map_err(|e| bad("invalidSyntax", e))?;
            let user = user_from(
                old.id.clone(),
                Value::Object(resource),
                old.created,
                crate::clock::now(),
            )?;
            put_user(state, ctx, &old, user, &base).await?
        }
        (Method::DELETE, ["Users", id]) => {
            let user = state
                .store
                .scim_user(id)
                .await?
                .ok_or_else(|| not_found("such user"))?;
            state.store.scim_delete_user(id).await?;
            changed(state, ctx, &user.email, true).await;
            no_content()
        }
        (Method::GET, ["Groups"]) => list_groups(state, &base, &query).await?,
        (Method::POST, ["Groups"]) => {
            let body = read(req).await?;
            let now = crate::clock::now();
            let group = group_from(crate::crypto::random_token(16), body, now, now)?;
            state
                .store
                .scim_put_group(&group, true)
                .await
                .map_err(from_store)?;
            changed(state, ctx, &format!("group {}", group.display_name), false).await;
            answer(
                StatusCode::CREATED,
                &group_json(state, &base, &group).await?,
            )
        }
        (Method::GET, ["Groups", id]) => {
            let group = state
                .store
                .scim_group(id)
                .await?
                .ok_or_else(|| not_found("such group"))?;
            answer(StatusCode::OK, &group_json(state, &base, &group).await?)
        }
        (Method::PUT | Method::PATCH, ["Groups", id]) => {
            let patching = req.method() == Method::PATCH;
            let old = state
                .store
                .scim_group(id)
                .await?
                .ok_or_else(|| not_found("such group"))?;
            let body = read(req).await?;
            let body = if patching {
                let mut resource = group_json(state, &base, &old)
                    .await?
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                patch::apply(&mut resource, &body).map_err(|e| bad("invalidSyntax", e))?;
                Value::Object(resource)
            } else {
                body
            };
            let group = group_from(old.id.clone(), body, old.created, crate::clock::now())?;
            state
                .store
                .scim_put_group(&group, false)
                .await
                .map_err(from_store)?;
            changed(state, ctx, &format!("group {}", group.display_name), false).await;
            answer(StatusCode::OK, &group_json(state, &base, &group).await?)
        }
        (Method::DELETE, ["Groups", id]) => {
            if !state.store.scim_delete_group(id).await? {
                return Err(not_found("such group"));
            }
            changed(state, ctx, "a group", false).await;
            no_content()
        }
        (
            _,
            [
                "ServiceProviderConfig" | "ResourceTypes" | "Schemas" | "Users" | "Groups",
                ..,
            ],
        ) => {
            return Err(Failure::method_not_allowed("GET, POST, PUT, PATCH, DELETE").scim(None));
        }
        _ => return Err(not_found(&format!("SCIM resource at {path}"))),
    };
    Ok(resp)
}

/// Applies this process's change at once (closing ended connections) and records it.
async fn changed(state: &State, ctx: &mut Ctx, what: &str, ended_access: bool) {
    state.apply_own_change().await;
    if ended_access {
        state
            .metrics
            .sign_ins_ended(crate::runtime::metrics::EndedBy::Scim, 1);
    }
    tracing::info!(target: "castellan::scim", "provisioned: {}", crate::web::ctx::log_safe(what));
    ctx.mark(Outcome::Provisioned, Why::None);
}

async fn put_user(
    state: &State,
    ctx: &mut Ctx,
    old: &ScimUser,
    user: ScimUser,
    base: &str,
) -> Answer {
    state
        .store
        .scim_put_user(&user, false)
        .await
        .map_err(from_store)?;
    let ended_access = (old.active && !user.active) || old.email != user.email;
    changed(state, ctx, &user.email, ended_access).await;
    Ok(answer(StatusCode::OK, &user_json(base, &user)))
}

fn no_content() -> Response<Body> {
    let mut resp = web::json(StatusCode::NO_CONTENT, &Value::Null);
    *resp.body_mut() = web::empty();
    resp.headers_mut().remove(header::CONTENT_TYPE);
    resp
}

async fn read(req: Request<Incoming>) -> Result<Value, Failure> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Failure::too_large(format!(
                "the body is larger than {} KiB",
                MAX_BODY / 1024
            ))
            .scim(None));
        }
        Err(e) => return Err(bad("invalidSyntax", format!("cannot read the body: {e}"))),
    };
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad("invalidSyntax", format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("invalidSyntax", "the body must be a JSON object"));
    }
    Ok(v)
}

/// A boolean as Okta (true) or Entra ID ("True") sends it.
fn boolean(v: Option<&Value>) -> Result<Option<bool>, Failure> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(bad(
            "invalidValue",
            format!("active must be a boolean, not {other}"),
        )),
    }
}

/// The value at `name` in any case.
fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The client's attributes of a resource (without what castellan sets: `id`, `meta`,
/// `schemas`), and the required name attribute `key`, trimmed.
fn attributes(body: Value, kind: &str, key: &str) -> Result<(Map<String, Value>, String), Failure> {
    let Value::Object(mut obj) = body else {
        return Err(bad(
            "invalidSyntax",
            format!("a {kind} must be a JSON object"),
        ));
    };
    obj.retain(|k, _| {
        !["id", "meta", "schemas"]
            .iter()
            .any(|x| k.eq_ignore_ascii_case(x))
    });
    let name = get(&obj, key)
        .and_then(Value::as_str)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(|| {
            bad(
                "invalidValue",
                format!("{key} is required (a string of at most 256 characters)"),
            )
        })?;
    Ok((obj, name))
}

fn user_from(id: String, body: Value, created: i64, now: i64) -> Result<ScimUser, Failure> {
    let (mut obj, user_name) = attributes(body, "User", "userName")?;
    let user_name = user_name.to_ascii_lowercase();
    let active = boolean(get(&obj, "active"))?.unwrap_or(true);
    let external_id = get(&obj, "externalId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let emails = get(&obj, "emails")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let email = emails
        .iter()
        .find(|e| boolean(e.get("primary")).ok().flatten() == Some(true))
        .or(emails.first())
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_else(|| user_name.clone());
    obj.retain(|k, _| !k.eq_ignore_ascii_case("active"));
    obj.insert("active".into(), Value::Bool(active));
    Ok(ScimUser {
        id,
        user_name,
        email,
        external_id,
        active,
        resource: Value::Object(obj),
        created,
        modified: now,
    })
}

fn group_from(id: String, body: Value, created: i64, now: i64) -> Result<ScimGroup, Failure> {
    let (mut obj, display_name) = attributes(body, "Group", "displayName")?;
    let external_id = get(&obj, "externalId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut members = Vec::new();
    if let Some(list) = get(&obj, "members") {
        let Value::Array(list) = list else {
            return Err(bad(
                "invalidValue",
                "members must be a list of {\"value\": USER-ID}",
            ));
        };
        for m in list {
            let v = m
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("invalidValue", "each member needs a value (a user id)"))?;
            if !members.iter().any(|x| x == v) {
                members.push(v.to_string());
            }
        }
    }
    obj.retain(|k, _| !k.eq_ignore_ascii_case("members"));
    Ok(ScimGroup {
        id,
        display_name,
        external_id,
        resource: Value::Object(obj),
        members,
        created,
        modified: now,
    })
}

fn meta(base: &str, kind: &str, id: &str, created: i64, modified: i64) -> Value {
    json!({
        "resourceType": kind,
        "created": crate::clock::format_rfc3339(created),
        "lastModified": crate::clock::format_rfc3339(modified),
        "location": format!("{base}/{kind}s/{id}"),
        "version": format!("W/\"{modified}\""),
    })
}

fn user_json(base: &str, u: &ScimUser) -> Value {
    let mut v = u.resource.clone();
    v["schemas"] = json!([USER]);
    v["id"] = json!(u.id);
    v["userName"] = json!(u.user_name);
    v["active"] = json!(u.active);
    if let Some(x) = &u.external_id {
        v["externalId"] = json!(x);
    }
    v["meta"] = meta(base, "User", &u.id, u.created, u.modified);
    v
}

async fn group_json(state: &State, base: &str, g: &ScimGroup) -> Result<Value, Failure> {
    let members: Vec<Value> = state
        .store
        .scim_group_members(&g.id)
        .await?
        .into_iter()
        .map(|(id, user_name, _, _)| {
            json!({"value": id, "display": user_name, "$ref": format!("{base}/Users/{id}")})
        })
        .collect();
    let mut v = g.resource.clone();
    v["schemas"] = json!([GROUP]);
    v["id"] = json!(g.id);
    v["displayName"] = json!(g.display_name);
    v["members"] = json!(members);
    if let Some(x) = &g.external_id {
        v["externalId"] = json!(x);
    }
    v["meta"] = meta(base, "Group", &g.id, g.created, g.modified);
    Ok(v)
}

fn list(resources: Vec<Value>, start: i64) -> Value {
    json!({
        "schemas": [LIST],
        "totalResults": resources.len(),
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// `filter`, `startIndex` and `count` of a list request.
fn list_params<'q>(query: &'q [(String, String)]) -> Result<(ScimFilter<'q>, ScimPage), Failure> {
    let param = |n: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let number = |n: &str, default: i64| -> Result<i64, Failure> {
        param(n).map_or(Ok(default), |v| {
            v.parse::<i64>()
                .map_err(|_| bad("invalidValue", format!("{n} must be an integer, not {v}")))
        })
    };
    let page = ScimPage {
        start: number("startIndex", 1)?.max(1),
        count: number("count", 100)?.clamp(0, MAX_COUNT),
    };
    let filter = match param("filter") {
        None => ScimFilter::All,
        Some(f) => {
            let mut parts = f.trim().splitn(3, ' ');
            let (attr, op, value) = (parts.next(), parts.next(), parts.next());
            let value = value
                .map(str::trim)
                .and_then(|v| v.strip_prefix('"'))
                .and_then(|v| v.strip_suffix('"'));
            match (attr, op, value) {
                (Some(a), Some(op), Some(v)) if op.eq_ignore_ascii_case("eq") => {
                    match a.to_ascii_lowercase().as_str() {
                        "username" => ScimFilter::UserName(v),
                        "externalid" => ScimFilter::ExternalId(v),
                        "displayname" => ScimFilter::DisplayName(v),
                        _ => {
                            return Err(bad(
                                "invalidFilter",
                                format!(
                                    "castellan filters on userName, externalId and displayName, not {a}"
                                ),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(bad(
                        "invalidFilter",
                        format!(
                            "`{f}` is not a filter castellan understands: write attribute eq \"value\""
                        ),
                    ));
                }
            }
        }
    };
    Ok((filter, page))
}

fn page_json(total: i64, page: ScimPage, resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST],
        "totalResults": total,
        "startIndex": page.start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

async fn list_users(state: &State, base: &str, query: &[(String, String)]) -> Answer {
    let (filter, page) = list_params(query)?;
    let (total, users) = state.store.scim_users(filter, page).await?;
    let resources = users.iter().map(|u| user_json(base, u)).collect();
    Ok(answer(StatusCode::OK, &page_json(total, page, resources)))
}

async fn list_groups(state: &State, base: &str, query: &[(String, String)]) -> Answer {
    let (filter, page) = list_params(query)?;
    let (total, groups) = state.store.scim_groups(filter, page).await?;
    let mut resources = Vec::new();
    for g in &groups {
        resources.push(group_json(state, base, g).await?);
    }
    Ok(answer(StatusCode::OK, &page_json(total, page, resources)))
}

fn provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_COUNT},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": false},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The token configured as scim_token",
            "primary": true,
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")},
    })
}

fn resource_types(base: &str) -> Vec<Value> {
    [("User", "/Users", USER), ("Group", "/Groups", GROUP)]
        .iter()
        .map(|(name, endpoint, schema)| {
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
                "id": name,
                "name": name,
                "endpoint": endpoint,
                "schema": schema,
                "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{name}")},
            })
        })
        .collect()
}

fn attribute(name: &str, kind: &str, required: bool, multi: bool) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": multi, "required": required,
        "caseExact": false, "mutability": "readWrite", "returned": "default", "uniqueness": if name == "userName" || name == "displayName" { "server" } else { "none" },
    })
}

fn schemas() -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": USER, "name": "User", "description": "A person castellan lets sign in while active",
            "attributes": [
                attribute("userName", "string", true, false),
                attribute("active", "boolean", false, false),
                attribute("externalId", "string", false, false),
                attribute("displayName", "string", false, false),
                attribute("name", "complex", false, false),
                attribute("emails", "complex", false, true),
            ],
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": GROUP, "name": "Group", "description": "A group; its active members match group:DISPLAY-NAME",
            "attributes": [
                attribute("displayName", "string", true, false),
                attribute("externalId", "string", false, false),
                attribute("members", "complex", false, true),
            ],
        }),
    ]
}
