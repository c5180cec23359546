//! Access policies end to end: conditions, expiries, provider groups, the explainer, etag'd
//! documents, gcloud import, public apps, live revocation and the audit trail.

use std::time::{Duration, Instant};

use crate::support::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
const BOB: (&str, &str) = ("bob@example.com", "bob-password");
const API: [(&str, &str); 1] = [("accept", "application/json")];

fn err(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "command should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn conditions_expiry_provider_groups_and_the_explainer() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(&origin, &[("IDP_GROUPS", "bob@example.com=analysts|eu")]).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.provider_extra = "groups_claim = \"groups\"";
    let c = Castellan::start_on(port, setup).await;

    // A path condition lets alice into /reports only.
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "user:alice@example.com",
        "--condition",
        "request.path.startsWith(\"/reports\")",
        "--condition-title",
        "reports only",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    let mut alice = Browser::new();
    assert_eq!(
        alice
            .sign_in_oidc(&c.url("/reports/q1"), ALICE.0, ALICE.1)
            .await
            .status,
        200
    );
    let other = alice.request("GET", &c.url("/admin"), &API, None).await;
    assert_eq!(other.status, 403);
    assert_eq!(other.json()["reason"], "condition-not-met");
    // …and a walk around it is refused or decided on the normalised path.
    assert_eq!(
        alice
            .request("GET", &c.url("/reports/../admin"), &API, None)
            .await
            .status,
        403
    );
    assert_eq!(
        alice
            .request("GET", &c.url("/reports/..;/admin"), &API, None)
            .await
            .status,
        400
    );
    assert_eq!(
        alice
            .request("GET", &c.url("/reports%2f..%2fadmin"), &API, None)
            .await
            .status,
        400
    );

    // A group asserted by the provider (groups claim) grants access.
    let mut bob = Browser::new();
    assert_eq!(
        bob.sign_in_oidc(&c.url("/"), BOB.0, BOB.1).await.status,
        403
    );
    ok(&c.cli(&["access", "add", "demo", "group:analysts"]));
    std::thread::sleep(Duration::from_millis(500));
    let r = bob.request("GET", &c.url("/x"), &API, None).await;
    assert_eq!(r.status, 200);
    let who = bob
        .request("GET", &c.url("/.castellan/whoami"), &API, None)
        .await;
    assert_eq!(who.json()["groups"], serde_json::json!(["analysts", "eu"]));

    // The explainer says which binding decides, and why not.
    let yes = c.cli(&["check", "demo", "bob@example.com", "--group", "analysts"]);
    let text = ok(&yes);
    assert!(
        text.starts_with(
            "ALLOWED: bob@example.com may open demo, through app:demo#1 group:analysts"
        ),
        "{text}"
    );
    let no = c.cli(&["check", "demo", "alice@example.com", "--path", "/admin"]);
    assert_eq!(no.status.code(), Some(1));
    let text = String::from_utf8_lossy(&no.stdout);
    assert!(
        text.contains("DENIED: alice@example.com may not open demo (condition-not-met)"),
        "{text}"
    );
    assert!(
        text.contains(
            "condition \"reports only\" (request.path.startsWith(\"/reports\")) is false"
        ),
        "{text}"
    );
    let bad = c.cli(&[
        "access",
        "add",
        "demo",
        "user:x@example.com",
        "--condition",
        "request.pth == \"/\"",
    ]);
    let e = err(&bad);
    assert!(
        e.contains("column 9") && e.contains("unknown attribute `request.pth`"),
        "{e}"
    );

    // An expiry passes and access ends (a live stream included), without anyone touching the policy.
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "user:alice@example.com",
        "--expires",
        "5s",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        alice
            .request("GET", &c.url("/admin"), &API, None)
            .await
            .status,
        200
    );
    let listed = ok(&c.cli(&["access", "list", "demo"]));
    assert!(
        listed.contains("user:alice@example.com\troles/accessor\tif expires "),
        "{listed}"
    );
    let t = Instant::now();
    loop {
        let s = alice
            .request("GET", &c.url("/admin"), &API, None)
            .await
            .status;
        if s == 403 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "the expiry never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The office-hours condition from Google's documentation, decided by castellan's own clock: the
/// castellan process runs under libfaketime (Debian's `faketime`), whose time the test sets by
/// writing a file, so the same signed-in person is refused at 08:59:50 in Berlin, let in at
/// 09:00:10, refused again at 17:00 and on Saturday, without a sleeping test or a test hook in the
/// binary. The process runs with TZ=UTC, so Berlin's hours can only come from the zone data built
/// into castellan.
#[tokio::test(flavor = "multi_thread")]
async fn an_office_hours_condition_follows_castellans_clock() {
    let lib = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is missing: run scripts/test-deps.sh (Debian's faketime package)");
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("now");
    let set_clock = |utc: &str| std::fs::write(&clock, format!("{utc}\n")).unwrap();
    // Monday 4 January 2027, 08:59:50 in Berlin (CET, UTC+1).
    set_clock("2027-01-04 07:59:50");
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.top = "session_lifetime = \"30d\"\nsession_idle_timeout = \"7d\"\n";
    let (lib, clock_path) = (lib.to_str().unwrap(), clock.to_str().unwrap());
    let env = [
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", clock_path),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("TZ", "UTC"),
    ];
    setup.env = &env;
    let c = Castellan::start(setup).await;
    c.add_user("olga@example.com", "a long enough password");
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "user:olga@example.com",
        "--condition",
        r#"request.time.getHours("Europe/Berlin") >= 9 && request.time.getHours("Europe/Berlin") < 17 && request.time.getDayOfWeek("Europe/Berlin") in [1, 2, 3, 4, 5]"#,
        "--condition-title",
        "office hours in Berlin",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    let mut olga = Browser::new();
    let page = olga
        .sign_in_local(&c, "olga@example.com", "a long enough password", "/")
        .await;
    assert_eq!(page.status, 302, "{}", page.body);
    for (utc, want, when) in [
        ("2027-01-04 07:59:50", 403, "Monday 08:59:50 in Berlin"),
        ("2027-01-04 08:00:10", 200, "Monday 09:00:10 in Berlin"),
        ("2027-01-04 15:59:59", 200, "Monday 16:59:59 in Berlin"),
        ("2027-01-04 16:00:00", 403, "Monday 17:00:00 in Berlin"),
        ("2027-01-09 10:00:00", 403, "Saturday 11:00 in Berlin"),
        (
            "2027-01-11 08:30:00",
            200,
            "the next Monday, 09:30 in Berlin",
        ),
    ] {
        set_clock(utc);
        let r = olga.request("GET", &c.url("/"), &API, None).await;
        assert_eq!(r.status, want, "{when} ({utc} UTC): {}", r.body);
        if want == 403 {
            assert!(
                r.body.contains("\"reason\":\"condition-not-met\""),
                "refused by the condition, not for want of a binding: {}",
                r.body
            );
        }
    }
    // Every decision is in the audit trail at castellan's (faked) time, with its outcome.
    let want: Vec<(i64, &str)> = [
        ("2027-01-04T07:59:50Z", "deny"),
        ("2027-01-04T08:00:10Z", "allow"),
        ("2027-01-04T15:59:59Z", "allow"),
        ("2027-01-04T16:00:00Z", "deny"),
        ("2027-01-09T10:00:00Z", "deny"),
        ("2027-01-11T08:30:00Z", "allow"),
    ]
    .iter()
    .map(|(t, a)| (castellan::clock::parse_rfc3339(t).unwrap() * 1000, *a))
    .collect();
    let mut got = Vec::new();
    for _ in 0..50 {
        got = ok(&c.cli(&["audit", "--app", "demo", "--kind", "decision", "--json"]))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["actor"] == "olga@example.com")
            .map(|r| {
                (
                    r["at"].as_i64().unwrap(),
                    r["action"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>();
        if got.len() >= want.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got: Vec<(i64, &str)> = got.iter().map(|(t, a)| (*t, a.as_str())).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_matches_condition_as_google_writes_it_decides_requests() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("rita@example.com", "a long enough password");
    // The form IAM Conditions document, with a raw string for the regular expression.
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "user:rita@example.com",
        "--condition",
        r#"request.path.matches(r"^/reports/\d+$")"#,
        "--condition-title",
        "numbered reports",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    let mut rita = Browser::new();
    let page = rita
        .sign_in_local(
            &c,
            "rita@example.com",
            "a long enough password",
            "/reports/12",
        )
        .await;
    assert_eq!(page.status, 302, "{}", page.body);
    for (path, want) in [
        ("/reports/12", 200),
        ("/reports/7", 200),
        ("/reports/7/raw", 403),
        ("/reports/x", 403),
    ] {
        let r = rita.request("GET", &c.url(path), &API, None).await;
        assert_eq!(r.status, want, "{path}");
    }
    // Refused when written, with the reason: a pattern RE2 cannot run, an access level this
    // configuration does not define, a mistyped zone, a duration unit CEL lacks.
    for (condition, needle) in [
        (
            r#"request.path.matches("(a)\\1")"#,
            "no look-around or back-references",
        ),
        (
            r#""accessPolicies/1/accessLevels/corp" in request.auth.access_levels"#,
            "\"accessPolicies/1/accessLevels/corp\", which is not configured (there are none)",
        ),
        (
            r#"request.time.getHours("Europe/Berln") >= 9"#,
            "did you mean \"Europe/Berlin\"",
        ),
        (r#"duration("5d") > duration("1h")"#, "not a duration"),
    ] {
        let out = c.cli(&[
            "access",
            "add",
            "demo",
            "user:rita@example.com",
            "--condition",
            condition,
        ]);
        assert!(!out.status.success(), "{condition}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{condition}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_closes_live_websockets_and_streams_within_a_second() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("gina@example.com", "a long enough password");
    ok(&c.cli(&["groups", "create", "team"]));
    ok(&c.cli(&["groups", "add-member", "team", "gina@example.com"]));
    c.grant("demo", "group:team");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "gina@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );

    // 1. Leaving the group closes her open WebSocket.
    // The app's page learns why: a close frame with castellan's code and reason.
    let mut ws = upgrade(&c, &cookie).await;
    ok(&c.cli(&["groups", "remove-member", "team", "gina@example.com"]));
    let (took, close) = closed_with(&mut ws, Duration::from_secs(1)).await;
    eprintln!("group change closed the WebSocket after {took:?}");
    assert_eq!(close, Some((4403, "castellan: access revoked".to_string())));

    // 2. A session revoke closes it too (access itself unchanged).
    ok(&c.cli(&["groups", "add-member", "team", "gina@example.com"]));
    std::thread::sleep(Duration::from_millis(500));
    let mut ws = upgrade(&c, &cookie).await;
    let sessions: serde_json::Value = serde_json::from_str(&ok(&c.cli(&[
        "sessions",
        "list",
        "--user",
        "gina@example.com",
        "--json",
    ])))
    .unwrap();
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    assert_eq!(sessions[0]["provider"], "local");
    ok(&c.cli(&["sessions", "revoke", &id]));
    let took = closed_within(&mut ws, Duration::from_secs(1)).await;
    eprintln!("session revoke closed the WebSocket after {took:?}");
    assert_eq!(
        b.request("GET", &c.url("/"), &API, None).await.status,
        401,
        "signed out everywhere"
    );

    // 3. An expiry reached while the WebSocket is open closes it too, with no change to any policy.
    ok(&c.cli(&["access", "remove", "demo", "group:team"]));
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "user:gina@example.com",
        "--expires",
        "5s",
    ]));
    assert_eq!(
        b.sign_in_local(&c, "gina@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut ws = upgrade(&c, &cookie).await;
    let took = closed_within(&mut ws, Duration::from_secs(8)).await;
    eprintln!("the expiry closed the WebSocket {took:?} after it opened");
    ok(&c.cli(&["access", "add", "demo", "group:team"]));
    std::thread::sleep(Duration::from_millis(500));

    // 4. A streaming response is cut when access goes.
    assert_eq!(
        b.sign_in_local(&c, "gina@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );
    cut_when_access_goes(&c, &cookie, "/stream", None).await;

    // 5. So is a long response of known length (short ones are not registered: they are out in
    //    the time it takes to send them).
    ok(&c.cli(&["access", "add", "demo", "group:team"]));
    std::thread::sleep(Duration::from_millis(500));
    cut_when_access_goes(&c, &cookie, "/long", Some((2 << 20) + 8)).await;
}

/// Opens `path` (the echo app sends `chunk-1`, pauses 1.5 s, sends the rest), takes group:team's
/// access to demo away, and checks the rest never arrives: the response ends with an error.
async fn cut_when_access_goes(c: &Castellan, cookie: &str, path: &str, length: Option<u64>) {
    let mut resp = reqwest::Client::new()
        .get(c.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.content_length(), length, "{path}");
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"chunk-1\n");
    ok(&c.cli(&["access", "remove", "demo", "group:team"]));
    let rest = tokio::time::timeout(Duration::from_millis(1400), resp.chunk())
        .await
        .expect("ended within the second");
    assert!(
        rest.is_err(),
        "{path} ended with an error instead of delivering the rest: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_documents_etags_gcloud_import_and_public_apps() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let dir = tempfile::tempdir().unwrap();

    ok(&c.cli(&["access", "add", "demo", "user:a@example.com"]));
    let got: serde_json::Value =
        serde_json::from_str(&ok(&c.cli(&["policy", "get", "demo"]))).unwrap();
    assert_eq!(got["version"], 3);
    let etag = got["etag"].as_str().unwrap().to_string();
    let mut edited = got.clone();
    edited["bindings"][0]["members"] =
        serde_json::json!(["user:a@example.com", "domain:example.org"]);
    let file = dir.path().join("p.json");
    std::fs::write(&file, edited.to_string()).unwrap();

    // Someone else changes the policy in between: the stale etag is refused and nothing is lost.
    ok(&c.cli(&["access", "add", "demo", "user:b@example.com"]));
    let stale = err(&c.cli(&["policy", "set", "demo", file.to_str().unwrap()]));
    assert!(
        stale.contains("the policy changed since you read it"),
        "{stale}"
    );
    assert!(ok(&c.cli(&["access", "list", "demo"])).contains("user:b@example.com"));
    let fresh: serde_json::Value =
        serde_json::from_str(&ok(&c.cli(&["policy", "get", "demo"]))).unwrap();
    assert_ne!(fresh["etag"], etag);
    let mut edited = fresh.clone();
    edited["bindings"][0]["members"]
        .as_array_mut()
        .unwrap()
        .push("domain:example.org".into());
    std::fs::write(&file, edited.to_string()).unwrap();
    assert!(
        ok(&c.cli(&["policy", "set", "demo", file.to_str().unwrap()])).contains("1 binding(s)")
    );
    let listed = ok(&c.cli(&["access", "list", "demo"]));
    assert!(
        listed.contains("domain:example.org") && listed.contains("user:b@example.com"),
        "{listed}"
    );

    // gcloud's YAML, as `gcloud iap web get-iam-policy` prints it.
    let gcloud = "bindings:\n- members:\n  - user:carol@example.com\n  - group:eng@example.com\n  role: roles/iap.httpsResourceAccessor\n\
                  - condition:\n    description: temporary\n    expression: request.time < timestamp(\"2030-01-01T00:00:00Z\")\n    title: until-2030\n  \
                  members:\n  - user:temp@example.com\n  role: roles/iap.httpsResourceAccessor\n\
                  - members:\n  - user:owner@example.com\n  role: roles/owner\netag: BwYHZEDo6aM=\nversion: 3\n";
    let gfile = dir.path().join("iap.yaml");
    std::fs::write(&gfile, gcloud).unwrap();
    // Something refused stops the whole import, with the report and the way forward…
    let before = ok(&c.cli(&["policy", "get", "demo"]));
    let refused = c.cli(&["policy", "import-gcloud", "demo", gfile.to_str().unwrap()]);
    assert!(!refused.status.success());
    let (out, why) = (
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr),
    );
    assert!(
        out.contains("refused     bindings[2] roles/owner (user:owner@example.com): castellan has no such role"),
        "{out}"
    );
    assert!(
        out.contains(
            "translated  bindings[0] roles/accessor: user:carol@example.com, group:eng@example.com"
        ),
        "{out}"
    );
    assert!(
        why.contains("nothing imported") && why.contains("--partial"),
        "{why}"
    );
    assert_eq!(ok(&c.cli(&["policy", "get", "demo"])), before);
    // …and --partial imports the rest.
    let out = ok(&c.cli(&[
        "policy",
        "import-gcloud",
        "demo",
        gfile.to_str().unwrap(),
        "--partial",
    ]));
    assert!(
        out.contains("imported 2 binding(s)") && out.contains("1 part(s) refused and left out"),
        "{out}"
    );
    let imported: serde_json::Value =
        serde_json::from_str(&ok(&c.cli(&["policy", "get", "demo"]))).unwrap();
    assert_eq!(imported["bindings"][0]["role"], "roles/accessor");
    assert_eq!(imported["bindings"][1]["condition"]["title"], "until-2030");

    // allUsers needs --yes, is flagged, and lets anonymous callers in without identity headers.
    let refused = err(&c.cli(&["access", "add", "demo", "allUsers"]));
    assert!(
        refused.contains("public") && refused.contains("--yes"),
        "{refused}"
    );
    ok(&c.cli(&["access", "add", "demo", "allUsers", "--yes"]));
    assert!(ok(&c.cli(&["access", "list", "demo"])).starts_with("WARNING: app demo is PUBLIC"));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&c.cli(&["access", "list", "demo", "--json"]))).unwrap();
    assert_eq!(v["public"], true);
    std::thread::sleep(Duration::from_millis(500));
    let anon = reqwest::Client::new()
        .get(c.url("/public"))
        .header("x-castellan-email", "forged@evil.com")
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 200);
    let seen: serde_json::Value = anon.json().await.unwrap();
    assert!(
        seen["headers"].get("x-castellan-email").is_none(),
        "no identity for anonymous callers: {seen}"
    );
    assert!(seen["headers"].get("x-castellan-jwt-assertion").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_and_decision_is_in_the_audit_trail() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("hal@example.com", "a long enough password");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "hal@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    assert_eq!(
        b.request("GET", &c.url("/before"), &API, None).await.status,
        403
    );
    c.grant("demo", "user:hal@example.com");
    assert_eq!(
        b.request("GET", &c.url("/after?q=1"), &API, None)
            .await
            .status,
        200
    );
    ok(&c.cli(&["groups", "create", "ops"]));

    let t = Instant::now();
    let records = loop {
        let out = ok(&c.cli(&["audit", "--json", "--limit", "1000"]));
        let records: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.iter().any(|r| r["path"] == "/after") || t.elapsed() > Duration::from_secs(3) {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        records
            .iter()
            .find(|r| pred(r))
            .unwrap_or_else(|| panic!("no audit record for {what}: {records:#?}"))
            .clone()
    };
    let denied = find(
        &|r| r["kind"] == "decision" && r["path"] == "/before",
        "the denied request",
    );
    assert_eq!(denied["action"], "deny");
    assert_eq!(denied["actor"], "hal@example.com");
    assert_eq!(denied["reason"], "no-matching-binding");
    assert_eq!(denied["status"], 403);
    assert!(!denied["reference"].as_str().unwrap().is_empty());
    let allowed = find(
        &|r| r["kind"] == "decision" && r["path"] == "/after",
        "the allowed request",
    );
    assert_eq!(allowed["action"], "allow");
    assert_eq!(allowed["binding"], "app:demo#0 user:hal@example.com");
    assert_eq!(allowed["method"], "GET");
    assert!(allowed["latency_us"].as_i64().unwrap() > 0);
    let grant = find(&|r| r["action"] == "policy.add-binding", "the grant");
    assert!(grant["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(grant["target"], "app:demo");
    assert_eq!(grant["before"]["bindings"], serde_json::json!([]));
    assert_eq!(
        grant["after"]["bindings"][0]["members"],
        serde_json::json!(["user:hal@example.com"])
    );
    find(
        &|r| r["action"] == "group.create" && r["target"] == "group:ops",
        "the group",
    );
    find(
        &|r| r["action"] == "session.create" && r["actor"] == "hal@example.com",
        "the sign-in",
    );

    // Filters.
    let out = ok(&c.cli(&["audit", "--app", "demo", "--decision", "denied", "--json"]));
    let only: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !only.is_empty()
            && only
                .iter()
                .all(|r| r["action"] == "deny" && r["app"] == "demo"),
        "{only:?}"
    );
    let text = ok(&c.cli(&["audit", "--user", "hal@example.com", "--since", "1h"]));
    assert!(
        text.contains("allow") && text.contains("GET /after"),
        "{text}"
    );
}
