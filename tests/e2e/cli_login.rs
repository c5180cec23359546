//! People on the command line: `castellan login` (browser approval returned to a loopback port),
//! `castellan token print`, and `castellan proxy` (HTTP and WebSockets), against a real castellan.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns the CLI with its own config home; returns the child and a channel of its stdout lines.
fn spawn(args: &[&str], home: &std::path::Path) -> (Kill, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(castellan_bin())
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (Kill(child), rx)
}

fn line_with(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no line with {needle:?}"));
        if l.contains(needle) {
            return l;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_token_print_and_proxy_act_as_the_signed_in_person() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    c.add_user("zoe@example.com", "a long enough password");
    c.grant("demo", "user:zoe@example.com");
    let home = tempfile::tempdir().unwrap();

    // castellan login: the browser (already signed in) approves; the CLI's loopback port gets the code.
    let (mut login, lines) = spawn(&["login", &c.origin, "--no-browser"], home.path());
    let link = line_with(&lines, "/.castellan/cli/authorize")
        .trim()
        .to_string();
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "zoe@example.com", "a long enough password", "/")
            .await
            .status,
        302
    );
    // The link names the app's host; the approval page is on castellan's own.
    let page = b.follow(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.url
            .starts_with(&c.console("/.castellan/cli/authorize")),
        "{}",
        page.url
    );
    assert!(page.body.contains("zoe@example.com") && page.body.contains("Approve"));
    let approve = b
        .request(
            "POST",
            &c.console("/.castellan/cli/authorize"),
            &[],
            Some(&[
                ("csrf", &page.input("csrf").unwrap()),
                ("port", &page.input("port").unwrap()),
                ("state", &page.input("state").unwrap()),
                ("code_challenge", &page.input("code_challenge").unwrap()),
            ]),
        )
        .await;
    assert_eq!(approve.status, 302);
    let callback = approve.location().unwrap().to_string();
    assert!(
        callback.starts_with("http://127.0.0.1:"),
        "only to loopback: {callback}"
    );
    let landed = b.get(&callback).await;
    assert!(landed.body.contains("signed in"), "{}", landed.body);
    line_with(
        &lines,
        &format!("Signed in to {} as zoe@example.com", c.origin),
    );
    assert!(login.0.wait().unwrap().success());
    let creds = home.path().join("castellan/credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The code was single use.
    let code = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let replay = reqwest::Client::new()
        .post(c.url("/.castellan/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", "x".repeat(64).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(
        replay.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    // castellan token print: an access token the app accepts, as zoe.
    let out = Command::new(castellan_bin())
        .args(["token", "print", &c.url("/")])
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let seen: serde_json::Value = reqwest::Client::new()
        .get(c.url("/via-token"))
        .header("proxy-authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["headers"]["x-castellan-email"][0], "zoe@example.com",
        "{seen}"
    );

    // castellan proxy: a plain client on localhost reaches the app as zoe; WebSockets work too.
    let port = free_port();
    let (_proxy, plines) = spawn(
        &["proxy", &c.origin, "--port", &port.to_string()],
        home.path(),
    );
    line_with(&plines, "Forwarding http://127.0.0.1:");
    let seen: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/through-proxy?x=1"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        seen["headers"]["x-castellan-email"][0], "zoe@example.com",
        "{seen}"
    );
    assert_eq!(seen["uri"], "/through-proxy?x=1");
    assert_eq!(
        seen["headers"]["host"][0],
        format!("127.0.0.1:{}", c.port),
        "the app sees castellan's host"
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(
        head.starts_with("HTTP/1.1 101") && head.contains("zoe@example.com"),
        "{head}"
    );
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");

    // The CLI's sign-in is a session: revoking it closes the WebSocket open through `castellan
    // proxy` within a second, and ends token printing, with the fix in the message.
    let revoked = c.cli(&["sessions", "revoke", "--user", "zoe@example.com"]);
    assert!(revoked.status.success());
    let took = closed_within(&mut s, Duration::from_millis(1500)).await;
    eprintln!("the revoke closed the WebSocket through castellan proxy after {took:?}");
    let out = Command::new(castellan_bin())
        .args(["token", "print", &c.url("/")])
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run `castellan login` again"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
