//! The outside security review's findings (issue 19), one test each, as an attacker would try
//! them: a real browser (headless Chromium) for the stolen session, the hostile app and the
//! login CSRF; the real binary and its CLI for the rest. (Finding 1, forward-auth through real
//! nginx and Caddy, is in `forward_auth.rs`.)

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const PASSWORD: &str = "a long enough password";

fn chromium() {
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    require(
        &support_dir().join("node_modules/playwright-core"),
        "the npm package playwright-core",
    );
}

/// Finding 2: a stolen session cookie cannot add a passkey, a TOTP key or a password (each needs
/// a fresh proof made in the owner's browser), and signing out everywhere can remove passkeys.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_session_cannot_plant_a_way_back_in() {
    chromium();
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("vic@example.com", PASSWORD);
    c.grant("demo", "user:vic@example.com");
    let v = run_browser_script(
        "stolen.mjs",
        vec![
            c.url("/reports"),
            c.console.clone(),
            "vic@example.com".into(),
            PASSWORD.into(),
        ],
    )
    .await;
    assert_eq!(v["stolenCookies"], 1, "{v}");
    assert_eq!(v["thiefSees"], "Your account", "the cookie works: {v}");
    let confirm = c.console("/.castellan/account/confirm");
    for step in [
        "thiefPasskey",
        "thiefTotp",
        "thiefPassword",
        "thiefPasskeyAfterVictimConfirmed",
    ] {
        assert_eq!(
            v[step], confirm,
            "{step}: sent to confirm it's them instead: {v}"
        );
    }
    assert_eq!(
        v["thiefAuthenticatorCredentials"], 0,
        "the thief's authenticator was never asked to make a passkey: {v}"
    );
    assert_eq!(v["thiefConfirm"], "Wrong password.", "{v}");
    let listed = v["victimPasskeys"].as_str().unwrap();
    assert!(
        listed.contains("victim laptop") && !listed.contains("back door"),
        "only the victim's passkey, with when it was added: {v}"
    );
    assert!(
        listed.contains("added ") && listed.contains("never used"),
        "{v}"
    );
    assert!(
        v["thiefAfter"]
            .as_str()
            .unwrap()
            .starts_with(&c.console("/.castellan/sign_in")),
        "signed out everywhere ends the thief's copy: {v}"
    );
    assert!(
        v["passkeyAfter"]
            .as_str()
            .unwrap()
            .contains("does not know this passkey"),
        "the removed passkey signs nobody in: {v}"
    );
    // The password still works, and is the victim's own.
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "vic@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    // Each change is in the audit trail, with who made it.
    let audit = ok(&c.cli(&[
        "audit",
        "--kind",
        "change",
        "--user",
        "vic@example.com",
        "--json",
    ]));
    let actions: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for action in ["session.confirm", "passkey.add", "passkey.remove"] {
        assert!(
            actions.iter().any(|a| a["action"] == action),
            "{action} in {audit}"
        );
    }
}

/// Finding 3: an app's response cannot set or clear castellan's cookies, and an app's script
/// cannot read castellan's console or drive its API, even with an administrator signed in.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_app_cannot_touch_castellans_cookies_or_console() {
    chromium();
    let echo = Echo::start().await;
    // The wiki is on a sibling host of castellan's (`wiki.localhost`, same site as `localhost`),
    // as apps.example.com would be next to auth.example.com.
    let extra = format!(
        "[[apps]]\nid = \"wiki\"\nhost = \"wiki.localhost\"\nupstream = \"http://{}\"\n",
        echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.add_user("root@example.com", PASSWORD);
    c.add_user("mallory@example.com", PASSWORD);
    c.grant_role("--global", "user:root@example.com", "roles/admin");
    c.grant("wiki", "user:root@example.com");
    c.grant("wiki", "user:mallory@example.com");
    let wiki = format!("http://wiki.localhost:{}", c.port);
    // Mallory's own session on the wiki's host: what the app tries to plant in root's browser.
    let mut mallory = Browser::resolving(&["wiki.localhost"], c.port);
    let planted = mallory
        .sign_in_local_via(&wiki, "mallory@example.com", PASSWORD)
        .await;
    let planted = planted
        .strip_prefix("castellan_session=")
        .unwrap()
        .to_string();

    let v = run_browser_script(
        "hostile.mjs",
        vec![
            wiki.clone(),
            c.console.clone(),
            "root@example.com".into(),
            PASSWORD.into(),
            planted.clone(),
            "user:mallory@example.com".into(),
        ],
    )
    .await;
    assert_eq!(v["console"], "Apps", "root uses the console: {v}");
    let attempts = &v["attempts"];
    assert_eq!(
        attempts["apiHere"], 404,
        "castellan's API is not on the app's origin: {v}"
    );
    assert_eq!(
        attempts["apiThere"], "error: TypeError",
        "no CORS for apps on castellan's API: {v}"
    );
    assert_eq!(attempts["apiThereNoCors"], "opaque", "{v}");
    assert_eq!(
        attempts["consoleHere"], "status 404",
        "the console is not on the app's origin: {v}"
    );
    assert_eq!(
        attempts["consoleThere"], "error: TypeError",
        "nor readable from it: {v}"
    );
    assert!(
        !attempts["frame"].as_str().unwrap().starts_with("read"),
        "{v}"
    );
    // Nothing changed: mallory is no administrator.
    let global = ok(&c.cli(&["access", "list", "--global"]));
    assert!(!global.contains("mallory"), "{global}");
    // The browser is still root's, on the wiki's host and on castellan's: the app's Set-Cookie
    // and Clear-Site-Data never reached it.
    for who in ["whoamiApp", "whoamiConsole"] {
        let w = v[who].as_str().unwrap();
        assert!(
            w.contains("root@example.com") && !w.contains("mallory"),
            "{who}: {v}"
        );
    }
    let cookies = v["cookies"].as_array().unwrap();
    assert!(
        cookies.iter().all(|k| k["value"] != planted.as_str()),
        "{v}"
    );
    assert!(
        cookies.iter().all(|k| k["value"] != "chosen-by-the-app"),
        "{v}"
    );
    // The app's own cookies still work.
    let page = mallory
        .request(
            "GET",
            &format!("{wiki}/x"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert!(
        page.headers
            .get_all("set-cookie")
            .iter()
            .any(|h| h.to_str().unwrap().starts_with("app_cookie=")),
        "{:?}",
        page.headers
    );
}

/// Finding 4: a hand-off link made in the attacker's browser does not sign the victim's browser in
/// as the attacker.
#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_link_from_another_browser_signs_nobody_in() {
    chromium();
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("mallory@example.com", PASSWORD);
    c.grant("demo", "user:mallory@example.com");
    let mut mallory = Browser::new();
    assert_eq!(
        mallory
            .sign_in_local(&c, "mallory@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    // Mallory, signed in on castellan's host, opens the app in a browser without the app host's
    // cookie and stops at the link castellan makes to hand her sign-in over.
    mallory.remove_cookie(&c.origin, "castellan_session");
    let handoff = c.url("/.castellan/handoff?code=");
    let link = mallory
        .follow_until(&c.url("/dash"), &[], Some(&handoff))
        .await
        .url;
    assert!(link.starts_with(&handoff), "{link}");

    let v = run_browser_script("handoff-csrf.mjs", vec![link.clone(), c.origin.clone()]).await;
    assert!(
        !v["text"].as_str().unwrap().contains("mallory")
            && !v["whoami"].as_str().unwrap().contains("mallory"),
        "the victim's browser is not mallory's: {v}"
    );
    assert!(
        v["text"].as_str().unwrap().contains("to sign in again"),
        "it is offered a sign-in of its own: {v}"
    );
    // The code was spent by that attempt: it does not work in mallory's browser either now.
    let replay = mallory.get(&link).await;
    assert_ne!(replay.status, 302, "{}", replay.body);
}

/// An access token for `audience` from a new command-line sign-in of `b`'s person.
async fn cli_access_token(b: &mut Browser, c: &Castellan, audience: &str) -> String {
    let refresh = cli_refresh_token(b, c).await;
    let (status, t) = token_grant(
        c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("audience", audience),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    t["access_token"].as_str().unwrap().to_string()
}

/// Finding 5: an app's `reauth_max_age` applies to access tokens as it does to cookies: a token
/// from an older sign-in gets 401 `reauthentication_required`, and no new token is minted for it.
#[tokio::test(flavor = "multi_thread")]
async fn reauthentication_applies_to_access_tokens_too() {
    let echo = Echo::start().await;
    let extra = format!(
        "[[apps]]\nid = \"vault\"\nhost = \"127.0.0.1\"\npath_prefix = \"/vault\"\nupstream = \"http://{}\"\nreauth_max_age = \"3s\"\n",
        echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.add_user("ana@example.com", PASSWORD);
    c.grant("demo", "user:ana@example.com");
    c.grant("vault", "user:ana@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c, "ana@example.com", PASSWORD, "/").await;
    let refresh = cli_refresh_token(&mut b, &c).await;
    let access = |audience: &'static str| {
        let refresh = refresh.clone();
        let c = &c;
        async move {
            token_grant(
                c,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("audience", audience),
                ],
            )
            .await
        }
    };
    let (s, fresh) = access("vault").await;
    assert_eq!(s, 200, "a fresh sign-in gets a token: {fresh}");
    let vault_token = fresh["access_token"].as_str().unwrap().to_string();
    let (_, demo) = access("demo").await;
    let demo_token = demo["access_token"].as_str().unwrap().to_string();
    let get = |path: &str, token: &str| {
        reqwest::Client::new()
            .get(c.url(path))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get("/vault/x", &vault_token).await.unwrap().status(), 200);

    tokio::time::sleep(Duration::from_secs(4)).await;
    // The same token, now older than the app allows.
    let r = get("/vault/x", &vault_token).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        r.headers()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "reauthentication_required", "{body}");
    assert_eq!(body["max_age"], 3, "{body}");
    // A token for another app minted from the same sign-in: that app does not ask.
    assert_eq!(get("/", &demo_token).await.unwrap().status(), 200);
    // And no new token for the app that asks: `castellan login` signs in again.
    let (s, refused) = access("vault").await;
    assert_eq!(s, 400, "{refused}");
    assert_eq!(refused["reauthentication_required"], true, "{refused}");
    assert_eq!(refused["max_age"], 3, "{refused}");
}

/// Finding 6: WebSockets opened with a bearer token are registered like cookie ones and closed
/// within a second when the command-line session or the service account's key is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn bearer_websockets_close_when_their_credential_is_revoked() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("ben@example.com", PASSWORD);
    c.grant("demo", "user:ben@example.com");
    let key = ok(&c.cli(&["service-accounts", "create", "ws-bot"]))
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .unwrap()
        .to_string();
    c.grant("demo", "serviceAccount:ws-bot");
    let mut b = Browser::new();
    b.sign_in_local(&c, "ben@example.com", PASSWORD, "/").await;

    // A person's command-line session, revoked by the id `sessions list` shows.
    let token = cli_access_token(&mut b, &c, "demo").await;
    let mut ws = upgrade_with(&c, &format!("Authorization: Bearer {token}")).await;
    let sessions: Value = serde_json::from_str(&ok(&c.cli(&[
        "sessions",
        "list",
        "--user",
        "ben@example.com",
        "--json",
    ])))
    .unwrap();
    let cli = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client_ip"] == "command line")
        .unwrap_or_else(|| panic!("the command line's session is listed: {sessions}"));
    ok(&c.cli(&["sessions", "revoke", cli["id"].as_str().unwrap()]));
    let took = closed_within(&mut ws, Duration::from_millis(1500)).await;
    eprintln!("revoking the command-line session closed its WebSocket after {took:?}");

    // The same in Proxy-Authorization (what `castellan proxy` sends), all of a person's sessions.
    let token = cli_access_token(&mut b, &c, "demo").await;
    let mut ws = upgrade_with(&c, &format!("Proxy-Authorization: Bearer {token}")).await;
    ok(&c.cli(&["sessions", "revoke", "--user", "ben@example.com"]));
    let took = closed_within(&mut ws, Duration::from_millis(1500)).await;
    eprintln!("revoking the person's sessions closed the WebSocket after {took:?}");

    // A service account's token: revoking its key closes it.
    let (_, t) = token_grant(
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "ws-bot"),
            ("client_secret", &key),
            ("audience", "demo"),
        ],
    )
    .await;
    let sa_token = t["access_token"].as_str().unwrap().to_string();
    let mut ws = upgrade_with(&c, &format!("Authorization: Bearer {sa_token}")).await;
    let keys = ok(&c.cli(&["service-accounts", "keys", "list", "ws-bot"]));
    let id = keys.split('\t').next().unwrap().trim().to_string();
    ok(&c.cli(&["service-accounts", "keys", "revoke", "ws-bot", &id]));
    let took = closed_within(&mut ws, Duration::from_millis(1500)).await;
    eprintln!("revoking the key closed the service account's WebSocket after {took:?}");
}

/// Finding 7: ending a session ends every session handed off from it: revoking the sign-in by
/// the id `sessions list` shows, or signing out on castellan's host, signs the app's host out
/// and closes its connections.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_or_signing_out_a_sign_in_ends_its_app_host_sessions() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("cy@example.com", PASSWORD);
    c.grant("demo", "user:cy@example.com");
    const API: [(&str, &str); 1] = [("accept", "application/json")];

    for how in ["revoke by id", "sign out on castellan's host"] {
        let mut b = Browser::new();
        assert_eq!(
            b.sign_in_local(&c, "cy@example.com", PASSWORD, "/")
                .await
                .status,
            302
        );
        let cookie = format!(
            "castellan_session={}",
            b.cookie(&c.origin, "castellan_session").unwrap()
        );
        let mut ws = upgrade(&c, &cookie).await;
        if how == "revoke by id" {
            let sessions: Value = serde_json::from_str(&ok(&c.cli(&[
                "sessions",
                "list",
                "--user",
                "cy@example.com",
                "--json",
            ])))
            .unwrap();
            assert_eq!(
                sessions.as_array().unwrap().len(),
                1,
                "one sign-in, listed once: {sessions}"
            );
            ok(&c.cli(&["sessions", "revoke", sessions[0]["id"].as_str().unwrap()]));
        } else {
            sign_out(&mut b, &c).await;
        }
        let took = closed_within(&mut ws, Duration::from_millis(1500)).await;
        eprintln!("{how}: the app host's WebSocket closed after {took:?}");
        assert_eq!(
            b.request("GET", &c.url("/"), &API, None).await.status,
            401,
            "{how}: the app's host is signed out"
        );
    }
}

/// Finding 8: forward-auth refuses a cross-site WebSocket upgrade, as the proxy does.
#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_refuses_cross_site_websockets_like_the_proxy() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.top = "forward_auth = \"nginx\"\ntrusted_proxies = [\"127.0.0.1/32\"]";
    let c = Castellan::start(setup).await;
    c.add_user("di@example.com", PASSWORD);
    c.grant("demo", "user:di@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c, "di@example.com", PASSWORD, "/").await;
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );
    let ask = |origin: &'static str| {
        reqwest::Client::new()
            .get(c.url("/.castellan/auth"))
            .header("cookie", &cookie)
            .header("x-original-method", "GET")
            .header("x-original-uri", "/ws")
            .header("x-forwarded-host", format!("127.0.0.1:{}", c.port))
            .header("x-forwarded-proto", "http")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("origin", origin)
            .send()
    };
    let theirs = ask("https://evil.example").await.unwrap();
    assert_eq!(theirs.status(), 403);
    let body: Value = theirs.json().await.unwrap();
    assert_eq!(body["error"], "cross_origin_websocket", "{body}");
    let own = Box::leak(format!("http://127.0.0.1:{}", c.port).into_boxed_str());
    assert_eq!(ask(own).await.unwrap().status(), 200);
}

/// Finding 9: an administrator of one app asking `POST /api/v1/check` sees that app's bindings
/// and no more: not the global policy's members, not groups the app's bindings do not name.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_admin_checks_only_what_they_may_read() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("ed@example.com", PASSWORD);
    ok(&c.cli(&["groups", "create", "payroll"]));
    ok(&c.cli(&["groups", "create", "readers"]));
    ok(&c.cli(&["groups", "add-member", "payroll", "fay@example.com"]));
    ok(&c.cli(&["groups", "add-member", "readers", "fay@example.com"]));
    c.grant_role("--global", "group:payroll", "roles/accessor");
    c.grant("demo", "group:readers");
    c.grant_role("demo", "user:ed@example.com", "roles/admin");
    let key = ok(&c.cli(&["service-accounts", "create", "root-bot"]))
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .unwrap()
        .to_string();
    c.grant_role("--global", "serviceAccount:root-bot", "roles/admin");

    let mut b = Browser::new();
    b.sign_in_local(&c, "ed@example.com", PASSWORD, "/").await;
    let check = serde_json::json!({"app": "demo", "email": "fay@example.com"}).to_string();
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.console, "castellan_session").unwrap()
    );
    let ed: Value = reqwest::Client::new()
        .post(c.console("/.castellan/api/v1/check"))
        .header("cookie", &cookie)
        .header("origin", &c.console)
        .header("content-type", "application/json")
        .body(check.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = ed.to_string();
    assert_eq!(ed["allowed"], true, "{ed}");
    assert!(
        !text.contains("payroll"),
        "the global policy's group stays hidden: {ed}"
    );
    assert!(!text.contains("global#"), "{ed}");
    assert_eq!(ed["hidden_bindings"], 1, "{ed}");
    assert_eq!(ed["groups"], serde_json::json!(["readers"]), "{ed}");
    // A global administrator sees everything.
    let root: Value = reqwest::Client::new()
        .post(c.console("/.castellan/api/v1/check"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(check)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(root.to_string().contains("group:payroll"), "{root}");
    assert_eq!(root["hidden_bindings"], 0, "{root}");
}

/// Signs `b` out on castellan's own host (its sign-out form).
async fn sign_out(b: &mut Browser, c: &Castellan) {
    let page = b.get(&c.console("/.castellan/sign_out")).await;
    let out = b
        .request(
            "POST",
            &c.console("/.castellan/sign_out"),
            &[],
            Some(&[("csrf", &page.input("csrf").unwrap())]),
        )
        .await;
    assert!(out.status < 400, "{}", out.body);
}

/// Finding 10, lockout: five wrong passwords from elsewhere lock the account for browsers that
/// never signed in to it, not for the owner's browser that did.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_from_elsewhere_do_not_lock_the_owner_out() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("gus@example.com", PASSWORD);
    c.grant("demo", "user:gus@example.com");
    let mut owner = Browser::new();
    assert_eq!(
        owner
            .sign_in_local(&c, "gus@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    // Signed out again: the device cookie stays.
    sign_out(&mut owner, &c).await;
    let mut attacker = Browser::new();
    for _ in 0..5 {
        assert_eq!(
            attacker
                .sign_in_local(&c, "gus@example.com", "guess guess guess", "/")
                .await
                .status,
            401
        );
    }
    assert_eq!(
        attacker
            .sign_in_local(&c, "gus@example.com", PASSWORD, "/")
            .await
            .status,
        429,
        "the attacker is locked out, even with the right password"
    );
    let mut stranger = Browser::new();
    assert_eq!(
        stranger
            .sign_in_local(&c, "gus@example.com", PASSWORD, "/")
            .await
            .status,
        429,
        "so is any browser that never signed in to the account"
    );
    assert_eq!(
        owner
            .sign_in_local(&c, "gus@example.com", PASSWORD, "/")
            .await
            .status,
        302,
        "the owner's own browser is not"
    );
    // A device cookie is good for its own account only.
    sign_out(&mut owner, &c).await;
    c.add_user("hal@example.com", PASSWORD);
    let mut m = Browser::new();
    for _ in 0..5 {
        m.sign_in_local(&c, "hal@example.com", "guess guess guess", "/")
            .await;
    }
    assert_eq!(
        owner
            .sign_in_local(&c, "hal@example.com", PASSWORD, "/")
            .await
            .status,
        429
    );
}

/// Finding 10, logs: a control character in a submitted email cannot forge a line of the text log.
#[tokio::test(flavor = "multi_thread")]
async fn submitted_text_cannot_forge_log_lines() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.args = &["--log-format", "text"];
    let c = Castellan::start(setup).await;
    let forged =
        "INFO castellan::request: method=GET path=/admin user=root@example.com decision=allow";
    let mut b = Browser::new();
    let page = b
        .sign_in_local(
            &c,
            &format!("eve@example.com\n{forged}\r\x1b[2K"),
            "a wrong password",
            "/",
        )
        .await;
    assert_eq!(page.status, 401);
    let log = c.proc.log_text();
    assert!(
        !log.lines()
            .any(|l| l.to_lowercase().starts_with(&forged.to_lowercase())),
        "a forged line: {log}"
    );
    assert!(log.contains("eve@example.com\\n"), "escaped: {log}");
    assert!(!log.contains('\x1b'), "no terminal escapes: {log}");
}

/// Finding 10, chat: the access-request webhook escapes the requester's words for Slack.
#[tokio::test(flavor = "multi_thread")]
async fn access_request_text_cannot_ping_a_channel() {
    let (hook, seen, _task) = webhook().await;
    let echo = Echo::start().await;
    let top = format!("access_request_webhook = \"http://{hook}/slack\"");
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    let c = Castellan::start(setup).await;
    c.add_user("ivy@example.com", PASSWORD);
    let mut b = Browser::new();
    b.sign_in_local(&c, "ivy@example.com", PASSWORD, "/").await;
    let form = b
        .get(&c.console("/.castellan/request_access?app=demo&rd=%2F"))
        .await;
    let sent = b
        .request(
            "POST",
            &c.console("/.castellan/request_access"),
            &[],
            Some(&[
                ("csrf", &form.input("csrf").unwrap()),
                ("app", "demo"),
                ("rd", "/"),
                (
                    "reason",
                    "<!channel> open <https://evil.example|the board> & approve",
                ),
            ]),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let start = std::time::Instant::now();
    let text = loop {
        if let Some(m) = seen.lock().unwrap().first() {
            break m["text"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no webhook call");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        text.contains("&lt;!channel&gt; open &lt;https://evil.example|the board&gt; &amp; approve"),
        "{text}"
    );
    assert!(
        !text.contains("<!channel>") && !text.contains("<https://evil"),
        "{text}"
    );
}

/// Finding 10, domains: `domain:` matches the Workspace domain a provider asserts (`hd`), and the
/// email's domain only when it asserts none.
#[tokio::test(flavor = "multi_thread")]
async fn domain_members_follow_the_providers_hosted_domain() {
    let echo = Echo::start().await;
    let (port, own) = Castellan::reserve();
    let idp = Idp::start_with(
        &own,
        &[
            (
                "IDP_USERS",
                "alice@example.com:alice-password,bob@example.com:bob-password,carol@contractor.example:carol-password",
            ),
            (
                "IDP_HD",
                "alice@example.com=other.example;carol@contractor.example=example.com",
            ),
        ],
    )
    .await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "domain:example.com");
    const API: [(&str, &str); 1] = [("accept", "application/json")];
    let status = |email: &'static str, password: &'static str| {
        let c = &c;
        async move {
            let mut b = Browser::new();
            b.sign_in_oidc(&c.url("/"), email, password).await;
            b.request("GET", &c.url("/"), &API, None).await.status
        }
    };
    // carol's email is a contractor's, but her provider says her Workspace domain is example.com.
    assert_eq!(
        status("carol@contractor.example", "carol-password").await,
        200
    );
    // alice's email ends in example.com, but her provider says other.example.
    assert_eq!(status("alice@example.com", "alice-password").await, 403);
    // bob's provider asserts no domain: his email's counts.
    assert_eq!(status("bob@example.com", "bob-password").await, 200);
}

/// `castellan check` decides with the configuration's `admins`, as the server does.
#[tokio::test(flavor = "multi_thread")]
async fn check_agrees_with_the_server_about_config_admins() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.top = "admins = [\"root@example.com\"]";
    let c = Castellan::start(setup).await;
    let out = c.cli(&["check", "demo", "root@example.com", "--role", "roles/admin"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ALLOWED"));
}
