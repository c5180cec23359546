//! How fast a policy change made through one replica is enforced by another, both on one
//! PostgreSQL: replica A's admin API adds or removes a binding; the clock runs from A's answer
//! until replica B's decision for that caller flips. Prints p50, p99 and max.
//!
//!   cargo bench --bench propagation        # 100 changes
//!   cargo test --bench propagation         # a 6-change smoke (what scripts/test.sh runs)
//!
//! PostgreSQL: `CASTELLAN_TEST_POSTGRES` (an admin URL) when set, else a throwaway cluster
//! (tests/support/throwaway-postgres.sh). The app's upstream is a closed port, so an allowed
//! request is a 502 and a denied one a 403: no upstream time is measured.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

struct Replica {
    child: Child,
    origin: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn castellan(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "castellan {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn printed_key(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("csk_"))
        .expect("a key is printed")
        .to_string()
}

async fn start(dir: &Path, name: &str, db: &str) -> (Replica, std::path::PathBuf) {
    let port = free_port();
    let closed = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstore = \"{db}\"\n\n[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:{closed}\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let origin = format!("http://127.0.0.1:{port}");
    let replica = Replica { child, origin };
    let t = Instant::now();
    while reqwest::get(format!("{}/.castellan/healthz", replica.origin))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (replica, config)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let changes = if std::env::args().any(|a| a == "--bench") {
        100
    } else {
        6
    };
    let admin_url = std::env::var("CASTELLAN_TEST_POSTGRES").unwrap_or_else(|_| {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/throwaway-postgres.sh"
        ))
        .arg(std::process::id().to_string())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "no PostgreSQL: set CASTELLAN_TEST_POSTGRES"
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    });
    let name = format!("castellan_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut db = url::Url::parse(&admin_url).unwrap();
    db.set_path(&name);

    let dir = tempfile::tempdir().unwrap();
    let (a, config) = start(dir.path(), "a", db.as_str()).await;
    let (b, _) = start(dir.path(), "b", db.as_str()).await;
    let admin_key = printed_key(&castellan(
        &config,
        &["service-accounts", "create", "admin"],
    ));
    castellan(
        &config,
        &[
            "access",
            "add",
            "--global",
            "serviceAccount:admin",
            "--role",
            "roles/admin",
        ],
    );
    let bench_key = printed_key(&castellan(
        &config,
        &["service-accounts", "create", "bench"],
    ));
    castellan(&config, &["access", "add", "demo", "serviceAccount:bench"]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/.castellan/token", b.origin))
        .basic_auth("bench", Some(&bench_key))
        .form(&[("grant_type", "client_credentials"), ("audience", "demo")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    // The admin API is on castellan's own host (public_url's: localhost), the app on 127.0.0.1.
    let bindings = format!(
        "{}/.castellan/api/v1/policies/demo/bindings",
        a.origin.replace("127.0.0.1", "localhost")
    );
    let change = |add: bool| {
        let req = if add {
            http.post(&bindings)
                .json(&serde_json::json!({"member": "serviceAccount:bench"}))
        } else {
            http.delete(format!("{bindings}?member=serviceAccount:bench"))
        };
        req.bearer_auth(&admin_key).send()
    };
    let decision_on_b = || {
        http.get(format!("{}/probe", b.origin))
            .bearer_auth(&token)
            .send()
    };

    let mut took = Vec::new();
    let mut add = false; // it starts granted
    for _ in 0..changes {
        let r = change(add).await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let t = Instant::now();
        let want = if add { 502 } else { 403 };
        loop {
            if decision_on_b().await.unwrap().status().as_u16() == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "B never saw the change"
            );
        }
        took.push(t.elapsed());
        add = !add;
    }
    took.sort();
    println!(
        "propagation A→B over {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&took, 0.50).as_secs_f64() * 1e3,
        percentile(&took, 0.99).as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
    );
    drop((a, b));
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}
