//! A real Streamlit app behind castellan, opened in headless Chromium: the app only renders if its
//! WebSocket passes through the proxy with the session checked and the identity attached.

use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn streamlit_renders_in_chromium_after_signing_in() {
    let venv = support_dir().join(".venv/bin/streamlit");
    require(&venv, "Streamlit (a Python virtual environment)");
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    require(
        &support_dir().join("node_modules/playwright-core"),
        "the npm package playwright-core",
    );

    let tmp = tempfile::tempdir().unwrap();
    let (port, origin) = Castellan::reserve();
    let st_port = free_port();
    let mut streamlit = Proc::spawn(
        "streamlit",
        Command::new(&venv)
            .arg("run")
            .arg(support_dir().join("streamlit_app.py"))
            .args(["--server.headless", "true", "--server.address", "127.0.0.1"])
            .args([
                "--server.port",
                &st_port.to_string(),
                "--browser.gatherUsageStats",
                "false",
            ])
            .env("HOME", tmp.path())
            .env("CASTELLAN_ORIGIN", &origin)
            .env("CASTELLAN_AUDIENCE", "castellan:demo"),
        tmp.path().join("streamlit.log"),
    );
    wait_for(
        &format!("http://127.0.0.1:{st_port}/_stcore/health"),
        "Streamlit",
        &mut streamlit,
    )
    .await;

    let idp = Idp::start(&origin, None).await;
    let mut setup = Setup::new(format!("127.0.0.1:{st_port}").parse().unwrap());
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:alice@example.com");

    // Without a session the WebSocket endpoint is closed to the world.
    let anon = reqwest::Client::new()
        .get(c.url("/_stcore/stream"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    let shot = tmp.path().join("streamlit.png");
    let v = run_browser_script(
        "streamlit.mjs",
        vec![
            c.url("/"),
            "alice@example.com".into(),
            "alice-password".into(),
            shot.display().to_string(),
        ],
    )
    .await;
    let sockets = v["websockets"].to_string();
    assert!(
        sockets.contains(&format!("ws://127.0.0.1:{port}/_stcore/stream")),
        "the WebSocket went through castellan: {sockets}"
    );
    if let Ok(dir) = std::env::var("CASTELLAN_TEST_ARTIFACTS") {
        let _ = std::fs::copy(&shot, std::path::Path::new(&dir).join("streamlit.png"));
    }

    // Revoking alice closes her live Streamlit WebSocket within a second.
    use std::io::BufRead;
    let mut held = Command::new("node")
        .arg(support_dir().join("streamlit.mjs"))
        .args([&c.url("/"), "alice@example.com", "alice-password"])
        .arg(tmp.path().join("held.png"))
        .arg("--hold")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(held.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let _kill = KillOnDrop(held);
    let wait = |want: &str, secs: u64| loop {
        match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
            Ok(l) if l == want => return,
            Ok(l) if l == "TIMEOUT" => panic!("the browser saw no close within 15 s"),
            Ok(_) => continue,
            Err(e) => panic!("no {want} from the browser: {e}"),
        }
    };
    wait("READY", 60);
    let out = c.cli(&["access", "remove", "demo", "user:alice@example.com"]);
    assert!(out.status.success());
    let t = std::time::Instant::now();
    wait("CLOSED", 15);
    let took = t.elapsed();
    eprintln!("revoking alice closed her Streamlit WebSocket after {took:?}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_sign_in_form_works_in_chromium() {
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    require(
        &support_dir().join("node_modules/playwright-core"),
        "the npm package playwright-core",
    );
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("erin@example.com", "a long enough password");
    c.grant("demo", "user:erin@example.com");
    let tmp = tempfile::tempdir().unwrap();
    let shot = tmp.path().join("sign-in.png");
    let v = run_browser_script(
        "sign-in.mjs",
        vec![
            c.url("/reports?page=2"),
            "erin@example.com".into(),
            "a long enough password".into(),
            shot.display().to_string(),
        ],
    )
    .await;
    assert_eq!(
        v["wrong"], "Wrong email or password.",
        "a real browser's form post passes the CSRF and Origin checks"
    );
    assert_eq!(
        v["url"],
        c.url("/reports?page=2"),
        "back where the person started"
    );
    assert!(
        v["text"].as_str().unwrap().contains("erin@example.com"),
        "the app saw the identity: {v}"
    );
    assert_eq!(
        v["signedOut"], "You are signed out",
        "the sign-out form works in a real browser: {v}"
    );
    assert!(
        v["after"].as_str().unwrap().contains("/.castellan/sign_in"),
        "signed out for real: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn require_passkey_takes_a_password_only_account_to_add_one_in_chromium() {
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    require(
        &support_dir().join("node_modules/playwright-core"),
        "the npm package playwright-core",
    );
    let echo = Echo::start().await;
    let extra = format!(
        "[[apps]]\nid = \"vault\"\nhost = \"127.0.0.1\"\npath_prefix = \"/vault\"\nupstream = \"http://{}\"\nrequire_passkey = true\n",
        echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.add_user("pat@example.com", "a long enough password");
    c.grant("vault", "user:pat@example.com");
    let app = c.url("/vault/");
    let v = run_browser_script(
        "step-up-passkey.mjs",
        vec![
            app.clone(),
            c.console.clone(),
            "pat@example.com".into(),
            "a long enough password".into(),
        ],
    )
    .await;
    let says = |key: &str, what: &str| {
        assert!(
            v[key].as_str().is_some_and(|t| t.contains(what)),
            "{key} should say {what:?}: {v}"
        )
    };
    says("notice", "vault needs a sign-in with a passkey");
    says("accountUrl", "need=passkey");
    says("accountNotice", "Add a passkey below");
    says("listed", "step-up laptop");
    assert_eq!(v["appUrl"], app, "the passkey opened the app: {v}");
    says("appText", "pat@example.com");
    says("refused", "vault needs a sign-in with your passkey");
    assert_eq!(v["againUrl"], app, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passkey_is_registered_then_signs_in_in_chromium() {
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    require(
        &support_dir().join("node_modules/playwright-core"),
        "the npm package playwright-core",
    );
    let echo = Echo::start().await;
    // WebAuthn needs a domain as the relying party id (not an IP address): castellan's own
    // pages are on `localhost`, the app on 127.0.0.1.
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("pat@example.com", "a long enough password");
    c.grant("demo", "user:pat@example.com");
    let app = c.url("/reports");
    let v = run_browser_script(
        "passkey.mjs",
        vec![
            app.clone(),
            c.console.clone(),
            "pat@example.com".into(),
            "a long enough password".into(),
        ],
    )
    .await;
    assert!(
        v["listed"].as_str().unwrap().contains("test laptop"),
        "the account page lists the new passkey: {v}"
    );
    assert_eq!(
        v["credentials"], 1,
        "one credential on the authenticator: {v}"
    );
    assert!(
        v["signCount"].as_u64().unwrap() >= 1,
        "the authenticator signed (its counter moved): {v}"
    );
    assert_eq!(v["url"], app, "the passkey signed in and went back: {v}");
    assert!(
        v["text"].as_str().unwrap().contains("pat@example.com"),
        "the app saw the identity: {v}"
    );
    assert!(
        v["confirmedWithPasskey"]
            .as_str()
            .unwrap()
            .contains("Confirmed: you can change how you sign in"),
        "a passkey is a fresh proof too: {v}"
    );
    assert!(
        v["removedError"]
            .as_str()
            .unwrap()
            .contains("does not know this passkey"),
        "a removed passkey signs nobody in: {v}"
    );
    assert!(
        v["after"].as_str().unwrap().contains("/.castellan/sign_in"),
        "still on the sign-in page: {v}"
    );
}
