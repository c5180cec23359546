//! Bad days: the identity provider goes away, the disk under SQLite fills up, a policy write is
//! killed with SIGKILL. Each test checks the documented behaviour (docs/security.md, "Failure
//! behaviour"): nothing opens, nothing is lost or half-written, and recovery needs no operator.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn idp_down_keeps_sessions_explains_sign_in_and_recovers_by_itself() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp_port = free_port();
    let idp = Idp::start_on(idp_port, &origin, None).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:alice@example.com");
    let mut alice = Browser::new();
    let page = alice
        .sign_in_oidc(&c.url("/before"), "alice@example.com", "alice-password")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);

    drop(idp);
    // Discovery results are reused for 5 s; after that castellan asks the provider again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        alice.get(&c.url("/during")).await.status,
        200,
        "a signed-in person keeps working while the provider is down"
    );
    let mut bob = Browser::new();
    let down = bob.follow(&c.url("/during")).await;
    assert_eq!(down.status, 502, "{}", down.body);
    assert!(
        down.body.contains("castellan could not reach Corp SSO") && down.body.contains("Reference"),
        "a clear page, not a browser error: {}",
        down.body
    );
    assert!(!down.body.contains("\"path\""), "nothing was proxied");

    // The provider comes back (same issuer, new signing keys): sign-in works with no restart.
    let _idp = Idp::start_on(idp_port, &origin, None).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut carol = Browser::new();
    c.grant("demo", "user:bob@example.com");
    let back = carol
        .sign_in_oidc(&c.url("/after"), "bob@example.com", "bob-password")
        .await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert!(back.body.contains("bob@example.com"));
}

/// A tmpfs of `size`, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("the mount command");
        assert!(
            out.status.success(),
            "this test fills a small tmpfs and needs root to mount one (run the suite as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem at `dir` with one file until it is full.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    path
}

async fn sqlite_integrity(db: &std::path::Path) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing() {
    let disk = SmallDisk::mount("4m");
    let db = disk.path().join("castellan.db");
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.store = Some(format!("sqlite://{}", db.display()));
    let c = Castellan::start(setup).await;
    c.add_user("dana@example.com", "a long enough password");
    c.grant("demo", "user:dana@example.com");
    let mut b = Browser::new();
    let r = b
        .sign_in_local(&c, "dana@example.com", "a long enough password", "/")
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(b.get(&c.url("/x")).await.status, 200);

    let filler = fill(disk.path());
    // A change cannot be written: the CLI says so, with the cause, and changes nothing.
    let out = c.cli(&["access", "add", "demo", "user:erin@example.com"]);
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    eprintln!("with the disk full, the CLI said: {}", err.trim());
    assert!(!out.status.success(), "the write cannot have succeeded");
    assert!(
        err.contains("the disk holding the store is full") && err.contains("nothing was changed"),
        "the error names the cause: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // What is already there keeps being enforced (reads need no space).
    assert_eq!(b.get(&c.url("/still")).await.status, 200);
    let mut other = Browser::new();
    assert_ne!(other.get(&c.url("/x")).await.status, 200);

    std::fs::remove_file(filler).unwrap();
    // Space again: the same change goes through, nothing needed restarting.
    ok(&c.cli(&["access", "add", "demo", "user:erin@example.com"]));
    let policy = ok(&c.cli(&["policy", "get", "demo"]));
    assert!(policy.contains("user:dana@example.com") && policy.contains("user:erin@example.com"));
    assert_eq!(b.get(&c.url("/after")).await.status, 200);
    assert!(
        !c.proc.log_text().contains("panicked"),
        "castellan did not panic"
    );
    assert_eq!(sqlite_integrity(&db).await, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_policy_writes_leaves_the_old_or_the_new_policy() {
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let db = c.config_path.parent().unwrap().join("castellan.db");
    let mut present = 0;
    let mut absent = 0;
    let mut committed: Vec<String> = Vec::new();
    for i in 0..30u64 {
        let member = format!("user:u{i}@example.com");
        let mut child = Command::new(castellan_bin())
            .args(["access", "add", "demo", &member, "--config"])
            .arg(&c.config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // From before the store is opened to after the commit: a CLI write takes about 30-40 ms
        // (debug build), the transaction its last few.
        std::thread::sleep(Duration::from_micros(1_000 + i * 1_500));
        let _ = child.kill();
        let _ = child.wait();
        let out = c.cli(&["policy", "get", "demo", "--format", "json"]);
        let doc: serde_json::Value = serde_json::from_str(&ok(&out))
            .unwrap_or_else(|e| panic!("after kill {i} the policy does not read as JSON ({e})"));
        let members = doc["bindings"].to_string();
        // Never a policy that lost a change seen committed before.
        for earlier in &committed {
            assert!(
                members.contains(earlier),
                "{earlier} was lost after kill {i}"
            );
        }
        if members.contains(&format!("\"{member}\"")) {
            present += 1;
            committed.push(format!("\"{member}\""));
        } else {
            absent += 1;
        }
    }
    eprintln!("30 CLI writes killed with SIGKILL: {present} had committed, {absent} had not");
    assert_eq!(sqlite_integrity(&db).await, "ok");
    // The server kept running and decides with the surviving policy.
    assert!(
        c.proc.log_text().lines().count() > 0 && !c.proc.log_text().contains("panicked"),
        "castellan did not panic"
    );
    ok(&c.cli(&["access", "add", "demo", "user:after@example.com"]));
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_and_half_open_connections_neither_starve_others_nor_stay() {
    use tokio::io::AsyncWriteExt;
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let pid = c.proc.child.id();
    let before = open_fds(pid);
    let addr = format!("127.0.0.1:{}", c.port);
    // 300 connections that never send a byte, and 300 that send a header a byte a second.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let dripping = tokio::spawn(async move {
        for _ in 0..15 {
            for s in slow.iter_mut() {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    });
    // Meanwhile everyone else is served at once.
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let r = client
            .get(c.url("/.castellan/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "served while 600 connections hang: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut slow = dripping.await.unwrap();
    // castellan gives a request head 10 s: by now every one of them has been closed.
    for (what, s) in idle
        .iter_mut()
        .map(|s| ("sent nothing", s))
        .chain(slow.iter_mut().map(|s| ("dripped a header", s)))
    {
        let mut buf = [0u8; 512];
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            use tokio::io::AsyncReadExt;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            end.is_ok(),
            "a connection that {what} is still open after 15 s"
        );
    }
    drop(idle);
    drop(slow);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = open_fds(pid);
    assert!(
        after <= before + 5,
        "castellan holds no leftover sockets: {before} file descriptors before, {after} after"
    );
}

/// A load balancer keeps its connections to castellan open between requests for minutes
/// (Google's for 600 s): castellan must not close one that waits longer than a request's head may
/// take (10 s), or the balancer sends a request on a closing connection and answers 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_connection_may_wait_longer_than_a_request_head_may_take() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Echo::start().await;
    let c = Castellan::start(Setup::new(echo.addr)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let req = format!(
        "GET /.castellan/healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        c.port
    );
    let mut buf = vec![0u8; 4096];
    for round in ["first", "after 12 s of silence"] {
        if round != "first" {
            tokio::time::sleep(Duration::from_secs(12)).await;
        }
        s.write_all(req.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{round}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_or_slow_upstream_leaks_no_connections() {
    let echo = Echo::start().await;
    let dead = free_port();
    let extra = format!(
        "[[apps]]\nid = \"dead\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:{dead}\"\npath_prefix = \"/dead\"\n"
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    setup.top = "upstream_timeout = \"1s\"";
    let c = Castellan::start(setup).await;
    c.add_user("dave@example.com", "a long enough password");
    c.grant("demo", "user:dave@example.com");
    c.grant("dead", "user:dave@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c, "dave@example.com", "a long enough password", "/")
        .await;
    let pid = c.proc.child.id();
    assert_eq!(b.get(&c.url("/warm")).await.status, 200);
    let before = open_fds(pid);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = c.url(if i % 10 == 0 { "/slow" } else { "/dead/x" });
        let cookie = format!(
            "castellan_session={}",
            b.cookie(&c.origin, "castellan_session").unwrap()
        );
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 90);
    assert_eq!(statuses.iter().filter(|s| **s == 504).count(), 10);
    // The clients above are gone; what castellan still holds must be what it held before.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = open_fds(pid);
    assert!(
        after <= before + 5,
        "{before} file descriptors before 100 failed requests, {after} after"
    );
    assert_eq!(b.get(&c.url("/after")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_named_at_start_up() {
    // Nothing listens on this port.
    let nowhere: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let c = Castellan::start(Setup::new(nowhere)).await;
    let want = format!("app demo cannot be reached at http://{nowhere}/");
    let t = std::time::Instant::now();
    while !c.proc.log_text().contains(&want) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "no start-up warning naming the app and its address:\n{}",
            c.proc.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
