//! How castellan reaches apps: a pool of upstreams (`upstream = [...]` with a `health_check`), two
//! real servers (Python's `http.server`), one killed with SIGKILL and started again in the middle
//! of a steady loop of requests, without a failed request; an app's own `upstream_timeout`; and an
//! `https://` upstream that requires a client certificate (Python's `ssl`), reached with the app's
//! `upstream_ca` and `upstream_client_cert`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Python's `http.server` on `port`, serving `dir` (where `pool/who` says which one it is).
fn server(dir: &Path, port: u16, log: &Path) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(dir);
    Proc::spawn("http.server", &mut cmd, log.to_path_buf())
}

async fn listening(port: u16) {
    let t = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_loses_no_request_when_an_upstream_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut servers = Vec::new();
    for (name, port) in ["a", "b"].iter().zip(ports) {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("pool")).unwrap();
        std::fs::write(root.join("pool/who"), name).unwrap();
        servers.push(server(&root, port, &dir.path().join(format!("{name}.log"))));
        listening(port).await;
    }
    let echo = Echo::start().await;
    let extra = format!(
        "[[apps]]\nid = \"pool\"\nhost = \"127.0.0.1\"\npath_prefix = \"/pool\"\n\
         upstream = [\"http://127.0.0.1:{}\", \"http://127.0.0.1:{}\"]\n\
         health_check = {{ path = \"/pool/who\", interval = \"1s\", timeout = \"1s\", healthy = 1, unhealthy = 1 }}\n",
        ports[0], ports[1]
    );
    let metrics_port = free_port();
    let top = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n");
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    setup.top = &top;
    let c = Castellan::start(setup).await;
    c.add_user("ada@example.com", "a long enough password");
    c.grant("pool", "user:ada@example.com");
    // Each upstream's place in the pool, as Prometheus scrapes it.
    let in_pool = |port: u16| async move {
        let text = scrape(metrics_port).await;
        let series = format!(
            "castellan_upstream_in_pool{{app=\"pool\",upstream=\"http://127.0.0.1:{port}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_string))
            .unwrap_or_else(|| panic!("no {series}in\n{text}"))
    };
    assert_eq!(
        (in_pool(ports[0]).await, in_pool(ports[1]).await),
        ("1".into(), "1".into())
    );
    let mut ada = Browser::new();
    let cookie = ada
        .sign_in_local_via(&c.origin, "ada@example.com", "a long enough password")
        .await;

    let url = c.url("/pool/who");
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let (mut failed, mut seen) = (Vec::new(), Vec::new());
        for i in 0..600 {
            match client.get(&url).header("cookie", &cookie).send().await {
                Ok(r) if r.status() == 200 => seen.push(r.text().await.unwrap_or_default()),
                Ok(r) => failed.push(format!("request {i}: {}", r.status())),
                Err(e) => failed.push(format!("request {i}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (failed, seen)
    });
    // Kill "a" without warning a little into the loop, and start it again 1.5 s later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    servers[0].child.kill().unwrap();
    let _ = servers[0].child.wait();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        in_pool(ports[0]).await,
        "0",
        "a is out of the pool while it is down"
    );
    assert_eq!(in_pool(ports[1]).await, "1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let root = dir.path().join("a");
    servers[0] = server(&root, ports[0], &dir.path().join("a-again.log"));
    listening(ports[0]).await;
    let (failed, seen) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of 600 requests failed: {failed:?}\n{}",
        failed.len(),
        c.proc.log_text()
    );
    let a = seen.iter().filter(|s| *s == "a").count();
    let b = seen.iter().filter(|s| *s == "b").count();
    assert_eq!(a + b, 600);
    assert!(a > 0 && b > 0, "both took requests: a {a}, b {b}");
    // The last requests: "a" is back in the pool (after a passing check) and takes its share.
    let tail_a = seen[500..].iter().filter(|s| *s == "a").count();
    assert!(
        tail_a > 0,
        "a took no request after it came back: {:?}",
        &seen[500..]
    );
    let log = c.proc.log_text();
    assert!(
        log.contains("out of the pool"),
        "the log says a left the pool:\n{log}"
    );
    assert_eq!(in_pool(ports[0]).await, "1", "a is back");
}

/// A test CA, and a certificate it signs for `names` (server) or `cn` (client): PEM files in `dir`.
fn pki(dir: &Path) -> (String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "apps' CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |name: &str, server: bool| {
        let mut p = rcgen::CertificateParams::new(if server {
            vec![name.to_string()]
        } else {
            Vec::new()
        })
        .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = leaf("localhost", true);
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server-key.pem"), key).unwrap();
    leaf("castellan", false)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_app_reaches_its_upstreams_with_its_own_timeout_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = pki(dir.path());
    std::fs::write(dir.path().join("castellan-client.pem"), client_cert).unwrap();
    std::fs::write(dir.path().join("castellan-client-key.pem"), client_key).unwrap();
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(support_dir().join("mtls_upstream.py"))
        .arg(port.to_string())
        .args(["server.pem", "server-key.pem", "ca.pem"].map(|f| dir.path().join(f)));
    let _upstream = Proc::spawn("mtls upstream", &mut cmd, dir.path().join("mtls.log"));
    listening(port).await;
    let echo = Echo::start().await;
    let https = format!("https://localhost:{port}");
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("castellan-client.pem");
    let key = dir.path().join("castellan-client-key.pem");
    let app = |id: &str, upstream: &str, keys: &str| {
        format!(
            "[[apps]]\nid = \"{id}\"\nhost = \"127.0.0.1\"\npath_prefix = \"/{id}\"\nupstream = \"{upstream}\"\n{keys}\n"
        )
    };
    let extra = [
        app(
            "quick",
            &format!("http://{}", echo.addr),
            "upstream_timeout = \"1s\"",
        ),
        app(
            "secure",
            &https,
            &format!(
                "upstream_ca = \"{}\"\nupstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"",
                ca.display(),
                cert.display(),
                key.display()
            ),
        ),
        app(
            "nocert",
            &https,
            &format!("upstream_ca = \"{}\"", ca.display()),
        ),
        app("untrusted", &https, ""),
    ]
    .concat();
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.add_user("ada@example.com", "a long enough password");
    for id in ["demo", "quick", "secure", "nocert", "untrusted"] {
        c.grant(id, "user:ada@example.com");
    }
    let mut ada = Browser::new();
    let r = ada
        .sign_in_local(&c, "ada@example.com", "a long enough password", "/")
        .await;
    assert_eq!(r.status, 302);
    let api = [("accept", "application/json")];

    // The app's own upstream_timeout: 1 s for `quick`, the default 60 s for the demo app.
    let t = Instant::now();
    let r = ada.request("GET", &c.url("/quick/slow"), &api, None).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        ada.request("GET", &c.url("/slow"), &api, None).await.status,
        200
    );

    // mTLS to the app: its CA and its client certificate.
    let r = ada
        .request("GET", &c.url("/secure/report"), &api, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["client"], "castellan", "{}", r.body);
    assert_eq!(r.json()["path"], "/secure/report");
    // Without the client certificate the upstream refuses the handshake; without the CA castellan
    // does not trust the upstream: both are the app's 502, never an unverified connection.
    for id in ["nocert", "untrusted"] {
        let r = ada
            .request("GET", &c.url(&format!("/{id}/report")), &api, None)
            .await;
        assert_eq!(r.status, 502, "{id}: {}", r.body);
    }
}
