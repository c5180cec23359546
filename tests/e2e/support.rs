//! The end-to-end harness: real processes on loopback (the castellan binary, the oidc-provider IdP,
//! Streamlit), an echo upstream, and a small cookie-keeping HTTP client that behaves like a browser.
//! Every process is stopped when its handle drops; a failing test prints the logs of what it started.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::process_state;

pub fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

/// Fails (never skips) when the test dependencies are missing, saying how to install them.
pub fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what} is missing at {}: run `scripts/test-deps.sh` (the README's test command `scripts/test.sh` does it)",
        path.display()
    );
}

/// What castellan's metrics listener on loopback `port` serves at `/metrics`, as Prometheus
/// scrapes it.
pub async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// A loopback port no one listens on, never the same twice in this run: the kernel hands a
/// port it just freed to the next `bind(0)` as readily as any other, so two ports asked for in a
/// row (castellan's, then Pebble's helpers') could otherwise be one, and one listener lose.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A child process, killed on drop. Its combined output goes to a log file printed if the test fails.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (not SIGKILL) so the process can shut down cleanly.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            // Panics and errors anywhere in the log first: the tail may be all routine lines.
            for line in log
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("\"ERROR\""))
                .take(20)
            {
                eprintln!("{}: {line}", self.name);
            }
            let tail: String = log
                .chars()
                .rev()
                .take(6000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!(
                "----- log of {} ({}) -----\n{tail}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.name
            );
        }
    }
}

pub async fn wait_for(url: &str, what: &str, proc: &mut Proc) {
    if let Err(why) = answers_within(url, what, proc, Duration::from_secs(60)).await {
        panic!("{why}");
    }
}

/// Waits until `url` answers; on failure says why, with what the machine was doing at the time.
async fn answers_within(
    url: &str,
    what: &str,
    proc: &mut Proc,
    limit: Duration,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!(
                "{what} exited with {status} before answering; log:\n{}",
                proc.log_text()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "{what} did not answer at {url} within {} s; {}; log:\n{}",
        limit.as_secs(),
        process_state::describe(proc.child.id()),
        proc.log_text()
    ))
}

// ---- the OpenID Provider --------------------------------------------------------------------------

pub struct Idp {
    pub issuer: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// Starts oidc-provider for a castellan at `castellan_origin`, optionally with a fault (`IDP_TAMPER`).
    pub async fn start(castellan_origin: &str, tamper: Option<&str>) -> Idp {
        Idp::start_on(free_port(), castellan_origin, tamper).await
    }

    /// The same on a given port: a restart on the same port is the same issuer with new signing keys.
    pub async fn start_on(port: u16, castellan_origin: &str, tamper: Option<&str>) -> Idp {
        Idp::launch(port, castellan_origin, tamper, &[]).await
    }

    /// With extra environment for idp.mjs, e.g. `IDP_GROUPS`.
    pub async fn start_with(castellan_origin: &str, env: &[(&str, &str)]) -> Idp {
        Idp::launch(free_port(), castellan_origin, None, env).await
    }

    async fn launch(
        port: u16,
        castellan_origin: &str,
        tamper: Option<&str>,
        env: &[(&str, &str)],
    ) -> Idp {
        let dir = support_dir();
        require(
            &dir.join("node_modules/oidc-provider"),
            "the npm package oidc-provider",
        );
        let issuer = format!("http://127.0.0.1:{port}");
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("idp.mjs"))
            .env("IDP_PORT", port.to_string())
            .env("IDP_AUTO_CONSENT", "1")
            .env(
                "CASTELLAN_REDIRECT_URI",
                format!("{castellan_origin}/.castellan/callback"),
            )
            .env("CASTELLAN_CLIENT_SECRET", "castellan-secret");
        if let Some(t) = tamper {
            cmd.env("IDP_TAMPER", t);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Node has been seen (once, in CI) to hang before its first line of our code ran. That is
        // not castellan's behaviour under test, so a second start is tried, and the first
        // failure is printed with the process state so a pattern can be found.
        let url = format!("{issuer}/.well-known/openid-configuration");
        let mut proc = Proc::spawn("idp", &mut cmd, tmp.path().join("idp.log"));
        if let Err(why) = answers_within(&url, "the IdP", &mut proc, Duration::from_secs(30)).await
        {
            eprintln!("{why}\nstarting the IdP again");
            drop(proc);
            proc = Proc::spawn("idp", &mut cmd, tmp.path().join("idp-again.log"));
            wait_for(&url, "the IdP", &mut proc).await;
        }
        Idp {
            issuer,
            _proc: proc,
            _dir: tmp,
        }
    }
}

// ---- an echo upstream -----------------------------------------------------------------------------

/// An upstream app that answers with JSON describing the request it received.
/// `/slow` (and any path ending so) waits 3 s; `/stream` sends `chunk-1`, waits 1.5 s, sends `chunk-2`; `/long` does the
/// same with a Content-Length and 2 MiB after the wait; `/hostile` is a hostile app's page.
pub struct Echo {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(req: hyper::Request<Incoming>) -> Result<hyper::Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path == "/ws" {
        // A byte-echoing "WebSocket" endpoint: enough to prove the upgrade is spliced both ways.
        let saw = req.headers().get("x-castellan-email").cloned();
        let mut req = req;
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::new())));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        if let Some(v) = saw {
            resp.headers_mut().insert("x-upstream-saw-email", v);
        }
        return Ok(resp);
    }
    if path == "/hostile" {
        // A hostile app's page (tests/support/hostile.html): its answer tries to set castellan's
        // session cookie (to the value `?cookie=` names, in several spellings) and to clear the
        // browser's cookies; its script tries to drive castellan.
        let html = std::fs::read_to_string(support_dir().join("hostile.html")).unwrap();
        let value = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "cookie")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let mut resp = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::from(html))));
        let h = resp.headers_mut();
        h.insert("content-type", "text/html".parse().unwrap());
        for cookie in [
            format!("castellan_session={value}; Path=/"),
            format!("Castellan_Session={value}; Path=/"),
            format!("castellan_session={value}; Path=/; Domain=localhost"),
            format!("__Host-castellan_session={value}; Path=/; Secure"),
            "castellan_browser=chosen-by-the-app; Path=/".to_string(),
        ] {
            h.append("set-cookie", cookie.parse().unwrap());
        }
        h.insert("clear-site-data", "\"cookies\"".parse().unwrap());
        return Ok(resp);
    }
    if path == "/stream" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"chunk-1\n")).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tx.send(Bytes::from_static(b"chunk-2\n")).await;
        });
        return Ok(hyper::Response::new(BodyExt::boxed(ChannelBody(rx))));
    }
    if path == "/long" {
        // As `/stream`, but with a Content-Length (2 MiB more than the first chunk).
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"chunk-1\n")).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tx.send(Bytes::from(vec![b'x'; 2 << 20])).await;
        });
        let mut resp = hyper::Response::new(BodyExt::boxed(ChannelBody(rx)));
        resp.headers_mut()
            .insert("content-length", ((2 << 20) + 8).into());
        return Ok(resp);
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers()
            .iter()
            .fold(serde_json::Map::new(), |mut m, (k, v)| {
                let v = serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into());
                match m.get_mut(k.as_str()) {
                    Some(serde_json::Value::Array(a)) => a.push(v),
                    _ => {
                        m.insert(k.to_string(), serde_json::Value::Array(vec![v]));
                    }
                }
                m
            });
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": method, "uri": uri, "version": version, "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::from(json.to_string()))));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("set-cookie", "app_cookie=from-app; Path=/".parse().unwrap());
    Ok(resp)
}

/// A response body fed by a channel, so the echo app can pause between chunks.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(echo))
                        .with_upgrades()
                        .await;
                });
            }
        });
        Echo { addr, task }
    }
}

// ---- a webhook receiver -------------------------------------------------------------------------

/// A webhook receiver: records the JSON bodies POSTed to it.
pub async fn webhook() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    tokio::task::JoinHandle<()>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            s.lock().unwrap().push(
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                            );
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

// ---- PostgreSQL ---------------------------------------------------------------------------------

/// A throwaway PostgreSQL cluster of this test's own (tests/support/throwaway-postgres.sh),
/// stopped and deleted on drop (and by the script's watchdog if this process dies first).
pub struct Postgres {
    pub admin_url: String,
    data: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    pub fn start() -> Postgres {
        let out = Command::new(support_dir().join("throwaway-postgres.sh"))
            .arg(std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/support/throwaway-postgres.sh");
        assert!(
            out.status.success(),
            "cannot start a throwaway PostgreSQL: install Debian's postgresql (scripts/test-deps.sh does)"
        );
        let line = String::from_utf8(out.stdout).unwrap();
        let mut parts = line.split_whitespace();
        Postgres {
            admin_url: parts.next().unwrap().to_string(),
            data: parts.next().unwrap().into(),
            bin: parts.next().unwrap().into(),
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let log = self.data.parent().unwrap().join("server.log");
        let status = cmd
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(log)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Stops the server (connections are cut).
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    pub fn resume(&self) {
        self.pg_ctl(&["-w", "-t", "30", "start"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The PostgreSQL server tests share: `CASTELLAN_TEST_POSTGRES` (an admin URL) when set, else one
/// throwaway cluster for this test process.
pub fn shared_postgres() -> String {
    static SHARED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            std::env::var("CASTELLAN_TEST_POSTGRES").unwrap_or_else(|_| {
                // Leaked on purpose: the script's watchdog stops it when this process exits.
                let pg = Box::leak(Box::new(Postgres::start()));
                pg.admin_url.clone()
            })
        })
        .clone()
}

/// A new, empty database on a PostgreSQL server, dropped when this value is.
pub struct Database {
    pub url: String,
    admin_url: String,
    name: String,
}

impl Database {
    pub async fn create(admin_url: &str) -> Database {
        use sqlx::Connection;
        let name = format!("castellan_e2e_{}", rand_suffix());
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(admin_url).unwrap();
        url.set_path(&name);
        Database {
            url: url.to_string(),
            admin_url: admin_url.to_string(),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            })
        })
        .join();
    }
}

pub fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// Runs a query on `db_url` and returns the first column of the first row as an integer.
pub async fn pg_count(db_url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

// ---- castellan ------------------------------------------------------------------------------------

pub struct Castellan {
    /// First, so it is dropped (and its log printed when a test fails) before its folder goes.
    pub proc: Proc,
    /// Where the demo app is: `http://127.0.0.1:PORT` (its `host` is 127.0.0.1).
    pub origin: String,
    /// castellan's own pages (sign-in, account, console, API): `http://localhost:PORT`, an origin
    /// no app shares.
    pub console: String,
    pub port: u16,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// What to put in the test configuration.
pub struct Setup<'a> {
    pub idp: Option<&'a Idp>,
    pub local_accounts: bool,
    /// `[[apps]]` entries beyond the default `demo` app (raw TOML).
    pub extra: &'a str,
    pub upstream: String,
    pub top: &'a str,
    /// Extra keys for the test provider's `[[providers]]` table.
    pub provider_extra: &'a str,
    pub args: &'a [&'a str],
    /// The `store` URL (default: a SQLite file in the instance's folder).
    pub store: Option<String>,
    /// Extra environment variables for the castellan process.
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> Setup<'a> {
    pub fn new(upstream: SocketAddr) -> Setup<'a> {
        Setup {
            idp: None,
            local_accounts: true,
            extra: "",
            upstream: format!("http://{upstream}"),
            top: "",
            provider_extra: "",
            args: &[],
            store: None,
            env: &[],
        }
    }
}

/// The castellan binary under test: this build's, or `CASTELLAN_TEST_BIN` (another build's, e.g.
/// an older commit's, to see a regression test fail on the code before its fix).
pub fn castellan_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("CASTELLAN_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_castellan").to_string())
    })
}

impl Castellan {
    /// Picks the port first, so an IdP can be told the redirect URI before castellan starts;
    /// returns castellan's own origin (where the callback is).
    pub fn reserve() -> (u16, String) {
        let port = free_port();
        (port, format!("http://localhost:{port}"))
    }

    pub async fn start(setup: Setup<'_>) -> Castellan {
        let (port, _) = Castellan::reserve();
        Castellan::start_on(port, setup).await
    }

    pub async fn start_on(port: u16, setup: Setup<'_>) -> Castellan {
        let public = format!("public_url = \"http://localhost:{port}\"\n");
        Castellan::launch(port, setup, &public).await
    }

    /// Like `start_on`, but `setup.top` sets `public_url` itself (e.g. an https one).
    pub async fn start_on_with_public_url(port: u16, setup: Setup<'_>) -> Castellan {
        Castellan::launch(port, setup, "").await
    }

    async fn launch(port: u16, setup: Setup<'_>, public: &str) -> Castellan {
        let origin = format!("http://127.0.0.1:{port}");
        let console = format!("http://localhost:{port}");
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\n{public}store = \"{}\"\nlocal_accounts = {}\n{}\n",
            setup.store.as_deref().unwrap_or("sqlite://castellan.db"),
            setup.local_accounts,
            setup.top
        );
        if let Some(idp) = setup.idp {
            toml.push_str(&format!(
                "[[providers]]\nid = \"corp\"\ndisplay_name = \"Corp SSO\"\nissuer = \"{}\"\nclient_id = \"castellan\"\nclient_secret = \"${{TEST_CLIENT_SECRET}}\"\n{}\n\n",
                idp.issuer, setup.provider_extra
            ));
        }
        toml.push_str(&format!(
            "[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"{}\"\n{}\n",
            setup.upstream, setup.extra
        ));
        let config_path = dir.path().join("castellan.toml");
        std::fs::write(&config_path, toml).unwrap();
        let mut cmd = Command::new(castellan_bin());
        if !setup.args.contains(&"--log-format") {
            cmd.args(["--log-format", "json"]);
        }
        cmd.args(setup.args)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("TEST_CLIENT_SECRET", "castellan-secret")
            .env("RUST_LOG", "info")
            .envs(setup.env.iter().copied());
        let mut proc = Proc::spawn("castellan", &mut cmd, dir.path().join("castellan.log"));
        wait_for(
            &format!("{origin}/.castellan/healthz"),
            "castellan",
            &mut proc,
        )
        .await;
        Castellan {
            origin,
            console,
            port,
            _dir: dir,
            config_path,
            proc,
        }
    }

    /// A URL on the demo app's host.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// A URL on castellan's own host (sign-in, account, console, API).
    pub fn console(&self, path: &str) -> String {
        format!("{}{path}", self.console)
    }

    /// Runs the castellan CLI against this instance's configuration, as a separate process.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_with_stdin(args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        run_cli(&self.config_path, args, stdin)
    }

    /// Grants access from a separate process, then waits out castellan's poll interval (200 ms)
    /// with room to spare, so the next request sees it.
    pub fn grant(&self, app: &str, member: &str) {
        let out = self.cli(&["access", "add", app, member]);
        assert!(
            out.status.success(),
            "access add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Grants a role (`target` is an app id or `--global`) and waits like [`Castellan::grant`].
    pub fn grant_role(&self, target: &str, member: &str, role: &str) {
        let out = self.cli(&["access", "add", target, member, "--role", role]);
        assert!(
            out.status.success(),
            "access add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn add_user(&self, email: &str, password: &str) {
        let out = self.cli_with_stdin(
            &["users", "add", email, "--password-stdin"],
            Some(&format!("{password}\n")),
        );
        assert!(
            out.status.success(),
            "users add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The standard output of a command that must have succeeded (its output is shown if not).
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the form input `name` in an HTML page.
pub fn form_input(body: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = body.find(&needle)? + needle.len();
    let end = body[start..].find('"')?;
    Some(
        body[start..start + end]
            .replace("&amp;", "&")
            .replace("&#38;", "&")
            .replace("&#39;", "'")
            .replace("&quot;", "\""),
    )
}

pub fn run_cli(config: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(castellan_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("TEST_CLIENT_SECRET", "castellan-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

// ---- a browser-like client ------------------------------------------------------------------------

/// Keeps cookies per host (ignoring ports, as browsers do) and follows redirects by hand, so tests
/// can stop anywhere in a sign-in flow.
pub struct Browser {
    client: reqwest::Client,
    jar: HashMap<String, HashMap<String, String>>,
}

pub struct Page {
    pub status: u16,
    pub url: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }

    /// The value of a hidden or text input, by name.
    pub fn input(&self, name: &str) -> Option<String> {
        form_input(&self.body, name)
    }
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser::resolving(&[], 0)
    }

    /// A browser that finds `hosts` (e.g. `wiki.localhost`) on 127.0.0.1:`port`, as Chromium
    /// finds every `*.localhost` on loopback.
    pub fn resolving(hosts: &[&str], port: u16) -> Browser {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        for host in hosts {
            builder = builder.resolve(host, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        Browser {
            client: builder.build().unwrap(),
            jar: HashMap::new(),
        }
    }

    fn host_of(url: &str) -> String {
        url::Url::parse(url)
            .unwrap()
            .host_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn cookie(&self, url: &str, name: &str) -> Option<&String> {
        self.jar.get(&Browser::host_of(url))?.get(name)
    }

    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        self.jar
            .entry(Browser::host_of(url))
            .or_default()
            .insert(name.into(), value.into());
    }

    pub fn remove_cookie(&mut self, url: &str, name: &str) {
        if let Some(jar) = self.jar.get_mut(&Browser::host_of(url)) {
            jar.remove(name);
        }
    }

    fn cookie_header(&self, url: &str) -> Option<String> {
        let cookies = self.jar.get(&Browser::host_of(url))?;
        (!cookies.is_empty()).then(|| {
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn store_cookies(&mut self, url: &str, headers: &reqwest::header::HeaderMap) {
        let host = Browser::host_of(url);
        for v in headers.get_all("set-cookie") {
            let s = v.to_str().unwrap_or("");
            let mut parts = s.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let deleted = parts.any(|a| {
                let a = a.trim().to_ascii_lowercase();
                a == "max-age=0" || a.starts_with("expires=thu, 01 jan 1970")
            });
            let jar = self.jar.entry(host.clone()).or_default();
            if deleted || value.is_empty() {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// One request, no redirects followed. `headers` are extra request headers.
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        self.try_request(method, url, headers, form)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// Like [`Browser::request`], but a transport error (a response cut because access ended
    /// while it was in flight) is returned instead of failing the test.
    pub async fn try_request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Result<Page, reqwest::Error> {
        let mut req = self.client.request(method.parse().unwrap(), url);
        if let Some(c) = self.cookie_header(url) {
            req = req.header("cookie", c);
        }
        let mut has_accept = false;
        let mut has_origin = false;
        for (k, v) in headers {
            has_accept |= k.eq_ignore_ascii_case("accept");
            has_origin |= k.eq_ignore_ascii_case("origin");
            req = req.header(*k, *v);
        }
        // As a browser does: a form post or script write names the page's origin (a same-origin
        // one unless the test says otherwise).
        if !has_origin && !matches!(method, "GET" | "HEAD") {
            let u = url::Url::parse(url).unwrap();
            req = req.header("origin", u.origin().ascii_serialization());
        }
        if !has_accept {
            req = req.header("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        }
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.store_cookies(url, &headers);
        let body = resp.text().await.unwrap_or_default();
        Ok(Page {
            status,
            url: url.to_string(),
            headers,
            body,
        })
    }

    pub async fn get(&mut self, url: &str) -> Page {
        self.request("GET", url, &[], None).await
    }

    /// GETs `url` and follows redirects; stops early (without requesting it) at a URL starting with `stop_at`.
    pub async fn follow_until(
        &mut self,
        url: &str,
        headers: &[(&str, &str)],
        stop_at: Option<&str>,
    ) -> Page {
        let mut page = self.request("GET", url, headers, None).await;
        for _ in 0..20 {
            let Some(loc) = page.location() else {
                return page;
            };
            let next = url::Url::parse(&page.url)
                .unwrap()
                .join(loc)
                .unwrap()
                .to_string();
            if stop_at.is_some_and(|s| next.starts_with(s)) {
                page.url = next;
                return page;
            }
            page = self.request("GET", &next, headers, None).await;
        }
        panic!("too many redirects from {url}");
    }

    pub async fn follow(&mut self, url: &str) -> Page {
        self.follow_until(url, &[], None).await
    }

    /// Submits the IdP's login form on `page` and follows redirects (consent is automatic in tests).
    pub async fn submit_idp_login(
        &mut self,
        page: &Page,
        email: &str,
        password: &str,
        stop_at: Option<&str>,
    ) -> Page {
        self.submit_idp_form(page, &[("login", email), ("password", password)], stop_at)
            .await
    }

    /// [`Browser::submit_idp_login`] with the form's `fields` (`login`, `password`, `code`).
    pub async fn submit_idp_form(
        &mut self,
        page: &Page,
        fields: &[(&str, &str)],
        stop_at: Option<&str>,
    ) -> Page {
        assert!(
            page.body.contains("name=\"password\""),
            "expected the IdP login form, got {} at {}: {}",
            page.status,
            page.url,
            page.body
        );
        let action = {
            let start = page.body.find("action=\"").expect("form action") + 8;
            let end = page.body[start..].find('"').unwrap();
            page.body[start..start + end].to_string()
        };
        let target = url::Url::parse(&page.url)
            .unwrap()
            .join(&action)
            .unwrap()
            .to_string();
        let mut resp = self
            .request(
                "POST",
                &target,
                &[],
                Some(&[[("prompt", "login")].as_slice(), fields].concat()),
            )
            .await;
        for _ in 0..20 {
            let Some(loc) = resp.location() else {
                return resp;
            };
            let next = url::Url::parse(&resp.url)
                .unwrap()
                .join(loc)
                .unwrap()
                .to_string();
            if stop_at.is_some_and(|s| next.starts_with(s)) {
                resp.url = next;
                return resp;
            }
            resp = self.request("GET", &next, &[], None).await;
        }
        panic!("too many redirects after the IdP login");
    }

    /// Opens `url` on castellan, signs in at the IdP and returns the page castellan finally serves.
    pub async fn sign_in_oidc(&mut self, url: &str, email: &str, password: &str) -> Page {
        let login = self.follow(url).await;
        self.submit_idp_login(&login, email, password, None).await
    }

    /// Signs in with a local account as a browser that opened `rd` on the app's host does: the
    /// app host's sign-in (which binds the hand-off to this browser), castellan's form on its own
    /// host, the POST, and, when that succeeds, the hand-off back to the app's host. Returns the
    /// last answer: the hand-off's redirect to `rd` when signed in, else castellan's answer to
    /// the POST (a 401, a 429, the way to the code step).
    pub async fn sign_in_local(
        &mut self,
        castellan: &Castellan,
        email: &str,
        password: &str,
        rd: &str,
    ) -> Page {
        self.sign_in_through(&castellan.origin, email, password, rd)
            .await
    }

    /// [`Browser::sign_in_local`] for an app at `front` (behind an ingress, say); returns the
    /// `Cookie` header for the app's host.
    pub async fn sign_in_local_via(&mut self, front: &str, email: &str, password: &str) -> String {
        let done = self.sign_in_through(front, email, password, "/").await;
        assert_eq!(done.status, 302, "{}", done.body);
        format!(
            "castellan_session={}",
            self.cookie(front, "castellan_session")
                .expect("the hand-off set the app host's session cookie")
        )
    }

    async fn sign_in_through(
        &mut self,
        front: &str,
        email: &str,
        password: &str,
        rd: &str,
    ) -> Page {
        let handoff = format!("{front}/.castellan/handoff?code=");
        let form = self
            .follow_until(
                &format!("{front}/.castellan/sign_in?rd={}", urlencode(rd)),
                &[],
                Some(&handoff),
            )
            .await;
        if form.url.starts_with(&handoff) {
            // Still signed in on castellan's own host: it hands the session over at once.
            return self.get(&form.url).await;
        }
        assert_eq!(form.status, 200, "sign-in page: {}", form.body);
        let csrf = form
            .input("csrf")
            .expect("the sign-in form has a CSRF token");
        let rd_field = form.input("rd").unwrap_or_default();
        // Posted where the form is (castellan's own host), as a browser does.
        let action = url::Url::parse(&form.url)
            .unwrap()
            .join("/.castellan/sign_in")
            .unwrap()
            .to_string();
        let posted = self
            .request(
                "POST",
                &action,
                &[],
                Some(&[
                    ("csrf", &csrf),
                    ("rd", &rd_field),
                    ("email", email),
                    ("password", password),
                ]),
            )
            .await;
        self.finish_handoff(posted).await
    }

    /// When `page` sends the browser to an app host's hand-off, follows it (the hand-off sets
    /// that host's session cookie) and returns the hand-off's answer; else returns `page`.
    pub async fn finish_handoff(&mut self, page: Page) -> Page {
        match page.location() {
            Some(loc) if loc.contains("/.castellan/handoff?") => {
                let next = url::Url::parse(&page.url)
                    .unwrap()
                    .join(loc)
                    .unwrap()
                    .to_string();
                self.get(&next).await
            }
            _ => page,
        }
    }
}

/// Opens a WebSocket to the echo upstream's `/ws` through castellan and checks it echoes.
pub async fn upgrade(c: &Castellan, cookie: &str) -> tokio::net::TcpStream {
    upgrade_with(c, &format!("Cookie: {cookie}")).await
}

/// [`upgrade`] with any credential: `header` is one request header line, e.g.
/// `Authorization: Bearer …`.
pub async fn upgrade_with(c: &Castellan, header: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{header}\r\n\r\n",
        c.port
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut s, &mut b).await.unwrap(),
            1
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // One masked binary frame (RFC 6455 §5.2; a zero mask key), which the echo app sends back.
    let frame = [0x82, 0x84, 0, 0, 0, 0, b'p', b'i', b'n', b'g'];
    tokio::io::AsyncWriteExt::write_all(&mut s, &frame)
        .await
        .unwrap();
    let mut echo = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut echo)
        .await
        .unwrap();
    assert_eq!(echo, frame);
    s
}

/// Waits for the server to close the socket; returns how long it took.
pub async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    closed_with(s, limit).await.0
}

/// Waits for the server to close the socket, reading the WebSocket close frame it may send first;
/// returns how long it took, and the frame's code and reason.
pub async fn closed_with(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (Duration, Option<(u16, String)>) {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit, tokio::io::AsyncReadExt::read(s, &mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
    let took = t.elapsed();
    match got.as_slice() {
        [] => (took, None),
        [0x88, len, c1, c2, reason @ ..] if *len as usize == 2 + reason.len() => (
            took,
            Some((
                u16::from_be_bytes([*c1, *c2]),
                String::from_utf8_lossy(reason).to_string(),
            )),
        ),
        other => panic!(
            "unexpected {} bytes instead of a close: {other:?}",
            other.len()
        ),
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs a browser-driving script from tests/support with node (off the async runtime) and returns
/// its last stdout line as JSON; fails with everything it printed if it exits non-zero.
pub async fn run_browser_script(script: &str, args: Vec<String>) -> serde_json::Value {
    let path = support_dir().join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(path).args(args).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

/// A command-line sign-in of `b`'s person by hand, as `castellan login` does it: the approval
/// page, the code for the loopback port, the code for a refresh token.
pub async fn cli_refresh_token(b: &mut Browser, c: &Castellan) -> String {
    let verifier = castellan::crypto::random_token(32);
    let challenge = castellan::crypto::pkce_challenge(&verifier);
    let page = b
        .get(&c.console(&format!(
            "/.castellan/cli/authorize?port=45678&state=st&code_challenge={challenge}"
        )))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let approve = b
        .request(
            "POST",
            &c.console("/.castellan/cli/authorize"),
            &[],
            Some(&[
                ("csrf", &page.input("csrf").unwrap()),
                ("port", "45678"),
                ("state", "st"),
                ("code_challenge", &challenge),
            ]),
        )
        .await;
    let callback = url::Url::parse(approve.location().unwrap()).unwrap();
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let (status, v) = token_grant(
        c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["refresh_token"].as_str().unwrap().to_string()
}

pub async fn token_grant(c: &Castellan, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(c.url("/.castellan/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The status of `GET /` on the demo app's host with the session `cookie` (a script's request:
/// no redirects followed).
pub async fn status_with_session(c: &Castellan, cookie: &str) -> u16 {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(c.url("/"))
        .header("cookie", format!("castellan_session={cookie}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls [`status_with_session`] until it is `want`; returns how long that took, and fails the
/// test after `limit`.
pub async fn until_status_with_session(
    c: &Castellan,
    cookie: &str,
    want: u16,
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let got = status_with_session(c, cookie).await;
        if got == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "still {got} (not {want}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SCIM client's call: `method` on castellan's SCIM endpoint `path` with `token`; the status
/// and the JSON answer.
pub async fn scim_call(
    c: &Castellan,
    token: &str,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            c.console(&format!("/.castellan/scim/v2{path}")),
        )
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Deactivates the SCIM user `id` as Okta does (a PATCH of `active`).
pub async fn scim_deactivate(c: &Castellan, token: &str, id: &str) {
    let (status, v) = scim_call(
        c,
        token,
        "PATCH",
        &format!("/Users/{id}"),
        serde_json::json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": {"active": false}}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}
