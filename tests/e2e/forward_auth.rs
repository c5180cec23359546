//! Forward-auth behind real ingresses: Debian's nginx (`auth_request`) and Caddy (`forward_auth`),
//! each running the configuration file the docs give (deploy/forward-auth/), sign-in included.

use std::process::Command;

use crate::support::*;

fn config(file: &str, listen: u16, castellan: u16, app: std::net::SocketAddr) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/forward-auth")
            .join(file),
    )
    .unwrap()
    .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"))
    .replace("127.0.0.1:8080", &format!("127.0.0.1:{castellan}"))
    .replace("127.0.0.1:8501", &app.to_string())
}

async fn castellan_behind(ingress_port: u16, echo: &Echo) -> Castellan {
    let (port, _) = Castellan::reserve();
    let top = format!(
        "public_url = \"http://127.0.0.1:{ingress_port}\"\ntrusted_proxies = [\"127.0.0.1\"]"
    );
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    let c = Castellan::start_on_with_public_url(port, setup).await;
    c.add_user("uma@example.com", "a long enough password");
    c.add_user("vic@example.com", "a long enough password");
    c.grant("demo", "user:uma@example.com");
    c
}

/// Signs in through the ingress (the redirect, castellan's form, the way back) and checks what
/// the app behind the ingress sees.
async fn exercise(front: &str, c: &Castellan) {
    let mut b = Browser::new();
    let first = b.get(&format!("{front}/report?q=1")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let form = b.follow(&format!("{front}/report?q=1")).await;
    assert!(
        form.url.starts_with(&format!("{front}/.castellan/sign_in")),
        "{}",
        form.url
    );
    let csrf = form.input("csrf").unwrap();
    let rd = form.input("rd").unwrap();
    assert_eq!(rd, "/report?q=1");
    let signed = b
        .request(
            "POST",
            &format!("{front}/.castellan/sign_in"),
            &[],
            Some(&[
                ("csrf", &csrf),
                ("rd", &rd),
                ("email", "uma@example.com"),
                ("password", "a long enough password"),
            ]),
        )
        .await;
    assert_eq!(signed.status, 302, "{}", signed.body);
    let app = b
        .request(
            "GET",
            &format!("{front}/report?q=1"),
            &[
                ("accept", "application/json"),
                ("x-castellan-email", "mallory@evil.com"),
                ("x-castellan-user", "forged"),
            ],
            None,
        )
        .await;
    assert_eq!(app.status, 200, "{}", app.body);
    let h = &app.json()["headers"];
    assert_eq!(
        h["x-castellan-email"],
        serde_json::json!(["uma@example.com"]),
        "{h}"
    );
    assert_eq!(
        h["x-castellan-user"],
        serde_json::json!(["local:uma@example.com"])
    );
    assert!(
        h["x-castellan-jwt-assertion"][0]
            .as_str()
            .unwrap()
            .split('.')
            .count()
            == 3
    );

    // Someone signed in without access is refused by the ingress.
    let mut v = Browser::new();
    v.sign_in_local(c, "vic@example.com", "a long enough password", "/")
        .await;
    let cookie = v.cookie(&c.origin, "castellan_session").unwrap().clone();
    let denied = reqwest::Client::new()
        .get(format!("{front}/report"))
        .header("cookie", format!("castellan_session={cookie}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_protects_an_app() {
    require(std::path::Path::new("/usr/sbin/nginx"), "Debian's nginx");
    let echo = Echo::start().await;
    let listen = free_port();
    let c = castellan_behind(listen, &echo).await;
    let dir = tempfile::tempdir().unwrap();
    let mut conf = config("nginx.conf", listen, c.port, echo.addr);
    // Run unprivileged bits inside the temporary folder.
    let d = dir.path().display();
    conf = conf.replacen(
        "events {}",
        &format!("user root;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}"),
        1,
    );
    conf = conf.replacen(
        "http {",
        &format!(
            "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
        ),
        1,
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let check = Command::new("/usr/sbin/nginx")
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]),
        dir.path().join("nginx.log"),
    );
    wait_for(
        &format!("http://127.0.0.1:{listen}/.castellan/healthz"),
        "nginx",
        &mut nginx,
    )
    .await;
    exercise(&format!("http://127.0.0.1:{listen}"), &c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_protects_an_app() {
    require(std::path::Path::new("/usr/bin/caddy"), "Debian's caddy");
    let echo = Echo::start().await;
    let listen = free_port();
    let c = castellan_behind(listen, &echo).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, config("Caddyfile", listen, c.port, echo.addr)).unwrap();
    let mut caddy = Proc::spawn(
        "caddy",
        Command::new("/usr/bin/caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path()),
        dir.path().join("caddy.log"),
    );
    wait_for(
        &format!("http://127.0.0.1:{listen}/.castellan/healthz"),
        "caddy",
        &mut caddy,
    )
    .await;
    exercise(&format!("http://127.0.0.1:{listen}"), &c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_answers_only_trusted_ingresses() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let r = reqwest::Client::new()
        .get(c.url("/.castellan/auth"))
        .header("x-original-uri", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("is not in trusted_proxies")
    );
}
