//! Forward-auth behind real ingresses: Debian's nginx (`auth_request`) and Caddy (`forward_auth`),
//! each running the configuration file the docs give (deploy/forward-auth/), sign-in included,
//! and each probed as an attacker would: the original request's method and URI come from the
//! headers the ingress sets, never from ones the client sent.

use std::process::Command;

use crate::support::*;

const PW: &str = "a long enough password";

/// The shipped file with its addresses and names pointed at this test's processes: castellan's own
/// pages at `localhost`, the app at `127.0.0.1`, both on the ingress's port.
fn config(file: &str, listen: u16, castellan: u16, app: std::net::SocketAddr) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/forward-auth")
            .join(file),
    )
    .unwrap()
    .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"))
    .replace("auth.example.com:8000", &format!("localhost:{listen}"))
    .replace("dashboard.example.com:8000", &format!("127.0.0.1:{listen}"))
    .replace("auth.example.com", "localhost")
    .replace("dashboard.example.com", "127.0.0.1")
    .replace("127.0.0.1:8080", &format!("127.0.0.1:{castellan}"))
    .replace("127.0.0.1:8501", &app.to_string())
}

/// castellan behind an ingress on `ingress_port`: uma may GET and HEAD the app, vic has no
/// access, and everyone may read `/public/…`.
async fn castellan_behind(ingress_port: u16, kind: &str, echo: &Echo) -> Castellan {
    let (port, _) = Castellan::reserve();
    let top = format!(
        "public_url = \"http://localhost:{ingress_port}\"\ntrusted_proxies = [\"127.0.0.1\"]\nforward_auth = \"{kind}\""
    );
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    let c = Castellan::start_on_with_public_url(port, setup).await;
    c.add_user("uma@example.com", PW);
    c.add_user("vic@example.com", PW);
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "user:uma@example.com",
        "--condition",
        "request.method in [\"GET\", \"HEAD\"]",
    ]));
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "allUsers",
        "--yes",
        "--condition",
        "request.path.startsWith(\"/public/\")",
    ]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    c
}

/// Signs in through the ingress (the redirect, castellan's form on its own host, the hand-off
/// back), checks what the app behind the ingress sees, then tries what an attacker would.
async fn exercise(front: &str, own: &str) {
    let mut b = Browser::new();
    let first = b.get(&format!("{front}/report?q=1")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let form = b.follow(&format!("{front}/report?q=1")).await;
    assert!(
        form.url.starts_with(&format!("{own}/.castellan/sign_in")),
        "the sign-in form is on castellan's own host: {}",
        form.url
    );
    let csrf = form.input("csrf").unwrap();
    let rd = form.input("rd").unwrap();
    assert!(
        rd.starts_with(&format!("{front}/.castellan/handoff?hb=")),
        "{rd}"
    );
    let signed = b
        .request(
            "POST",
            &format!("{own}/.castellan/sign_in"),
            &[],
            Some(&[
                ("csrf", &csrf),
                ("rd", &rd),
                ("email", "uma@example.com"),
                ("password", PW),
            ]),
        )
        .await;
    assert_eq!(signed.status, 302, "{}", signed.body);
    let back = b.finish_handoff(signed).await;
    assert_eq!(back.location(), Some("/report?q=1"), "{}", back.body);
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
    let uma = format!(
        "castellan_session={}",
        b.cookie(front, "castellan_session").unwrap()
    );

    // Someone signed in without access is refused by the ingress.
    let mut v = Browser::new();
    let vic = v.sign_in_local_via(front, "vic@example.com", PW).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let denied = http
        .get(format!("{front}/report"))
        .header("cookie", &vic)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    // The attack of the review: an anonymous client names a public path in a header the ingress
    // does not set, hoping castellan decides on it instead of on the real one.
    let public = http
        .get(format!("{front}/public/x"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200, "the public path is open to all");
    for header in ["x-original-uri", "x-forwarded-uri"] {
        let r = http
            .get(format!("{front}/admin"))
            .header("accept", "application/json")
            .header(header, "/public/x")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(
            matches!(status, 401 | 302) && !body.contains("\"uri\""),
            "{header}: /public/x carried an anonymous GET /admin to the app: {status} {body}"
        );
    }
    // And a POST dressed as a GET gets past a binding that allows only GET and HEAD.
    let get = http
        .get(format!("{front}/report"))
        .header("cookie", &uma)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200, "uma may GET");
    for header in ["x-original-method", "x-forwarded-method"] {
        let r = http
            .post(format!("{front}/report"))
            .header("cookie", &uma)
            .header("accept", "application/json")
            .header(header, "GET")
            .body("delete everything")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(
            status, 403,
            "{header}: GET carried a POST past a GET-only binding: {body}"
        );
    }
}

fn nginx_config(
    dir: &std::path::Path,
    listen: u16,
    c: &Castellan,
    echo: &Echo,
) -> std::path::PathBuf {
    let mut conf = config("nginx.conf", listen, c.port, echo.addr);
    // Run unprivileged bits inside the temporary folder.
    let d = dir.display();
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
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_protects_an_app() {
    require(std::path::Path::new("/usr/sbin/nginx"), "Debian's nginx");
    let echo = Echo::start().await;
    let listen = free_port();
    let c = castellan_behind(listen, "nginx", &echo).await;
    let dir = tempfile::tempdir().unwrap();
    let path = nginx_config(dir.path(), listen, &c, &echo);
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
    exercise(
        &format!("http://127.0.0.1:{listen}"),
        &format!("http://localhost:{listen}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_protects_an_app() {
    require(std::path::Path::new("/usr/bin/caddy"), "Debian's caddy");
    let echo = Echo::start().await;
    let listen = free_port();
    let c = castellan_behind(listen, "caddy", &echo).await;
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
    exercise(
        &format!("http://127.0.0.1:{listen}"),
        &format!("http://localhost:{listen}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_answers_only_trusted_ingresses_and_only_their_headers() {
    let echo = Echo::start().await;
    // Off unless an ingress kind is configured.
    let off = Castellan::start(Setup::new(echo.addr)).await;
    let r = reqwest::get(off.url("/.castellan/auth")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("forward_auth = \\\"nginx\\\"")
    );

    let mut setup = Setup::new(echo.addr);
    setup.top = "forward_auth = \"caddy\"";
    let c = Castellan::start(setup).await;
    let r = reqwest::Client::new()
        .get(c.url("/.castellan/auth"))
        .header("x-forwarded-uri", "/")
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

    // From a trusted ingress, every header of its set must be there: no default stands in for
    // a missing one, and the other ingresses' headers count for nothing.
    let mut setup = Setup::new(echo.addr);
    setup.top = "forward_auth = \"caddy\"\ntrusted_proxies = [\"127.0.0.1\"]";
    let c = Castellan::start(setup).await;
    let ask = |pairs: &[(&str, &str)]| {
        let mut r = reqwest::Client::new()
            .get(c.url("/.castellan/auth"))
            .header("accept", "application/json");
        for (k, v) in pairs {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let r = ask(&[
        ("x-original-uri", "/"),
        ("x-original-method", "GET"),
        ("x-forwarded-host", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("x-forwarded-method"));
    let r = ask(&[
        ("x-forwarded-uri", "/"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
    ])
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a complete set is decided (nobody signed in)"
    );
}
