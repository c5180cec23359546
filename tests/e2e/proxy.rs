//! The proxy path: routing, upstream failures, streaming, WebSocket upgrades, HTTP/2, hop-by-hop
//! headers, reserved paths, metrics and a draining shutdown.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const PASSWORD: &str = "a long enough password";

async fn signed_in(c: &Castellan) -> (Browser, String) {
    c.add_user("dave@example.com", PASSWORD);
    c.grant("demo", "user:dave@example.com");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(c, "dave@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );
    (b, cookie)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_answer_502_and_504_with_a_reference() {
    let echo = Echo::start().await;
    let dead = free_port();
    let extra = format!(
        "[[apps]]\nid = \"dead\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:{dead}\"\npath_prefix = \"/dead\"\n"
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    setup.top = "upstream_timeout = \"1s\"";
    let c = Castellan::start(setup).await;
    let (mut b, _) = signed_in(&c).await;
    c.grant("dead", "user:dave@example.com");

    let t = Instant::now();
    let down = b.get(&c.url("/dead/x")).await;
    assert_eq!(down.status, 502, "{}", down.body);
    assert!(down.body.contains("The app is not reachable") && down.body.contains("Reference"));
    let slow = b.get(&c.url("/slow")).await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no hang: {:?}",
        t.elapsed()
    );
    let reference = slow
        .body
        .split("Reference: <code>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    assert!(
        c.proc.log_text().contains(reference),
        "the page's reference is in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_stream_without_buffering() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let (_, cookie) = signed_in(&c).await;
    let mut resp = reqwest::Client::new()
        .get(c.url("/stream"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t = Instant::now();
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"chunk-1\n");
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "the first chunk arrived before the upstream finished"
    );
    let second = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"chunk-2\n");

    // A large upload streams through too, and arrives whole.
    let big = vec![b'x'; 8 * 1024 * 1024];
    let up = reqwest::Client::new()
        .post(c.url("/upload"))
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    let v: serde_json::Value = up.json().await.unwrap();
    assert_eq!(v["body_len"], 8 * 1024 * 1024);
}

async fn raw_upgrade(
    c: &Castellan,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> (String, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        c.port
    );
    if let Some(ck) = cookie {
        req.push_str(&format!("Cookie: {ck}\r\n"));
    }
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed in the response head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), s)
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_need_a_session_and_are_spliced_both_ways() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let (_, cookie) = signed_in(&c).await;

    let (head, _) = raw_upgrade(&c, None, None).await;
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "anonymous upgrade: {head}"
    );
    let (head, _) = raw_upgrade(
        &c,
        Some("castellan_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        None,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "unknown session: {head}");

    let (head, mut s) = raw_upgrade(&c, Some(&cookie), Some(&c.origin)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"));
    assert!(
        head.contains("dave@example.com"),
        "the upstream saw the identity on the upgrade request: {head}"
    );
    // A page on another site cannot open the app's WebSocket with the person's cookie.
    let (head, _) = raw_upgrade(&c, Some(&cookie), Some("https://evil.example")).await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "cross-site WebSocket: {head}"
    );
    let (head, _) = raw_upgrade(
        &c,
        Some(&cookie),
        Some(&format!("http://localhost:{}", c.port)),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "another origin on the same machine: {head}"
    );

    s.write_all(b"hello through castellan").await.unwrap();
    let mut buf = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello through castellan");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_served() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let (_, cookie) = signed_in(&c).await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(c.url("/h2?x=1"))
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["uri"], "/h2?x=1");
    assert_eq!(
        v["headers"]["host"][0],
        format!("127.0.0.1:{}", c.port),
        ":authority becomes Host"
    );
    assert_eq!(v["headers"]["x-castellan-email"][0], "dave@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_hop_by_hop_and_reserved_paths() {
    let echo = Echo::start().await;
    let echo2 = Echo::start().await;
    let extra = format!(
        "[[apps]]\nid = \"reports\"\nhost = \"127.0.0.1\"\nupstream = \"http://{}\"\npath_prefix = \"/reports\"\n",
        echo2.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    let (mut b, cookie) = signed_in(&c).await;

    // /reports belongs to another app that dave has no access to; /reportsx does not.
    assert_eq!(b.get(&c.url("/reports/q")).await.status, 403);
    assert_eq!(b.get(&c.url("/reportsx")).await.status, 200);
    c.grant("reports", "user:dave@example.com");
    let r = b
        .request(
            "GET",
            &c.url("/reports/q"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let jwt = r.json()["headers"]["x-castellan-jwt-assertion"][0]
        .as_str()
        .unwrap()
        .to_string();
    let claims = castellan_claims(&jwt);
    assert_eq!(
        claims["aud"], "castellan:reports",
        "each app gets its own audience"
    );

    let resp = reqwest::Client::new()
        .get(c.url("/x"))
        .header("cookie", &cookie)
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-kept", "1")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    let h = &v["headers"];
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} must not be forwarded: {h}");
    }
    assert_eq!(h["x-kept"][0], "1");

    // Routing and decisions use the normalised path, which is also what the upstream receives:
    // encodings and dot segments cannot slip a request past the /reports app's access list.
    c.cli(&["access", "remove", "reports", "user:dave@example.com"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for sneaky in [
        "/%72eports/q",
        "/x/../reports/q",
        "//reports/q",
        "/x/%2e%2e/reports/q",
        "/reports;x=1/q",
    ] {
        let r = b
            .request(
                "GET",
                &c.url(sneaky),
                &[("accept", "application/json")],
                None,
            )
            .await;
        assert_eq!(
            r.status, 403,
            "{sneaky} must be decided as /reports: {}",
            r.body
        );
    }
    let r = b
        .request(
            "GET",
            &c.url("/a/./b/../c?q=%2e"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(
        r.json()["uri"],
        "/a/c?q=%2e",
        "the upstream sees the path castellan decided on"
    );
    assert_eq!(b.get(&c.url("/%zz")).await.status, 400);

    // Nothing under /.castellan/ is proxied, on any method or spelling.
    let r = b
        .request(
            "GET",
            &c.url("/%2ecastellan/whoami"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["email"],
        "dave@example.com",
        "answered by castellan, not the app"
    );
    let r = reqwest::Client::new()
        .post(c.url("/.castellan/anything"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        !r.text().await.unwrap().contains("\"method\""),
        "the upstream never saw it"
    );
    assert_eq!(
        reqwest::get(c.url("/.castellan/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok\n"
    );
    let who = reqwest::get(c.url("/.castellan/whoami")).await.unwrap();
    assert_eq!(who.status(), 401);
}

fn castellan_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_app_and_decision() {
    let echo = Echo::start().await;
    let metrics_port = free_port();
    let top = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    let c = Castellan::start(setup).await;
    let (mut b, _) = signed_in(&c).await;
    b.get(&c.url("/a")).await;
    Browser::new()
        .request("GET", &c.url("/a"), &[("accept", "application/json")], None)
        .await;
    let text = scrape(metrics_port).await;
    assert!(
        text.contains("castellan_requests_total{app=\"demo\",decision=\"allow\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "castellan_requests_total{app=\"demo\",decision=\"sign-in\",status=\"401\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("castellan_sign_ins_total{provider=\"local\",result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("castellan_request_duration_seconds_bucket"),
        "{text}"
    );
    // Nothing refused, nothing set aside: the gauge an operator alerts on is there, at 0.
    assert!(text.contains("castellan_audit_set_aside_files 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    let echo = Echo::start().await;
    let mut c = Castellan::start(Setup::new(echo.addr)).await;
    let (_, cookie) = signed_in(&c).await;
    let url = c.url("/slow");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .header("cookie", cookie)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.proc.terminate();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the slow request completed during the drain"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = c.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "castellan did not exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status}");
    let log = c.proc.log_text();
    assert!(log.contains("shutting down"));
    // Every connection ended by itself: the drain did not run out its time.
    assert!(log.contains("all connections closed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_trusted_only_from_trusted_proxies() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.top = "trusted_proxies = [\"127.0.0.1\"]";
    let c = Castellan::start(setup).await;
    let (_, cookie) = signed_in(&c).await;
    let v: serde_json::Value = reqwest::Client::new()
        .get(c.url("/"))
        .header("cookie", &cookie)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["headers"]["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1",
        "the chain is extended"
    );
    assert_eq!(
        v["headers"]["x-forwarded-proto"][0], "https",
        "a trusted proxy's scheme is kept"
    );

    // Without trusted proxies (the default) the client's claims are replaced.
    let c2 = Castellan::start(Setup::new(echo.addr)).await;
    let (_, cookie) = signed_in(&c2).await;
    let v: serde_json::Value = reqwest::Client::new()
        .get(c2.url("/"))
        .header("cookie", &cookie)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-proto"],
        serde_json::json!(["http"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        serde_json::json!([format!("127.0.0.1:{}", c2.port)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_store_fails_closed_with_a_reference() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let (mut b, _) = signed_in(&c).await;
    assert_eq!(b.get(&c.url("/")).await.status, 200);
    // Break the store under the running server (another process drops the sessions table).
    let db = c.config_path.parent().unwrap().join("castellan.db");
    let out = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('drop table sessions'); c.commit()"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Sessions read in the last SESSION_CACHE_TTL are trusted without the store; after that, no.
    tokio::time::sleep(castellan::runtime::SESSION_CACHE_TTL + Duration::from_millis(300)).await;
    let page = b.get(&c.url("/")).await;
    assert_eq!(page.status, 500, "{}", page.body);
    assert!(page.body.contains("did not let the request through"));
    assert!(!page.body.contains("\"method\""), "nothing was proxied");
    let reference = page
        .body
        .split("Reference: <code>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    assert!(c.proc.log_text().contains(reference));
    assert_eq!(
        reqwest::get(c.url("/.castellan/healthz"))
            .await
            .unwrap()
            .status(),
        200,
        "healthz checks reachability only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_absolute_session_limits_end_sessions() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.top = "session_lifetime = \"3s\"";
    let c = Castellan::start(setup).await;
    let (mut b, _) = signed_in(&c).await;
    let api = [("accept", "application/json")];
    assert_eq!(b.request("GET", &c.url("/"), &api, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        b.request("GET", &c.url("/"), &api, None).await.status,
        401,
        "past session_lifetime"
    );

    let mut setup = Setup::new(echo.addr);
    setup.top = "session_idle_timeout = \"2s\"";
    let c = Castellan::start(setup).await;
    let (mut b, _) = signed_in(&c).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        b.request("GET", &c.url("/"), &api, None).await.status,
        401,
        "idle past session_idle_timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_no_app_is_on_sends_browsers_to_castellans_own_pages() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The listen address opened by another name than public_url's or an app's.
    let url = format!("http://127.0.0.1:{}/dashboard", c.port);
    let r = client
        .get(&url)
        .header("host", format!("elsewhere.test:{}", c.port))
        .header("accept", "text/html")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        c.console("/"),
        "to castellan's own pages"
    );
    let r = client
        .get(&url)
        .header("host", format!("elsewhere.test:{}", c.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains(&c.console("/")),
        "{body}"
    );
}

/// An app's header rules: what the client sends under a set name is replaced, removed names never
/// reach the app, and the app's answer gets the response rules (a framing ban, a header the app
/// leaks removed), while castellan's identity headers stay castellan's.
#[tokio::test(flavor = "multi_thread")]
async fn header_rules_shape_what_the_app_sees_and_answers() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.extra = "set_request_headers = { \"X-Team\" = \"data\" }\n\
                   remove_request_headers = [\"X-Debug\"]\n\
                   set_response_headers = { \"X-Frame-Options\" = \"DENY\", \"Content-Security-Policy\" = \"frame-ancestors 'none'\" }\n\
                   remove_response_headers = [\"Clear-Site-Data\"]\n";
    let c = Castellan::start(setup).await;
    let (_, cookie) = signed_in(&c).await;
    let client = reqwest::Client::new();
    let r = client
        .get(c.url("/"))
        .header("cookie", &cookie)
        .header("x-team", "forged-by-the-client")
        .header("x-debug", "1")
        .header("x-keep", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(
        r.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-team"], serde_json::json!(["data"]));
    assert!(v["headers"].get("x-debug").is_none(), "{v}");
    assert_eq!(v["headers"]["x-keep"], serde_json::json!(["kept"]));
    assert_eq!(v["headers"]["x-castellan-email"][0], "dave@example.com");
    // The hostile page answers with Clear-Site-Data (and tries castellan's cookies): removed.
    let r = client
        .get(c.url("/hostile"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("clear-site-data").is_none());
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    // castellan's own pages are not the app's: its rules do not apply there.
    let own = client
        .get(c.console("/.castellan/sign_in"))
        .send()
        .await
        .unwrap();
    assert!(
        own.headers()
            .get("content-security-policy")
            .is_none_or(|v| v != "frame-ancestors 'none'")
    );
}
