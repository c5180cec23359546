//! OpenID Connect sign-in against a real provider (oidc-provider on loopback), the identity the app
//! receives, and access changes made from another process.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
const BOB: (&str, &str) = ("bob@example.com", "bob-password");

/// castellan with the IdP as its only way to sign in, in front of the echo app.
async fn start(tamper: Option<&str>, local_accounts: bool) -> (Echo, Idp, Castellan) {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, tamper).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = local_accounts;
    let castellan = Castellan::start_on(port, setup).await;
    (echo, idp, castellan)
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_reaches_the_app_with_a_verifiable_assertion_and_no_forged_headers() {
    let (_echo, _idp, c) = start(None, false).await;
    c.grant("demo", "user:alice@example.com");
    let mut b = Browser::new();

    // Straight to the provider (one way to sign in), and back to the page first asked for.
    let first = b.get(&c.url("/reports/q?x=1")).await;
    assert_eq!(first.status, 302);
    // The app host's sign-in binds the hand-off to this browser, then goes to castellan's own.
    let bounce = b.get(first.location().unwrap()).await;
    assert_eq!(bounce.status, 302);
    assert!(
        bounce
            .location()
            .unwrap()
            .starts_with(&c.console("/.castellan/sign_in?rd="))
    );
    let sign_in = b.get(bounce.location().unwrap()).await;
    assert_eq!(
        sign_in.status, 302,
        "with one provider and no local accounts, sign_in goes straight to it"
    );
    let auth = url::Url::parse(sign_in.location().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = auth.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert_eq!(q["redirect_uri"], c.console("/.castellan/callback"));

    let page = b
        .sign_in_oidc(&c.url("/reports/q?x=1"), ALICE.0, ALICE.1)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.url.ends_with("/reports/q?x=1"),
        "returned to {}",
        page.url
    );
    let session = b
        .cookie(&c.origin, "castellan_session")
        .expect("a session cookie")
        .clone();
    assert_eq!(session.len(), 43);

    // Forged identity headers in every spelling, and castellan's cookies, must not reach the app.
    let forged = [
        ("X-Castellan-Email", "mallory@evil.com"),
        ("x-castellan-user", "corp:mallory"),
        ("X-CASTELLAN-JWT-ASSERTION", "forged"),
        ("x_castellan_email", "mallory@evil.com"),
        ("X-Castellan-Groups", "admins"),
        ("accept", "application/json"),
        ("cookie", "app_pref=dark"),
    ];
    let mut req = reqwest::Client::new().get(c.url("/echo"));
    for (k, v) in forged {
        req = req.header(k, v);
    }
    let resp = req
        .header(
            "cookie",
            format!("castellan_session={session}; castellan_browser=xyz"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: serde_json::Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(
        h["x-castellan-email"],
        serde_json::json!(["alice@example.com"]),
        "{h}"
    );
    assert_eq!(
        h["x-castellan-user"],
        serde_json::json!(["corp:alice@example.com"])
    );
    assert!(
        h.get("x_castellan_email").is_none(),
        "underscore variant stripped: {h}"
    );
    assert!(
        h.get("x-castellan-groups").is_none(),
        "unknown x-castellan-* stripped: {h}"
    );
    let cookies = h["cookie"].to_string();
    assert!(
        cookies.contains("app_pref=dark"),
        "the app's own cookie passes: {cookies}"
    );
    assert!(
        !cookies.contains("castellan_"),
        "castellan's cookies never go upstream: {cookies}"
    );
    assert_eq!(
        h["host"],
        serde_json::json!([format!("127.0.0.1:{}", c.port)]),
        "Host is preserved"
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));

    // The assertion verifies with an independent library (node `jose`) against the JWKS endpoint.
    let token = h["x-castellan-jwt-assertion"][0].as_str().unwrap();
    let out = Command::new("node")
        .arg(support_dir().join("verify-jwt.mjs"))
        .arg(c.url("/.castellan/jwks.json"))
        .arg(&c.console)
        .arg("castellan:demo")
        .arg(token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jose rejected the assertion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &verified["payload"];
    assert_eq!(p["email"], "alice@example.com");
    assert_eq!(p["sub"], "alice@example.com");
    assert_eq!(p["provider"], "corp");
    let lifetime = p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap();
    assert!(
        lifetime > 0 && lifetime <= 600,
        "exp at most 10 minutes after iat: {lifetime}"
    );
    assert_eq!(verified["protectedHeader"]["alg"], "ES256");
    // ...and the same token is refused for another app's audience.
    let wrong_aud = Command::new("node")
        .arg(support_dir().join("verify-jwt.mjs"))
        .arg(c.url("/.castellan/jwks.json"))
        .arg(&c.console)
        .arg("castellan:other")
        .arg(token)
        .output()
        .unwrap();
    assert!(!wrong_aud.status.success());

    let who = b
        .request(
            "GET",
            &c.url("/.castellan/whoami"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(who.status, 200);
    assert_eq!(who.json()["email"], "alice@example.com");
    assert_eq!(who.json()["provider"], "corp");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_single_use_and_bound_to_the_browser() {
    let (_echo, _idp, c) = start(None, false).await;
    c.grant("demo", "allAuthenticatedUsers");
    let callback = c.console("/.castellan/callback");

    // A callback carried to another browser (login CSRF / stolen link) is refused, and burns the state.
    let mut victim = Browser::new();
    let login = victim.follow(&c.url("/")).await;
    let stopped = victim
        .submit_idp_login(&login, ALICE.0, ALICE.1, Some(&callback))
        .await;
    let mut attacker = Browser::new();
    let elsewhere = attacker.get(&stopped.url).await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.body);
    assert!(
        elsewhere.body.contains("another browser"),
        "{}",
        elsewhere.body
    );
    let after = victim.get(&stopped.url).await;
    assert_eq!(after.status, 400, "the state was consumed by the first use");
    assert!(after.body.contains("expired"));

    // A normal callback works once; replaying it is refused.
    let mut b = Browser::new();
    let login = b.follow(&c.url("/")).await;
    let stopped = b
        .submit_idp_login(&login, ALICE.0, ALICE.1, Some(&callback))
        .await;
    let ok = b.get(&stopped.url).await;
    assert_eq!(ok.status, 302, "{}", ok.body);
    assert!(b.cookie(&c.console, "castellan_session").is_some());
    let replay = b.get(&stopped.url).await;
    assert_eq!(replay.status, 400, "replayed state: {}", replay.body);

    // Made-up and missing states.
    assert_eq!(
        b.get(&format!("{callback}?code=x&state=made-up"))
            .await
            .status,
        400
    );
    assert_eq!(b.get(&format!("{callback}?code=x")).await.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_id_tokens_never_make_a_session() {
    // Each fault is injected by the real provider, which re-signs the ID token it issues.
    for (tamper, says) in [
        ("wrong_nonce", "nonce"),
        ("expired", "ExpiredSignature"),
        ("unknown_key", "key the provider does not publish"),
        ("alg_none", "malformed"),
        ("hs256", "not accepted"),
        ("wrong_aud", "InvalidAudience"),
        ("wrong_iss", "InvalidIssuer"),
        ("unverified_email", "verified"),
    ] {
        let (_echo, _idp, c) = start(Some(tamper), false).await;
        c.grant("demo", "allAuthenticatedUsers");
        let mut b = Browser::new();
        let page = b.sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1).await;
        assert_eq!(page.status, 400, "{tamper}: {}", page.body);
        assert!(
            page.body.contains("Sign-in failed"),
            "{tamper}: {}",
            page.body
        );
        assert!(
            page.body.contains(says),
            "{tamper}: expected {says:?} in {}",
            page.body
        );
        assert!(
            b.cookie(&c.origin, "castellan_session").is_none(),
            "{tamper}: no session"
        );
        let app = b
            .request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await;
        assert_eq!(app.status, 401, "{tamper}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn access_changes_from_another_process_apply_within_a_second() {
    let (_echo, _idp, c) = start(None, false).await;
    let mut b = Browser::new();
    let denied = b.sign_in_oidc(&c.url("/dashboard"), BOB.0, BOB.1).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.body.contains("bob@example.com") && denied.body.contains("demo"));
    assert!(denied.body.contains("Sign in with another account"));
    let reference = denied
        .body
        .split("Reference: <code>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    assert!(
        c.proc
            .log_text()
            .lines()
            .any(|l| l.contains(&reference) && l.contains("\"decision\":\"deny\"")),
        "the 403 page's reference {reference} is in a deny log line"
    );

    let url = c.url("/dashboard");
    let out = c.cli(&["access", "add", "demo", "domain:example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let granted = until_status(&mut b, &url, 200).await;
    let out = c.cli(&["access", "remove", "demo", "domain:example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = until_status(&mut b, &url, 403).await;
    eprintln!("access change took effect after: grant {granted:?}, revoke {revoked:?}");

    let listed = c.cli(&["access", "list", "demo", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v["members"], serde_json::json!([]));
}

/// Polls until `url` answers `want`; fails after 1 s. Returns how long it took.
async fn until_status(b: &mut Browser, url: &str, want: u16) -> Duration {
    let t = Instant::now();
    loop {
        let s = b
            .request("GET", url, &[("accept", "application/json")], None)
            .await
            .status;
        if s == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "still {s}, not {want}, after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn return_to_stays_on_castellan_through_the_provider() {
    let (_echo, _idp, c) = start(None, false).await;
    c.grant("demo", "allAuthenticatedUsers");
    for (rd, want) in [
        ("//evil.com/x", "/"),
        ("https://evil.com/", "/"),
        ("/\\evil.com", "/"),
        ("/%2f%2fevil.com", "/"),
        ("/ok?a=1", "/ok?a=1"),
    ] {
        let mut b = Browser::new();
        let login = b
            .follow(&c.url(&format!("/.castellan/sign_in?rd={}", urlencode(rd))))
            .await;
        let cb = b
            .submit_idp_login(
                &login,
                ALICE.0,
                ALICE.1,
                Some(&c.console("/.castellan/callback")),
            )
            .await;
        let back = b.get(&cb.url).await;
        assert_eq!(back.status, 302, "{rd}: {}", back.body);
        // Through the hand-off to the app's host, and there to the page asked for.
        let back = b.finish_handoff(back).await;
        assert_eq!(back.location(), Some(want), "{rd}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chooser_offers_provider_and_local_accounts() {
    let (_echo, _idp, c) = start(None, true).await;
    let mut b = Browser::new();
    let page = b.get(&c.console("/.castellan/sign_in?rd=%2Fx")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign in with Corp SSO"), "{}", page.body);
    assert!(
        page.body
            .contains("/.castellan/sign_in?provider=corp&amp;rd=%2Fx"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("name=\"password\""),
        "the local form is on the chooser"
    );
    // "Sign in with another account" asks the provider to let the person pick an account.
    let switch = b
        .follow_until(
            &c.console("/.castellan/sign_in?provider=corp&rd=%2F&switch=1"),
            &[],
            Some(&_idp.issuer),
        )
        .await;
    assert!(
        switch.url.contains("prompt=select_account"),
        "{}",
        switch.url
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_providers_at_once_and_an_unreachable_one() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let corp = Idp::start(&origin, None).await;
    let partner = Idp::start(&origin, None).await;
    let dead = free_port();
    let extra = format!(
        "[[providers]]\nid = \"partner\"\ndisplay_name = \"Partner SSO\"\nissuer = \"{}\"\nclient_id = \"castellan\"\nclient_secret = \"castellan-secret\"\n\n\
         [[providers]]\nid = \"gone\"\nissuer = \"http://127.0.0.1:{dead}\"\nclient_id = \"castellan\"\nclient_secret = \"x\"\n",
        partner.issuer
    );
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&corp);
    setup.local_accounts = false;
    setup.extra = &extra;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:bob@example.com");

    let mut b = Browser::new();
    let chooser = b.follow(&c.url("/")).await;
    assert_eq!(chooser.status, 200, "several providers: a chooser");
    assert!(
        chooser.body.contains("Sign in with Corp SSO")
            && chooser.body.contains("Sign in with Partner SSO")
    );
    assert!(
        !chooser.body.contains("name=\"password\""),
        "local accounts are off"
    );
    let login = b
        .follow(&c.console("/.castellan/sign_in?provider=partner&rd=%2F"))
        .await;
    assert!(login.url.starts_with(&partner.issuer), "{}", login.url);
    let page = b.submit_idp_login(&login, BOB.0, BOB.1, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let who = b
        .request(
            "GET",
            &c.console("/.castellan/whoami"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(who.json()["provider"], "partner");

    let down = b.get(&c.console("/.castellan/sign_in?provider=gone")).await;
    assert_eq!(down.status, 502);
    assert!(down.body.contains("could not reach gone"), "{}", down.body);
    assert!(
        c.proc.log_text().contains("provider discovery ok"),
        "providers are checked at start"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_key_rotation_is_picked_up() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let idp_port: u16 = idp.issuer.rsplit(':').next().unwrap().parse().unwrap();
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "allAuthenticatedUsers");
    assert_eq!(
        Browser::new()
            .sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1)
            .await
            .status,
        200
    );

    // The provider restarts with new signing keys (same issuer); castellan only has the old ones.
    let issuer = idp.issuer.clone();
    drop(idp);
    let _rotated = Idp::start_on(idp_port, &origin, None).await;
    assert_eq!(_rotated.issuer, issuer);
    tokio::time::sleep(
        castellan::identity::oidc::JWKS_REFRESH_INTERVAL + Duration::from_millis(200),
    )
    .await;
    let page = Browser::new()
        .sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1)
        .await;
    assert_eq!(
        page.status, 200,
        "the unknown kid made castellan fetch the new keys: {}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_with_reauth_max_age_asks_for_a_fresh_sign_in_and_checks_auth_time() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.extra = "reauth_max_age = \"3s\"\n";
    setup.top = "trusted_proxies = [\"127.0.0.1/32\"]\nforward_auth = \"nginx\"\n";
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:alice@example.com");
    let api = [("accept", "application/json")];

    let mut b = Browser::new();
    let page = b.sign_in_oidc(&c.url("/inbox"), ALICE.0, ALICE.1).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(b.request("GET", &c.url("/x"), &api, None).await.status, 200);

    // Forward auth (an ingress asking) applies it too.
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );
    let ingress = |cookie: String| {
        let url = c.url("/.castellan/auth");
        let host = format!("127.0.0.1:{}", c.port);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("x-original-uri", "/inbox")
                .header("x-original-method", "GET")
                .header("x-forwarded-host", host)
                .header("x-forwarded-proto", "http")
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(ingress(cookie.clone()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (status, body) = ingress(cookie).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("reauthentication_required") && body.contains("max_age=3"),
        "{body}"
    );
    // Scripts get a 401 they can act on.
    let r = b.request("GET", &c.url("/x"), &api, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "reauthentication_required");
    // A browser is sent to sign in again, and the provider is told to ask for the password.
    let r = b.get(&c.url("/inbox")).await;
    let to_sign_in = r.location().unwrap().to_string();
    assert!(to_sign_in.contains("max_age=3"), "{to_sign_in}");
    let r = b.follow_until(&to_sign_in, &[], Some(&idp.issuer)).await;
    let auth = url::Url::parse(&r.url).unwrap();
    let q: std::collections::HashMap<_, _> = auth.query_pairs().into_owned().collect();
    assert_eq!(q["max_age"], "3");
    assert_eq!(q["prompt"], "login");
    // The provider asks again (its own session is still there), and the app opens.
    let login = b.follow(auth.as_str()).await;
    let page = b.submit_idp_login(&login, ALICE.0, ALICE.1, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.url.ends_with("/inbox"), "{}", page.url);
    assert_eq!(b.request("GET", &c.url("/x"), &api, None).await.status, 200);
    drop(idp);
}

/// The value of hidden input `name` in an HTML form.
fn form_value(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!("name=\"{name}\""))?;
    let tag_start = body[..at].rfind('<')?;
    let tag_end = at + body[at..].find('>')?;
    let tag = &body[tag_start..tag_end];
    let v = tag.find("value=\"")? + 7;
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_out_ends_the_providers_session_too() {
    let (_echo, idp, c) = start(None, false).await;
    c.grant("demo", "user:alice@example.com");
    let mut b = Browser::new();
    let page = b.sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1).await;
    assert_eq!(page.status, 200, "{}", page.body);

    // Control: with castellan's sessions gone but the provider's alive, sign-in needs no password.
    b.set_cookie(&c.origin, "castellan_session", "gone");
    b.set_cookie(&c.console, "castellan_session", "gone");
    let page = b.follow(&c.url("/again")).await;
    assert_eq!(
        page.status, 200,
        "single sign-on at the provider: {}",
        page.body
    );
    assert!(!page.body.contains("name=\"password\""));

    // Sign out: castellan's session ends, and the browser continues to the provider's end-session
    // endpoint with the ID token as a hint and castellan's signed-out page to come back to.
    let form = b.get(&c.console("/.castellan/sign_out")).await;
    let csrf = form.input("csrf").unwrap();
    let r = b
        .request(
            "POST",
            &c.console("/.castellan/sign_out"),
            &[],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    let end = url::Url::parse(r.location().expect("on to the provider")).unwrap();
    let q: std::collections::HashMap<_, _> = end.query_pairs().into_owned().collect();
    assert!(end.as_str().starts_with(&idp.issuer), "{end}");
    assert!(q["id_token_hint"].split('.').count() == 3, "{q:?}");
    assert_eq!(
        q["post_logout_redirect_uri"],
        c.console("/.castellan/signed_out")
    );
    // The provider asks to confirm; confirming ends its session and returns to castellan.
    let confirm = b.get(end.as_str()).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let xsrf = form_value(&confirm.body, "xsrf").expect("the provider's logout form");
    let action = {
        let start = confirm.body.find("action=\"").unwrap() + 8;
        let stop = confirm.body[start..].find('"').unwrap();
        url::Url::parse(&confirm.url)
            .unwrap()
            .join(&confirm.body[start..start + stop])
            .unwrap()
    };
    let mut r = b
        .request(
            "POST",
            action.as_str(),
            &[],
            Some(&[("xsrf", &xsrf), ("logout", "yes")]),
        )
        .await;
    for _ in 0..5 {
        let Some(loc) = r.location().map(str::to_string) else {
            break;
        };
        let next = url::Url::parse(&r.url).unwrap().join(&loc).unwrap();
        r = b.get(next.as_str()).await;
    }
    assert_eq!(r.status, 200);
    assert!(
        r.url.starts_with(&c.console("/.castellan/signed_out")),
        "{}",
        r.url
    );
    assert!(r.body.contains("You are signed out"));
    // The provider's session is gone: the next sign-in asks for the password again.
    let page = b.follow(&c.url("/after")).await;
    assert!(
        page.body.contains("name=\"password\""),
        "{} {}",
        page.url,
        page.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_client_secret_tells_the_operator_what_to_check() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    // The provider knows castellan by another secret than the one configured.
    let idp = Idp::start_with(&origin, &[("CASTELLAN_CLIENT_SECRET", "the-real-secret")]).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:alice@example.com");
    let mut b = Browser::new();
    let page = b.sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1).await;
    assert!(page.status >= 400, "{} {}", page.status, page.body);
    assert!(
        page.body
            .contains("does not accept castellan&#39;s client credentials")
            || page
                .body
                .contains("does not accept castellan's client credentials"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("client_secret of provider corp"),
        "{}",
        page.body
    );
}
