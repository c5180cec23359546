//! Several castellan replicas on one PostgreSQL: an installation moved from SQLite, changes made
//! through one replica enforced by the other within a second, and PostgreSQL outages that lose no
//! audit record and open no door.

use std::time::{Duration, Instant};

use crate::support::*;

const API: [(&str, &str); 1] = [("accept", "application/json")];

async fn signed_in(c: &Castellan, email: &str, password: &str) -> Browser {
    let mut b = Browser::new();
    let r = b.sign_in_local(c, email, password, "/").await;
    assert_eq!(r.status, 302, "sign-in of {email}: {}", r.body);
    b
}

/// Polls `c` as `who` until `/` answers `want`; returns how long that took.
async fn until_status(who: &mut Browser, c: &Castellan, want: u16) -> Duration {
    let t = Instant::now();
    loop {
        // A response in flight when access ends is cut: that counts as "not yet".
        let s = match who.try_request("GET", &c.url("/"), &API, None).await {
            Ok(page) => page.status,
            Err(_) => 0,
        };
        if s == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still {s} instead of {want} after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_install_moves_to_postgres_and_replicas_agree_within_a_second() {
    let echo = Echo::start().await;
    // An installation on SQLite with two people, one of them granted.
    let mut old = Castellan::start(Setup::new(echo.addr)).await;
    old.add_user("ada@example.com", "a long enough password");
    old.add_user("bob@example.com", "another long password");
    old.grant("demo", "user:ada@example.com");
    old.proc.terminate();
    let sqlite = old.config_path.parent().unwrap().join("castellan.db");

    let admin = shared_postgres();
    let db = Database::create(&admin).await;
    let out = std::process::Command::new(castellan_bin())
        .args(["store", "migrate", "--from"])
        .arg(format!("sqlite://{}", sqlite.display()))
        .args(["--to", &db.url])
        .output()
        .unwrap();
    let printed = ok(&out);
    assert!(printed.contains("verified"), "{printed}");
    assert!(
        printed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["users", "2", "2"]),
        "{printed}"
    );

    let mut setup = Setup::new(echo.addr);
    setup.store = Some(db.url.clone());
    let a = Castellan::start(setup).await;
    let mut setup = Setup::new(echo.addr);
    setup.store = Some(db.url.clone());
    let b = Castellan::start(setup).await;

    // Ada signs in on A; her session works on B (sessions and keys are shared).
    let mut ada = signed_in(&a, "ada@example.com", "a long enough password").await;
    let cookie = ada.cookie(&a.origin, "castellan_session").unwrap().clone();
    let mut ada_on_b = Browser::new();
    ada_on_b.set_cookie(&b.origin, "castellan_session", &cookie);
    assert_eq!(
        ada.request("GET", &a.url("/"), &API, None).await.status,
        200
    );
    assert_eq!(
        ada_on_b
            .request("GET", &b.url("/"), &API, None)
            .await
            .status,
        200
    );

    // Changes made through A (its command line) are enforced by B within a second.
    let mut bob = signed_in(&b, "bob@example.com", "another long password").await;
    assert_eq!(
        bob.request("GET", &b.url("/"), &API, None).await.status,
        403
    );
    let mut took = Vec::new();
    for round in 0..5 {
        ok(&a.cli(&["access", "add", "demo", "user:bob@example.com"]));
        took.push(until_status(&mut bob, &b, 200).await);
        ok(&a.cli(&["access", "remove", "demo", "user:bob@example.com"]));
        took.push(until_status(&mut bob, &b, 403).await);
        let _ = round;
    }
    took.sort();
    eprintln!(
        "change on A enforced by B: median {:?}, max {:?} over {} changes",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");

    // A session revoked through A closes Bob's WebSocket on B within a second.
    ok(&a.cli(&["access", "add", "demo", "user:bob@example.com"]));
    until_status(&mut bob, &b, 200).await;
    let bob_cookie = format!(
        "castellan_session={}",
        bob.cookie(&b.origin, "castellan_session").unwrap()
    );
    let mut ws = upgrade(&b, &bob_cookie).await;
    let sessions: serde_json::Value = serde_json::from_str(&ok(&a.cli(&[
        "sessions",
        "list",
        "--user",
        "bob@example.com",
        "--json",
    ])))
    .unwrap();
    ok(&a.cli(&["sessions", "revoke", sessions[0]["id"].as_str().unwrap()]));
    let closed = closed_within(&mut ws, Duration::from_secs(1)).await;
    eprintln!("revoke on A closed the WebSocket on B after {closed:?}");
    assert_eq!(
        bob.request("GET", &b.url("/"), &API, None).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_load_denies_no_one_allowed_and_loses_no_audit_record() {
    let pg = std::sync::Arc::new(Postgres::start());
    let db = Database::create(&pg.admin_url).await;
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.store = Some(db.url.clone());
    let c = Castellan::start(setup).await;
    c.add_user("ada@example.com", "a long enough password");
    c.add_user("bob@example.com", "another long password");
    c.grant("demo", "user:ada@example.com");
    let mut ada = signed_in(&c, "ada@example.com", "a long enough password").await;
    let mut bob = signed_in(&c, "bob@example.com", "another long password").await;

    // A bounded load loop; PostgreSQL goes down for three seconds a little way in.
    let restart = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let mut outage = None;
    let (mut sent, mut wrong) = (0, Vec::new());
    let mut i = 0;
    while i < 5000 {
        if i == 50 {
            let (pg, restart) = (pg.clone(), restart.clone());
            outage = Some(std::thread::spawn(move || {
                pg.stop();
                restart.store(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(3));
                pg.resume();
                restart.store(2, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        let path = format!("/load/{i}");
        let a = ada.request("GET", &c.url(&path), &API, None).await.status;
        let b = bob.request("GET", &c.url(&path), &API, None).await.status;
        sent += 2;
        if a != 200 {
            wrong.push(format!("{path}: ada got {a}"));
        }
        if b != 403 {
            wrong.push(format!("{path}: bob got {b}"));
        }
        i += 1;
        // Keep going until well after PostgreSQL is back.
        if restart.load(std::sync::atomic::Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    outage.unwrap().join().unwrap();
    for _ in 0..50 {
        let path = format!("/load/after-{i}");
        i += 1;
        assert_eq!(
            ada.request("GET", &c.url(&path), &API, None).await.status,
            200
        );
        assert_eq!(
            bob.request("GET", &c.url(&path), &API, None).await.status,
            403
        );
        sent += 2;
    }
    assert!(wrong.is_empty(), "{} wrong answers: {wrong:?}", wrong.len());

    // Every decision reaches the audit trail, the ones made during the outage through the spool.
    let t = Instant::now();
    let audited = loop {
        let n = pg_count(
            &db.url,
            "SELECT COUNT(*) FROM audit WHERE kind = 'decision' AND path LIKE '/load/%'",
        )
        .await;
        if n >= sent || t.elapsed() > Duration::from_secs(20) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = c.proc.log_text();
    eprintln!("{sent} decisions during a PostgreSQL restart; {audited} audit records");
    assert_eq!(audited, sent, "audit records lost or duplicated");
    assert!(
        log.contains("spooling them to"),
        "the outage never reached the audit writer"
    );
    assert!(log.contains("spooled audit records to the store"), "{log}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_outage_fails_closed_with_clear_errors_and_recovers_by_itself() {
    let pg = Postgres::start();
    let db = Database::create(&pg.admin_url).await;
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.store = Some(db.url.clone());
    setup.top = "store_outage_grace = \"8s\"\n";
    let c = Castellan::start(setup).await;
    c.add_user("ada@example.com", "a long enough password");
    c.grant("demo", "user:ada@example.com");
    let mut ada = signed_in(&c, "ada@example.com", "a long enough password").await;
    assert_eq!(
        ada.request("GET", &c.url("/"), &API, None).await.status,
        200
    );

    // A script with a service account's access token.
    let created = ok(&c.cli(&["service-accounts", "create", "etl"]));
    let key = created
        .split_whitespace()
        .find(|w| w.starts_with("csk_"))
        .unwrap()
        .to_string();
    // Waits out the poll interval, as every grant in these tests does: CI once asked before the
    // change had reached the server and got 403.
    c.grant("demo", "serviceAccount:etl");
    let token: serde_json::Value = reqwest::Client::new()
        .post(c.url("/.castellan/token"))
        .basic_auth("etl", Some(&key))
        .form(&[("grant_type", "client_credentials"), ("audience", "demo")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let script = |token: String, url: String| async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(script(token.clone(), c.url("/")).await, 200);
    // Every change empties the session cache (so a revoked session can never outlive its
    // revocation there): Ada is seen again after the grant above, before the outage.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        ada.request("GET", &c.url("/"), &API, None).await.status,
        200
    );

    pg.stop();
    let stopped = Instant::now();
    // Within the grace period her session keeps working.
    let r = ada.request("GET", &c.url("/"), &API, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A token whose key cannot be checked is not "invalid": the store is away (503, not 401).
    assert_eq!(script(token.clone(), c.url("/")).await, 503);
    // Writes from the command line fail and say why.
    let out = c.cli(&["access", "add", "demo", "user:bob@example.com"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the store") || err.contains("cannot be reached"),
        "{err}"
    );
    // A new sign-in cannot work and says so.
    let mut eve = Browser::new();
    let form = eve.get(&c.console("/.castellan/sign_in?rd=/")).await;
    let csrf = form.input("csrf").unwrap_or_default();
    let r = eve
        .request(
            "POST",
            &c.console("/.castellan/sign_in"),
            &[],
            Some(&[
                ("csrf", &csrf),
                ("rd", "/"),
                ("email", "ada@example.com"),
                ("password", "a long enough password"),
            ]),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("cannot reach its database"), "{}", r.body);
    // After the grace period nothing gets through, and the page says why.
    tokio::time::sleep(
        (stopped + Duration::from_secs(9)).saturating_duration_since(Instant::now()),
    )
    .await;
    let r = ada.request("GET", &c.url("/"), &[], None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("cannot reach its database"), "{}", r.body);

    // PostgreSQL comes back: castellan reconnects by itself.
    pg.resume();
    let t = Instant::now();
    let took = until_status(&mut ada, &c, 200).await;
    eprintln!(
        "access restored {:?} after PostgreSQL started",
        t.elapsed().max(took)
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scim_deactivation_through_one_replica_closes_a_websocket_on_the_other() {
    let echo = Echo::start().await;
    let db = Database::create(&shared_postgres()).await;
    let token = "scim-replica-token-0123456789abcdefghijkl";
    let top = format!("scim_token = \"{token}\"");
    let start = || {
        let mut setup = Setup::new(echo.addr);
        setup.store = Some(db.url.clone());
        setup.top = &top;
        Castellan::start(setup)
    };
    let a = start().await;
    let b = start().await;
    a.add_user("carol@example.com", "carol's long password");
    a.grant("demo", "group:engineering");
    let (_, user) = scim_call(
        &a,
        token,
        "POST",
        "/Users",
        serde_json::json!({"userName": "carol@example.com"}),
    )
    .await;
    let id = user["id"].as_str().unwrap().to_string();
    let (status, _) = scim_call(
        &a,
        token,
        "POST",
        "/Groups",
        serde_json::json!({"displayName": "engineering", "members": [{"value": id}]}),
    )
    .await;
    assert_eq!(status, 201);

    let mut carol = signed_in(&b, "carol@example.com", "carol's long password").await;
    until_status(&mut carol, &b, 200).await;
    let cookie = format!(
        "castellan_session={}",
        carol.cookie(&b.origin, "castellan_session").unwrap()
    );
    let mut ws = upgrade(&b, &cookie).await;
    scim_deactivate(&a, token, &id).await;
    let closed = closed_within(&mut ws, Duration::from_secs(1)).await;
    eprintln!("a SCIM deactivation on A closed the WebSocket on B after {closed:?}");
    assert_eq!(
        carol.request("GET", &b.url("/"), &API, None).await.status,
        401
    );
}
