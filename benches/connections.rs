//! Many connections at once through one castellan: signed-in HTTP/1.1 keep-alive clients that each
//! send a request every few seconds (a soak), or idle WebSockets (memory per connection). Prints
//! requests, errors, latency and castellan's resident memory over time; asserts nothing about speed.
//!
//!   cargo bench --bench connections                              # 10,000 HTTP connections, 300 s
//!   MODE=websocket SECONDS=60 cargo bench --bench connections    # 10,000 idle WebSockets
//!   cargo test --bench connections                               # smoke: 200 of each for 3 s
//!
//! Settings: CONNECTIONS (10000), SECONDS (300), INTERVAL (5, seconds between one connection's
//! requests), MODE (http | websocket). Needs CONNECTIONS + a few hundred file descriptors
//! (`ulimit -n`). The upstream is a small keep-alive responder in this process; castellan runs as
//! its own process (the binary of this build), signed in with a local account.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Castellan(Child);

impl Drop for Castellan {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Reads one HTTP head (up to the blank line) from `s` into `head`, keeping what came after it in
/// `rest`; false at EOF.
async fn read_head(s: &mut TcpStream, head: &mut Vec<u8>, rest: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            *head = rest.drain(..end + 4).collect();
            return true;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads `n` body bytes, taking what `read_head` already holds first.
async fn read_body(s: &mut TcpStream, n: usize, rest: &mut Vec<u8>) -> std::io::Result<()> {
    let have = rest.len().min(n);
    rest.drain(..have);
    let mut more = vec![0u8; n - have];
    s.read_exact(&mut more).await.map(|_| ())
}

/// The upstream: answers every request with `ok`, and upgrades WebSocket requests (then holds them).
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut head, mut rest) = (Vec::new(), Vec::new());
            while read_head(&mut s, &mut head, &mut rest).await {
                let text = String::from_utf8_lossy(&head).into_owned();
                let key = text.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_string())
                });
                if let Some(key) = key {
                    let accept = castellan::tunnel::accept_key(key.as_bytes());
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                        .await;
                    let mut sink = [0u8; 1024];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                if s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok",
                )
                .await
                .is_err()
                {
                    return;
                }
            }
        });
    }
}

fn cli(config: &std::path::Path, args: &[&str], stdin: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "castellan {args:?} failed");
}

/// The `name=value` of the cookie `name` a response sets.
fn set_cookie(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_string()
}

/// Signs in as a browser does: the app host's sign-in start (which binds the hand-off to this
/// browser), castellan's form on its own host (`localhost`), the POST, and the hand-off back to
/// the app's host (`origin`). Returns the app host's `Cookie` header value.
async fn sign_in(origin: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = http
        .get(format!("{origin}/.castellan/sign_in?rd=%2F"))
        .send()
        .await
        .unwrap();
    let handoff = set_cookie(&start, "castellan_handoff");
    let form_url = start.headers()["location"].to_str().unwrap().to_string();
    let page = http.get(&form_url).send().await.unwrap();
    let browser = set_cookie(&page, "castellan_browser");
    let body = page.text().await.unwrap();
    let field = |name: &str| {
        body.split(&format!("name=\"{name}\" value=\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no {name} field"))
            .replace("&amp;", "&")
    };
    let own = url::Url::parse(&form_url)
        .unwrap()
        .origin()
        .ascii_serialization();
    let posted = http
        .post(format!("{own}/.castellan/sign_in"))
        .header("cookie", &browser)
        .header("origin", &own)
        .form(&[
            ("csrf", field("csrf").as_str()),
            ("rd", field("rd").as_str()),
            ("email", "soak@example.com"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();
    let back = posted.headers()["location"].to_str().unwrap().to_string();
    let done = http
        .get(&back)
        .header("cookie", &handoff)
        .send()
        .await
        .unwrap();
    set_cookie(&done, "castellan_session")
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    errors: AtomicU64,
    connected: AtomicU64,
}

/// One client connection: connects, then a request every `interval` (HTTP) or one upgrade and
/// silence (WebSocket), until `until`. Latencies of HTTP requests go to `lat`.
async fn client(
    addr: String,
    request: Arc<Vec<u8>>,
    websocket: bool,
    interval: Duration,
    until: Instant,
    counts: Arc<Counts>,
) -> Vec<Duration> {
    let mut lat = Vec::new();
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        counts.errors.fetch_add(1, Ordering::Relaxed);
        return lat;
    };
    counts.connected.fetch_add(1, Ordering::Relaxed);
    let (mut head, mut rest) = (Vec::new(), Vec::new());
    loop {
        let t = Instant::now();
        if s.write_all(&request).await.is_err() || !read_head(&mut s, &mut head, &mut rest).await {
            if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!(
                    "first failure: the connection closed after {:?}",
                    t.elapsed()
                );
            }
            return lat;
        }
        let want = if websocket { " 101 " } else { " 200 " };
        if !String::from_utf8_lossy(&head).starts_with(&format!("HTTP/1.1{want}")) {
            if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("first failure: {}", String::from_utf8_lossy(&head).trim());
            }
            return lat;
        }
        if websocket {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep_until(until.into()).await;
            // Still open at the end?
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
            {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
            return lat;
        }
        if let Err(e) = read_body(&mut s, 2, &mut rest).await {
            if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("first failure: {e} reading the body");
            }
            return lat;
        }
        lat.push(t.elapsed());
        counts.requests.fetch_add(1, Ordering::Relaxed);
        if Instant::now() + interval >= until {
            return lat;
        }
        tokio::time::sleep(interval).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run(mode: &str, conns: u64, secs: u64, interval: Duration) {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(upstream(up));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("castellan.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstore = \"sqlite://castellan.db\"\n\n[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://{up_addr}\"\n"
        ),
    )
    .unwrap();
    cli(
        &config,
        &["users", "add", "soak@example.com", "--password-stdin"],
        "a long enough password\n",
    );
    cli(
        &config,
        &["access", "add", "demo", "user:soak@example.com"],
        "",
    );
    let child = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _castellan = Castellan(child);
    let origin = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while reqwest::get(format!("{origin}/.castellan/healthz"))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "castellan did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cookie = sign_in(&origin).await;
    let websocket = mode == "websocket";
    let request = Arc::new(
        if websocket {
            format!(
                "GET /ws HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncookie: {cookie}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
                 sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {origin}\r\n\r\n"
            )
        } else {
            format!("GET /soak HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncookie: {cookie}\r\naccept: */*\r\n\r\n")
        }
        .into_bytes(),
    );
    let idle = rss_mib(pid);
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let addr = format!("127.0.0.1:{port}");
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(client(
            addr.clone(),
            request.clone(),
            websocket,
            interval,
            until,
            counts.clone(),
        )));
        // Open at about 2,000 connections a second, like a crowd arriving, not a SYN flood.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{mode}: {conns} connections opened in {:.1} s; castellan RSS idle {idle:.1} MiB",
        start.elapsed().as_secs_f64()
    );
    let mut samples = Vec::new();
    let step = Duration::from_secs((secs / 10).max(1));
    while Instant::now() + step <= until {
        tokio::time::sleep(step).await;
        let rss = rss_mib(pid);
        samples.push(rss);
        println!(
            "  t={:>4} s  open {:>6}  requests {:>8}  errors {:>4}  castellan RSS {rss:.1} MiB",
            start.elapsed().as_secs(),
            counts.connected.load(Ordering::Relaxed),
            counts.requests.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed)
        );
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort();
    let errors = counts.errors.load(Ordering::Relaxed);
    let peak = samples.iter().cloned().fold(0.0, f64::max);
    let first = samples.first().copied().unwrap_or(0.0);
    let last = samples.last().copied().unwrap_or(0.0);
    println!(
        "{mode}: {} requests, {errors} errors; latency p50 {:.2} ms, p99 {:.2} ms; RSS idle {idle:.1} MiB, \
         first sample {first:.1}, peak {peak:.1}, last {last:.1} MiB",
        counts.requests.load(Ordering::Relaxed),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );
    assert_eq!(errors, 0, "{mode}: some connections failed");
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let conns = env("CONNECTIONS", if bench { 10_000 } else { 200 });
    let secs = env("SECONDS", if bench { 300 } else { 3 });
    let interval = Duration::from_secs(env("INTERVAL", if bench { 5 } else { 1 }));
    match std::env::var("MODE").ok().as_deref() {
        Some(mode @ ("http" | "websocket")) => run(mode, conns, secs, interval).await,
        Some(other) => panic!("MODE is http or websocket, not {other}"),
        None if bench => run("http", conns, secs, interval).await,
        None => {
            run("http", conns, secs, interval).await;
            run("websocket", conns, secs, interval).await;
        }
    }
}
