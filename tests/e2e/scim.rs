//! SCIM 2.0 provisioning, driven with the request sequences Okta and Microsoft Entra ID document
//! for their SCIM clients (developer.okta.com/docs/reference/scim/scim-20/ and
//! learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups):
//! create, look up, update, deactivate, group pushes, delete. Deactivation closes a live
//! WebSocket within a second and refuses the next sign-in; malformed and oversized bodies get
//! SCIM errors and change nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const TOKEN: &str = "scim-test-token-0123456789abcdefghijklmnop";
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

struct World {
    c: Castellan,
    _idp: Idp,
    _echo: Echo,
}

/// castellan with the IdP, SCIM on, and `demo` shared with `group:engineering`.
async fn world() -> World {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let top = format!("scim_token = \"{TOKEN}\"\nadmins = [\"bob@example.com\"]");
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.top = &top;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "group:engineering");
    World {
        c,
        _idp: idp,
        _echo: echo,
    }
}

/// A SCIM request with the token; (status, body).
async fn scim(w: &World, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    scim_raw(w, method, path, body.map(|b| b.to_string()), Some(TOKEN)).await
}

async fn scim_raw(
    w: &World,
    method: &str,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(
        method.parse().unwrap(),
        w.c.console(&format!("/.castellan/scim/v2{path}")),
    );
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/scim+json").body(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    if status != 204 {
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(ct, "application/scim+json", "{method} {path} ({status})");
    }
    (status, resp.json().await.unwrap_or_default())
}

/// A SCIM error: the status and scimType are as expected, in RFC 7644's shape.
fn is_error(got: &(u16, Value), status: u16, scim_type: Option<&str>) {
    let (s, v) = got;
    assert_eq!(*s, status, "{v}");
    assert_eq!(
        v["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
        "{v}"
    );
    assert_eq!(v["status"], status.to_string(), "{v}");
    assert_eq!(v["scimType"].as_str(), scim_type, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
}

async fn sign_in(w: &World, email: &str, password: &str) -> (u16, Option<String>, String) {
    let mut b = Browser::new();
    let page = b.sign_in_oidc(&w.c.url("/"), email, password).await;
    (
        page.status,
        b.cookie(&w.c.origin, "castellan_session").cloned(),
        page.body,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn okta_provisions_deactivates_and_pushes_groups() {
    let w = world().await;
    // No token, or the wrong one: 401, SCIM-shaped.
    is_error(&scim_raw(&w, "GET", "/Users", None, None).await, 401, None);
    is_error(
        &scim_raw(&w, "GET", "/Users", None, Some("wrong")).await,
        401,
        None,
    );

    // Okta first looks the person up, then creates them.
    let (s, v) = scim(
        &w,
        "GET",
        "/Users?filter=userName%20eq%20%22alice%40example.com%22&startIndex=1&count=100",
        None,
    )
    .await;
    assert_eq!((s, &v["totalResults"]), (200, &json!(0)), "{v}");
    let alice = json!({
        "schemas": [USER],
        "userName": "alice@example.com",
        "name": {"givenName": "Alice", "familyName": "Example"},
        "emails": [{"primary": true, "value": "alice@example.com", "type": "work"}],
        "displayName": "Alice Example",
        "locale": "en-US",
        "externalId": "00u1a2b3c4",
        "groups": [],
        "password": {"value": "ignored-by-castellan"},
        "active": true
    });
    let (s, created) = scim(&w, "POST", "/Users", Some(alice.clone())).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["meta"]["resourceType"], "User");
    assert!(
        created["meta"]["location"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/Users/{id}"))
    );
    is_error(
        &scim(&w, "POST", "/Users", Some(alice.clone())).await,
        409,
        Some("uniqueness"),
    );
    let (s, found) = scim(
        &w,
        "GET",
        "/Users?filter=userName%20eq%20%22Alice%40example.com%22",
        None,
    )
    .await;
    assert_eq!(
        (s, &found["Resources"][0]["id"]),
        (200, &json!(id)),
        "{found}"
    );

    // Okta pushes the group with alice in it: she may open demo.
    let (s, group) = scim(
        &w,
        "POST",
        "/Groups",
        Some(json!({"schemas": [GROUP], "displayName": "engineering", "members": [{"value": id, "display": "alice@example.com"}]})),
    )
    .await;
    assert_eq!(s, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_string();
    let (status, cookie, _) = sign_in(&w, "alice@example.com", "alice-password").await;
    assert_eq!(status, 200);
    let cookie = cookie.unwrap();
    let mut ws = upgrade(&w.c, &format!("castellan_session={cookie}")).await;

    // A profile update (Okta sends the whole user with PUT) changes nothing about access.
    let mut updated = alice.clone();
    updated["name"]["givenName"] = json!("Alicia");
    let (s, v) = scim(&w, "PUT", &format!("/Users/{id}"), Some(updated)).await;
    assert_eq!((s, &v["name"]["givenName"]), (200, &json!("Alicia")), "{v}");
    assert_eq!(status_with_session(&w.c, &cookie).await, 200);

    // Deactivation: the session and its WebSocket end within a second, and sign-in is refused.
    let t = Instant::now();
    let (s, v) = scim(
        &w,
        "PATCH",
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": false}}]})),
    )
    .await;
    assert_eq!((s, &v["active"]), (200, &json!(false)), "{v}");
    closed_within(&mut ws, Duration::from_secs(1)).await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(status_with_session(&w.c, &cookie).await, 401);
    let (_, again, body) = sign_in(&w, "alice@example.com", "alice-password").await;
    assert!(again.is_none() && body.contains("deactivated"), "{body}");

    // Reactivated, she signs in again; removed from the group (Okta's PATCH), she is out.
    let (s, _) = scim(
        &w,
        "PATCH",
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": true}}]})),
    )
    .await;
    assert_eq!(s, 200);
    let (status, cookie, _) = sign_in(&w, "alice@example.com", "alice-password").await;
    assert_eq!(status, 200);
    let cookie = cookie.unwrap();
    let (s, v) = scim(
        &w,
        "PATCH",
        &format!("/Groups/{gid}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]})),
    )
    .await;
    assert_eq!((s, &v["members"]), (200, &json!([])), "{v}");
    assert!(
        until_status_with_session(&w.c, &cookie, 403, Duration::from_secs(3)).await
            < Duration::from_secs(1)
    );

    // The console shows the provisioned group and who is in it.
    let mut admin = Browser::new();
    let page = admin
        .sign_in_oidc(
            &w.c.console("/.castellan/admin/groups"),
            "bob@example.com",
            "bob-password",
        )
        .await;
    assert!(
        page.body.contains("Provisioned (SCIM)") && page.body.contains("engineering"),
        "{}",
        page.body
    );

    let audit = ok(&w.c.cli(&["audit", "--json", "--limit", "200"]));
    for action in [
        "scim.user.create",
        "scim.user.deactivate",
        "scim.user.reactivate",
        "scim.group.update",
    ] {
        assert!(audit.contains(action), "no {action} in the audit trail");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_provisions_with_its_own_dialect_and_deletes() {
    let w = world().await;
    // Entra's connectivity check: a filter for a userName that cannot exist.
    let (s, v) = scim(
        &w,
        "GET",
        "/Users?filter=userName+eq+%22a4a9c0b6-2f2f-4ab8-a2c0-3c2b5d5c4e1f%22",
        None,
    )
    .await;
    assert_eq!((s, &v["totalResults"]), (200, &json!(0)), "{v}");
    let (s, user) = scim(
        &w,
        "POST",
        "/Users",
        Some(json!({
            "schemas": [USER, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "externalId": "bob",
            "userName": "bob@example.com",
            "active": true,
            "emails": [{"primary": true, "type": "work", "value": "bob@example.com"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "Bob Example", "familyName": "Example", "givenName": "Bob"},
            "roles": []
        })),
    )
    .await;
    assert_eq!(s, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_string();
    let (s, v) = scim(&w, "GET", "/Users?filter=externalId+eq+%22bob%22", None).await;
    assert_eq!(
        (s, &v["Resources"][0]["userName"]),
        (200, &json!("bob@example.com")),
        "{v}"
    );
    // Entra creates the group empty, then adds members with PATCH.
    let (s, group) = scim(
        &w,
        "POST",
        "/Groups",
        Some(json!({"schemas": [GROUP], "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159", "displayName": "engineering", "meta": {"resourceType": "Group"}})),
    )
    .await;
    assert_eq!(s, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_string();
    let (s, v) = scim(
        &w,
        "PATCH",
        &format!("/Groups/{gid}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "Add", "path": "members", "value": [{"value": id}]}]})),
    )
    .await;
    assert_eq!((s, &v["members"][0]["value"]), (200, &json!(id)), "{v}");
    let (s, v) = scim(
        &w,
        "GET",
        "/Groups?filter=displayName+eq+%22engineering%22",
        None,
    )
    .await;
    assert_eq!((s, &v["totalResults"]), (200, &json!(1)), "{v}");
    let (status, cookie, _) = sign_in(&w, "bob@example.com", "bob-password").await;
    assert_eq!(status, 200);
    let cookie = cookie.unwrap();
    // Entra's attribute updates: capitalised ops, filtered and dotted paths.
    let (s, v) = scim(
        &w,
        "PATCH",
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "bob@example.com"},
            {"op": "Replace", "path": "name.givenName", "value": "Bobby"}
        ]})),
    )
    .await;
    assert_eq!((s, &v["name"]["givenName"]), (200, &json!("Bobby")), "{v}");
    assert_eq!(status_with_session(&w.c, &cookie).await, 200);
    // Entra deactivates with a string boolean.
    let (s, v) = scim(
        &w,
        "PATCH",
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})),
    )
    .await;
    assert_eq!((s, &v["active"]), (200, &json!(false)), "{v}");
    assert!(
        until_status_with_session(&w.c, &cookie, 401, Duration::from_secs(3)).await
            < Duration::from_secs(1)
    );
    // Deleted: gone, and 404 in SCIM's shape after.
    let (s, _) = scim(&w, "DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(s, 204);
    is_error(
        &scim(&w, "GET", &format!("/Users/{id}"), None).await,
        404,
        None,
    );
    // Discovery.
    let (s, v) = scim(&w, "GET", "/ServiceProviderConfig", None).await;
    assert_eq!((s, &v["patch"]["supported"]), (200, &json!(true)), "{v}");
    let (s, v) = scim(&w, "GET", "/ResourceTypes", None).await;
    assert_eq!((s, &v["totalResults"]), (200, &json!(2)), "{v}");
    let (s, v) = scim(&w, "GET", "/Schemas", None).await;
    assert_eq!((s, &v["Resources"][0]["id"]), (200, &json!(USER)), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_requests_get_scim_errors_and_change_nothing() {
    let w = world().await;
    let (s, user) = scim(
        &w,
        "POST",
        "/Users",
        Some(json!({"schemas": [USER], "userName": "carol@example.com"})),
    )
    .await;
    assert_eq!(s, 201);
    let id = user["id"].as_str().unwrap().to_string();
    let before = scim(&w, "GET", "/Users", None).await.1;
    let big = format!(
        "{{\"userName\": \"x@example.com\", \"pad\": \"{}\"}}",
        "a".repeat(2 * 1024 * 1024)
    );
    for (method, path, body, status, scim_type) in [
        ("POST", "/Users".to_string(), "{not json".to_string(), 400, Some("invalidSyntax")),
        ("POST", "/Users".to_string(), "[1, 2]".to_string(), 400, Some("invalidSyntax")),
        ("POST", "/Users".to_string(), json!({"schemas": [USER], "name": {}}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".to_string(), json!({"userName": "x@example.com", "active": "maybe"}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".to_string(), big, 413, None),
        ("PATCH", format!("/Users/{id}"), json!({"schemas": [PATCH], "Operations": [{"op": "move", "path": "active"}]}).to_string(), 400, Some("invalidSyntax")),
        ("PATCH", format!("/Users/{id}"), json!({"Operations": [{"op": "replace", "value": {"active": false}}]}).to_string(), 400, Some("invalidSyntax")),
        ("PATCH", format!("/Users/{id}"), json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": ""}]}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Groups".to_string(), json!({"displayName": "ops", "members": [{"value": "no-such-user"}]}).to_string(), 400, Some("invalidValue")),
        ("GET", "/Users?filter=name.givenName%20co%20%22a%22".to_string(), String::new(), 400, Some("invalidFilter")),
        ("GET", "/Users?filter=emails%20eq%20%22a%22".to_string(), String::new(), 400, Some("invalidFilter")),
        ("PUT", "/Users/no-such-id".to_string(), json!({"userName": "y@example.com"}).to_string(), 404, None),
    ] {
        let body = (!body.is_empty()).then_some(body);
        let got = scim_raw(&w, method, &path, body, Some(TOKEN)).await;
        is_error(&got, status, scim_type);
    }
    let after = scim(&w, "GET", "/Users", None).await.1;
    assert_eq!(before, after, "a refused request changed something");
    let (s, v) = scim(&w, "GET", "/Groups", None).await;
    assert_eq!((s, &v["totalResults"]), (200, &json!(0)), "{v}");
    // Paging: startIndex and count.
    for n in ["d", "e", "f"] {
        let (s, _) = scim(
            &w,
            "POST",
            "/Users",
            Some(json!({"userName": format!("{n}@example.com")})),
        )
        .await;
        assert_eq!(s, 201);
    }
    let (s, v) = scim(&w, "GET", "/Users?startIndex=2&count=2", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&v["totalResults"], &v["itemsPerPage"], &v["startIndex"]),
        (&json!(4), &json!(2), &json!(2)),
        "{v}"
    );
    // Pages are slices of one stable order.
    let all = scim(&w, "GET", "/Users?count=100", None).await.1;
    assert_eq!(
        v["Resources"][0]["id"], all["Resources"][1]["id"],
        "{v} {all}"
    );
    assert_eq!(
        v["Resources"][1]["id"], all["Resources"][2]["id"],
        "{v} {all}"
    );
}
