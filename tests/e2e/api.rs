//! The admin HTTP API: authentication by service account key or session, authorization by
//! roles/admin, CSRF protection for browser sessions, and agreement with its OpenAPI document.

use serde_json::{Value, json};

use crate::support::*;

async fn call(method: &str, url: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_keys_manage_policies_groups_sessions_and_audit() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let api = |p: &str| c.console(&format!("/.castellan/api/v1/{p}"));
    let created = ok(&c.cli(&["service-accounts", "create", "ops-bot"]));
    let key = created
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .expect("the key is printed")
        .to_string();

    assert_eq!(call("GET", &api("policies/demo"), None, None).await.0, 401);
    assert_eq!(
        call("GET", &api("policies/demo"), Some("csk_forged_key"), None)
            .await
            .0,
        401
    );
    let (s, v) = call("GET", &api("policies/demo"), Some(&key), None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );

    c.grant_role("--global", "serviceAccount:ops-bot", "roles/admin");
    let (s, policy) = call("GET", &api("policies/demo"), Some(&key), None).await;
    assert_eq!(s, 200, "{policy}");

    // Add a conditional binding, see it decide, remove it.
    let (s, v) = call(
        "POST",
        &api("policies/demo/bindings"),
        Some(&key),
        Some(json!({"member": "user:ivy@example.com", "condition": {"title": "reports", "expression": "request.path.startsWith(\"/reports\")"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["bindings"][0]["condition"]["title"], "reports");
    let (_, bad) = call(
        "POST",
        &api("policies/demo/bindings"),
        Some(&key),
        Some(json!({"member": "user:ivy@example.com", "condition": {"expression": "request.path.startsWith("}})),
    )
    .await;
    assert_eq!(bad["error"], "invalid_argument");
    assert!(bad["message"].as_str().unwrap().contains("column"), "{bad}");
    let (s, v) = call(
        "POST",
        &api("policies/demo/bindings"),
        Some(&key),
        Some(json!({"member": "allUsers"})),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_argument")),
        "allUsers needs confirm_public: {v}"
    );

    let (s, check) = call(
        "POST",
        &api("check"),
        Some(&key),
        Some(json!({"app": "demo", "email": "ivy@example.com", "path": "/reports/q"})),
    )
    .await;
    assert_eq!(s, 200, "{check}");
    assert_eq!(check["allowed"], true);
    assert_eq!(
        check["grant"],
        "app:demo#0 user:ivy@example.com if \"reports\""
    );
    let (_, check) = call(
        "POST",
        &api("check"),
        Some(&key),
        Some(json!({"app": "demo", "email": "ivy@example.com", "path": "/admin"})),
    )
    .await;
    assert_eq!(
        (check["allowed"].as_bool(), check["reason"].as_str()),
        (Some(false), Some("condition-not-met"))
    );

    // A stale etag is refused with 409; the current one works.
    let (_, current) = call("GET", &api("policies/demo"), Some(&key), None).await;
    let mut stale = policy.clone();
    stale["bindings"] = json!([{"role": "roles/accessor", "members": ["user:x@example.com"]}]);
    let (s, v) = call(
        "PUT",
        &api("policies/demo"),
        Some(&key),
        Some(stale.clone()),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("stale_etag")), "{v}");
    stale["etag"] = current["etag"].clone();
    let (s, v) = call("PUT", &api("policies/demo"), Some(&key), Some(stale)).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["etag"], current["etag"]);
    let (s, _) = call(
        "DELETE",
        &api("policies/demo/bindings?member=user:x@example.com"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        "DELETE",
        &api("policies/demo/bindings?member=user:x@example.com"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Groups.
    assert_eq!(
        call(
            "POST",
            &api("groups"),
            Some(&key),
            Some(json!({"name": "data"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        call(
            "POST",
            &api("groups"),
            Some(&key),
            Some(json!({"name": "data"}))
        )
        .await
        .0,
        409
    );
    let (s, v) = call(
        "POST",
        &api("groups/members"),
        Some(&key),
        Some(json!({"group": "data", "email": "Ivy@Example.com"})),
    )
    .await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    let (_, v) = call("GET", &api("groups"), Some(&key), None).await;
    assert_eq!(v["groups"][0]["members"], json!(["ivy@example.com"]));

    // Sessions: sign ivy in locally, list, revoke through the API.
    c.add_user("ivy@example.com", "a long enough password");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "ivy@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    let (_, v) = call(
        "GET",
        &api("sessions?user=ivy@example.com"),
        Some(&key),
        None,
    )
    .await;
    let id = v["sessions"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = call("DELETE", &api(&format!("sessions/{id}")), Some(&key), None).await;
    assert_eq!((s, v["ended"].as_i64()), (200, Some(1)));
    assert_eq!(
        b.request("GET", &c.url("/.castellan/whoami"), &[], None)
            .await
            .status,
        401
    );

    // The audit trail names the service account as the author of its changes.
    let (s, v) = call(
        "GET",
        &api("audit?kind=change&limit=1000"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let records = v["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == "serviceAccount:ops-bot"
                && r["action"] == "policy.set"
                && r["ip"] == "127.0.0.1"),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == "serviceAccount:ops-bot" && r["action"] == "session.revoke")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_sessions_need_the_role_json_and_our_origin() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("jo@example.com", "a long enough password");
    c.grant_role("demo", "user:jo@example.com", "roles/iap.admin");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "jo@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.console, "castellan_session").unwrap()
    );
    let http = reqwest::Client::new();
    let api = |p: &str| c.console(&format!("/.castellan/api/v1/{p}"));

    // An app admin reads that app's policy, but not the global one, groups or sessions.
    assert_eq!(
        http.get(api("policies/demo"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for p in ["policies/global", "groups", "sessions", "audit"] {
        assert_eq!(
            http.get(api(p))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .status(),
            403,
            "{p}"
        );
    }
    assert_eq!(
        http.get(api("audit?app=demo"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // …and being an admin does not open the app (roles are separate, as in Cloud IAM).
    assert_eq!(
        b.request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        403
    );

    let body = json!({"member": "user:kim@example.com"}).to_string();
    // A form post (what a cross-site page can send without a preflight) is refused.
    let form = http
        .post(api("policies/demo/bindings"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("member=user:kim@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    let foreign = http
        .post(api("policies/demo/bindings"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let same = http
        .post(api("policies/demo/bindings"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .header("origin", &c.console)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
    let out = ok(&c.cli(&["access", "list", "demo"]));
    assert!(out.contains("user:kim@example.com"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_routes() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let key = ok(&c.cli(&["service-accounts", "create", "doc-bot"]))
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .unwrap()
        .to_string();
    c.grant_role("--global", "serviceAccount:doc-bot", "roles/admin");
    let (s, doc) = call(
        "GET",
        &c.console("/.castellan/api/v1/openapi.json"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            seen += 1;
            let concrete = path
                .replace("{resource}", "demo")
                .replace("{id}", "AAAAAAAAAAAA");
            let (_, v) = call(
                &method.to_uppercase(),
                &c.console(&format!("/.castellan/api/v1{concrete}")),
                Some(&key),
                None,
            )
            .await;
            let text = v.to_string();
            assert!(
                !text.contains("no API endpoint"),
                "{method} {path} is documented but not routed: {text}"
            );
        }
    }
    assert!(seen >= 15, "{seen} operations documented");
    let (s, v) = call(
        "GET",
        &c.console("/.castellan/api/v1/nope"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert!(v["message"].as_str().unwrap().contains("no API endpoint"));
}
