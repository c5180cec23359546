//! HTTPS: certificates from files (SNI, HTTP/2, HSTS, the redirect listener, reload on change,
//! a bad file keeps the running certificate) and from ACME against Debian's Pebble, with HTTP-01
//! and TLS-ALPN-01, including renewal of a short-lived certificate, and two replicas sharing the
//! order through PostgreSQL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// A test CA that signs leaf certificates.
pub(crate) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names`: (chain PEM, key PEM, DER).
    pub(crate) fn leaf(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// An HTTPS client for `host` that reaches `addr` and trusts only `root_pem`.
pub(crate) fn client(host: &str, addr: SocketAddr, root_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap()])
        .resolve(host, addr)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The DER of the certificate `url` is served with (a new connection each time).
pub(crate) async fn served_cert(
    host: &str,
    addr: SocketAddr,
    root_pem: &str,
    url: &str,
) -> Option<Vec<u8>> {
    let resp = client(host, addr, root_pem).get(url).send().await.ok()?;
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
}

/// Starts castellan with `toml` in `dir`; waits until `ready` says it serves.
pub(crate) async fn start_castellan(dir: &Path, toml: &str) -> Proc {
    let config = dir.join("castellan.toml");
    std::fs::write(&config, toml).unwrap();
    let mut cmd = Command::new(castellan_bin());
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info");
    Proc::spawn("castellan", &mut cmd, dir.join("castellan.log"))
}

pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, proc: &mut Proc, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "castellan exited ({status}) before {what}:\n{}",
                proc.log_text()
            );
        }
        assert!(
            t.elapsed() < limit,
            "{what}: not after {limit:?}\n{}",
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_files_serve_https_with_sni_h2_hsts_redirects_and_reloads() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("castellan test CA");
    let (chain, key, first) = ca.leaf(&["apps.test", "*.apps.test"]);
    std::fs::write(dir.path().join("cert.pem"), &chain).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let (port, http_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = start_castellan(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"https://apps.test:{port}\"\nstore = \"sqlite://castellan.db\"\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n\
             [[apps]]\nid = \"demo\"\nhost = \"dash.apps.test\"\nupstream = \"http://{}\"\n",
            echo.addr
        ),
    )
    .await;
    let health = format!("https://apps.test:{port}/.castellan/healthz");
    eventually("HTTPS answers", Duration::from_secs(20), &mut c, || async {
        client("apps.test", addr, &ca.pem)
            .get(&health)
            .send()
            .await
            .is_ok()
    })
    .await;

    // HTTP/2 by ALPN, HSTS on every answer, and the certificate from the files.
    let r = client("apps.test", addr, &ca.pem)
        .get(&health)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(
        served_cert("apps.test", addr, &ca.pem, &health)
            .await
            .unwrap(),
        first
    );
    // The wildcard name is served by SNI; a client that does not trust the CA is refused.
    let wild = format!("https://dash.apps.test:{port}/.castellan/healthz");
    assert_eq!(
        client("dash.apps.test", addr, &ca.pem)
            .get(&wild)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let other = Ca::new("someone else");
    assert!(
        client("apps.test", addr, &other.pem)
            .get(&health)
            .send()
            .await
            .is_err()
    );
    // Sign-in cookies are Secure and __Host- prefixed on https.
    let r = client("apps.test", addr, &ca.pem)
        .get(format!("https://apps.test:{port}/.castellan/sign_in"))
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-") && c.contains("Secure")),
        "{cookies:?}"
    );

    // Plain HTTP redirects to HTTPS, keeping path and query, only to hosts castellan serves.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (host, want) in [
        ("apps.test", format!("https://apps.test:{port}/x/y?z=1")),
        ("evil.example", format!("https://apps.test:{port}/x/y?z=1")),
    ] {
        let r = plain
            .get(format!("http://127.0.0.1:{http_port}/x/y?z=1"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()["location"], want.as_str());
    }

    // A certificate swapped on disk is picked up; connections after it see the new one.
    let (chain2, key2, second) = ca.leaf(&["apps.test", "*.apps.test"]);
    std::fs::write(dir.path().join("key.pem"), &key2).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &chain2).unwrap();
    eventually(
        "the new certificate is served",
        Duration::from_secs(10),
        &mut c,
        || async {
            served_cert("apps.test", addr, &ca.pem, &health)
                .await
                .as_deref()
                == Some(&second[..])
        },
    )
    .await;
    // A broken file keeps the running certificate, and says why.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    eventually(
        "the bad file is reported",
        Duration::from_secs(10),
        &mut c,
        || async { c_log(&dir).contains("keeping the running certificate") },
    )
    .await;
    assert_eq!(
        served_cert("apps.test", addr, &ca.pem, &health)
            .await
            .unwrap(),
        second
    );
}

fn c_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("castellan.log")).unwrap_or_default()
}

/// Debian's Pebble with pebble-challtestsrv as its DNS (every name is 127.0.0.1), validating
/// HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`; or with a DNS server of the test's.
pub(crate) struct Pebble {
    pub(crate) directory: String,
    /// Trust for talking to Pebble itself.
    pub(crate) api_ca: PathBuf,
    /// The root of the certificates Pebble issues.
    pub(crate) issued_root: String,
    _procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Pebble {
    async fn start(http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        Pebble::start_with_dns(http_port, tls_port, validity_secs, None).await
    }

    /// Pebble resolving every name (DNS-01's TXT records too) at `dns`, or at its own
    /// pebble-challtestsrv when `None`.
    pub(crate) async fn start_with_dns(
        http_port: u16,
        tls_port: u16,
        validity_secs: u64,
        dns: Option<SocketAddr>,
    ) -> Pebble {
        require(Path::new("/usr/bin/pebble"), "Debian's pebble");
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("pebble API CA");
        let (chain, key, _) = ca.leaf(&["localhost", "127.0.0.1"]);
        let api_ca = dir.path().join("api-ca.pem");
        std::fs::write(&api_ca, &ca.pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), chain).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let (acme_port, mgmt_port, dns_port, dns_mgmt) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let mut procs = Vec::new();
        let dns = match dns {
            Some(server) => server,
            None => {
                let mut dns = Command::new("pebble-challtestsrv");
                dns.args([
                    "-dns01",
                    &format!("127.0.0.1:{dns_port}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                ])
                .args([
                    "-management",
                    &format!("127.0.0.1:{dns_mgmt}"),
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ]);
                procs.push(Proc::spawn(
                    "pebble-challtestsrv",
                    &mut dns,
                    dir.path().join("dns.log"),
                ));
                format!("127.0.0.1:{dns_port}").parse().unwrap()
            }
        };
        let mut pebble = Command::new("pebble");
        pebble
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        let mut pebble = Proc::spawn("pebble", &mut pebble, dir.path().join("pebble.log"));
        let api = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let directory = format!("https://127.0.0.1:{acme_port}/dir");
        let t = Instant::now();
        while api.get(&directory).send().await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "pebble did not start:\n{}",
                pebble.log_text()
            );
            if let Ok(Some(s)) = pebble.child.try_wait() {
                panic!("pebble exited ({s}):\n{}", pebble.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let issued_root = api
            .get(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Pebble {
            directory,
            api_ca,
            issued_root,
            _procs: std::iter::once(pebble).chain(procs).collect(),
            _dir: dir,
        }
    }
}

async fn acme_round(challenge: &str, validity_secs: u64) {
    let echo = Echo::start().await;
    let (port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, port, validity_secs).await;
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http_listen = if challenge == "http-01" {
        format!("http_listen = \"127.0.0.1:{http_port}\"\n")
    } else {
        String::new()
    };
    let mut c = start_castellan(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nstore = \"sqlite://castellan.db\"\n\
             [tls]\n{http_listen}acme = {{ domains = [\"app.test\"], email = \"ops@example.com\", directory = \"{}\", ca_root = \"{}\", challenge = \"{challenge}\" }}\n\n\
             [[apps]]\nid = \"demo\"\nhost = \"demo.app.test\"\nupstream = \"http://{}\"\n",
            pebble.directory,
            pebble.api_ca.display(),
            echo.addr
        ),
    )
    .await;
    let health = format!("https://app.test:{port}/.castellan/healthz");
    let t = Instant::now();
    eventually(
        "a certificate from Pebble",
        Duration::from_secs(60),
        &mut c,
        || async {
            served_cert("app.test", addr, &pebble.issued_root, &health)
                .await
                .is_some()
        },
    )
    .await;
    eprintln!(
        "{challenge}: HTTPS with Pebble's certificate after {:?}",
        t.elapsed()
    );
    let log = c.log_text();
    for step in [
        "ACME: account registered",
        "ACME: order placed",
        "challenge ready",
        "ACME: challenges validated",
        "ACME: certificate issued",
        "ACME: certificate installed",
    ] {
        assert!(log.contains(step), "no {step:?} in the log:\n{log}");
    }
    // Renewal at two thirds of a short lifetime: a new certificate is served without a restart.
    let first = served_cert("app.test", addr, &pebble.issued_root, &health)
        .await
        .unwrap();
    let t = Instant::now();
    eventually(
        "the renewed certificate",
        Duration::from_secs(validity_secs * 2 + 30),
        &mut c,
        || async {
            served_cert("app.test", addr, &pebble.issued_root, &health)
                .await
                .is_some_and(|d| d != first)
        },
    )
    .await;
    eprintln!(
        "{challenge}: renewed after {:?} (lifetime {validity_secs} s)",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_http01_from_pebble_is_served_and_renewed() {
    acme_round("http-01", 15).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_tls_alpn01_from_pebble_is_served_and_renewed() {
    acme_round("tls-alpn-01", 15).await;
}

/// Two replicas on one PostgreSQL with ACME for the same domain: one orders while the other waits,
/// the CA's validator reaches the one that did not order and is answered from the store, and both
/// serve the one certificate.
#[tokio::test(flavor = "multi_thread")]
async fn acme_replicas_order_once_and_answer_each_others_challenges() {
    let echo = Echo::start().await;
    let (port, http_port) = (free_port(), free_port());
    // Pebble validates at 127.0.0.1, where replica A listens; replica B listens on 127.0.0.2.
    let pebble = Pebble::start(http_port, port, 3600).await;
    let db = Database::create(&shared_postgres()).await;
    let config = |ip: &str| {
        format!(
            "listen = \"{ip}:{port}\"\nstore = \"{}\"\n\
             [tls]\nhttp_listen = \"{ip}:{http_port}\"\n\
             acme = {{ domains = [\"app.test\"], email = \"ops@example.com\", directory = \"{}\", ca_root = \"{}\", challenge = \"http-01\" }}\n\n\
             [[apps]]\nid = \"demo\"\nhost = \"demo.app.test\"\nupstream = \"http://{}\"\n",
            db.url,
            pebble.directory,
            pebble.api_ca.display(),
            echo.addr
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The schema first, then a lease held by neither replica, so the test decides who orders.
    std::fs::write(dir_a.path().join("castellan.toml"), config("127.0.0.1")).unwrap();
    ok(&run_cli(
        &dir_a.path().join("castellan.toml"),
        &["access", "list", "demo"],
        None,
    ));
    let pg = sqlx::PgPool::connect(&db.url).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) VALUES ('acme', 'someone-else', $1)",
    )
    .bind(now + 300)
    .execute(&pg)
    .await
    .unwrap();

    let waiting = "another replica is ordering the certificate";
    let mut a = start_castellan(dir_a.path(), &config("127.0.0.1")).await;
    eventually(
        "replica A waiting for the lease",
        Duration::from_secs(30),
        &mut a,
        || async { c_log(&dir_a).contains(waiting) },
    )
    .await;
    let mut b = start_castellan(dir_b.path(), &config("127.0.0.2")).await;
    eventually(
        "replica B waiting for the lease",
        Duration::from_secs(30),
        &mut b,
        || async { c_log(&dir_b).contains(waiting) },
    )
    .await;
    // Hand the lease to B, as if B had taken it first.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    sqlx::query("UPDATE leases SET holder = $1 WHERE name = 'acme'")
        .bind(format!("{}:{}", hostname.trim(), b.child.id()))
        .execute(&pg)
        .await
        .unwrap();

    let addr_a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let addr_b: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let health = format!("https://app.test:{port}/.castellan/healthz");
    for (name, addr, proc) in [("B", addr_b, &mut b), ("A", addr_a, &mut a)] {
        eventually(
            &format!("replica {name} serving Pebble's certificate"),
            Duration::from_secs(60),
            proc,
            || async {
                served_cert("app.test", addr, &pebble.issued_root, &health)
                    .await
                    .is_some()
            },
        )
        .await;
    }
    let cert_a = served_cert("app.test", addr_a, &pebble.issued_root, &health).await;
    let cert_b = served_cert("app.test", addr_b, &pebble.issued_root, &health).await;
    assert_eq!(cert_a, cert_b, "the replicas serve different certificates");
    let (log_a, log_b) = (c_log(&dir_a), c_log(&dir_b));
    assert_eq!(
        log_b.matches("ACME: order placed").count(),
        1,
        "B orders once:\n{log_b}"
    );
    assert!(log_b.contains("ACME: certificate issued"), "{log_b}");
    assert!(
        !log_a.contains("ACME: order placed"),
        "A ordered too:\n{log_a}"
    );
    assert!(log_a.contains("ACME: certificate installed"), "{log_a}");
    // B's order was validated although the validator can only reach A: A answered B's challenge
    // from the store. Once validated, the challenges are gone from it.
    assert_eq!(
        pg_count(&db.url, "SELECT count(*) FROM acme_challenges").await,
        0,
        "challenges are cleared once validated"
    );
    pg.close().await;
}

/// The value of cookie `name` in a response's Set-Cookie headers.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (n, rest) = v.split_once('=')?;
        (n == name).then(|| rest.split(';').next().unwrap_or("").to_string())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_on_other_hosts_share_one_sign_in_through_one_time_codes() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("castellan test CA");
    let (chain, key, _) = ca.leaf(&["apps.test", "*.apps.test"]);
    std::fs::write(dir.path().join("cert.pem"), &chain).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = start_castellan(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"https://apps.test:{port}\"\nstore = \"sqlite://castellan.db\"\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
             [[apps]]\nid = \"portal\"\nhost = \"portal.apps.test\"\nupstream = \"http://{0}\"\n\n\
             [[apps]]\nid = \"sales\"\nhost = \"*.apps.test\"\nupstream = \"http://{0}\"\n",
            echo.addr
        ),
    )
    .await;
    let config = dir.path().join("castellan.toml");
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .resolve("apps.test", addr)
        .resolve("sales.apps.test", addr)
        .resolve("other.apps.test", addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let public = format!("https://apps.test:{port}");
    let sales = format!("https://sales.apps.test:{port}");
    eventually("HTTPS answers", Duration::from_secs(20), &mut c, || async {
        http.get(format!("{public}/.castellan/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let out = run_cli(
        &config,
        &["users", "add", "ada@example.com", "--password-stdin"],
        Some("a long enough password\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(
        &config,
        &["access", "add", "sales", "user:ada@example.com"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let html = "text/html";

    // 1. The app on its own host sends the browser to its host's sign-in, which remembers this
    //    browser in a hand-off cookie there and goes on to the public host.
    let r = http
        .get(format!("{sales}/report?q=1"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16() / 100, 3);
    let start = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        start.starts_with(&format!("{sales}/.castellan/sign_in?rd=")),
        "{start}"
    );
    let r = http.get(&start).send().await.unwrap();
    assert_eq!(r.status().as_u16() / 100, 3);
    let bound = set_cookie(&r, "__Host-castellan_handoff").expect("the hand-off cookie");
    let to_sign_in = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to_sign_in.starts_with(&format!("{public}/.castellan/sign_in?rd=")),
        "{to_sign_in}"
    );
    // 2. Sign in there.
    let r = http.get(&to_sign_in).send().await.unwrap();
    let browser = set_cookie(&r, "__Host-castellan_browser").unwrap();
    let body = r.text().await.unwrap();
    let (csrf, rd) = (
        form_input(&body, "csrf").unwrap(),
        form_input(&body, "rd").unwrap(),
    );
    assert!(
        rd.starts_with(&format!("{sales}/.castellan/handoff?hb="))
            && rd.ends_with("&rd=%2Freport%3Fq%3D1"),
        "{rd}"
    );
    let r = http
        .post(format!("{public}/.castellan/sign_in"))
        .header("cookie", format!("__Host-castellan_browser={browser}"))
        .header("origin", &public)
        .form(&[
            ("csrf", csrf.as_str()),
            ("rd", rd.as_str()),
            ("email", "ada@example.com"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16() / 100, 3);
    let main_session =
        set_cookie(&r, "__Host-castellan_session").expect("a session on the public host");
    let handoff = r.headers()["location"].to_str().unwrap().to_string();
    // 3. On to the app's host with a one-time code: never the session id. It works only in the
    //    browser whose hand-off cookie it was made for: in another one (an attacker's link
    //    opened by a victim) it signs nobody in, and is spent.
    assert!(
        handoff.starts_with(&format!("{sales}/.castellan/handoff?code=")),
        "{handoff}"
    );
    assert!(!handoff.contains(&main_session));
    let elsewhere = http.get(&handoff).send().await.unwrap();
    assert_eq!(elsewhere.status(), 400);
    assert!(set_cookie(&elsewhere, "__Host-castellan_session").is_none());
    // 4. Already signed in on the public host: the host is handed over at once, with a new code.
    let r = http
        .get(&to_sign_in)
        .header("cookie", format!("__Host-castellan_session={main_session}"))
        .send()
        .await
        .unwrap();
    let handoff = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        handoff.starts_with(&format!("{sales}/.castellan/handoff?code=")),
        "{handoff}"
    );
    let r = http
        .get(&handoff)
        .header("cookie", format!("__Host-castellan_handoff={bound}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16() / 100, 3);
    assert_eq!(r.headers()["location"], "/report?q=1");
    let sales_session =
        set_cookie(&r, "__Host-castellan_session").expect("a session on the app's host");
    assert_ne!(
        sales_session, main_session,
        "each host gets a session of its own"
    );
    let r = http
        .get(format!("{sales}/report?q=1"))
        .header(
            "cookie",
            format!("__Host-castellan_session={sales_session}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // 5. A code works once, and a code made for one host is refused on another.
    let again = http
        .get(&handoff)
        .header("cookie", format!("__Host-castellan_handoff={bound}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let r = http
        .get(&to_sign_in)
        .header("cookie", format!("__Host-castellan_session={main_session}"))
        .send()
        .await
        .unwrap();
    let next = r.headers()["location"].to_str().unwrap().to_string();
    let stolen = next.replace("sales.apps.test", "other.apps.test");
    assert_eq!(
        http.get(&stolen)
            .header("cookie", format!("__Host-castellan_handoff={bound}"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        http.get(&next)
            .header("cookie", format!("__Host-castellan_handoff={bound}"))
            .send()
            .await
            .unwrap()
            .status(),
        400,
        "a refused code is spent"
    );
    // 6. Signing out on the public host ends the app host's session too.
    let r = http
        .get(format!("{public}/.castellan/sign_out"))
        .header(
            "cookie",
            format!("__Host-castellan_session={main_session}; __Host-castellan_browser={browser}"),
        )
        .send()
        .await
        .unwrap();
    let csrf = form_input(&r.text().await.unwrap(), "csrf").unwrap();
    let r = http
        .post(format!("{public}/.castellan/sign_out"))
        .header(
            "cookie",
            format!("__Host-castellan_session={main_session}; __Host-castellan_browser={browser}"),
        )
        .header("origin", &public)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_redirection() || r.status().is_success(),
        "{}",
        r.status()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = http
        .get(format!("{sales}/report"))
        .header(
            "cookie",
            format!("__Host-castellan_session={sales_session}"),
        )
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A client certificate for `cn` from `ca`, for TLS client authentication: (certificate PEM then
/// key PEM, as reqwest's identity takes them).
fn device_identity(ca: &Ca, cn: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_certificate_access_level_lets_in_only_connections_that_present_one() {
    require(
        std::path::Path::new("/usr/bin/chromium"),
        "Debian's chromium",
    );
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("castellan test CA");
    let devices = Ca::new("Example device CA");
    let (chain, key, _) = ca.leaf(&["apps.test", "*.apps.test"]);
    std::fs::write(dir.path().join("cert.pem"), &chain).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    std::fs::write(dir.path().join("devices.pem"), &devices.pem).unwrap();
    let level = "accessPolicies/1/accessLevels/corp_devices";
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = start_castellan(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"https://apps.test:{port}\"\nstore = \"sqlite://castellan.db\"\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"devices.pem\"\n\n\
             [[access_levels]]\nname = \"{level}\"\nclient_certificate = true\n\n\
             [[apps]]\nid = \"dash\"\nhost = \"dash.apps.test\"\nupstream = \"http://{}\"\n",
            echo.addr
        ),
    )
    .await;
    let config = dir.path().join("castellan.toml");
    let with = |identity: Option<&str>| {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
            .resolve("apps.test", addr)
            .resolve("dash.apps.test", addr)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let plain = with(None);
    let public = format!("https://apps.test:{port}");
    eventually("HTTPS answers", Duration::from_secs(20), &mut c, || async {
        plain
            .get(format!("{public}/.castellan/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        let out = run_cli(&config, args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A condition on a level the configuration does not define is refused when written.
    let out = run_cli(
        &config,
        &[
            "access",
            "add",
            "dash",
            "user:ada@example.com",
            "--condition",
            "\"accessPolicies/1/accessLevels/corp_laptops\" in request.auth.access_levels",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not configured (configured: accessPolicies/1/accessLevels/corp_devices)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let condition = format!("\"{level}\" in request.auth.access_levels");
    cli(
        &["users", "add", "ada@example.com", "--password-stdin"],
        Some("a long enough password\n"),
    );
    let created = cli(&["service-accounts", "create", "kiosk"], None);
    let key = created
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .expect("a key is printed")
        .to_string();
    for member in ["user:ada@example.com", "serviceAccount:kiosk"] {
        cli(
            &["access", "add", "dash", member, "--condition", &condition],
            None,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let device = device_identity(&devices, "laptop-042");
    let token: serde_json::Value = plain
        .post(format!("{public}/.castellan/token"))
        .basic_auth("kiosk", Some(&key))
        .form(&[("grant_type", "client_credentials"), ("audience", "dash")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    let app = format!("https://dash.apps.test:{port}/reports");
    // With the device certificate: in, and the audit record names the device.
    let r = with(Some(&device))
        .get(&app)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Without: refused, with what would help.
    let r = plain.get(&app).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["hint"]
            .as_str()
            .unwrap_or("")
            .contains("device certificate"),
        "{body}"
    );
    // The same with curl, as a script on the device would call it.
    std::fs::write(dir.path().join("device.pem"), &device).unwrap();
    std::fs::write(dir.path().join("server-ca.pem"), &ca.pem).unwrap();
    let curl = |cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.path().join("server-ca.pem"))
            .args(["--resolve", &format!("dash.apps.test:{port}:127.0.0.1")])
            .args(["-H", &format!("Authorization: Bearer {bearer}")]);
        if cert {
            cmd.arg("--cert").arg(dir.path().join("device.pem"));
        }
        let out = cmd.arg(&app).output().expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        (curl(true), curl(false)),
        ("200".to_string(), "403".to_string())
    );
    // The troubleshooter, with and without one.
    for (flag, code) in [(Some("--client-certificate"), Some(0)), (None, Some(1))] {
        let mut args = vec!["check", "dash", "ada@example.com"];
        args.extend(flag);
        assert_eq!(
            run_cli(&config, &args, None).status.code(),
            code,
            "{args:?}"
        );
    }
    // A certificate from another CA does not even finish the handshake.
    let stranger = device_identity(&Ca::new("Someone else's CA"), "laptop-666");
    assert!(
        with(Some(&stranger))
            .get(&app)
            .bearer_auth(&bearer)
            .send()
            .await
            .is_err()
    );

    let audit = cli(&["audit", "--app", "dash", "--json"], None);
    let allowed: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["action"] == "allow")
        .collect();
    // reqwest's request and curl's: each names the device.
    assert_eq!(allowed.len(), 2, "{audit}");
    assert!(
        allowed
            .iter()
            .all(|r| r["after"]["client_certificate"] == "CN=laptop-042"),
        "{audit}"
    );

    // A browser without a device certificate signs in and gets the page that says what to do.
    let v = run_browser_script(
        "device-denied.mjs",
        vec![
            format!("https://dash.apps.test:{port}/"),
            "ada@example.com".into(),
            "a long enough password".into(),
            "apps.test,dash.apps.test".into(),
        ],
    )
    .await;
    assert_eq!(v["status"], 403, "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("You don't have access")
            && text.contains(&format!(
                "dash asks for a device certificate (access level {level})"
            )),
        "{v}"
    );
}
