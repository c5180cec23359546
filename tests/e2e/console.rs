//! The admin console and access requests, end to end in headless Chromium with the real IdP.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn admins_share_apps_and_approve_access_requests_in_a_real_browser() {
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    require(
        &support_dir().join("node_modules/playwright-core"),
        "the npm package playwright-core",
    );
    let echo = Echo::start().await;
    let reports = Echo::start().await;
    let (hook, hooked, _hook_task) = webhook().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let extra = format!(
        "[[apps]]\nid = \"reports\"\nhost = \"127.0.0.1\"\nupstream = \"http://{}\"\npath_prefix = \"/reports\"\n",
        reports.addr
    );
    let top = format!("access_request_webhook = \"http://{hook}/slack\"");
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.extra = &extra;
    setup.top = &top;
    let c = Castellan::start_on(port, setup).await;
    c.add_user("root@example.com", "the admin's long password");
    c.grant_role("--global", "user:root@example.com", "roles/admin");

    let shots = match std::env::var("CASTELLAN_SCREENSHOTS") {
        Ok(dir) => std::path::PathBuf::from(dir),
        Err(_) => tempfile::tempdir().unwrap().keep(),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let v = run_browser_script(
        "console.mjs",
        vec![
            c.origin.clone(),
            origin.clone(),
            "root@example.com".into(),
            "the admin's long password".into(),
            shots.display().to_string(),
        ],
    )
    .await;
    assert_eq!(v["ok"], true, "{v:#}");
    let t = |k: &str| v[k].as_str().unwrap_or("").to_string();
    assert!(
        t("apps").contains("demo") && t("apps").contains("reports"),
        "{}",
        t("apps")
    );
    assert!(
        t("added").contains("Added user:alice@example.com (roles/accessor)."),
        "{}",
        t("added")
    );
    assert!(
        t("aliceDemo").contains("alice@example.com"),
        "alice opened demo: {}",
        t("aliceDemo")
    );
    assert!(
        t("denied").contains("You don't have access") && t("denied").contains("Request access"),
        "{}",
        t("denied")
    );
    assert!(
        t("requested").contains("Your request was sent"),
        "{}",
        t("requested")
    );
    assert!(
        t("requests").contains("Q3 numbers for the board"),
        "{}",
        t("requests")
    );
    assert!(
        t("approved").contains("Approved: alice@example.com can open reports."),
        "{}",
        t("approved")
    );
    assert!(
        t("aliceReports").contains("x-castellan-email"),
        "alice got into reports: {}",
        t("aliceReports")
    );
    let audit = t("audit");
    for needle in [
        "access-request.approve",
        "access-request.create",
        "policy.add-binding",
        "alice@example.com",
        "deny",
        "allow",
    ] {
        assert!(
            audit.contains(needle),
            "the audit page shows {needle}: {audit}"
        );
    }
    assert!(
        t("settings").contains("secret redacted") && !t("settings").contains("castellan-secret"),
        "{}",
        t("settings")
    );
    assert!(
        t("sessions").contains("alice@example.com"),
        "{}",
        t("sessions")
    );

    // The webhook got a Slack-compatible message.
    let hooked = hooked.lock().unwrap().clone();
    assert_eq!(hooked.len(), 1, "{hooked:?}");
    assert!(
        hooked[0]["text"].as_str().unwrap().contains(
            "alice@example.com asks for access to reports (\"Q3 numbers for the board\")"
        )
    );
    assert_eq!(
        hooked[0]["console_url"],
        format!("{origin}/.castellan/admin/requests")
    );

    // A form posted without a valid CSRF token is refused, and changes nothing.
    let mut admin = Browser::new();
    assert_eq!(
        admin
            .sign_in_local(&c, "root@example.com", "the admin's long password", "/")
            .await
            .status,
        302
    );
    for csrf in ["", "forged"] {
        let r = admin
            .request(
                "POST",
                &c.console("/.castellan/admin/apps/demo/add"),
                &[],
                Some(&[
                    ("csrf", csrf),
                    ("kind", "user"),
                    ("value", "mallory@evil.com"),
                    ("role", "roles/admin"),
                ]),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    let page = admin.get(&c.console("/.castellan/admin/apps/demo")).await;
    let csrf = page.input("csrf").unwrap();
    let cross = admin
        .request(
            "POST",
            &c.console("/.castellan/admin/apps/demo/add"),
            &[("sec-fetch-site", "cross-site")],
            Some(&[
                ("csrf", &csrf),
                ("kind", "user"),
                ("value", "mallory@evil.com"),
                ("role", "roles/admin"),
            ]),
        )
        .await;
    assert_eq!(
        cross.status, 403,
        "a cross-site post with a stolen token is refused too"
    );
    let listed = c.cli(&["access", "list", "demo"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("mallory"));

    // Someone without roles/admin gets a clear refusal, not the console.
    c.add_user("pat@example.com", "a long enough password");
    let mut pat = Browser::new();
    pat.sign_in_local(&c, "pat@example.com", "a long enough password", "/")
        .await;
    let refused = pat.get(&c.console("/.castellan/admin/")).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("is not an administrator"),
        "{}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_requests_merge_and_a_denial_is_shown_on_the_next_visit() {
    let echo = Echo::start().await;
    // The administrator comes from the configuration (`admins`), as on Cloud Run.
    let mut setup = Setup::new(echo.addr);
    setup.top = "admins = [\"root@example.com\"]";
    let c = Castellan::start(setup).await;
    c.add_user("root@example.com", "the admin's long password");
    c.add_user("lee@example.com", "a long enough password");
    let mut lee = Browser::new();
    lee.sign_in_local(&c, "lee@example.com", "a long enough password", "/")
        .await;
    for reason in ["first ask", "second ask"] {
        let page = lee.get(&c.url("/dash")).await;
        assert_eq!(page.status, 403);
        // The denied page links to the request form on castellan's own pages.
        let form = lee
            .get(&c.console(&format!(
                "/.castellan/request_access?app=demo&rd={}",
                urlencode(&c.url("/dash"))
            )))
            .await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.input("csrf").unwrap();
        let sent = lee
            .request(
                "POST",
                &c.console("/.castellan/request_access"),
                &[],
                Some(&[
                    ("csrf", &csrf),
                    ("app", "demo"),
                    ("rd", "/dash"),
                    ("reason", reason),
                ]),
            )
            .await;
        assert_eq!(sent.status, 200, "{}", sent.body);
    }
    let pending = lee.get(&c.url("/dash")).await;
    assert!(
        pending.body.contains("You asked for access on"),
        "{}",
        pending.body
    );
    assert!(pending.body.contains("Update my request"));
    // A forged request (no token) is refused.
    let forged = lee
        .request(
            "POST",
            &c.console("/.castellan/request_access"),
            &[],
            Some(&[("app", "demo"), ("reason", "x")]),
        )
        .await;
    assert_eq!(forged.status, 403);

    let mut root = Browser::new();
    root.sign_in_local(&c, "root@example.com", "the admin's long password", "/")
        .await;
    let requests = root.get(&c.console("/.castellan/admin/requests")).await;
    assert_eq!(
        requests.body.matches("Approve lee@example.com").count(),
        1,
        "repeats merge into one request"
    );
    assert!(requests.body.contains("second ask"));
    let id = requests
        .body
        .split("/.castellan/admin/requests/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let csrf = requests.input("csrf").unwrap();
    let denied = root
        .request(
            "POST",
            &c.console(&format!("/.castellan/admin/requests/{id}/deny")),
            &[],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(denied.status, 303);
    let next = lee.get(&c.url("/dash")).await;
    assert!(
        next.body.contains("Your request was denied on")
            && next.body.contains("by root@example.com"),
        "{}",
        next.body
    );
    assert_eq!(
        lee.request(
            "GET",
            &c.url("/dash"),
            &[("accept", "application/json")],
            None
        )
        .await
        .status,
        403
    );
}
