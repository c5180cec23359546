//! Local accounts: sign-in, wrong passwords, the attempt limit, CSRF, sign-out and return URLs.

use crate::support::*;

const PASSWORD: &str = "a long enough password";

async fn start() -> (Echo, Castellan) {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("carol@example.com", PASSWORD);
    c.grant("demo", "user:carol@example.com");
    (echo, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_wrong_password_and_attempt_limit() {
    let (_echo, c) = start().await;

    // The only way to sign in is the local form: sign_in shows it rather than a chooser.
    let mut b = Browser::new();
    let first = b.follow(&c.url("/app?page=2")).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("name=\"password\"") && !first.body.contains("?provider="));
    assert!(
        first.url.starts_with(&c.console("/.castellan/sign_in")),
        "{}",
        first.url
    );
    // Back through the app host's hand-off, bound to this browser.
    let rd = first.input("rd").unwrap();
    assert!(
        rd.starts_with(&c.url("/.castellan/handoff?hb=")) && rd.ends_with("&rd=%2Fapp%3Fpage%3D2"),
        "{rd}"
    );

    let wrong = b
        .sign_in_local(&c, "carol@example.com", "not the password", "/app")
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong email or password."));
    assert!(
        wrong.input("rd").unwrap().ends_with("&rd=%2Fapp"),
        "the return URL survives a failed attempt"
    );
    let unknown = b
        .sign_in_local(&c, "nobody@example.com", "whatever password", "/")
        .await;
    assert_eq!(unknown.status, 401);
    assert!(
        unknown.body.contains("Wrong email or password."),
        "same answer for an unknown account"
    );

    let ok = b
        .sign_in_local(&c, "Carol@Example.com", PASSWORD, "/app?page=2")
        .await;
    assert_eq!(ok.status, 302, "{}", ok.body);
    assert_eq!(ok.location(), Some("/app?page=2"));
    let app = b
        .request(
            "GET",
            &c.url("/app?page=2"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(app.status, 200);
    assert_eq!(
        app.json()["headers"]["x-castellan-email"][0],
        "carol@example.com"
    );
    assert_eq!(
        app.json()["headers"]["x-castellan-user"][0],
        "local:carol@example.com"
    );

    // Five failures lock the account for a while, with a message that says how long.
    let mut m = Browser::new();
    for _ in 0..5 {
        assert_eq!(
            m.sign_in_local(&c, "carol@example.com", "guess guess guess", "/")
                .await
                .status,
            401
        );
    }
    let limited = m
        .sign_in_local(&c, "carol@example.com", PASSWORD, "/")
        .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(
        limited.body.contains("Too many attempts. Try again in "),
        "{}",
        limited.body
    );
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 300);
    // Guessing across many accounts from one address is limited too (20 failures per address).
    let mut spray = Browser::new();
    let mut last = 0;
    for i in 0..16 {
        last = spray
            .sign_in_local(
                &c,
                &format!("user{i}@example.com"),
                "guess guess guess",
                "/",
            )
            .await
            .status;
    }
    assert_eq!(
        last, 429,
        "per-address limit after 20 failures (5 were spent above)"
    );

    // The already signed-in browser is unaffected.
    assert_eq!(
        b.request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        200
    );
}

/// A password check (Argon2) works in 19 MiB. castellan gives them back to the system within a
/// couple of seconds while it is idle, not at its next burst of work (when its allocator would
/// next look): an idle castellan that one person signed in to stays near its idle size.
#[tokio::test(flavor = "multi_thread")]
async fn the_memory_a_password_check_used_is_returned_while_idle() {
    let (_echo, c) = start().await;
    let pid = c.proc.child.id();
    let rss_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
    };
    let before = rss_kib();
    let mut b = Browser::new();
    let page = b
        .sign_in_local(&c, "carol@example.com", PASSWORD, "/app")
        .await;
    assert_eq!(page.status, 302, "signed in: {}", page.body);
    let limit = before + 8 * 1024;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut now = rss_kib();
    while now > limit && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        now = rss_kib();
    }
    assert!(
        now <= limit,
        "5 s after one sign-in castellan holds {now} KiB, {} KiB more than before it ({before} KiB)",
        now - before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_form_needs_its_csrf_token_and_our_origin() {
    let (_echo, c) = start().await;
    let mut b = Browser::new();
    let form = b.get(&c.console("/.castellan/sign_in")).await;
    let csrf = form.input("csrf").unwrap();
    let url = c.console("/.castellan/sign_in");
    assert_eq!(post(&url, &mut b, String::new(), None).await.status, 403);
    assert_eq!(post(&url, &mut b, "forged".into(), None).await.status, 403);
    assert_eq!(
        post(
            &url,
            &mut b,
            csrf.clone(),
            Some("http://evil.example".into())
        )
        .await
        .status,
        403
    );
    // A token from another browser does not work here.
    let mut other = Browser::new();
    assert_eq!(post(&url, &mut other, csrf.clone(), None).await.status, 403);
    // Not even from an app's own origin: only castellan's own pages post here.
    assert_eq!(
        post(&url, &mut b, csrf.clone(), Some(c.origin.clone()))
            .await
            .status,
        403
    );
    assert_eq!(
        post(&url, &mut b, csrf, Some(c.console.clone()))
            .await
            .status,
        302
    );
}

async fn post(url: &str, b: &mut Browser, csrf: String, origin: Option<String>) -> Page {
    let mut headers = vec![];
    if let Some(o) = &origin {
        headers.push(("origin", o.as_str()));
    }
    b.request(
        "POST",
        url,
        &headers,
        Some(&[
            ("csrf", &csrf),
            ("email", "carol@example.com"),
            ("password", PASSWORD),
        ]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn return_to_attacks_land_on_the_root() {
    let (_echo, c) = start().await;
    let attacks = [
        "//evil.com",
        "///evil.com",
        "/\\evil.com",
        "\\\\evil.com",
        "https:evil.com",
        "https://evil.com",
        "http://evil.com@127.0.0.1/",
        "/%2f%2fevil.com",
        "%2f%2fevil.com",
        "/%5cevil.com",
        "/%252f%252fevil.com",
        "/\t/evil.com",
        "/\n/evil.com",
        "javascript:alert(1)",
        "JAVASCRIPT:alert(document.domain)",
        "data:text/html,x",
        "evil.com",
        "https://evil。com",
        "/..//evil.com",
    ];
    for rd in attacks {
        let mut b = Browser::new();
        let ok = b.sign_in_local(&c, "carol@example.com", PASSWORD, rd).await;
        assert_eq!(ok.status, 302, "{rd:?}: {}", ok.body);
        assert_eq!(ok.location(), Some("/"), "{rd:?} must not be followed");
    }
    // Same-origin destinations survive, absolute ones as paths.
    let mut b = Browser::new();
    let ok = b
        .sign_in_local(&c, "carol@example.com", PASSWORD, &c.url("/deep/link?q=1"))
        .await;
    assert_eq!(ok.location(), Some("/deep/link?q=1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_out_ends_the_session_server_side() {
    let (_echo, c) = start().await;
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "carol@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    let session = b.cookie(&c.origin, "castellan_session").unwrap().clone();

    // GET only shows a confirmation (a link or image cannot sign anyone out); POST needs the token.
    let page = b.get(&c.console("/.castellan/sign_out")).await;
    assert!(page.body.contains("carol@example.com"));
    assert_eq!(
        b.request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        200
    );
    let forged = b
        .request(
            "POST",
            &c.console("/.castellan/sign_out"),
            &[],
            Some(&[("csrf", "nope")]),
        )
        .await;
    assert_eq!(forged.status, 403);
    let csrf = page.input("csrf").unwrap();
    let out = b
        .request(
            "POST",
            &c.console("/.castellan/sign_out"),
            &[],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(out.status, 200);
    assert!(out.body.contains("You are signed out"));
    assert!(
        b.cookie(&c.console, "castellan_session").is_none(),
        "the cookie is cleared"
    );

    // The old cookie, replayed, is worthless: the session is gone from the store.
    let mut replay = Browser::new();
    replay.set_cookie(&c.origin, "castellan_session", &session);
    assert_eq!(
        replay
            .request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_and_ambiguous_session_cookies_are_anonymous() {
    let (_echo, c) = start().await;
    let mut b = Browser::new();
    b.sign_in_local(&c, "carol@example.com", PASSWORD, "/")
        .await;
    let good = b.cookie(&c.origin, "castellan_session").unwrap().clone();
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    for value in [
        String::from_utf8(flipped).unwrap(),
        "".into(),
        "x".repeat(5000),
        "../../etc/passwd".into(),
        format!("{good}; castellan_session=other"),
    ] {
        let resp = reqwest::Client::new()
            .get(c.url("/"))
            .header("accept", "application/json")
            .header("cookie", format!("castellan_session={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "cookie {value:.40}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_public_url_gets_host_prefixed_secure_cookies() {
    let echo = Echo::start().await;
    let (port, _) = Castellan::reserve();
    let top = format!("public_url = \"https://localhost:{port}\"");
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    // The test config sets public_url first; a second key would be a duplicate, so replace it.
    let c = Castellan::start_on_with_public_url(port, setup).await;
    c.add_user("frank@example.com", PASSWORD);
    let mut b = Browser::new();
    let form = b.get(&c.console("/.castellan/sign_in")).await;
    let browser_cookie = form.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        browser_cookie.starts_with("__Host-castellan_browser="),
        "{browser_cookie}"
    );
    assert!(
        browser_cookie.contains("; Secure")
            && browser_cookie.contains("; Path=/")
            && !browser_cookie.contains("Domain")
    );
    let csrf = form.input("csrf").unwrap();
    let https = format!("https://localhost:{port}");
    let ok = b
        .request(
            "POST",
            &c.console("/.castellan/sign_in"),
            &[("origin", https.as_str())],
            Some(&[
                ("csrf", &csrf),
                ("rd", "/"),
                ("email", "frank@example.com"),
                ("password", PASSWORD),
            ]),
        )
        .await;
    assert_eq!(ok.status, 302, "{}", ok.body);
    let session = ok.headers["set-cookie"].to_str().unwrap();
    assert!(
        session.starts_with("__Host-castellan_session="),
        "{session}"
    );
    for attr in [
        "; Path=/",
        "; HttpOnly",
        "; SameSite=Lax",
        "; Secure",
        "; Max-Age=86400",
    ] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_browser_navigations_are_redirected_to_sign_in() {
    let (_echo, c) = start().await;
    let mut b = Browser::new();
    let nav = b.get(&c.url("/page?x=1")).await;
    assert_eq!(nav.status, 302);
    assert_eq!(
        nav.location(),
        Some(c.url("/.castellan/sign_in?rd=%2Fpage%3Fx%3D1").as_str())
    );
    for headers in [
        vec![("accept", "application/json")],
        vec![
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest"),
        ],
        vec![("accept", "text/html"), ("sec-fetch-mode", "cors")],
        vec![("accept", "*/*")],
    ] {
        let r = b.request("GET", &c.url("/page?x=1"), &headers, None).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(
            r.json()["sign_in_url"],
            c.url("/.castellan/sign_in?rd=%2Fpage%3Fx%3D1")
        );
    }
    let r = b
        .request(
            "GET",
            &c.url("/page"),
            &[("accept", "*/*"), ("sec-fetch-mode", "navigate")],
            None,
        )
        .await;
    assert_eq!(
        r.status, 302,
        "Sec-Fetch-Mode: navigate is a navigation whatever Accept says"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_account_page_lists_and_ends_the_persons_own_sessions() {
    let (_echo, c) = start().await;
    c.add_user("other@example.com", PASSWORD);
    let mut mine = Browser::new();
    let mut laptop = Browser::new();
    let mut phone = Browser::new();
    let mut someone_else = Browser::new();
    for b in [&mut mine, &mut laptop, &mut phone] {
        assert_eq!(
            b.sign_in_local(&c, "carol@example.com", PASSWORD, "/")
                .await
                .status,
            302
        );
    }
    someone_else
        .sign_in_local(&c, "other@example.com", PASSWORD, "/")
        .await;
    let api = [("accept", "application/json")];

    let page = mine.get(&c.console("/.castellan/account")).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body.matches("Revoke</button>").count(),
        3,
        "three of carol's sessions, not other's"
    );
    assert_eq!(page.body.matches("(this browser)").count(), 1);
    assert!(!page.body.contains("other@example.com"));

    // Revoke one session (not this browser's): pick an id that is not marked as this browser.
    let ids: Vec<String> = page
        .body
        .split("name=\"id\" value=\"")
        .skip(1)
        .map(|p| p.split('"').next().unwrap().to_string())
        .collect();
    let this_row = page
        .body
        .split("(this browser)")
        .next()
        .unwrap()
        .matches("<tr>")
        .count()
        - 1;
    let victim = ids
        .iter()
        .enumerate()
        .find(|(i, _)| *i != this_row)
        .unwrap()
        .1
        .clone();
    let csrf = page.input("csrf").unwrap();
    let forged = mine
        .request(
            "POST",
            &c.console("/.castellan/account/revoke"),
            &[],
            Some(&[("id", victim.as_str())]),
        )
        .await;
    assert_eq!(forged.status, 403);
    let done = mine
        .request(
            "POST",
            &c.console("/.castellan/account/revoke"),
            &[],
            Some(&[("csrf", &csrf), ("id", &victim)]),
        )
        .await;
    assert_eq!(done.status, 303);
    let alive = [
        laptop.request("GET", &c.url("/"), &api, None).await.status,
        phone.request("GET", &c.url("/"), &api, None).await.status,
    ];
    assert_eq!(
        alive.iter().filter(|s| **s == 401).count(),
        1,
        "exactly the revoked one ended: {alive:?}"
    );
    // Someone else's session id cannot be revoked from here.
    let theirs = c.cli(&["sessions", "list", "--user", "other@example.com", "--json"]);
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    let their_id = theirs[0]["id"].as_str().unwrap();
    mine.request(
        "POST",
        &c.console("/.castellan/account/revoke"),
        &[],
        Some(&[("csrf", &csrf), ("id", their_id)]),
    )
    .await;
    assert_eq!(
        someone_else
            .request("GET", &c.url("/.castellan/whoami"), &api, None)
            .await
            .status,
        200
    );

    // Sign out everywhere ends every one of carol's sessions, this one included.
    let out = mine
        .request(
            "POST",
            &c.console("/.castellan/account/sign_out_everywhere"),
            &[],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(out.status, 200);
    assert!(out.body.contains("You are signed out"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for b in [&mut laptop, &mut phone] {
        assert_eq!(b.request("GET", &c.url("/"), &api, None).await.status, 401);
    }
    assert_eq!(
        mine.request("GET", &c.url("/"), &api, None).await.status,
        401
    );
    assert_eq!(
        someone_else
            .request("GET", &c.url("/.castellan/whoami"), &api, None)
            .await
            .status,
        200
    );
}

fn now_step() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / castellan::identity::totp::STEP
}

fn totp(secret: &str, step: i64) -> String {
    format!(
        "{:06}",
        castellan::identity::totp::code(secret, step).unwrap()
    )
}

/// Confirms it's her on the account page: the password, and a code with two-step verification on.
async fn confirm(b: &mut Browser, c: &Castellan, password: &str, code: Option<&str>) {
    let page = b.get(&c.console("/.castellan/account/confirm")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.input("csrf").unwrap();
    let done = b
        .request(
            "POST",
            &c.console("/.castellan/account/confirm"),
            &[],
            Some(&[
                ("csrf", &csrf),
                ("password", password),
                ("code", code.unwrap_or("")),
            ]),
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
}

async fn post_code(b: &mut Browser, c: &Castellan, code: &str) -> Page {
    let form = b.get(&c.console("/.castellan/sign_in/code")).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.input("csrf").unwrap();
    b.request(
        "POST",
        &c.console("/.castellan/sign_in/code"),
        &[],
        Some(&[("csrf", &csrf), ("code", code)]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_is_set_up_from_the_account_page_then_asked_for_and_never_accepted_twice() {
    const PW: &str = "a long enough password";
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("ada@example.com", PW);
    c.grant("demo", "user:ada@example.com");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "ada@example.com", PW, "/").await.status,
        302
    );

    // Set up from the account page: a key, a code to prove it, recovery codes once.
    let account = b.get(&c.console("/.castellan/account")).await;
    assert!(account.body.contains("Set up two-step verification"));
    let csrf = account.input("csrf").unwrap();
    // A change to how she signs in needs a fresh proof first (here: her password).
    let r = b
        .request(
            "POST",
            &c.console("/.castellan/account/two_step"),
            &[],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(r.location(), Some("/.castellan/account/confirm"));
    confirm(&mut b, &c, PW, None).await;
    let r = b
        .request(
            "POST",
            &c.console("/.castellan/account/two_step"),
            &[],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(r.location(), Some("/.castellan/account/two_step"));
    let setup = b.get(&c.console("/.castellan/account/two_step")).await;
    let secret = {
        let at = setup.body.find("data-secret=\"").unwrap() + 13;
        setup.body[at..at + setup.body[at..].find('"').unwrap()].to_string()
    };
    assert!(setup.body.contains("otpauth://totp/"));
    let csrf2 = setup.input("csrf").unwrap();
    let wrong = b
        .request(
            "POST",
            &c.console("/.castellan/account/two_step/verify"),
            &[],
            Some(&[("csrf", &csrf2), ("code", "000000")]),
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let step = now_step();
    let done = b
        .request(
            "POST",
            &c.console("/.castellan/account/two_step/verify"),
            &[],
            Some(&[("csrf", &csrf2), ("code", &totp(&secret, step))]),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let recovery: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .map(|s| s[..s.find('<').unwrap()].to_string())
        .collect();
    assert_eq!(recovery.len(), 10, "{}", done.body);

    // Now a password alone is not enough: no session until the code.
    let mut b2 = Browser::new();
    let r = b2.sign_in_local(&c, "ada@example.com", PW, "/").await;
    assert_eq!(r.location(), Some("/.castellan/sign_in/code"));
    assert!(b2.cookie(&c.origin, "castellan_session").is_none());
    assert_eq!(
        b2.request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        401
    );
    // The code used at set-up cannot be used again; the next one can, once.
    let replay = post_code(&mut b2, &c, &totp(&secret, step)).await;
    assert_eq!(replay.status, 401);
    assert!(replay.body.contains("used already"), "{}", replay.body);
    let ok = post_code(&mut b2, &c, &totp(&secret, step + 1)).await;
    assert_eq!(ok.status, 302, "{}", ok.body);
    let ok = b2.finish_handoff(ok).await;
    assert_eq!(ok.status, 302, "{}", ok.body);
    assert_eq!(
        b2.request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        200
    );
    let mut b3 = Browser::new();
    b3.sign_in_local(&c, "ada@example.com", PW, "/").await;
    assert_eq!(
        post_code(&mut b3, &c, &totp(&secret, step + 1))
            .await
            .status,
        401
    );
    // A recovery code works once.
    assert_eq!(post_code(&mut b3, &c, &recovery[0]).await.status, 302);
    let mut b4 = Browser::new();
    b4.sign_in_local(&c, "ada@example.com", PW, "/").await;
    assert_eq!(post_code(&mut b4, &c, &recovery[0]).await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mfa_required_the_first_sign_in_sets_up_a_second_factor() {
    const PW: &str = "a long enough password";
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.top = "local_accounts_mfa = \"required\"\n";
    let c = Castellan::start(setup).await;
    c.add_user("bob@example.com", PW);
    let mut b = Browser::new();
    let r = b.sign_in_local(&c, "bob@example.com", PW, "/").await;
    assert_eq!(r.location(), Some("/.castellan/sign_in/code"));
    assert!(b.cookie(&c.origin, "castellan_session").is_none());
    let page = b.get(&c.console("/.castellan/sign_in/code")).await;
    assert!(
        page.body.contains("Set up two-step verification"),
        "{}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passkey_endpoints_refuse_forgeries_and_pages_allow_only_castellans_script() {
    let (_echo, c) = start().await;
    let mut b = Browser::new();
    let page = b.get(&c.console("/.castellan/sign_in")).await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("script-src {}/.castellan/passkey.js;", c.console)),
        "the sign-in page may run that one script: {csp}"
    );
    assert!(page.body.contains("data-passkey=\"sign-in\""));
    let csrf = page.input("csrf").unwrap();
    let js = b.get(&c.console("/.castellan/passkey.js")).await;
    assert_eq!(js.status, 200);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.body.contains("navigator.credentials.get"));
    // Other pages still run no script at all.
    let denied = b.get(&c.url("/.castellan/signed_out")).await;
    assert!(
        !denied.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src")
    );

    let cookie = format!(
        "castellan_browser={}",
        b.cookie(&c.console, "castellan_browser").unwrap()
    );
    let client = reqwest::Client::new();
    let post = |path: &str, csrf: &str, origin: Option<&str>, body: serde_json::Value| {
        let mut r = client
            .post(c.console(path))
            .header("cookie", &cookie)
            .header("x-castellan-csrf", csrf)
            .json(&body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let options = "/.castellan/passkey/sign_in/options";
    let o = Some(c.console.as_str());
    let empty = serde_json::json!({});
    assert_eq!(
        post(options, "", o, empty.clone()).await.unwrap().status(),
        403
    );
    assert_eq!(
        post(options, "forged", o, empty.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let evil = post(options, &csrf, Some("http://evil.example"), empty.clone());
    assert_eq!(evil.await.unwrap().status(), 403);
    assert_eq!(
        post(options, &csrf, None, empty.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let r = post(options, &csrf, o, empty.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rpId"], "localhost");
    assert_eq!(v["challenge"].as_str().unwrap().len(), 43);

    // A response for a credential castellan never registered signs nobody in.
    let forged = serde_json::json!({
        "id": "bm90LWEtcGFzc2tleQ", "clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"
    });
    let r = post("/.castellan/passkey/sign_in", &csrf, o, forged.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("does not know this passkey")
    );
    assert!(r_has_no_session(&c, &cookie).await);
    // The challenge was used up by that attempt.
    let r = post("/.castellan/passkey/sign_in", &csrf, o, forged)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Registering needs a signed-in local account.
    let r = post("/.castellan/passkey/register/options", &csrf, o, empty)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn r_has_no_session(c: &Castellan, cookie: &str) -> bool {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(c.console("/.castellan/whoami"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    r.status() == 401
}
