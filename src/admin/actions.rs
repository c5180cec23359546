//! The console's form actions (POSTs under `/.castellan/admin/`): add and remove principals,
//! create groups and change their members, approve or deny access requests, end sessions. Every
//! one goes through the CSRF guard first and is applied in this process at once.

use http::{Request, Response};
use hyper::body::Incoming;

use super::console::{Admin, PREFIX, done, failed};
use super::ops;
use super::views::when;
use crate::policy::snapshot::Resource;
use crate::policy::{Member, Role};
use crate::runtime::State;
use crate::store::Actor;
use crate::web::failure::Answer;
use crate::web::guard::{self, Proof};
use crate::web::{self, Body};

pub(super) async fn post(
    state: &State,
    req: Request<Incoming>,
    rest: &str,
    admin: &Admin,
    ip: &str,
) -> Answer {
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    guard::check(
        &parts.headers,
        &state.config.public_origin(),
        web::cookies::cookie(&parts.headers, state.cookies.browser),
        &state.csrf_keys(),
        Proof::Token(web::param(&form, "csrf").unwrap_or("")),
    )?;
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
                let condition = ops::condition(&state.config.access_levels, None, None, expires)?;
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
                    return Err("That request is for an app you do not manage.".to_string());
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
                let condition = ops::condition(&state.config.access_levels, None, None, expires)?;
                let resource = Resource::App(request.app.clone());
                let role = ops::role_for(&state.config.apps, &resource, None)?;
                ops::add(&state.store, &resource, role, member, condition, &actor)
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
            _ => Err("There is no such console action, or it is not yours to take.".to_string()),
        }
    }
    .await;
    // Apply this process's own change now, not at the next poll.
    state.apply_own_change().await;
    Ok(match result {
        Ok(r) => r,
        Err(message) => failed(&format!("{PREFIX}/"), &message),
    })
}
