//! Configuration reload: a changed file takes effect without dropping a request or an open
//! WebSocket; an invalid file is refused with its problems logged, and nothing changes.

use std::time::{Duration, Instant};

use crate::support::*;

const API: [(&str, &str); 1] = [("accept", "application/json")];

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_applies_under_load_and_an_invalid_one_changes_nothing() {
    let echo = Echo::start().await;
    let mut c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("ada@example.com", "a long enough password");
    c.grant("demo", "user:ada@example.com");
    let mut ada = Browser::new();
    let cookie = ada
        .sign_in_local_via(&c.origin, "ada@example.com", "a long enough password")
        .await;
    let mut ws = upgrade(&c, &cookie).await;
    // Before: /reports/ belongs to the demo app, which Ada may open.
    assert_eq!(
        ada.request("GET", &c.url("/reports/q"), &API, None)
            .await
            .status,
        200
    );

    // A steady, bounded load while the file changes.
    let url = c.url("/load");
    let jar = cookie.clone();
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut failed = Vec::new();
        for i in 0..600 {
            match client
                .get(&url)
                .header("cookie", &jar)
                .header("accept", "application/json")
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => failed.push(format!("request {i}: {}", r.status())),
                Err(e) => failed.push(format!("request {i}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        failed
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One keep-alive connection, opened before the reload and used after it: its requests follow
    // the configuration too (each connection keeps the state its last request had).
    let mut kept = KeptAlive::open(c.port).await;
    assert_eq!(kept.get("/reports/q", &cookie).await, 200);
    let original = std::fs::read_to_string(&c.config_path).unwrap();
    let with_reports = format!(
        "{original}\n[[apps]]\nid = \"reports\"\nhost = \"127.0.0.1\"\nupstream = \"http://{}\"\npath_prefix = \"/reports\"\n",
        echo.addr
    );
    std::fs::write(&c.config_path, &with_reports).unwrap();
    // After: /reports/ is its own app, which Ada has no access to.
    let t = Instant::now();
    loop {
        if ada
            .request("GET", &c.url("/reports/q"), &API, None)
            .await
            .status
            == 403
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new app never appeared:\n{}",
            c.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the changed file applied after {:?}", t.elapsed());
    assert_eq!(
        kept.get("/reports/q", &cookie).await,
        403,
        "a connection opened before the reload still served the old configuration"
    );

    // An invalid file is refused: the log names the problem, and the running configuration stays.
    std::fs::write(
        &c.config_path,
        format!("session_lifetime = \"forever\"\n{with_reports}"),
    )
    .unwrap();
    let t = Instant::now();
    while !c.proc.log_text().contains("configuration reload refused") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no refusal logged:\n{}",
            c.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.proc.log_text();
    assert!(
        log.contains("session_lifetime") && log.contains("forever"),
        "{log}"
    );
    assert_eq!(
        ada.request("GET", &c.url("/reports/q"), &API, None)
            .await
            .status,
        403
    );
    assert_eq!(
        ada.request("GET", &c.url("/"), &API, None).await.status,
        200
    );

    // SIGHUP re-reads it too (still invalid: still refused, still serving).
    let refusals = log.matches("configuration reload refused").count();
    let pid = c.proc.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    while c
        .proc
        .log_text()
        .matches("configuration reload refused")
        .count()
        == refusals
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload:\n{}",
            c.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.proc.child.try_wait().unwrap().is_none(),
        "castellan exited on SIGHUP"
    );

    let failed = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} requests failed during reloads: {failed:?}",
        failed.len()
    );
    // The WebSocket opened before any reload still works.
    tokio::io::AsyncWriteExt::write_all(&mut ws, b"pong")
        .await
        .unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read_exact(&mut ws, &mut back),
    )
    .await
    .expect("the WebSocket answers")
    .unwrap();
    assert_eq!(&back, b"pong");
}

/// A step-up added to an app by a reload applies to what is already open: a WebSocket riding a
/// password sign-in closes, and the same cookie is then asked to step up.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_up_added_by_a_reload_closes_open_websockets_that_lack_it() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("ada@example.com", "a long enough password");
    c.grant("demo", "user:ada@example.com");
    let mut ada = Browser::new();
    let cookie = ada
        .sign_in_local_via(&c.origin, "ada@example.com", "a long enough password")
        .await;
    let mut ws = upgrade(&c, &cookie).await;
    let original = std::fs::read_to_string(&c.config_path).unwrap();
    let demo = "id = \"demo\"\n";
    assert!(original.contains(demo));
    std::fs::write(
        &c.config_path,
        original.replace(demo, &format!("{demo}require_passkey = true\n")),
    )
    .unwrap();
    let took = closed_within(&mut ws, Duration::from_secs(10)).await;
    eprintln!("the WebSocket closed {took:?} after the change");
    let r = ada.request("GET", &c.url("/"), &API, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["requirement"], "passkey");
}

/// One HTTP/1.1 connection to castellan, kept open across requests.
struct KeptAlive {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    host: String,
}

impl KeptAlive {
    async fn open(port: u16) -> KeptAlive {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        KeptAlive {
            send,
            host: format!("127.0.0.1:{port}"),
        }
    }

    /// The status of a GET on this connection (the body read to its end).
    async fn get(&mut self, path: &str, cookie: &str) -> u16 {
        use http_body_util::BodyExt;
        let req = http::Request::get(path)
            .header("host", &self.host)
            .header("cookie", cookie)
            .header("accept", "application/json")
            .body(http_body_util::Empty::new())
            .unwrap();
        self.send
            .ready()
            .await
            .expect("the connection is still open");
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
}
