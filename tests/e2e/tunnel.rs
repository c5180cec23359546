//! TCP tunnels with real programs: Debian's OpenSSH server (started here on loopback, with its own
//! host key) reached by `ssh` and `scp` through `castellan tunnel --stdio` as ProxyCommand, `psql`
//! through `castellan tunnel --local-port` to the PostgreSQL the tests use, and Debian's nginx in
//! front of castellan.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// An OpenSSH server on a free loopback port, accepting one generated client key for root (the
/// user the tests run as) or for the current user.
struct Sshd {
    _proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        require(Path::new("/usr/sbin/sshd"), "Debian's openssh-server");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (key, kind) in [("host_key", "ed25519"), ("client_key", "ed25519")] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(d.join(key))
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd wants its privilege separation folder (a package install makes it at boot).
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel INFO\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let mut proc = Proc::spawn(
            "sshd",
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config")),
            d.join("sshd.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = &mut proc;
        Sshd {
            _proc: proc,
            port,
            dir,
        }
    }

    /// `ssh`/`scp` options that reach this server through `proxy_command`.
    fn options(&self, proxy_command: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &self.dir.path().join("client_key").display().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            &format!("ProxyCommand={proxy_command}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

/// A castellan with local accounts, the demo web app at `/` and a TCP app `ssh` at
/// `/ssh` on the same host, whose upstream is `tcp_upstream`.
async fn castellan(echo: &Echo, tcp_upstream: &str, top: &str) -> Castellan {
    let extra = format!(
        "[[apps]]\nid = \"ssh\"\nhost = \"127.0.0.1\"\npath_prefix = \"/ssh\"\nupstream = \"tcp://{tcp_upstream}\"\n"
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    setup.top = top;
    Castellan::start(setup).await
}

/// Signs `email` in from the command line as `castellan login` would, and saves the credential in
/// a config home of its own (XDG_CONFIG_HOME).
async fn logged_in(c: &Castellan, email: &str) -> tempfile::TempDir {
    c.add_user(email, "a long enough password");
    let mut b = Browser::new();
    b.sign_in_local(c, email, "a long enough password", "/")
        .await;
    let refresh = cli_refresh_token(&mut b, c).await;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("castellan")).unwrap();
    std::fs::write(
        home.path().join("castellan/credentials.json"),
        serde_json::json!({ c.origin.clone(): {
            "refresh_token": refresh, "email": email, "expires_at": 0
        }})
        .to_string(),
    )
    .unwrap();
    home
}

fn tunnel_command(c: &Castellan) -> String {
    format!("{} tunnel {}/ssh --stdio", castellan_bin(), c.origin)
}

fn ssh(sshd: &Sshd, c: &Castellan, home: &Path) -> Command {
    // Bounded: a stuck tunnel fails the test instead of hanging it.
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "ssh"])
        .args(sshd.options(&tunnel_command(c)))
        .arg(format!("{}@127.0.0.1", user()))
        .env("XDG_CONFIG_HOME", home);
    cmd
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn audit_tunnels(c: &Castellan) -> Vec<serde_json::Value> {
    let out = c.cli(&["audit", "--kind", "tunnel", "--json"]);
    ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_and_scp_go_through_the_tunnel_as_the_person_with_the_tunnel_role() {
    let sshd = Sshd::start();
    let echo = Echo::start().await;
    let metrics = free_port();
    let c = castellan(
        &echo,
        &format!("127.0.0.1:{}", sshd.port),
        &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
    )
    .await;
    let home = logged_in(&c, "ops@example.com").await;

    // Web access to the app's host is not tunnel access.
    c.grant("demo", "user:ops@example.com");
    let refused = ssh(&sshd, &c, home.path()).arg("true").output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("403") && err.contains("ssh"), "{err}");
    // roles/accessor on a TCP app would grant nothing: the CLI says which role it needs.
    let wrong = c.cli(&[
        "access",
        "add",
        "ssh",
        "user:ops@example.com",
        "--role",
        "roles/accessor",
    ]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("roles/tunnelAccessor"));

    // The app's own role (the default for a TCP app) opens it.
    c.grant("ssh", "user:ops@example.com");
    let out = ssh(&sshd, &c, home.path())
        .arg("echo through-the-tunnel; echo to-stderr >&2")
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through-the-tunnel\n");

    // scp: 100 MiB up, checksums equal.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big.bin");
    let status = Command::new("head")
        .args(["-c", "104857600", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let dest: PathBuf = work.path().join("copied.bin");
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["300", "scp"])
        .args(sshd.options(&tunnel_command(&c)))
        .arg(&src)
        .arg(format!("{}@127.0.0.1:{}", user(), dest.display()))
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "scp: {out:?}");
    eprintln!("scp of 100 MiB through the tunnel: {:?}", started.elapsed());
    assert_eq!(sha256(&src), sha256(&dest));

    // Every tunnel is in the audit trail with the bytes each way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tunnels = audit_tunnels(&c);
    assert!(tunnels.len() >= 2, "{tunnels:?}");
    let biggest = tunnels
        .iter()
        .map(|r| r["after"]["bytes_up"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(biggest > 100 * 1024 * 1024, "{tunnels:?}");
    // And in the metrics: bytes each way, no tunnel left open.
    let text = scrape(metrics).await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert!(
        value("castellan_tunnel_bytes_total{app=\"ssh\",direction=\"up\"}")
            > 100.0 * 1024.0 * 1024.0
    );
    assert!(value("castellan_tunnel_bytes_total{app=\"ssh\",direction=\"down\"}") > 0.0);
    assert_eq!(value("castellan_tunnels_open{app=\"ssh\"}"), 0.0);
    assert!(
        tunnels
            .iter()
            .all(|r| r["actor"] == "ops@example.com" && r["app"] == "ssh"),
        "{tunnels:?}"
    );
    assert!(
        tunnels
            .iter()
            // ssh kills its ProxyCommand as it exits: the tunnel is dropped, never failed.
            .all(|r| r["after"]["ended"] == "finished" || r["after"]["ended"] == "dropped"),
        "{tunnels:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_access_ends_a_live_ssh_session_within_a_second() {
    let sshd = Sshd::start();
    let echo = Echo::start().await;
    let c = castellan(&echo, &format!("127.0.0.1:{}", sshd.port), "").await;
    let home = logged_in(&c, "ops@example.com").await;
    c.grant("ssh", "user:ops@example.com");
    let mut session = ssh(&sshd, &c, home.path())
        .arg("echo ready; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(session.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");

    let out = c.cli(&["access", "remove", "ssh", "user:ops@example.com"]);
    assert!(out.status.success(), "{out:?}");
    let removed = Instant::now();
    let status = loop {
        if let Some(s) = session.try_wait().unwrap() {
            break s;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(5),
            "the SSH session is still open after access was removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = removed.elapsed();
    assert!(!status.success());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(session.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("access was revoked"), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tunnels = audit_tunnels(&c);
    assert_eq!(tunnels[0]["after"]["ended"], "stopped", "{tunnels:?}");
}

/// A raw tunnel handshake, as `castellan tunnel` sends it.
async fn handshake(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .get(url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "castellan-tunnel.v1")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_reaches_postgres_through_a_local_port_as_a_service_account() {
    let echo = Echo::start().await;
    // The PostgreSQL the tests use; one tunnel per person (or service account) at a time.
    let c = castellan(&echo, "127.0.0.1:5432", "max_tunnels_per_person = 1").await;
    let key = ok(&c.cli(&["service-accounts", "create", "etl"]))
        .lines()
        .find(|l| l.trim().starts_with("csk_"))
        .unwrap()
        .trim()
        .to_string();
    let token_for = |key: String| {
        let c = &c;
        async move {
            let (status, v) = token_grant(
                c,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "etl"),
                    ("client_secret", &key),
                    ("audience", "ssh"),
                ],
            )
            .await;
            assert_eq!(status, 200, "{v}");
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let token = token_for(key.clone()).await;

    // Conditions apply to tunnels as to web requests: only from the office network.
    let out = c.cli(&[
        "access",
        "add",
        "ssh",
        "serviceAccount:etl",
        "--condition",
        "inIpRange(origin.ip, \"10.0.0.0/8\")",
        "--condition-title",
        "office",
    ]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(500));
    let outside = handshake(&c.url("/ssh"), &token).await;
    assert_eq!(outside.status(), 403);
    let body: serde_json::Value = outside.json().await.unwrap();
    assert_eq!(body["reason"], "condition-not-met", "{body}");
    c.grant("ssh", "serviceAccount:etl");

    let port = free_port();
    let mut tunnel = Proc::spawn(
        "castellan tunnel",
        Command::new(castellan_bin())
            .args(["tunnel", &format!("{}/ssh", c.origin), "--local-port"])
            .arg(port.to_string())
            .args(["--service-account", "etl"])
            .env("CASTELLAN_SERVICE_ACCOUNT_KEY", &key),
        c.config_path.with_file_name("tunnel.log"),
    );
    // Ready when it says so (a probe connection would itself be a tunnel, and count).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tunnel.log_text().contains("Listening on") {
        assert!(Instant::now() < deadline, "{}", tunnel.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-XAtc", "select 40 + 2"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(out.status.success(), "psql: {out:?}\n{}", tunnel.log_text());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // While one tunnel is open, a second one is over the limit, with the reason. A tunnel is
    // counted from before its 101 goes out, and stops counting once it has closed: psql's may
    // still be closing, so the first is retried while it is refused.
    let open_one = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = handshake(&c.url("/ssh"), &token).await;
            if r.status() == 101 {
                return r.upgrade().await.unwrap();
            }
            assert_eq!(r.status(), 429);
            assert!(Instant::now() < deadline, "the earlier tunnel never closed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let held = open_one().await;
    let second = handshake(&c.url("/ssh"), &token).await;
    assert_eq!(second.status(), 429);
    let body: serde_json::Value = second.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_tunnels_per_person"),
        "{body}"
    );
    // Once it closes, the next one is let through.
    drop(held);
    drop(open_one().await);
    tunnel.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_app_that_wants_a_recent_sign_in_gets_one_before_a_tunnel_opens() {
    let echo = Echo::start().await;
    let upstream = tcp_echo().await;
    let extra = format!(
        "[[apps]]\nid = \"ssh\"\nhost = \"127.0.0.1\"\npath_prefix = \"/ssh\"\nupstream = \"tcp://127.0.0.1:{upstream}\"\nreauth_max_age = \"5s\"\n"
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.grant("ssh", "user:ops@example.com");
    let home = logged_in(&c, "ops@example.com").await;
    let tunnel = || {
        Command::new(castellan_bin())
            .args(["tunnel", &format!("{}/ssh", c.origin), "--stdio"])
            .env("XDG_CONFIG_HOME", home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Fresh: the tunnel opens (and ends when stdin does).
    let out = tunnel();
    assert!(out.status.success(), "{out:?}");
    // Older than the app allows: no token, so no tunnel, and the fix in the message. Sign-in
    // times are whole seconds and the check is "more than 5 s", so 5.5 s could read as 5: wait 6.5.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let out = tunnel();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("castellan login"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_is_told_how_to_connect_and_a_dead_upstream_is_a_clear_error() {
    let echo = Echo::start().await;
    let closed = free_port();
    let c = castellan(&echo, &format!("127.0.0.1:{closed}"), "").await;
    let home = logged_in(&c, "ops@example.com").await;
    c.grant("ssh", "user:ops@example.com");

    // A browser signed in with the tunnel role gets a page with the command, not a tunnel.
    let mut b = Browser::new();
    b.sign_in_local(&c, "ops@example.com", "a long enough password", "/ssh")
        .await;
    let page = b.follow(&c.url("/ssh")).await;
    assert_eq!(page.status, 426, "{}", page.body);
    assert!(page.body.contains("castellan tunnel"), "{}", page.body);

    // `castellan check` explains the TCP app's own role.
    let out = c.cli(&["check", "ssh", "ops@example.com"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ALLOWED: ops@example.com may open ssh"),
        "{text}"
    );
    let out = c.cli(&["check", "ssh", "dev@example.com"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("DENIED: dev@example.com may not open ssh (no-matching-binding)"),
        "{out:?}"
    );
    // The admin API grants a TCP app's role by default and refuses one that would grant nothing.
    let key = ok(&c.cli(&["service-accounts", "create", "admin-bot"]))
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .unwrap()
        .to_string();
    c.grant_role("--global", "serviceAccount:admin-bot", "roles/admin");
    let api = |body: serde_json::Value| {
        reqwest::Client::new()
            .post(c.console("/.castellan/api/v1/policies/ssh/bindings"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let r = api(serde_json::json!({"member": "user:dev@example.com"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let policy: serde_json::Value = r.json().await.unwrap();
    assert!(
        policy["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["role"] == "roles/tunnelAccessor"
                && b["members"].to_string().contains("user:dev@example.com")),
        "{policy}"
    );
    let r = api(serde_json::json!({"member": "user:dev@example.com", "role": "roles/iap.httpsResourceAccessor"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("roles/tunnelAccessor"));

    // Nothing listens at the upstream: the CLI says so and fails.
    let out = Command::new(castellan_bin())
        .args(["tunnel", &format!("{}/ssh", c.origin), "--stdio"])
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("502") && err.contains("ssh"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_through_nginx_in_front_of_castellan_survives_an_idle_proxy_timeout() {
    require(Path::new("/usr/sbin/nginx"), "Debian's nginx");
    let sshd = Sshd::start();
    let echo = Echo::start().await;
    // nginx drops a connection idle for 3 s; castellan's keep-alives (every second) prevent it.
    let c = castellan(
        &echo,
        &format!("127.0.0.1:{}", sshd.port),
        "tunnel_keepalive = \"1s\"",
    )
    .await;
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
         server {{\n    listen 127.0.0.1:{listen};\n    location / {{\n      proxy_pass http://127.0.0.1:{port};\n\
         proxy_http_version 1.1;\n      proxy_set_header Host $http_host;\n      proxy_set_header Upgrade $http_upgrade;\n\
         proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 3s;\n      proxy_send_timeout 3s;\n    }}\n  }}\n}}\n",
        port = c.port
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new("/usr/sbin/nginx").arg("-c").arg(&path),
        dir.path().join("nginx.log"),
    );
    wait_for(
        &format!("http://127.0.0.1:{listen}/.castellan/healthz"),
        "nginx",
        &mut nginx,
    )
    .await;
    let home = logged_in(&c, "ops@example.com").await;
    c.grant("ssh", "user:ops@example.com");
    // The credential is for castellan's origin as reached through nginx.
    let creds = home.path().join("castellan/credentials.json");
    let text = std::fs::read_to_string(&creds)
        .unwrap()
        .replace(&c.origin, &format!("http://127.0.0.1:{listen}"));
    std::fs::write(&creds, text).unwrap();
    let proxy_command = format!(
        "{} tunnel http://127.0.0.1:{listen}/ssh --stdio",
        castellan_bin()
    );
    let out = Command::new("timeout")
        .args(["120", "ssh"])
        .args(sshd.options(&proxy_command))
        .arg(format!("{}@127.0.0.1", user()))
        .arg("sleep 5; echo still-here")
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh via nginx: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
}

/// A TCP echo server: what it reads, it writes back.
async fn tcp_echo() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scim_deactivation_through_one_replica_closes_a_tunnel_on_the_other() {
    use std::io::{BufRead, Write};
    let echo = Echo::start().await;
    let upstream = tcp_echo().await;
    let db = Database::create(&shared_postgres()).await;
    let token = "scim-tunnel-token-0123456789abcdefghijklmn";
    let top = format!("scim_token = \"{token}\"");
    let extra = format!(
        "[[apps]]\nid = \"ssh\"\nhost = \"127.0.0.1\"\npath_prefix = \"/ssh\"\nupstream = \"tcp://127.0.0.1:{upstream}\"\n"
    );
    let start = || {
        let mut setup = Setup::new(echo.addr);
        setup.store = Some(db.url.clone());
        setup.top = &top;
        setup.extra = &extra;
        Castellan::start(setup)
    };
    let a = start().await;
    let b = start().await;
    let home = logged_in(&b, "carol@example.com").await;
    let (_, user) = scim_call(
        &a,
        token,
        "POST",
        "/Users",
        serde_json::json!({"userName": "carol@example.com"}),
    )
    .await;
    let id = user["id"].as_str().unwrap().to_string();
    a.grant("ssh", "user:carol@example.com");

    // A tunnel through replica B carries bytes both ways.
    let mut tunnel = std::process::Command::new(castellan_bin())
        .args(["tunnel", &format!("{}/ssh", b.origin), "--stdio"])
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = tunnel.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(tunnel.stdout.take().unwrap());
    stdin.write_all(b"ping\n").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");

    // Carol is deactivated through replica A: B closes her tunnel within a second.
    scim_deactivate(&a, token, &id).await;
    let deactivated = Instant::now();
    let status = loop {
        if let Some(s) = tunnel.try_wait().unwrap() {
            break s;
        }
        assert!(
            deactivated.elapsed() < Duration::from_secs(5),
            "the tunnel on B is still open after the deactivation on A"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = deactivated.elapsed();
    eprintln!("a SCIM deactivation on A closed the tunnel on B after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(tunnel.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("access was revoked"), "{err}");
}

/// IAP TCP forwarding's destination conditions, on a real tunnel: `destination.ip` and
/// `destination.port` are the TCP app's upstream, so a binding for port 22 opens nothing on an app
/// whose upstream is another port, and one for the right address and port carries bytes.
#[tokio::test(flavor = "multi_thread")]
async fn destination_conditions_decide_tunnels_as_iap_tcp_forwarding_does() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let echo = Echo::start().await;
    let port = tcp_echo().await;
    let c = castellan(&echo, &format!("127.0.0.1:{port}"), "").await;
    let key = ok(&c.cli(&["service-accounts", "create", "jump"]))
        .lines()
        .find(|l| l.trim().starts_with("csk_"))
        .unwrap()
        .trim()
        .to_string();
    let (status, v) = token_grant(
        &c,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "jump"),
            ("client_secret", &key),
            ("audience", "ssh"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let only = |condition: &str| {
        let doc = serde_json::json!({"bindings": [{"role": "roles/tunnelAccessor",
            "members": ["serviceAccount:jump"],
            "condition": {"title": "destination", "expression": condition}}]});
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        ok(&c.cli(&["policy", "set", "ssh", file.to_str().unwrap(), "--force"]));
        std::thread::sleep(Duration::from_millis(500));
    };

    only("destination.port == 22");
    assert_eq!(handshake(&c.url("/ssh"), &token).await.status(), 403);
    only(&format!(
        "destination.ip == \"127.0.0.1\" && destination.port in [22, {port}]"
    ));
    let r = handshake(&c.url("/ssh"), &token).await;
    assert_eq!(r.status(), 101);
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        r.upgrade().await.unwrap(),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::Binary(b"through"[..].into()))
        .await
        .unwrap();
    let back = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => break b,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(&back[..], b"through");
}
